"""Row hashes and the keyed diff of a mart against what Caspio holds, as set-based DuckDB SQL.

Why hash what Caspio *returns* rather than what the mart holds: the same hash must come out of the
warehouse (the mart, before publishing) and out of a read-back of the Caspio table (reconciliation),
so both sides are first put in the **payload shape** (each field typed as it travels in Caspio's
JSON: dates as ``YYYY-MM-DDTHH:MM:SS`` text, money and numbers as doubles, Yes/No as booleans), then
the same SQL turns each field into a canonical text that survives the round trip:

============  ==========================================  =============================================
Caspio type   payload (what we send)                      canonical text
============  ==========================================  =============================================
STRING, TEXT  the text                                    the text; '' and NULL are the same
INTEGER       BIGINT                                      decimal digits
NUMBER        DOUBLE (NULL when not finite)               rounded to 9 decimals (float noise ignored)
CURRENCY      DOUBLE rounded to 4 decimals (money)        rounded to 4 decimals
DATE/TIME     ``YYYY-MM-DDTHH:MM:SS`` (UTC, no zone)      the same, whatever precision came back
YES/NO        BOOLEAN                                     true/false; NULL is false (Caspio's Yes/No)
============  ==========================================  =============================================

``row_hash = md5(to_json([canonical texts in field order]))``: a JSON list keeps NULLs and separators
unambiguous. The diff itself is four anti/semi-joins on ``row_key``; nothing here loops over rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from athena_pipeline.warehouse.audit import settle

#: Caspio type token -> DuckDB type of its payload column.
PAYLOAD_TYPES: dict[str, str] = {
    "STRING": "VARCHAR", "TEXT": "VARCHAR", "INTEGER": "BIGINT", "NUMBER": "DOUBLE",
    "CURRENCY": "DOUBLE", "DATE/TIME": "VARCHAR", "YES/NO": "BOOLEAN",
}
ARROW_TYPES: dict[str, pa.DataType] = {
    "STRING": pa.string(), "TEXT": pa.string(), "INTEGER": pa.int64(), "NUMBER": pa.float64(),
    "CURRENCY": pa.float64(), "DATE/TIME": pa.string(), "YES/NO": pa.bool_(),
}
DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class PublishedField:
    """One Caspio field of a published table and where its value comes from in the mart.

    ``source`` is a SQL expression over the mart's columns (usually one quoted column name). The
    row key is not one of them: it is computed from the grain (:func:`specs.row_key_sql`).
    """

    name: str
    caspio_type: str
    source: str

    def __post_init__(self) -> None:
        if self.caspio_type not in PAYLOAD_TYPES:
            raise ValueError(f"field {self.name}: Caspio type {self.caspio_type!r} cannot be published "
                             f"(one of {', '.join(PAYLOAD_TYPES)})")


def quote_ident(name: str) -> str:
    """A DuckDB identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def payload_sql(field: PublishedField) -> str:
    """The mart expression of ``field`` cast to its payload shape (see the module table)."""
    src = field.source
    t = field.caspio_type
    if t in ("STRING", "TEXT"):
        return f"CAST({src} AS VARCHAR)"
    if t == "INTEGER":
        return f"CAST({src} AS BIGINT)"
    if t == "NUMBER":
        return f"(CASE WHEN isfinite(CAST({src} AS DOUBLE)) THEN CAST({src} AS DOUBLE) END)"
    if t == "CURRENCY":
        return f"(CASE WHEN isfinite(CAST({src} AS DOUBLE)) THEN round(CAST({src} AS DOUBLE), 4) + 0.0 END)"
    if t == "DATE/TIME":
        return f"strftime(CAST({src} AS TIMESTAMP), '{DATETIME_FORMAT}')"
    return f"CAST({src} AS BOOLEAN)"  # YES/NO


def canonical_sql(column: str, caspio_type: str) -> str:
    """Canonical text of a payload-shaped column (the same SQL for the mart and for a read-back)."""
    c = quote_ident(column)
    if caspio_type in ("STRING", "TEXT"):
        return f"nullif(CAST({c} AS VARCHAR), '')"
    if caspio_type == "INTEGER":
        return f"CAST(CAST({c} AS BIGINT) AS VARCHAR)"
    if caspio_type == "NUMBER":
        return f"CAST(round(CAST({c} AS DOUBLE), 9) + 0.0 AS VARCHAR)"
    if caspio_type == "CURRENCY":
        return f"CAST(round(CAST({c} AS DOUBLE), 4) + 0.0 AS VARCHAR)"
    if caspio_type == "DATE/TIME":
        return (f"coalesce(strftime(try_cast(CAST({c} AS VARCHAR) AS TIMESTAMP), '{DATETIME_FORMAT}'), "
                f"CAST({c} AS VARCHAR))")
    return f"CAST(coalesce(CAST({c} AS BOOLEAN), false) AS VARCHAR)"  # YES/NO


