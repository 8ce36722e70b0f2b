"""Opening the DuckDB warehouse: one place for pragmas, the single-writer lock and the schemas.

Why a wrapper at all: DuckDB allows ONE read-write process per file (or many read-only ones,
but not while a writer holds it). When a Dagster step, a dbt run and a CLI loader collide, DuckDB
says ``IO Error: Could not set lock on file ...``, which tells a user nothing about what to do.
:func:`connect` turns that into :class:`WarehouseBusyError` naming the file, the holder's PID and
the fix (every warehouse writer runs in the Dagster pool ``warehouse``, limit 1; see
design.md and dagster-notes.md §6). Open late, close early: use it as a context manager.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from athena_pipeline.warehouse.audit import ensure_tables

WAREHOUSE_POOL = "warehouse"

_LOCK_MARKERS = ("Could not set lock", "Conflicting lock")
_PID = re.compile(r"\(PID (\d+)\)")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


class WarehouseBusyError(RuntimeError):
    """Another process holds the warehouse file's lock (DuckDB: one writer per file)."""

    def __init__(self, path: Path, holder_pid: int | None, read_only: bool) -> None:
        self.path = path
        self.holder_pid = holder_pid
        holder = f"process {holder_pid}" if holder_pid else "another process"
        mode = "read it" if read_only else "write it"
        super().__init__(
            f"The warehouse {path} is busy: {holder} holds its lock, so this process cannot {mode}. "
            "DuckDB allows one writer per file (and no readers while it writes). The holder is "
            "usually a Dagster run, a dbt command or another `athena-pipeline` load. Every step "
            f"that opens the warehouse must run in the Dagster pool '{WAREHOUSE_POOL}' (limit 1); "
            "outside Dagster, wait for the other process to finish and retry."
        )


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and any(m in str(exc) for m in _LOCK_MARKERS)


@contextmanager
def connect(path: Path | str, read_only: bool = False, *, wait_seconds: float = 0.0,
            memory_limit: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse file, yield the connection, close it on exit.

    * creates the parent directory (a fresh checkout has no ``data/``);
    * ``TimeZone = 'UTC'``: every TIMESTAMPTZ is shown and compared in UTC, and naive
      timestamps (Data View's TIMESTAMP_NTZ) are read as UTC, the same in every process;
    * a lock conflict raises :class:`WarehouseBusyError`, after retrying for ``wait_seconds``;
    * ``memory_limit`` (e.g. ``'1GB'``) caps DuckDB's buffer pool. The loaders stream their files,
      so a limit bounds a load's memory whatever the file sizes; without one DuckDB may use up to
      80% of RAM as cache, which is fast but not what you want next to other processes.

    Read-only opens of a missing file raise ``FileNotFoundError`` (DuckDB would create nothing
    and fail with a less helpful message).
    """
    path = Path(path)
    if memory_limit is not None and not _MEMORY.match(memory_limit.strip()):
        raise ValueError(f"memory_limit must look like '512MB' or '2GB', got {memory_limit!r}")
    if read_only and not path.exists():
        raise FileNotFoundError(f"{path} does not exist: nothing has been loaded into the warehouse yet")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise
            if time.monotonic() >= deadline:
                match = _PID.search(str(exc))
                raise WarehouseBusyError(path, int(match.group(1)) if match else None, read_only) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        con.execute("SET TimeZone = 'UTC'")
        if memory_limit is not None:
            con.execute(f"SET memory_limit = '{memory_limit.strip()}'")
        yield con
    finally:
        con.close()


def ensure_schemas(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``raw_fhir``, ``raw_dataview``, ``audit`` and ``meta`` and their fixed tables (idempotent).

    Raw tables themselves are created by the loaders, which know their columns.
    """
    ensure_tables(con)
