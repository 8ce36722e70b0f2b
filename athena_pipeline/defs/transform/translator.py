"""How dbt nodes become Dagster assets: keys and groups by layer, owners, tags and metadata.

Keys are ``[<layer>, <model>]`` where the layer is the model's folder under ``models/``
(``staging``, ``intermediate``, ``marts``), and ``["seeds", <seed>]``. Why a layer prefix and not
dagster-dbt's default bare model name: the key says where a table sits in the flow, and the publish
stage depends on ``AssetKey(["marts", <model>])``: a stable contract that does not move when a
mart changes folder inside ``marts/``. Sources keep dagster-dbt's default, which reads
``meta.dagster.asset_key`` (``["raw_fhir", <type>]``, ``["raw_dataview", <table>]``): the
extraction assets' own keys, so the graph is one piece from athenahealth to Caspio.

Groups are the layers; seeds (reference data the staging and intermediate models join) sit in
``staging``. Descriptions, dbt tags, code versions (the model's checksum) and the column schema
from the YAML come from dagster-dbt's defaults; dbt tests become asset checks (its default too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator

from athena_pipeline.defs.extract.policy import OWNERS

#: The model folders under ``dbt_project/models/``, in flow order; each is an asset group.
LAYERS = ("staging", "intermediate", "marts")
SEED_PREFIX = "seeds"
SEED_GROUP = "staging"
#: Group of a model outside the three layers (there should be none; see ``tests/defs``).
OTHER_GROUP = "transform"


def layer_of(dbt_resource_props: Mapping[str, Any]) -> str:
    """The first folder of a model's path under ``models/`` (``fqn`` is [project, folder..., name])."""
    fqn = list(dbt_resource_props.get("fqn") or [])
    return fqn[1] if len(fqn) > 2 else OTHER_GROUP


def _is_true(value: object) -> bool:
    return value is True or str(value).strip().lower() in {"true", "yes", "1"}


class AthenaDbtTranslator(DagsterDbtTranslator):
    """Asset keys ``[<layer>, <model>]`` / ``["seeds", <seed>]``, groups by layer (see the module docstring)."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        resource_type = dbt_resource_props["resource_type"]
        if resource_type == "seed":
            return dg.AssetKey([SEED_PREFIX, dbt_resource_props["name"]])
        if resource_type in ("model", "snapshot"):
            return dg.AssetKey([layer_of(dbt_resource_props), dbt_resource_props["name"]])
        return super().get_asset_key(dbt_resource_props)  # sources: meta.dagster.asset_key

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        resource_type = dbt_resource_props["resource_type"]
        if resource_type == "seed":
            return SEED_GROUP
        if resource_type in ("model", "snapshot"):
            layer = layer_of(dbt_resource_props)
            return layer if layer in LAYERS else OTHER_GROUP
        return super().get_group_name(dbt_resource_props)

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        """Owners declared in dbt (``meta.dagster.owners`` or a dbt group), else the data team."""
        return super().get_owners(dbt_resource_props) or OWNERS

    def get_tags(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, str]:
        """dbt tags, plus ``layer`` and, for tables marked so in their YAML meta, ``phi``: patient-level
        rows that must not leave the warehouse unless patient-level publishing is enabled."""
        tags = dict(super().get_tags(dbt_resource_props))
        if dbt_resource_props["resource_type"] in ("model", "snapshot", "seed"):
            tags["layer"] = "seeds" if dbt_resource_props["resource_type"] == "seed" else layer_of(dbt_resource_props)
        meta = {**(dbt_resource_props.get("meta") or {}), **(dbt_resource_props.get("config", {}).get("meta") or {})}
        if any(_is_true(meta.get(name)) for name in ("contains_phi", "phi", "patient_level")):
            tags["phi"] = "true"
        return tags

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        """dagster-dbt's (table name, column schema from the YAML) plus how dbt materialises the node."""
        metadata = dict(super().get_metadata(dbt_resource_props))
        config = dbt_resource_props.get("config") or {}
        if dbt_resource_props["resource_type"] in ("model", "seed", "snapshot"):
            metadata["dbt/materialized"] = str(config.get("materialized") or dbt_resource_props["resource_type"])
            if config.get("materialized") == "incremental":
                key = config.get("unique_key")
                metadata["dbt/unique_key"] = ", ".join(key) if isinstance(key, list) else str(key)
                metadata["dbt/incremental_strategy"] = str(config.get("incremental_strategy") or "default")
        return metadata
