"""Open a SQLite file in WAL mode, safely when several threads or processes open it at once.

Why this exists: switching a *new* database to WAL needs an exclusive lock, and SQLite may answer
``database is locked`` at once (without waiting for its busy timeout) when another connection is
doing the same. WAL is a property of the file, so only the first switch matters; we retry it
briefly. Both the pipeline's inbox and the emulator's event store use this.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def connect(path: Path | str, *, synchronous: str = "NORMAL", busy_timeout: float = 30.0,
            attempts: int = 100) -> sqlite3.Connection:
    """An autocommit connection (``isolation_level=None``) with WAL, ``synchronous`` and a busy timeout."""
    con = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        con.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        for attempt in range(attempts):
            try:
                mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.02)
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not switch {Path(path).name} to WAL (got {mode})")
        con.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        con.close()
        raise
    return con