def hash_sql(fields: Sequence[PublishedField]) -> str:
    """``md5`` of the JSON list of the fields' canonical texts, in field order."""
    parts = ", ".join(f"CAST({canonical_sql(f.name, f.caspio_type)} AS VARCHAR)" for f in fields)
    return f"md5(to_json([{parts}]))" if fields else "md5('[]')"


class DuplicateRowKeys(ValueError):
    """The mart has two rows with the same row key: its grain is not unique."""


def stage_mart(con: duckdb.DuckDBPyConnection, relation: str, key_sql: str,
               fields: Sequence[PublishedField], name: str, *, table: str) -> int:
    """Temp table ``name(row_key, row_hash, <fields>)`` of the mart in payload shape; returns its rows.

    Raises :class:`DuplicateRowKeys` (naming the table and the count, never a key) when the row key
    is not unique, or NULL.
    """
    cols = ", ".join(f"{payload_sql(f)} AS {quote_ident(f.name)}" for f in fields)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {name} AS
        WITH p AS (SELECT CAST({key_sql} AS VARCHAR) AS row_key{', ' + cols if cols else ''} FROM {relation})
        SELECT row_key, {hash_sql(fields)} AS row_hash{''.join(', ' + quote_ident(f.name) for f in fields)} FROM p""")
    total, distinct, nulls = con.execute(
        f"SELECT count(*), count(DISTINCT row_key), count(*) FILTER (WHERE row_key IS NULL OR row_key = '') "
        f"FROM {name}").fetchall()[0]
    if distinct != total or nulls:
        raise DuplicateRowKeys(
            f"{table}: {total - distinct} duplicate and {nulls} empty row key(s) among {total} rows of "
            f"{relation}; its meta.grain in the dbt YAML does not identify a row. Fix the grain or the model.")
    return int(total)


def hash_payload(con: duckdb.DuckDBPyConnection, rows: str, fields: Sequence[PublishedField],
                 key_field: str, name: str) -> None:
    """Temp table ``name(pk_id, row_key, row_hash)`` of payload-shaped rows (e.g. Caspio's read-back).

    ``rows`` is a relation with ``key_field``, ``PK_ID`` and the fields, typed as
    ``reconcile.rows_to_arrow`` makes them.
    """
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {name} AS
        SELECT "PK_ID" AS pk_id, CAST({quote_ident(key_field)} AS VARCHAR) AS row_key,
               {hash_sql(fields)} AS row_hash
        FROM {rows}""")


def diff_sql(source: str, target: str) -> dict[str, str]:
    """The four sets as SQL over ``source(row_key, row_hash, ...)`` and ``target(row_key, row_hash)``.

    ``inserts``: in source, not in target; ``updates``: in both, hash differs; ``deletes``: in target,
    not in source; ``unchanged``: same key and hash. Target keys must be unique.
    """
    return {
        "inserts": f"SELECT s.* FROM {source} s ANTI JOIN {target} t ON t.row_key = s.row_key",
        "updates": (f"SELECT s.* FROM {source} s SEMI JOIN {target} t "
                    "ON t.row_key = s.row_key AND t.row_hash IS DISTINCT FROM s.row_hash"),
        "deletes": f"SELECT t.row_key FROM {target} t ANTI JOIN {source} s ON s.row_key = t.row_key",
        "unchanged": (f"SELECT s.row_key, s.row_hash FROM {source} s SEMI JOIN {target} t "
                      "ON t.row_key = s.row_key AND t.row_hash = s.row_hash"),
    }


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> pa.Table:
    """A query's result as one Arrow table."""
    settle(con)
    return con.sql(sql, params=list(params) or None).to_arrow_table()


def count(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> int:
    return int(con.execute(f"SELECT count(*) FROM ({sql})", list(params)).fetchall()[0][0])


def checksum_sql(relation: str) -> str:
    """Order-independent content checksum of ``relation(row_key, row_hash)``: (rows, md5 of the sorted pairs)."""
    return (f"SELECT count(*) AS n, md5(coalesce(string_agg(row_key || ':' || row_hash, ',' ORDER BY row_key), '')) "
            f"AS checksum FROM {relation}")


def checksum(con: duckdb.DuckDBPyConnection, relation: str) -> tuple[int, str]:
    n, digest = con.execute(checksum_sql(relation)).fetchall()[0]
    return int(n), str(digest)


def register_arrow(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Register an Arrow table as a view (after settling any half-read result)."""
    settle(con)
    con.register(name, table)
