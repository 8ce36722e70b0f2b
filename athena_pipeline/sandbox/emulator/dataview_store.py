"""Read-only access to a world's Data View rendering, ``<world>/dataview.duckdb``, for the v1 API.

The file has one schema, ``ATHENAONE``, with upper-case tables named as in
:mod:`athena_pipeline.athena.dataview_catalog` (see ``render_dataview.py``). The emulator's
athenaOne v1 endpoints (``v1.py``) answer from it, so a patient or appointment read over v1
is the same row the Data View extractor loads.

Why it works like ``fhir_store.py``:

- The file is **attached read-only** (``ATTACH ... (READ_ONLY)``) on a private in-memory DuckDB,
  never opened with ``duckdb.connect(path)``: DuckDB caches database instances by path inside a
  process, so after ``sandbox advance`` swaps the file with ``os.replace`` a plain re-connect
  could hand back the *old* file. A fresh in-memory instance always opens the current inode.
- Every access stats the file; a new inode/mtime/size means the world moved on, and the store
  attaches the new file. A query already running keeps reading the snapshot it started on.
- A DuckDB connection is not safe for concurrent use, so each query runs on its own cursor.

Queries return JSON *text* built inside DuckDB (one object per row, aggregated in order), so
no Python loop ever touches a row, whatever the page size.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

#: Catalog alias of the attached file: tables are ``dv.ATHENAONE.<TABLE>``.
CATALOG_ALIAS = "dv"
SCHEMA = "ATHENAONE"


class DataViewUnavailable(RuntimeError):
    """The world has no Data View rendering (yet): v1 endpoints answer 503."""


def table(name: str) -> str:
    """Fully qualified name of a Data View table (logical name, as the sandbox renders it)."""
    if not name.isidentifier() or not name.isupper():
        raise ValueError(f"not a Data View table name: {name!r}")
    return f"{CATALOG_ALIAS}.{SCHEMA}.{name}"


@dataclass(frozen=True)
class JsonPage:
    """One page of a list: the total over all pages and the page's objects as a JSON array text."""

    total: int
    items: str  # '[{...},{...}]'
    count: int  # objects on this page


@dataclass(frozen=True)
class _Snapshot:
    conn: duckdb.DuckDBPyConnection
    file_key: tuple[int, int, int]


def _file_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class DataViewStore:
    """The emulator's view of ``<world>/dataview.duckdb``; reattaches it when the file is replaced."""

    def __init__(self, world_dir: Path | str) -> None:
        self.world_dir = Path(world_dir)
        self.path = self.world_dir / "dataview.duckdb"
        self._lock = threading.Lock()
        self._cursor_lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def _current(self) -> _Snapshot:
        try:
            key = _file_key(self.path)
        except FileNotFoundError:
            raise DataViewUnavailable(
                "the world has no Data View rendering (dataview.duckdb) yet") from None
        with self._lock:
            snap = self._snapshot
            if snap is None or snap.file_key != key:
                conn = duckdb.connect(":memory:")
                conn.execute(f"ATTACH ? AS {CATALOG_ALIAS} (READ_ONLY)", [str(self.path)])
                snap = _Snapshot(conn, key)
                self._snapshot = snap
            return snap

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on the current version of the file (close it when done)."""
        snap = self._current()
        with self._cursor_lock:  # cursor() registers with its parent: do not race it
            return snap.conn.cursor()

    # --- queries -------------------------------------------------------------------------
    def one(self, object_sql: str, from_where_sql: str, params: list) -> str | None:
        """The JSON object text of the first matching row, or None.

        ``object_sql`` is an expression producing one JSON object per row (see ``v1.py``);
        ``from_where_sql`` the ``FROM ... WHERE ...`` clause it reads; values go in ``params``.
        """
        cur = self.cursor()
        try:
            row = cur.execute(f"SELECT ({object_sql})::VARCHAR {from_where_sql} LIMIT 1",
                              params).fetchone()
        finally:
            cur.close()
        return None if row is None else row[0]

    def page(self, object_sql: str, from_where_sql: str, params: list, order_by: str,
             limit: int, offset: int) -> JsonPage:
        """``limit`` objects from ``offset`` (0-based) in ``order_by`` order, plus the total.

        The array text is aggregated in DuckDB with ``string_agg(... ORDER BY ...)``, so a
        5,000-object page is one query and one string, never a Python loop.
        """
        cur = self.cursor()
        try:
            total = cur.execute(f"SELECT count(*) {from_where_sql}", params).fetchone()[0]
            row = cur.execute(
                f"""SELECT coalesce(string_agg(j, ',' ORDER BY n), ''), count(*) FROM (
                        SELECT ({object_sql})::VARCHAR AS j,
                               row_number() OVER (ORDER BY {order_by}) AS n
                        {from_where_sql}
                        ORDER BY {order_by} LIMIT ? OFFSET ?)""",
                [*params, int(limit), int(offset)],
            ).fetchone()
        finally:
            cur.close()
        return JsonPage(total=int(total), items="[" + row[0] + "]", count=int(row[1]))
