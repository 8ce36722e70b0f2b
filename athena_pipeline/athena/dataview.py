"""Reading athenaOne Data View tables as Arrow record batches: the sandbox file or the Snowflake share.

Why a small Protocol with two implementations: the extractor and the raw loader must not care
whether rows come from the sandbox world's ``dataview.duckdb`` or from the practice's Snowflake
share (``ATHENAHEALTH.ATHENAONE.<TABLE>``, spec ``athenahealth-api.md`` §4). Both speak the same
SQL (one ``SELECT *`` with bind parameters) and hand over Arrow, so no row is ever touched in Python.

Rules both implementations follow:

* **Names** go through :func:`dataview_catalog.upstream_name` (the ``DATAVIEW_TABLE_MAP`` hook) and
  are quoted; plain identifiers are upper-cased first (Snowflake stores unquoted names upper-case).
* **Incremental** windows are ``LASTUPDATED >= start AND LASTUPDATED < end`` (half-open, so
  consecutive windows neither overlap nor leave gaps); no ``start`` means a full refresh. Rows
  with a NULL ``LASTUPDATED`` are only seen by a full refresh.
* **Soft-deleted rows are included**, never filtered: the raw layer must see the delete.
* ``context_ids`` restricts ``CONTEXTID`` (a share can hold several practices).
* Timestamps are bound as naive UTC (Data View columns are TIMESTAMP_NTZ). Aware datetimes are
  converted to UTC first.
* Batches are normalised so every batch of every source has one schema per column: integers as
  int64, ``NUMBER(p, 0)`` as int64, timestamps in microseconds. (Snowflake's connector picks
  integer widths and timestamp units per result chunk.)
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from athena_pipeline.athena.dataview_catalog import get_table, upstream_name

DEFAULT_BATCH_SIZE = 100_000
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class DataViewTableMissing(LookupError):
    """The upstream table does not exist (experimental tables may be absent from a real share)."""


@runtime_checkable
class DataViewSource(Protocol):
    """Where Data View rows come from. Table names are logical catalogue names (``CLAIM``)."""

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(column name, upstream type name) of the table, in table order."""
        ...

    def fetch(self, table: str, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
              context_ids: Sequence[int] | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[pa.RecordBatch]:
        """Rows with ``start <= LASTUPDATED < end`` (either bound optional), soft-deleted ones included,
        as record batches of at most ``batch_size`` rows. May yield no batch when nothing matches."""
        ...

    def close(self) -> None:
        ...


# --- shared SQL -------------------------------------------------------------------------------
def quote_identifier(name: str) -> str:
    """``"NAME"``: plain identifiers upper-cased (Snowflake semantics), anything else kept verbatim."""
    if _PLAIN.match(name):
        name = name.upper()
    return '"' + name.replace('"', '""') + '"'


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A bind value for a TIMESTAMP_NTZ comparison."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def build_select(database: str, schema: str, table: str, *, start: dt.datetime | None, end: dt.datetime | None,
                 context_ids: Sequence[int] | None) -> tuple[str, list[Any]]:
    """The one query both sources run: ``SELECT * ... WHERE <window> AND <contexts>`` with ``?`` binds."""
    entry = get_table(table)
    source = ".".join(quote_identifier(p) for p in (database, schema, upstream_name(entry.name)))
    where: list[str] = []
    params: list[Any] = []
    watermark = quote_identifier(entry.watermark_column)
    if start is not None:
        where.append(f"{watermark} >= ?")
        params.append(naive_utc(start))
    if end is not None:
        where.append(f"{watermark} < ?")
        params.append(naive_utc(end))
    if start is not None and end is not None and naive_utc(end) <= naive_utc(start):  # type: ignore[operator]
        raise ValueError(f"empty window for {entry.name}: end {end} is not after start {start}")
    if context_ids is not None:
        ids = [int(c) for c in context_ids]
        if not ids:
            raise ValueError("context_ids is empty: pass None for every practice in the share")
        where.append(f"{quote_identifier('CONTEXTID')} IN ({', '.join('?' for _ in ids)})")
        params.extend(ids)
    sql = f"SELECT * FROM {source}" + (f" WHERE {' AND '.join(where)}" if where else "")
    return sql, params


def normalize_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """One Arrow type per kind of column, whatever the source or the chunk (see module docstring)."""
    fields, arrays, changed = [], [], False
    for field, array in zip(batch.schema, batch.columns, strict=True):
        t = field.type
        target = None
        if (pa.types.is_integer(t) and t != pa.int64()) or (pa.types.is_decimal(t) and t.scale == 0):
            target = pa.int64()
        elif pa.types.is_timestamp(t) and t.unit != "us":
            target = pa.timestamp("us", tz=t.tz)
        if target is not None:
            # Timestamps: truncate sub-microsecond digits rather than fail on them.
            array = pc.cast(array, target, safe=not pa.types.is_timestamp(t))
            field = pa.field(field.name, target, field.nullable)
            changed = True
        fields.append(pa.field(field.name, field.type, field.nullable))
        arrays.append(array)
    if not changed and all(f.metadata is None for f in batch.schema):
        return batch
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


