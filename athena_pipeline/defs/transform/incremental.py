"""When an incremental run would keep rows built by older SQL: rebuild instead (``--full-refresh``).

The incremental FHIR staging models (``dbt_project/macros/staging/incremental.sql``) restage only the
resources the last load changed. Rows staged earlier stay as the SQL of *that* day made them, so a
change to a staging model, or to a macro it uses, would leave the table half old, half new, and
nothing would say so. Each incremental model's materialisation therefore records a fingerprint of its
logic: the model file's checksum, its config, and the text of every macro it calls, transitively. A
run that finds a selected incremental model whose last recorded fingerprint differs from the current
one (or that was never materialised in this Dagster instance, so nobody knows what built it) runs with
``--full-refresh``, and says why. Unchanged logic keeps the cheap incremental run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dagster as dg

FINGERPRINT_KEY = "dbt/logic_fingerprint"


def incremental_nodes(manifest: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """unique_id -> node of every incremental model."""
    return {uid: node for uid, node in manifest.get("nodes", {}).items()
            if node.get("resource_type") == "model" and node.get("config", {}).get("materialized") == "incremental"}


def _macro_closure(manifest: Mapping[str, Any], roots: Iterable[str]) -> list[str]:
    macros = manifest.get("macros", {})
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        uid = todo.pop()
        if uid in seen or uid not in macros:
            continue
        seen.add(uid)
        todo.extend(macros[uid].get("depends_on", {}).get("macros", []))
    return sorted(seen)


def logic_fingerprint(manifest: Mapping[str, Any], unique_id: str) -> str:
    """sha256 of what decides a model's rows: its file, its config and the macros it uses (transitively)."""
    node = manifest["nodes"][unique_id]
    digest = hashlib.sha256()
    digest.update(str(node.get("checksum", {}).get("checksum", "")).encode())
    config = {k: node.get("config", {}).get(k) for k in ("materialized", "unique_key", "incremental_strategy",
                                                         "on_schema_change", "post-hook", "pre-hook")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    macros = manifest.get("macros", {})
    for uid in _macro_closure(manifest, node.get("depends_on", {}).get("macros", [])):
        digest.update(uid.encode())
        digest.update(str(macros[uid].get("macro_sql", "")).encode())
    return digest.hexdigest()[:16]


def stale_models(fingerprints: Mapping[dg.AssetKey, str],
                 recorded: Callable[[dg.AssetKey], str | None]) -> dict[dg.AssetKey, str]:
    """The selected incremental models whose rows may come from other SQL: asset key -> reason."""
    out: dict[dg.AssetKey, str] = {}
    for key, current in fingerprints.items():
        last = recorded(key)
        if last is None:
            out[key] = "no materialisation with a logic fingerprint in this Dagster instance"
        elif last != current:
            out[key] = f"its SQL or a macro it uses changed ({last} -> {current})"
    return out


def recorded_fingerprint(instance: dg.DagsterInstance) -> Callable[[dg.AssetKey], str | None]:
    """Reads the fingerprint the asset's latest materialisation recorded (None when there is none)."""

    def lookup(key: dg.AssetKey) -> str | None:
        event = instance.get_latest_materialization_event(key)
        materialization = event.asset_materialization if event else None
        value = materialization.metadata.get(FINGERPRINT_KEY) if materialization else None
        return None if value is None else str(getattr(value, "value", value))

    return lookup
