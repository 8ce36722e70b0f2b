"""DuckDB connections for building a world: bounded memory, spilling to the world's own folder.

Why: a 150-provider practice has ~10x the rows of the default one. With a memory limit DuckDB
spills sorts, joins and aggregates to disk instead of growing with the practice. The default
15-provider world peaks under 3 GiB either way; the limit matters for much larger practices. ``SANDBOX_MEMORY_LIMIT`` overrides the limit.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

DEFAULT_MEMORY_LIMIT = "8GB"


def connect_for_build(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    con = duckdb.connect(str(path), read_only=read_only)
    spill = path.parent / ".duckdb_spill"
    con.execute(f"SET memory_limit = '{os.environ.get('SANDBOX_MEMORY_LIMIT', DEFAULT_MEMORY_LIMIT)}'")
    con.execute(f"SET temp_directory = '{spill.as_posix()}'")
    con.execute("SET preserve_insertion_order = true")
    con.execute("SET enable_progress_bar = false")
    return con
