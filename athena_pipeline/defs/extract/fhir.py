"""FHIR assets: ``fhir_bulk_export`` (network, pool ``athena_api``) then ``raw_fhir/<type>`` (pool ``warehouse``).

Thin glue over :mod:`athena_pipeline.extract`; the CLI runs the same functions.

How the load finds the export (no IO manager): the export asset lands files in
``<LANDING_DIR>/fhir/<export_id>/`` and records the folder and export id in its materialisation
metadata; the raw asset then loads **every landed export the warehouse has not loaded yet**
(``meta.fhir_exports``), oldest first. Why not hand the path over in memory: the landing folder and
the warehouse are the durable truth, so a raw step that failed, was killed or is re-executed alone
(even days later, even after a CLI export) still finds exactly what is left to load, and nothing
is loaded twice.

``raw_fhir`` is one multi-asset with an asset per resource type (keys ``["raw_fhir", "<type>"]``,
what the dbt sources point at): one export loads all its types in one transaction, so it cannot be
split (``can_subset=False``).
"""


import dagster as dg
from pydantic import Field

from athena_pipeline.defs.extract.checks import (
    duplicate_keys_result,
    export_check_specs,
    export_errors_result,
    fhir_check_specs,
    reconcile_result,
    row_count,
)
from athena_pipeline.defs.extract.policy import OWNERS, TRANSIENT_RETRY, fail_fast_unless_transient
from athena_pipeline.defs.extract.resources import settings_for
from athena_pipeline.defs.resources import AthenaResource, WarehouseResource
from athena_pipeline.extract import (
    FHIR_RESOURCE_TYPES,
    LOAD_WAIT_SECONDS,
    export_error_issues,
    export_fhir,
    load_unloaded_fhir,
    manifest_summary,
    stored_watermark,
)
from athena_pipeline.warehouse.connection import connect

EXPORT_KEY = dg.AssetKey(["fhir_bulk_export"])
RAW_FHIR_KEYS: dict[str, dg.AssetKey] = {t: dg.AssetKey(["raw_fhir", t.lower()]) for t in FHIR_RESOURCE_TYPES}


class FhirExportConfig(dg.Config):
    """Run config of ``fhir_bulk_export`` (the defaults are the nightly incremental export)."""

    full: bool = Field(default=False, description="Export everything, ignoring the _since watermark.")
    types: list[str] = Field(default_factory=list,
                             description="Resource types to export, e.g. ['Patient', 'Encounter']; empty = all.")
    since: str | None = Field(default=None,
                              description="_since instant (ISO 8601); empty = the watermark of the last load.")


@dg.asset(
    key=EXPORT_KEY,
    group_name="extract",
    pool="athena_api",
    kinds={"python", "fhir"},
    owners=OWNERS,
    retry_policy=TRANSIENT_RETRY,
    check_specs=export_check_specs(EXPORT_KEY),
    description=(
        "FHIR R4 Bulk Data Group export of the practice into LANDING_DIR/fhir/<export_id>/ (NDJSON). "
        "Incremental (_since = the last loaded export's transactionTime) unless configured full. A killed "
        "run resumes the same export; an export that landed but was never loaded is reused, not redone."),
)
def fhir_bulk_export(context: dg.AssetExecutionContext, config: FhirExportConfig, athena: AthenaResource,
                     warehouse: WarehouseResource) -> dg.MaterializeResult:
    settings = settings_for(athena=athena, warehouse=warehouse)
    with fail_fast_unless_transient("The FHIR bulk export"):
        result = export_fhir(settings, types=config.types or None, since=config.since, full=config.full,
                             on_progress=context.log.info)
        issues = export_error_issues(result.export_dir)
    resources = sum(result.counts.values())
    duration = max(result.duration_seconds, 1e-9)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": resources,
            "export_id": result.export_id,
            "export_dir": dg.MetadataValue.path(str(result.export_dir)),
            "kind": result.kind,
            "since": result.since or "(full export)",
            "transaction_time": result.transaction_time,
            "resources_by_type": dg.MetadataValue.json(dict(sorted(result.counts.items()))),
            "deleted": result.deleted_count,
            "error_lines": result.error_count,
            "files": result.files,
            "bytes": result.bytes,
            "duration_s": round(result.duration_seconds, 3),
            "rows_per_second": round(resources / duration, 1) if result.duration_seconds else 0.0,
            "api_calls": result.calls,
            "downloaded_files": result.downloaded_files,
            "resumed": result.resumed,
            "reexports": result.reexports,
        },
        check_results=[export_errors_result(EXPORT_KEY, issues)],
    )


