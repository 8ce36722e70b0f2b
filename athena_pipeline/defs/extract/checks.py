"""Asset checks of the extract stage: declared here, evaluated inline by the assets that own them.

Why inline (``check_specs`` + ``MaterializeResult(check_results=...)``) and not separate
``@asset_check`` steps: every check reads the warehouse, and a separate step would open DuckDB in its
own process, in the ``warehouse`` pool, once per check. The asset already holds what the checks
need (the load results, the landing folder), so the checks run in the same step, right after it.

* ``fhir_bulk_export``: ``export_errors``: OperationOutcome issues the server put in ``error/``
  files. Only ``warning``/``information`` issues: WARN (acknowledged). Any ``fatal``/``error``
  issue: ERROR, and **blocking**, so the raw load does not run in that run: resources are missing
  from the export, and loading it would move the ``_since`` watermark past them.
* ``raw_fhir.<type>``: ``no_duplicate_ids`` (ERROR) and ``reconciles_with_manifest``: the lines
  read per type equal the manifest counts and every line is accounted for (inserted, updated,
  unchanged, older, duplicate, tombstoned or quarantined): ERROR on a mismatch, WARN when lines
  were quarantined.
* ``raw_dataview.<table>``: ``no_duplicate_keys`` (CONTEXTID + the catalogue key; ERROR) and
  ``soft_delete_ratio`` (WARN above ``DATAVIEW_SOFT_DELETE_MAX_RATIO``): a share that suddenly
  soft-deletes half a table is usually an upstream incident, not a practice's real activity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg
import duckdb

from athena_pipeline.athena.dataview_catalog import DataViewTable
from athena_pipeline.warehouse.fhir_loader import FhirLoadResult

FATAL_SEVERITIES = ("fatal", "error")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                            "AND schema_name = ? AND table_name = ?", [schema, table]).fetchall()[0][0])


def row_count(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> int:
    """Rows in ``schema.table``; 0 when the loader has not created it yet (nothing loaded so far)."""
    if not _table_exists(con, schema, table):
        return 0
    return int(con.execute(f"SELECT count(*) FROM {_q(schema)}.{_q(table)}").fetchall()[0][0])


# --- declarations -----------------------------------------------------------------------------------
def export_check_specs(export_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(
        "export_errors", asset=export_key, blocking=True,
        description="OperationOutcome issues in the export's error files: warning/information issues "
                    "warn; fatal/error issues fail and block the raw load (resources are missing).")]


def fhir_check_specs(keys: Iterable[dg.AssetKey]) -> list[dg.AssetCheckSpec]:
    specs: list[dg.AssetCheckSpec] = []
    for key in keys:
        specs.append(dg.AssetCheckSpec("no_duplicate_ids", asset=key,
                                       description="Every resource id appears once in the raw table."))
        specs.append(dg.AssetCheckSpec(
            "reconciles_with_manifest", asset=key,
            description="Lines read equal the manifest counts, and every line is accounted for "
                        "(inserted, updated, unchanged, older, duplicate, tombstoned or quarantined)."))
    return specs


def dataview_check_specs(tables: Mapping[dg.AssetKey, DataViewTable]) -> list[dg.AssetCheckSpec]:
    specs: list[dg.AssetCheckSpec] = []
    for key, entry in tables.items():
        specs.append(dg.AssetCheckSpec(
            "no_duplicate_keys", asset=key,
            description=f"(CONTEXTID, {', '.join(entry.primary_key)}) is unique in {entry.raw_table}."))
        specs.append(dg.AssetCheckSpec(
            "soft_delete_ratio", asset=key,
            description=f"The share of {entry.raw_table} rows with {entry.soft_delete_column} set stays "
                        "below DATAVIEW_SOFT_DELETE_MAX_RATIO."))
    return specs


# --- evaluations --------------------------------------------------------------------------------------
def export_errors_result(export_key: dg.AssetKey, issues: Mapping[str, int]) -> dg.AssetCheckResult:
    """The ``export_errors`` check from issue counts by severity (see the module docstring)."""
    fatal = sum(n for s, n in issues.items() if s in FATAL_SEVERITIES)
    other = sum(n for s, n in issues.items() if s not in FATAL_SEVERITIES)
    metadata = {"issues_by_severity": dg.MetadataValue.json(dict(sorted(issues.items()))),
                "fatal_or_error": fatal, "other": other}
    if fatal:
        return dg.AssetCheckResult(asset_key=export_key, check_name="export_errors", passed=False,
                                   severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                   description=f"the server reported {fatal} fatal/error issue(s): the export "
                                               "is incomplete; see error/ in the landing folder")
    if other:
        return dg.AssetCheckResult(asset_key=export_key, check_name="export_errors", passed=False,
                                   severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
                                   description=f"{other} warning/information issue(s), acknowledged")
    return dg.AssetCheckResult(asset_key=export_key, check_name="export_errors", passed=True, metadata=metadata)


def duplicate_keys_result(con: duckdb.DuckDBPyConnection, key: dg.AssetKey, check_name: str, schema: str,
                          table: str, key_columns: Sequence[str]) -> dg.AssetCheckResult:
    """Rows whose key appears more than once (the raw tables declare a primary key; this proves it)."""
    if not _table_exists(con, schema, table):
        return dg.AssetCheckResult(asset_key=key, check_name=check_name, passed=True,
                                   metadata={"rows": 0, "note": "no raw table yet"})
    cols = ", ".join(_q(c) for c in key_columns)
    rows, distinct = con.execute(
        f"SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT {cols} FROM {_q(schema)}.{_q(table)})) "
        f"FROM {_q(schema)}.{_q(table)}").fetchall()[0]
    duplicates = int(rows) - int(distinct)
    return dg.AssetCheckResult(asset_key=key, check_name=check_name, passed=duplicates == 0,
                               severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"rows": int(rows), "duplicate_rows": duplicates})


def reconcile_result(key: dg.AssetKey, resource_type: str, loads: Sequence[tuple[FhirLoadResult, Mapping[str, int]]]
                     ) -> dg.AssetCheckResult:
    """``reconciles_with_manifest`` for one type over the exports this run loaded.

    ``loads`` pairs each load result with its manifest's counts per type.
    """
    expected = read = accounted = quarantined = 0
    mismatched: list[str] = []
    for result, counts in loads:
        expected += int(counts.get(resource_type, 0))
        stats = result.types.get(resource_type)
        if stats is not None:
            read += stats.read
            quarantined += stats.quarantined
            accounted += (stats.inserted + stats.updated + stats.unchanged + stats.older + stats.duplicates
                          + stats.tombstoned + stats.quarantined)
        mismatched += [m.file for m in result.count_mismatches
                       if m.file.split("/")[-1].split(".")[0] == resource_type]
    metadata = {"exports": len(loads), "manifest_count": expected, "lines_read": read,
                "lines_accounted_for": accounted, "quarantined": quarantined,
                "mismatched_files": dg.MetadataValue.json(mismatched)}
    if read != expected or accounted != read or mismatched:
        return dg.AssetCheckResult(asset_key=key, check_name="reconciles_with_manifest", passed=False,
                                   severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                   description=f"manifest {expected}, read {read}, accounted for {accounted}")
    if quarantined:
        return dg.AssetCheckResult(asset_key=key, check_name="reconciles_with_manifest", passed=False,
                                   severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
                                   description=f"{quarantined} line(s) quarantined (see audit.quarantine)")
    return dg.AssetCheckResult(asset_key=key, check_name="reconciles_with_manifest", passed=True, metadata=metadata)


def soft_delete_ratio_result(con: duckdb.DuckDBPyConnection, key: dg.AssetKey, entry: DataViewTable,
                             threshold: float) -> dg.AssetCheckResult:
    """WARN when more than ``threshold`` of the raw table's rows are soft-deleted."""
    table = entry.name.lower()
    if not _table_exists(con, "raw_dataview", table):
        return dg.AssetCheckResult(asset_key=key, check_name="soft_delete_ratio", passed=True,
                                   metadata={"rows": 0, "note": "no raw table yet"})
    columns = {c.upper(): c for (c,) in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'raw_dataview' AND table_name = ?", [table]).fetchall()}
    column = columns.get(entry.soft_delete_column.upper())
    if column is None:
        return dg.AssetCheckResult(asset_key=key, check_name="soft_delete_ratio", passed=True,
                                   metadata={"note": f"no {entry.soft_delete_column} column"})
    rows, deleted = con.execute(f"SELECT count(*), count({_q(column)}) FROM raw_dataview.{_q(table)}").fetchall()[0]
    ratio = deleted / rows if rows else 0.0
    return dg.AssetCheckResult(asset_key=key, check_name="soft_delete_ratio", passed=ratio <= threshold,
                               severity=dg.AssetCheckSeverity.WARN,
                               metadata={"rows": int(rows), "soft_deleted": int(deleted),
                                         "ratio": round(ratio, 6), "threshold": threshold})
