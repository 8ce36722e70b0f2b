"""The audit log and bookkeeping tables of the warehouse: DDL and the small helpers that write them.

Why these tables exist:

* ``audit.api_calls`` — one row per HTTP call to athenahealth (or Caspio): what was called, how it
  went, how long it took. Never a URL with identifiers, a header, a body, PHI or a secret: the
  clients log a ``path_template`` (``/Group/{id}/$export``), not the path.
* ``audit.quarantine`` — input lines a loader refused (not JSON, no id, wrong type, truncated...),
  by file and line number with a reason and the byte length. The line itself is NOT stored: it
  may be a patient record.
* ``audit.export_errors`` — the OperationOutcome issues a FHIR bulk export reported in its
  ``error`` files (severity, code, diagnostics truncated to a short text).
* ``meta.watermarks`` — where each incremental source stopped: ``('fhir', <group>)`` holds the
  last loaded export's ``transactionTime`` (the next ``_since``); ``('dataview', <table>)`` the
  end of the last loaded ``LASTUPDATED`` window. Written in the same transaction as the data, so
  it never runs ahead of what was loaded.
* ``meta.fhir_exports`` — one row per loaded export; ``meta.fhir_deletions`` — the deletions
  (tombstones) each export announced, so an older copy of a deleted resource cannot come back.

All DDL is ``IF NOT EXISTS``: :func:`ensure_tables` is safe to call on every connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMAS: tuple[str, ...] = ("raw_fhir", "raw_dataview", "audit", "meta")

API_CALLS_DDL = """CREATE TABLE IF NOT EXISTS audit.api_calls (
    ts TIMESTAMPTZ,
    system VARCHAR,
    method VARCHAR,
    path_template VARCHAR,
    status INTEGER,
    duration_ms DOUBLE,
    bytes BIGINT,
    request_id VARCHAR,
    resource_count BIGINT,
    run_id VARCHAR
)"""

QUARANTINE_DDL = """CREATE TABLE IF NOT EXISTS audit.quarantine (
    export_id VARCHAR,
    source_file VARCHAR,
    source_line BIGINT,
    resource_type VARCHAR,
    reason VARCHAR,
    byte_length BIGINT,
    quarantined_at TIMESTAMPTZ
)"""

EXPORT_ERRORS_DDL = """CREATE TABLE IF NOT EXISTS audit.export_errors (
    export_id VARCHAR,
    source_file VARCHAR,
    source_line BIGINT,
    severity VARCHAR,
    code VARCHAR,
    diagnostics VARCHAR,
    recorded_at TIMESTAMPTZ
)"""

WATERMARKS_DDL = """CREATE TABLE IF NOT EXISTS meta.watermarks (
    source VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    value TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    PRIMARY KEY (source, key)
)"""

FHIR_EXPORTS_DDL = """CREATE TABLE IF NOT EXISTS meta.fhir_exports (
    export_id VARCHAR PRIMARY KEY,
    kind VARCHAR,
    since TIMESTAMPTZ,
    transaction_time TIMESTAMPTZ,
    status VARCHAR,
    files INTEGER,
    resources BIGINT,
    loaded_at TIMESTAMPTZ
)"""

FHIR_DELETIONS_DDL = """CREATE TABLE IF NOT EXISTS meta.fhir_deletions (
    export_id VARCHAR NOT NULL,
    resource_type VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    deleted_at TIMESTAMPTZ,
    applied BOOLEAN,
    recorded_at TIMESTAMPTZ,
    PRIMARY KEY (export_id, resource_type, id)
)"""

TABLE_DDL: tuple[str, ...] = (
    API_CALLS_DDL, QUARANTINE_DDL, EXPORT_ERRORS_DDL, WATERMARKS_DDL, FHIR_EXPORTS_DDL, FHIR_DELETIONS_DDL,
)

#: The columns of audit.api_calls a client provides (run_id is added by the writer).
API_CALL_FIELDS: tuple[str, ...] = ("ts", "system", "method", "path_template", "status", "duration_ms", "bytes",
                                    "request_id", "resource_count")


def api_call_schema() -> pa.Schema:
    """The Arrow schema of :data:`API_CALL_FIELDS` (built on use: pyarrow is imported lazily, so the
    FHIR extract, which never needs it, starts ~0.1 s sooner)."""
    import pyarrow as pa

    return pa.schema([
        ("ts", pa.timestamp("us", tz="UTC")),
        ("system", pa.string()),
        ("method", pa.string()),
        ("path_template", pa.string()),
        ("status", pa.int32()),
        ("duration_ms", pa.float64()),
        ("bytes", pa.int64()),
        ("request_id", pa.string()),
        ("resource_count", pa.int64()),
    ])

DIAGNOSTICS_MAX_CHARS = 200


def settle(con: duckdb.DuckDBPyConnection) -> None:
    """Finish any half-read result on ``con`` (DuckDB 2 refuses ``register`` while one is pending,
    e.g. after a caller's ``fetchone()``)."""
    complete = getattr(con, "complete", None)  # DuckDB >= 2.0
    if complete is not None:
        complete()


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the four schemas and the fixed audit/meta tables if missing (idempotent)."""
    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for ddl in TABLE_DDL:
        con.execute(ddl)


def _utc(value: dt.datetime) -> dt.datetime:
    """Naive datetimes are UTC everywhere in this project (Data View timestamps are NTZ)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def get_watermark(con: duckdb.DuckDBPyConnection, source: str, key: str) -> dt.datetime | None:
    """The stored watermark of ``(source, key)`` as an aware UTC datetime, or None if never set."""
    # fetchall, not fetchone: a half-read result blocks the connection's next register() in DuckDB 2.
    rows = con.execute("SELECT value FROM meta.watermarks WHERE source = ? AND key = ?", [source, key]).fetchall()
    if not rows or rows[0][0] is None:
        return None
    return _utc(rows[0][0])


def set_watermark(con: duckdb.DuckDBPyConnection, source: str, key: str, value: dt.datetime,
                  *, only_forward: bool = True) -> dt.datetime:
    """Store a watermark; returns the value now stored.

    ``only_forward`` (the default) never moves a watermark back: re-loading an old export or an
    old window must not make the next incremental run fetch everything since then again. The row
    is not touched at all when the value does not change, so a re-run changes nothing.
    """
    value = _utc(value)
    guard = "WHERE excluded.value > meta.watermarks.value OR meta.watermarks.value IS NULL" if only_forward \
        else "WHERE excluded.value IS DISTINCT FROM meta.watermarks.value"
    con.execute(
        "INSERT INTO meta.watermarks (source, key, value, updated_at) VALUES (?, ?, ?, now()) "
        f"ON CONFLICT (source, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at {guard}",
        [source, key, value],
    )
    stored = get_watermark(con, source, key)
    assert stored is not None
    return stored


def record_api_calls(con: duckdb.DuckDBPyConnection, calls: pa.Table | Sequence[Mapping[str, object]],
                     run_id: str | None) -> int:
    """Append API call records (an Arrow table or a few dicts with :data:`API_CALL_FIELDS`).

    Unknown fields are dropped rather than stored: the audit table must never grow a column that
    could carry a URL, a header or a body.
    """
    import pyarrow as pa

    if not isinstance(calls, pa.Table):
        calls = pa.Table.from_pylist(
            [{name: call.get(name) for name in API_CALL_FIELDS} for call in calls], schema=api_call_schema())
    if calls.num_rows == 0:
        return 0
    calls = calls.select([n for n in API_CALL_FIELDS if n in calls.column_names])
    view = "_audit_api_calls_in"
    settle(con)
    con.register(view, calls)
    try:
        cols = ", ".join(calls.column_names)
        con.execute(f"INSERT INTO audit.api_calls ({cols}, run_id) SELECT {cols}, ? FROM {view}", [run_id])
    finally:
        con.unregister(view)
    return calls.num_rows


def load_api_calls_ndjson(con: duckdb.DuckDBPyConnection, path: Path, run_id: str | None) -> int:
    """Append the ``api_calls.ndjson`` log a bulk-export client wrote (one JSON object per call).

    Read with DuckDB's JSON reader and explicit columns; fields beyond the audit schema are ignored
    and malformed lines skipped (this is a log about the download, not data to be loaded).
    """
    columns = ("{'ts': 'VARCHAR', 'system': 'VARCHAR', 'method': 'VARCHAR', 'path_template': 'VARCHAR', "
               "'status': 'VARCHAR', 'duration_ms': 'VARCHAR', 'bytes': 'VARCHAR', 'request_id': 'VARCHAR', "
               "'resource_count': 'VARCHAR'}")
    row = con.execute(
        f"""INSERT INTO audit.api_calls
            SELECT try_cast(ts AS TIMESTAMPTZ), system, method, path_template, try_cast(status AS INTEGER),
                   try_cast(duration_ms AS DOUBLE), try_cast(bytes AS BIGINT), request_id,
                   try_cast(resource_count AS BIGINT), ?
            FROM read_json(?, format = 'newline_delimited', columns = {columns}, ignore_errors = true)""",
        [run_id, str(path)],
    ).fetchone()
    return int(row[0]) if row else 0  # DuckDB answers an INSERT with the number of rows written
