"""Data View assets: one asset per catalogued table (``raw_dataview/<table>``), daily partitioned.

One multi-asset over :data:`dataview_catalog.CATALOG`, ``can_subset=True``: materialising a few tables
runs one step with one warehouse connection instead of a process per table, and each table is still
its own asset (key ``["raw_dataview", "<table lower-case>"]``, what the dbt sources point at) with
its own checks. A partition is one day of ``LASTUPDATED`` in ``PIPELINE_TIMEZONE``; with
``BackfillPolicy.single_run()`` a backfill of a range fetches the whole window in one run (one
query per table, not one per day). Each table loads in its own transaction.

Tables the catalogue marks experimental (names guessed) may be missing from a real share: they
are skipped with a warning (their assets are ``skippable``) instead of failing the others.
"""


import dagster as dg
from pydantic import Field

from athena_pipeline.athena.dataview_catalog import CATALOG, DataViewTable
from athena_pipeline.defs.extract.checks import (
    dataview_check_specs,
    duplicate_keys_result,
    row_count,
    soft_delete_ratio_result,
)
from athena_pipeline.defs.extract.partitions import DATAVIEW_DAILY, fetch_window
from athena_pipeline.defs.extract.policy import OWNERS, TRANSIENT_RETRY, fail_fast_unless_transient
from athena_pipeline.defs.extract.resources import DataViewResource, settings_for
from athena_pipeline.defs.resources import WarehouseResource
from athena_pipeline.extract import LOAD_WAIT_SECONDS, extract_dataview
from athena_pipeline.warehouse.connection import connect

DATAVIEW_KEYS: dict[dg.AssetKey, DataViewTable] = {
    dg.AssetKey(["raw_dataview", entry.name.lower()]): entry for entry in CATALOG}


class DataViewConfig(dg.Config):
    """Run config of the Data View assets."""

    full_refresh: bool = Field(default=False,
                               description="Copy every row, whatever the partition window.")


def _spec(key: dg.AssetKey, entry: DataViewTable) -> dg.AssetSpec:
    note = " Experimental: the table name is a guess and may be missing upstream." if entry.experimental else ""
    return dg.AssetSpec(
        key=key,
        group_name="raw_dataview",
        kinds={"duckdb", "snowflake"},
        owners=OWNERS,
        skippable=entry.experimental,
        description=f"{entry.description} Copied from Data View {entry.name} into {entry.raw_table}; "
                    f"key CONTEXTID + {', '.join(entry.primary_key)}; soft-deleted rows kept.{note}",
        metadata={"table": entry.raw_table, "upstream": entry.name,
                  "key": dg.MetadataValue.json(list(entry.key_columns)), "confidence": entry.confidence},
    )


@dg.multi_asset(
    name="raw_dataview",
    specs=[_spec(key, entry) for key, entry in DATAVIEW_KEYS.items()],
    check_specs=dataview_check_specs(DATAVIEW_KEYS),
    partitions_def=DATAVIEW_DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
    pool="warehouse",
    retry_policy=TRANSIENT_RETRY,
    description="Data View tables, one LASTUPDATED window per run (a day, or a backfill's whole range).",
)
def raw_dataview(context: dg.AssetExecutionContext, config: DataViewConfig, dataview: DataViewResource,
                 warehouse: WarehouseResource):
    selected = {key: DATAVIEW_KEYS[key] for key in DATAVIEW_KEYS if key in context.selected_asset_keys}
    start, end = fetch_window(context.partition_time_window)
    context.log.info(f"Data View window: LASTUPDATED from {start.isoformat() if start else 'the beginning'} "
                     f"to {end.isoformat()} ({len(selected)} table(s))"
                     + (" - full refresh" if config.full_refresh else ""))
    settings = settings_for(warehouse=warehouse, dataview=dataview)
    with fail_fast_unless_transient("Copying Data View tables"):
        results = extract_dataview(settings, tables=[e.name for e in selected.values()], start=start, end=end,
                                   full_refresh=config.full_refresh, from_watermark=False,
                                   run_id=context.run_id)
    wanted_checks = context.selected_asset_check_keys
    with fail_fast_unless_transient("Checking raw_dataview"), \
            connect(settings.warehouse_path, wait_seconds=LOAD_WAIT_SECONDS) as con:
        for key, entry in selected.items():
            result = results.get(entry.name)
            if result is None:
                context.log.warning(f"{entry.raw_table}: {entry.name} is not in the share; skipped")
                continue
            table = entry.name.lower()
            rows = row_count(con, "raw_dataview", table)
            checks = []
            if dg.AssetCheckKey(key, "no_duplicate_keys") in wanted_checks:
                checks.append(duplicate_keys_result(con, key, "no_duplicate_keys", "raw_dataview", table,
                                                    list(entry.key_columns)))
            if dg.AssetCheckKey(key, "soft_delete_ratio") in wanted_checks:
                checks.append(soft_delete_ratio_result(con, key, entry, settings.dataview_soft_delete_max_ratio))
            window_start, window_end = result.window
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={
                    "dagster/row_count": int(rows),
                    "received": result.received,
                    "inserted": result.inserted,
                    "updated": result.updated,
                    "deleted": result.soft_deleted,
                    "unchanged": result.unchanged,
                    "older": result.older,
                    "columns_added": dg.MetadataValue.json(result.columns_added),
                    "window_start": window_start.isoformat() if window_start else "(beginning)",
                    "window_end": window_end.isoformat() if window_end else "(open)",
                    "watermark": result.watermark.isoformat() if result.watermark else "(none)",
                    "duration_s": round(result.duration_s, 3),
                    "rows_per_second": round(result.rows_per_second, 1),
                },
                check_results=checks,
            )


extract_dataview_job = dg.define_asset_job(
    "extract_dataview_job",
    selection=dg.AssetSelection.assets(raw_dataview),
    partitions_def=DATAVIEW_DAILY,
    description="Data View tables for a day of LASTUPDATED (or a backfill's range, in one run).",
)
