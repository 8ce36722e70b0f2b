"""Load Data View record batches into ``raw_dataview.<table>``: an upsert in ONE transaction.

The raw table has the upstream columns as they come (names and types from Arrow) plus
``_loaded_at`` and ``_run_id``, and a primary key on ``CONTEXTID`` + the catalogue key. Why this
shape and these rules:

* **Stage through Arrow**: every batch is appended to a temp table by DuckDB scanning the Arrow
  batch in place (no Python row loop); the upsert is then plain SQL.
* **Newest ``LASTUPDATED`` wins**, per key. Duplicates of a key in the batches keep the newest copy
  (tie: the later one). A stored row is replaced by a newer copy, or by a different copy with the
  same ``LASTUPDATED`` (the later load wins a tie); an older copy never overwrites it. A row without
  ``LASTUPDATED`` counts as oldest.
* **Soft deletes are data**: rows with ``DELETEDDATETIME`` are stored like any other (and counted
  as ``soft_deleted``); staging models filter them, the raw layer must keep them.
* **Schema evolution**: a column new upstream is added to the raw table (``ALTER TABLE ADD
  COLUMN``); one whose type changed incompatibly (say DECIMAL -> VARCHAR) stops the load with an
  error naming the table and column, before anything is written. Safe widenings (a narrower
  integer, a decimal that fits, float -> double, another timestamp unit) are accepted as they are.
* **Watermark in the same transaction**: ``meta.watermarks('dataview', <table>)`` becomes the
  window end (or, with no end, the newest ``LASTUPDATED`` loaded), never moving back, so it
  cannot run ahead of the data.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from athena_pipeline.athena.dataview_catalog import DataViewTable, get_table
from athena_pipeline.warehouse.audit import ensure_tables, get_watermark, set_watermark, settle

WATERMARK_SOURCE = "dataview"
LOADED_AT, RUN_ID = "_loaded_at", "_run_id"
_STAGE, _DECISIONS, _BATCH = "_dv_stage", "_dv_decisions", "_dv_batch"

_INTS = ["TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"]
_UINTS = ["UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"]
_TIMESTAMPS = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITHOUT TIME ZONE"}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")
# Integer digits each integer type needs to fit in a DECIMAL.
_INT_DIGITS = {"TINYINT": 3, "SMALLINT": 5, "INTEGER": 10, "BIGINT": 19, "HUGEINT": 39,
               "UTINYINT": 3, "USMALLINT": 5, "UINTEGER": 10, "UBIGINT": 20, "UHUGEINT": 39}


class DataViewSchemaError(ValueError):
    """The batches do not fit the raw table (a type changed, a key column is missing or NULL)."""


@dataclass
class DataViewLoadResult:
    """What one load of one table did."""

    table: str  # logical name, e.g. CLAIM
    raw_table: str  # raw_dataview.claim
    run_id: str
    window: tuple[dt.datetime | None, dt.datetime | None]
    received: int = 0  # rows in the batches
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # same LASTUPDATED and same values as the stored row
    older: int = 0  # older than the stored row: skipped
    duplicates: int = 0  # superseded copies of a key within the batches
    soft_deleted: int = 0  # inserted or updated rows that carry DELETEDDATETIME
    columns_added: list[str] = field(default_factory=list)
    watermark: dt.datetime | None = None
    duration_s: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.received / self.duration_s if self.duration_s > 0 else 0.0


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def raw_table_name(entry: DataViewTable) -> str:
    return f"raw_dataview.{_q(entry.name.lower())}"


def _type_fits(stored: str, incoming: str) -> bool:
    """Can values of DuckDB type ``incoming`` go into a column of type ``stored`` without loss?"""
    stored, incoming = stored.upper(), incoming.upper()
    if stored == incoming or incoming == '"NULL"' or incoming == "NULL":
        return True
    if stored in _INTS and incoming in _INTS:
        return _INTS.index(incoming) <= _INTS.index(stored)
    if stored in _INTS and incoming in _UINTS:
        return _UINTS.index(incoming) < _INTS.index(stored)
    if stored in _UINTS and incoming in _UINTS:
        return _UINTS.index(incoming) <= _UINTS.index(stored)
    sd, idec = _DECIMAL.match(stored), _DECIMAL.match(incoming)
    if sd and idec:
        (p1, s1), (p2, s2) = (int(idec[1]), int(idec[2])), (int(sd[1]), int(sd[2]))
        return s1 <= s2 and p1 - s1 <= p2 - s2
    if sd and incoming in _INT_DIGITS:
        return int(sd[1]) - int(sd[2]) >= _INT_DIGITS[incoming]
    if stored == "DOUBLE" and (incoming == "FLOAT" or incoming in ("TINYINT", "SMALLINT", "INTEGER")):
        return True
    # Another timestamp unit (Snowflake picks one per chunk): sub-microsecond digits are dropped.
    return stored in _TIMESTAMPS and incoming in _TIMESTAMPS


def _columns(con: duckdb.DuckDBPyConnection, schema: str, table: str, temp: bool = False) -> dict[str, str]:
    database = "temp" if temp else None
    rows = con.execute(
        """SELECT column_name, data_type FROM duckdb_columns()
           WHERE schema_name = ? AND table_name = ? AND database_name = coalesce(?, current_database())
           ORDER BY column_index""", [schema, table, database]).fetchall()
    return {name: dtype for name, dtype in rows}


def _ddl_type(dtype: str) -> str:
    # An all-NULL Arrow column has no type; store it as text rather than fail.
    return "VARCHAR" if dtype.upper() in ('"NULL"', "NULL") else dtype


def _stage(con: duckdb.DuckDBPyConnection, batches: Iterable[pa.RecordBatch]) -> int:
    """Append every batch to ``temp._dv_stage`` (created from the first batch); returns rows staged."""
    staged = 0
    created = False
    settle(con)
    for batch in batches:
        if isinstance(batch, pa.Table):
            batch_table = batch
        else:
            batch_table = pa.Table.from_batches([batch])
        con.register(_BATCH, batch_table)
        try:
            if not created:
                con.execute(f"CREATE OR REPLACE TEMP TABLE {_STAGE} AS SELECT * FROM {_BATCH} LIMIT 0")
                created = True
            con.execute(f"INSERT INTO {_STAGE} BY NAME SELECT * FROM {_BATCH}")
        finally:
            con.unregister(_BATCH)
        staged += batch_table.num_rows
    if not created:
        con.execute(f"DROP TABLE IF EXISTS temp.{_STAGE}")
    return staged if created else -1


def load_dataview_batches(con: duckdb.DuckDBPyConnection, table: str, batches: Iterable[pa.RecordBatch], *,
                          window: tuple[dt.datetime | None, dt.datetime | None], run_id: str) -> DataViewLoadResult:
    """Upsert one Data View table's batches into ``raw_dataview.<table>`` and record the window.

    ``table`` is the logical catalogue name; ``window`` is the (start, end) the batches were fetched
    for (``end`` becomes the watermark). Raises :class:`DataViewSchemaError` (nothing written) when
    a column's type changed incompatibly or a key column is missing or NULL. ``con`` must not be
    inside a transaction.
    """
    started = time.perf_counter()
    entry = get_table(table)
    raw = raw_table_name(entry)
    result = DataViewLoadResult(table=entry.name, raw_table=f"raw_dataview.{entry.name.lower()}", run_id=run_id,
                                window=window)
    try:
        staged = _stage(con, batches)  # temp objects only: nothing in the warehouse changes yet
        con.execute("BEGIN TRANSACTION")
        try:
            ensure_tables(con)
            if staged >= 0:
                result.received = staged
                _upsert(con, entry, raw, run_id, result)
            watermark_value = window[1]
            if watermark_value is None and staged > 0 and entry.watermark_column in _columns(con, "main", _STAGE, True):
                watermark_value = con.execute(
                    f"SELECT max({_q(entry.watermark_column)}) FROM temp.{_STAGE}").fetchone()[0]
            key = entry.name.lower()
            if watermark_value is not None:
                result.watermark = set_watermark(con, WATERMARK_SOURCE, key, watermark_value)
            else:
                result.watermark = get_watermark(con, WATERMARK_SOURCE, key)
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
    finally:
        for tmp in (_STAGE, _DECISIONS):
            con.execute(f"DROP TABLE IF EXISTS temp.{tmp}")
    result.duration_s = time.perf_counter() - started
    return result


def _check_schema(con: duckdb.DuckDBPyConnection, entry: DataViewTable, stage_cols: dict[str, str],
                  raw_cols: dict[str, str] | None) -> list[str]:
    """Raise on a missing key or an incompatible type; return the stage columns new to the raw table."""
    raw = entry.raw_table  # for messages: raw_dataview.claim
    by_upper = {c.upper(): c for c in stage_cols}
    for key in (*entry.key_columns, entry.watermark_column):
        if key.upper() not in by_upper:
            raise DataViewSchemaError(f"{raw}: the batches have no {key} column (needed as key or watermark); "
                                      "nothing was written")
    for key in entry.key_columns:
        nulls = con.execute(f"SELECT count(*) FROM temp.{_STAGE} WHERE {_q(by_upper[key.upper()])} IS NULL").fetchone()[0]
        if nulls:
            raise DataViewSchemaError(f"{raw}: {nulls} rows have a NULL {key} (part of the key); nothing was written")
    if raw_cols is None:
        return list(stage_cols)
    raw_upper = {c.upper(): t for c, t in raw_cols.items()}
    added = []
    for name, dtype in stage_cols.items():
        stored = raw_upper.get(name.upper())
        if stored is None:
            added.append(name)
        elif not _type_fits(stored, dtype):
            raise DataViewSchemaError(
                f"{raw}.{name}: upstream type changed from {stored} to {dtype}, which the raw column cannot "
                "hold; nothing was written. Migrate the column (ALTER TABLE ... ALTER COLUMN ... TYPE ...) "
                "or drop the raw table and run a full refresh.")
    return added


def _upsert(con: duckdb.DuckDBPyConnection, entry: DataViewTable, raw: str, run_id: str,
            result: DataViewLoadResult) -> None:
    stage_cols = _columns(con, "main", _STAGE, temp=True)
    raw_cols = _columns(con, "raw_dataview", entry.name.lower()) or None
    new_cols = _check_schema(con, entry, stage_cols, raw_cols)
    by_upper = {c.upper(): c for c in stage_cols}
    keys = [by_upper[k.upper()] for k in entry.key_columns]
    wm = by_upper[entry.watermark_column.upper()]
    if raw_cols is None:
        cols = ", ".join(f"{_q(c)} {_ddl_type(t)}{' NOT NULL' if c in keys else ''}" for c, t in stage_cols.items())
        con.execute(f"""CREATE TABLE {raw} ({cols}, {_q(LOADED_AT)} TIMESTAMPTZ, {_q(RUN_ID)} VARCHAR,
                        PRIMARY KEY ({', '.join(_q(k) for k in keys)}))""")
    else:
        for name in new_cols:
            con.execute(f"ALTER TABLE {raw} ADD COLUMN {_q(name)} {_ddl_type(stage_cols[name])}")
            result.columns_added.append(name)

    join = " AND ".join(f"r.{_q(k)} = s.{_q(k)}" for k in keys)
    differs = " OR ".join(f"s.{_q(c)} IS DISTINCT FROM r.{_q(c)}" for c in stage_cols) or "false"
    soft = by_upper.get(entry.soft_delete_column.upper())
    soft_expr = f"s.{_q(soft)} IS NOT NULL" if soft else "false"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_DECISIONS} AS
        WITH s AS (
            SELECT *, rowid AS _seq FROM temp.{_STAGE}
            QUALIFY row_number() OVER (PARTITION BY {', '.join(_q(k) for k in keys)}
                                       ORDER BY {_q(wm)} DESC NULLS LAST, rowid DESC) = 1)
        SELECT s._seq, {', '.join(f's.{_q(k)}' for k in keys)}, {soft_expr} AS _soft_deleted,
               CASE
                 WHEN r.{_q(keys[0])} IS NULL THEN 'insert'
                 WHEN r.{_q(wm)} IS NULL AND s.{_q(wm)} IS NOT NULL THEN 'update'
                 WHEN s.{_q(wm)} IS NULL AND r.{_q(wm)} IS NOT NULL THEN 'older'
                 WHEN s.{_q(wm)} > r.{_q(wm)} THEN 'update'
                 WHEN s.{_q(wm)} < r.{_q(wm)} THEN 'older'
                 WHEN {differs} THEN 'update'
                 ELSE 'unchanged'
               END AS _action
        FROM s LEFT JOIN {raw} r ON {join}""")
    counts = {action: (n, soft_n) for action, n, soft_n in con.execute(
        f"SELECT _action, count(*), count(*) FILTER (WHERE _soft_deleted) FROM temp.{_DECISIONS} GROUP BY 1"
    ).fetchall()}
    result.inserted = counts.get("insert", (0, 0))[0]
    result.updated = counts.get("update", (0, 0))[0]
    result.unchanged = counts.get("unchanged", (0, 0))[0]
    result.older = counts.get("older", (0, 0))[0]
    result.duplicates = result.received - sum(n for n, _ in counts.values())
    result.soft_deleted = counts.get("insert", (0, 0))[1] + counts.get("update", (0, 0))[1]

    if result.updated:
        match = " AND ".join(f"{raw}.{_q(k)} = d.{_q(k)}" for k in keys)
        con.execute(f"DELETE FROM {raw} USING temp.{_DECISIONS} d WHERE d._action = 'update' AND {match}")
    if result.inserted or result.updated:
        cols = ", ".join(_q(c) for c in stage_cols)
        con.execute(
            f"""INSERT INTO {raw} ({cols}, {_q(LOADED_AT)}, {_q(RUN_ID)})
                SELECT {', '.join(f's.{_q(c)}' for c in stage_cols)}, now(), ?
                FROM temp.{_STAGE} s JOIN temp.{_DECISIONS} d ON d._seq = s.rowid
                WHERE d._action IN ('insert', 'update')""", [run_id])
