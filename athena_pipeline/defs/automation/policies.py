"""Automation conditions and freshness policies laid over the other stages' assets, by group.

Applied once, in ``athena_pipeline/definitions.py``, with ``Definitions.map_resolved_asset_specs``
over everything ``defs/`` declares. Why there and not in the transform and publish stages: the
conditions need the whole graph (which inputs exist, which may never update), and keeping them in
one place keeps "when does what run" readable in one file. The stages are selected by group
(``staging``, ``intermediate``, ``marts``, ``caspio``), never by their internals.

* **Automation conditions** (``conditions.py``) on every dbt asset and Caspio table, unless the
  asset already has one (its owner's choice wins).
* **Freshness policies** on the marts and the Caspio tables: fail when the last materialisation is
  older than ``FRESHNESS_FAIL_HOURS`` (default 26 h: a nightly build plus two hours of slack). A
  patient-level (PHI) Caspio table is left out while ``CASPIO_PUBLISH_PATIENT_LEVEL`` is false:
  it is never published then, and would otherwise fail freshness forever.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Mapping

import dagster as dg

from athena_pipeline.defs.automation.conditions import (
    MARTS_GROUP,
    PUBLISH_GROUP,
    automation_targets,
    nightly_conditions,
    nightly_cron,
    optional_inputs,
)
from athena_pipeline.settings import Settings

FRESHNESS_GROUPS = (MARTS_GROUP, PUBLISH_GROUP)


def freshness_policy(settings: Settings) -> dg.FreshnessPolicy:
    """Fail when older than ``FRESHNESS_FAIL_HOURS``."""
    return dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=settings.freshness_fail_hours))


def is_patient_level(spec: dg.AssetSpec) -> bool:
    """Whether an asset holds patient-level rows (the publish stage's ``contains_phi`` metadata, or the
    transform stage's ``phi`` tag)."""
    value = (spec.metadata or {}).get("contains_phi")
    value = getattr(value, "value", value)
    return value is True or str(value).lower() == "true" or (spec.tags or {}).get("phi") == "true"


def wants_freshness(spec: dg.AssetSpec, settings: Settings) -> bool:
    """Marts and Caspio tables; patient-level Caspio tables only when they are published."""
    if spec.group_name not in FRESHNESS_GROUPS:
        return False
    unpublished_phi = (spec.group_name == PUBLISH_GROUP and is_patient_level(spec)
                       and not settings.caspio_publish_patient_level)
    return not unpublished_phi


def conditions_for(definitions: dg.Definitions, settings: Settings) -> dict[dg.AssetKey, dg.AutomationCondition]:
    """The nightly condition of every dbt asset and Caspio table in ``definitions``."""
    graph = definitions.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    deps: Mapping[dg.AssetKey, set[dg.AssetKey]] = {k: set(graph.get(k).parent_keys) for k in keys}
    targets = automation_targets({k: graph.get(k).group_name for k in keys})
    hour, minute = settings.nightly_hour_minute
    return nightly_conditions(deps, targets, optional_inputs() & set(keys), nightly_cron(hour, minute),
                              settings.pipeline_timezone)


def with_automation(definitions: dg.Definitions, settings: Settings) -> dg.Definitions:
    """``definitions`` with the automation conditions and freshness policies applied (see above)."""
    conditions = conditions_for(definitions, settings)
    policy = freshness_policy(settings)

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        changes: dict = {}
        if spec.key in conditions and spec.automation_condition is None:
            changes["automation_condition"] = conditions[spec.key]
        if wants_freshness(spec, settings) and spec.freshness_policy is None:
            changes["freshness_policy"] = policy
        return spec.replace_attributes(**changes) if changes else spec

    # ``map_resolved_asset_specs`` is marked preview in 1.13 (the API dagster-notes §3 and the docs
    # point to); the pinned version is tested here, so keep its warning out of every load's log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return definitions.map_resolved_asset_specs(func=apply)
