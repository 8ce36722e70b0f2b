"""Read-only access to a world's FHIR rendering, ``<world>/fhir.duckdb``.

Tables (written by the renderer)::

    resources(resource_type, id, patient_id, last_updated TIMESTAMP, resource VARCHAR)
    deletions(resource_type, id, deleted_at TIMESTAMP)
    world_meta(key, value)          -- 'practice_id', 'clock' (naive UTC ISO), ...

Why it works this way:

- The file is opened **read-only** through ``ATTACH`` on a private in-memory DuckDB, never
  with ``duckdb.connect(path)``: DuckDB caches database instances by path inside a process,
  so after ``sandbox advance`` swaps the file with ``os.replace`` a plain re-connect could
  hand back the *old* file. ATTACH on a fresh in-memory instance always opens the current
  inode, and the in-memory side is writable for the temp tables bulk export needs.
- Every access stats the file; a new inode/mtime/size means the world moved on, so the
  store opens the new file. Old connections are not closed explicitly: a running export or
  query keeps reading the snapshot it started on, and the garbage collector closes it after.
- A DuckDB connection is not safe for concurrent use, so each query runs on its own
  ``cursor()`` (a sibling connection to the same instance).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from athena_pipeline.sandbox.world import World

_CURSOR_LOCK = threading.Lock()


class StoreUnavailable(RuntimeError):
    """The world has no FHIR rendering (yet): the emulator answers 503."""


@dataclass(frozen=True)
class Snapshot:
    """One opened version of fhir.duckdb and the facts about it the emulator needs often."""

    conn: duckdb.DuckDBPyConnection
    practice_id: str
    clock: dt.datetime  # naive UTC: the world's "now"
    file_key: tuple[int, int, int]

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with _CURSOR_LOCK:  # cursor() registers with its parent: do not race it
            return self.conn.cursor()


def open_snapshot(path: Path, *, threads: int | None = None,
                  temp_directory: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB with ``path`` attached read-only as catalog ``fhir``."""
    conn = duckdb.connect(":memory:")
    if threads is not None:
        conn.execute(f"SET threads = {int(threads)}")
    if temp_directory is not None:
        conn.execute("SET temp_directory = ?", [str(temp_directory)])
    conn.execute("ATTACH ? AS fhir (READ_ONLY)", [str(path)])
    return conn


def _file_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def parse_naive_utc(value: str) -> dt.datetime:
    """ISO timestamp to naive UTC (an offset, if any, is applied)."""
    parsed = dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def world_meta(conn: duckdb.DuckDBPyConnection, world_dir: Path) -> tuple[str, dt.datetime]:
    """(practice id, world clock) of the attached rendering; world.json fills any gap."""
    meta = dict(conn.execute("SELECT key, value FROM fhir.world_meta").fetchall())
    practice_id, clock = meta.get("practice_id"), meta.get("clock")
    if practice_id is None or clock is None:
        world = World.load(world_dir)
        practice_id = practice_id or str(world.practice_id)
        clock = clock or world.clock.isoformat()
    return str(practice_id), parse_naive_utc(str(clock))


@dataclass(frozen=True)
class ReadResult:
    resource: str | None  # JSON text, None when absent
    last_updated: dt.datetime | None
    deleted: bool


@dataclass(frozen=True)
class SearchPage:
    total: int
    rows: list[tuple[str, str]]  # (id, resource JSON text), ordered by id
    has_more: bool


class FhirStore:
    """The emulator's view of ``<world>/fhir.duckdb``; reopens it when the file is replaced."""

    def __init__(self, world_dir: Path | str) -> None:
        self.world_dir = Path(world_dir)
        self.path = self.world_dir / "fhir.duckdb"
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        """The current version of the file, reopened if it changed since the last call."""
        try:
            key = _file_key(self.path)
        except FileNotFoundError:
            raise StoreUnavailable("the world has no FHIR rendering (fhir.duckdb) yet") from None
        with self._lock:
            snap = self._snapshot
            if snap is None or snap.file_key != key:
                snap = self._open(key)
                self._snapshot = snap
            return snap

    def _open(self, key: tuple[int, int, int]) -> Snapshot:
        conn = open_snapshot(self.path)
        practice_id, clock = world_meta(conn, self.world_dir)
        return Snapshot(conn=conn, practice_id=practice_id, clock=clock, file_key=key)

    # --- queries ---------------------------------------------------------------------------
    def read(self, resource_type: str, resource_id: str) -> ReadResult:
        cur = self.snapshot().cursor()
        try:
            row = cur.execute(
                "SELECT resource, last_updated FROM fhir.resources "
                "WHERE resource_type = ? AND id = ? ORDER BY last_updated DESC LIMIT 1",
                [resource_type, resource_id],
            ).fetchone()
            if row is not None:
                return ReadResult(row[0], row[1], False)
            gone = cur.execute(
                "SELECT 1 FROM fhir.deletions WHERE resource_type = ? AND id = ? LIMIT 1",
                [resource_type, resource_id],
            ).fetchone()
            return ReadResult(None, None, gone is not None)
        finally:
            cur.close()

    def search(self, resource_type: str, *, ids: list[str] | None = None,
               patients: list[str] | None = None,
               last_updated: list[tuple[str, dt.datetime]] | None = None,
               after_id: str | None = None, count: int = 50) -> SearchPage:
        """Resources of one type matching all filters, ``count`` at a time ordered by id.

        ``last_updated`` holds (SQL operator, naive UTC bound) pairs, ANDed. Paging is keyset
        (``id > after_id``) so pages stay consistent while the world is re-rendered.
        """
        where = ["resource_type = ?"]
        params: list = [resource_type]
        if ids is not None:
            where.append("list_contains(?, id)")
            params.append(ids)
        if patients is not None:
            column = "id" if resource_type == "Patient" else "patient_id"
            where.append(f"list_contains(?, {column})")
            params.append(patients)
        for op, bound in last_updated or []:
            if op not in ("<", "<=", ">", ">=", "="):
                raise ValueError(f"bad operator {op!r}")
            where.append(f"last_updated {op} ?")
            params.append(bound)
        cond = " AND ".join(where)
        cur = self.snapshot().cursor()
        try:
            total = cur.execute(f"SELECT count(*) FROM fhir.resources WHERE {cond}",
                                params).fetchone()[0]
            page_cond, page_params = cond, list(params)
            if after_id is not None:
                page_cond += " AND id > ?"
                page_params.append(after_id)
            rows = cur.execute(
                f"SELECT id, resource FROM fhir.resources WHERE {page_cond} ORDER BY id LIMIT ?",
                page_params + [count + 1],
            ).fetchall() if count > 0 else []
        finally:
            cur.close()
        return SearchPage(total=total, rows=rows[:count], has_more=len(rows) > count)