# --- the sandbox file -------------------------------------------------------------------------
class DuckDBDataViewSource:
    """The sandbox's ``dataview.duckdb``, attached READ_ONLY as ``<database>`` in a private connection."""

    def __init__(self, path: Path | str, database: str = "ATHENAHEALTH", schema: str = "ATHENAONE") -> None:
        import duckdb

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Data View file {self.path} not found (generate a sandbox world with "
                                    "`athena-pipeline sandbox generate`, or set DATAVIEW_DUCKDB_PATH)")
        self.database, self.schema = database, schema
        self._con = duckdb.connect()
        path_literal = "'" + str(self.path).replace("'", "''") + "'"
        self._con.execute(f"ATTACH {path_literal} AS {quote_identifier(database)} (READ_ONLY)")

    def _catalog_names(self, table: str) -> tuple[str, str, str]:
        def norm(n: str) -> str:
            return n.upper() if _PLAIN.match(n) else n
        return norm(self.database), norm(self.schema), norm(upstream_name(table))

    def columns(self, table: str) -> list[tuple[str, str]]:
        database, schema, name = self._catalog_names(table)
        # DuckDB identifiers are case-insensitive; compare the same way.
        cols = self._con.execute(
            """SELECT column_name, data_type FROM duckdb_columns()
               WHERE lower(database_name) = lower(?) AND lower(schema_name) = lower(?)
                 AND lower(table_name) = lower(?)
               ORDER BY column_index""", [database, schema, name]).fetchall()
        if not cols:
            raise DataViewTableMissing(f"Data View table {table.upper()} ({database}.{schema}.{name}) does not exist "
                                       f"in {self.path}")
        return [(c, t) for c, t in cols]

    def fetch(self, table: str, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
              context_ids: Sequence[int] | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[pa.RecordBatch]:
        self.columns(table)  # a clear error for a missing table, before any SQL error
        sql, params = build_select(self.database, self.schema, table, start=start, end=end, context_ids=context_ids)
        reader = self._con.sql(sql, params=params).to_arrow_reader(batch_size)
        for batch in reader:
            if batch.num_rows:
                yield normalize_batch(batch)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the Snowflake share ----------------------------------------------------------------------
class SnowflakeDataViewSource:
    """The practice's Data View share in Snowflake, through snowflake-connector-python (Arrow results).

    ``connection_params`` go to ``snowflake.connector.connect`` as they are (account, user,
    password or authenticator, role, warehouse...). The source adds ``paramstyle='qmark'``
    (server-side binds: values never spliced into SQL) and ``arrow_number_to_decimal=True``
    (money stays DECIMAL instead of becoming float).
    """

    def __init__(self, connection_params: Mapping[str, Any], database: str = "ATHENAHEALTH",
                 schema: str = "ATHENAONE") -> None:
        try:
            import snowflake.connector
        except ImportError:  # pragma: no cover - depends on the install
            raise RuntimeError("DATAVIEW_KIND=snowflake needs the Snowflake connector: "
                               "pip install 'athena-pipeline[snowflake]'") from None
        self.database, self.schema = database, schema
        params = {"paramstyle": "qmark", "arrow_number_to_decimal": True, **dict(connection_params)}
        self._con = snowflake.connector.connect(**params)

    def columns(self, table: str) -> list[tuple[str, str]]:
        name = upstream_name(table)
        schema = self.schema.upper() if _PLAIN.match(self.schema) else self.schema
        cur = self._con.cursor()
        try:
            cur.execute(
                f"SELECT COLUMN_NAME, DATA_TYPE FROM {quote_identifier(self.database)}.INFORMATION_SCHEMA.COLUMNS "
                "WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                [schema, name.upper() if _PLAIN.match(name) else name])
            cols = [(str(c), str(t)) for c, t in cur.fetchall()]
        finally:
            cur.close()
        if not cols:
            raise DataViewTableMissing(f"Data View table {table.upper()} ({self.database}.{schema}.{name}) does not "
                                       "exist in the share, or this role cannot see it")
        return cols

    def fetch(self, table: str, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
              context_ids: Sequence[int] | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[pa.RecordBatch]:
        sql, params = build_select(self.database, self.schema, table, start=start, end=end, context_ids=context_ids)
        cur = self._con.cursor()
        try:
            cur.execute(sql, params)
            try:
                chunks = cur.fetch_arrow_batches(force_microsecond_precision=True)
            except TypeError:  # connectors before 4.x have no force_microsecond_precision
                chunks = cur.fetch_arrow_batches()
            for chunk in chunks:
                # Result chunks are sized by Snowflake; re-cut them to the caller's batch size.
                for batch in chunk.to_batches(max_chunksize=batch_size):
                    if batch.num_rows:
                        yield normalize_batch(batch)
        finally:
            cur.close()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def source_from_settings(settings: Any) -> DataViewSource:
    """The source ``settings.dataview_kind`` names (``duckdb``: the sandbox file; ``snowflake``: the share)."""
    if settings.dataview_kind == "duckdb":
        return DuckDBDataViewSource(settings.dataview_duckdb_path, settings.dataview_database,
                                    settings.dataview_schema)
    if settings.dataview_kind == "snowflake":
        missing = [env for env, value in (("SNOWFLAKE_ACCOUNT", settings.snowflake_account),
                                          ("SNOWFLAKE_USER", settings.snowflake_user)) if not value]
        if missing:
            raise ValueError(f"DATAVIEW_KIND=snowflake needs {' and '.join(missing)}")
        params = {"account": settings.snowflake_account, "user": settings.snowflake_user,
                  "password": settings.snowflake_password, "role": settings.snowflake_role,
                  "warehouse": settings.snowflake_warehouse}
        return SnowflakeDataViewSource({k: v for k, v in params.items() if v},
                                       settings.dataview_database, settings.dataview_schema)
    raise ValueError(f"DATAVIEW_KIND must be duckdb or snowflake, got {settings.dataview_kind!r}")