@dg.multi_asset(
    name="raw_fhir",
    specs=[
        dg.AssetSpec(
            key=RAW_FHIR_KEYS[t],
            deps=[EXPORT_KEY],
            group_name="raw_fhir",
            kinds={"duckdb", "fhir"},
            owners=OWNERS,
            description=(f"FHIR {t} resources as loaded from bulk exports: raw_fhir.{t.lower()} (id, "
                         "last_updated, resource JSON, provenance). Newest meta.lastUpdated wins per id; "
                         "deletions applied."),
            metadata={"table": f"raw_fhir.{t.lower()}", "resource_type": t},
        )
        for t in FHIR_RESOURCE_TYPES
    ],
    check_specs=fhir_check_specs(RAW_FHIR_KEYS.values()),
    can_subset=False,
    pool="warehouse",
    retry_policy=TRANSIENT_RETRY,
    description="Loads every landed, not yet loaded FHIR export into raw_fhir, oldest first, one "
                "transaction per export (the _since watermark moves inside it).",
)
def raw_fhir(context: dg.AssetExecutionContext, athena: AthenaResource, warehouse: WarehouseResource):
    settings = settings_for(athena=athena, warehouse=warehouse)
    with fail_fast_unless_transient("Loading FHIR exports into raw_fhir"):
        loads = load_unloaded_fhir(settings)
        manifests = [(result, manifest_summary(export_dir)) for export_dir, result in loads]
    unmodelled = sorted({t for result, _ in manifests for t in result.types} - set(FHIR_RESOURCE_TYPES))
    if unmodelled:
        context.log.warning(f"loaded resource types without an asset of their own: {', '.join(unmodelled)}")
    duration = sum(result.duration_s for result, _ in manifests)
    lines = sum(result.lines_read for result, _ in manifests)
    with fail_fast_unless_transient("Checking raw_fhir"), \
            connect(settings.warehouse_path, wait_seconds=LOAD_WAIT_SECONDS) as con:
        watermark = stored_watermark(con, "fhir", settings.athena_group_id)
        for rtype, key in RAW_FHIR_KEYS.items():
            table = rtype.lower()
            rows = row_count(con, "raw_fhir", table)
            stats = [r.types[rtype] for r, _ in manifests if rtype in r.types]
            files = sum(m.get(rtype, {}).get("files", 0) for _, m in manifests)
            size = sum(m.get(rtype, {}).get("bytes", 0) for _, m in manifests)
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={
                    "dagster/row_count": int(rows),
                    "read": sum(s.read for s in stats),
                    "inserted": sum(s.inserted for s in stats),
                    "updated": sum(s.updated for s in stats),
                    "deleted": sum(s.deleted for s in stats),
                    "unchanged": sum(s.unchanged for s in stats),
                    "quarantined": sum(s.quarantined for s in stats),
                    "export_ids": dg.MetadataValue.json([r.export_id for r, _ in manifests]),
                    "watermark": watermark.isoformat() if watermark else "(none)",
                    "files": files,
                    "bytes": size,
                    "duration_s": round(duration, 3),
                    "rows_per_second": round(lines / duration, 1) if duration > 0 else 0.0,
                },
                check_results=[
                    duplicate_keys_result(con, key, "no_duplicate_ids", "raw_fhir", table, ["id"]),
                    reconcile_result(key, rtype, [(r, {t: v["count"] for t, v in m.items()})
                                                  for r, m in manifests]),
                ],
            )


extract_fhir_job = dg.define_asset_job(
    "extract_fhir_job",
    selection=dg.AssetSelection.assets(fhir_bulk_export, raw_fhir),
    description="FHIR bulk export (incremental from the watermark), then the load into raw_fhir.",
)
