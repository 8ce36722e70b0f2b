"""Opening the warehouse: schemas, pragmas, and what a user sees when another process holds the lock."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from athena_pipeline.warehouse.audit import get_watermark, record_api_calls, set_watermark
from athena_pipeline.warehouse.connection import WarehouseBusyError, connect, ensure_schemas

HOLDER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
""")


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """Another process that opens the warehouse read-write and keeps it open for 30 s."""
    path = tmp_path / "data" / "warehouse.duckdb"
    with connect(path) as con:
        ensure_schemas(con)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "30"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    try:
        yield path, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_connect_creates_the_folder_and_the_schemas_idempotently(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "warehouse.duckdb"
    with connect(path) as con:
        ensure_schemas(con)
        ensure_schemas(con)  # a second call changes nothing and does not fail
        schemas = {s for (s,) in con.execute("SELECT schema_name FROM duckdb_schemas() "
                                             "WHERE database_name = 'warehouse'").fetchall()}
        assert {"raw_fhir", "raw_dataview", "audit", "meta"} <= schemas
        tables = {f"{s}.{t}" for s, t in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'warehouse'").fetchall()}
        assert tables == {"audit.api_calls", "audit.quarantine", "audit.export_errors", "meta.watermarks",
                          "meta.fhir_exports", "meta.fhir_deletions"}
        assert con.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
    assert path.is_file()


def test_read_only_on_a_missing_file_says_nothing_was_loaded(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing has been loaded"), \
            connect(tmp_path / "absent.duckdb", read_only=True):
        pass
    assert not (tmp_path / "absent.duckdb").exists()


def test_memory_limit_is_applied_and_checked(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb", memory_limit="300MB") as con:
        # DuckDB reports 300 MB (10^6 bytes) in MiB.
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() == ("286.1 MiB",)
    with pytest.raises(ValueError, match="memory_limit"), connect(tmp_path / "w.duckdb", memory_limit="lots; x"):
        pass


@pytest.mark.parametrize("read_only", [False, True])
def test_a_second_process_holding_the_lock_gives_a_clear_error(holder: tuple[Path, subprocess.Popen],
                                                               read_only: bool) -> None:
    path, proc = holder
    started = time.monotonic()
    with pytest.raises(WarehouseBusyError) as info, connect(path, read_only=read_only):
        pass
    assert time.monotonic() - started < 5  # no silent waiting by default
    message = str(info.value)
    assert str(path) in message
    assert f"process {proc.pid}" in message and info.value.holder_pid == proc.pid
    assert "pool 'warehouse'" in message and "Dagster" in message and "dbt" in message
    assert ("read it" if read_only else "write it") in message


def test_waiting_for_the_lock_succeeds_once_the_holder_leaves(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    with connect(path):
        pass
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        with pytest.raises(WarehouseBusyError), connect(path, wait_seconds=0.2):
            pass
        with connect(path, wait_seconds=30) as con:
            assert con.execute("SELECT 42").fetchone() == (42,)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_watermarks_only_move_forward_and_api_calls_keep_only_audit_fields(tmp_path: Path) -> None:
    with connect(tmp_path / "w.duckdb") as con:
        ensure_schemas(con)
        assert get_watermark(con, "dataview", "claim") is None
        t1, t0 = dt.datetime(2026, 2, 1), dt.datetime(2026, 1, 1)
        assert set_watermark(con, "dataview", "claim", t1) == t1.replace(tzinfo=dt.UTC)
        assert set_watermark(con, "dataview", "claim", t0) == t1.replace(tzinfo=dt.UTC)
        assert set_watermark(con, "dataview", "claim", t0, only_forward=False) == t0.replace(tzinfo=dt.UTC)
        # Aware values are stored as the same instant.
        plus2 = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        assert set_watermark(con, "fhir", "default", plus2) == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)

        n = record_api_calls(con, [{"ts": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "system": "caspio",
                                    "method": "POST", "path_template": "/v3/tables/{table}/records", "status": 201,
                                    "duration_ms": 3.5, "bytes": 10, "request_id": "x", "resource_count": 1,
                                    "url": "https://secret.example/?token=abc", "body": "{\"name\": \"Jane\"}"}],
                             run_id="run-1")
        assert n == 1
        columns = [c for (c,) in con.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = 'audit' "
                                             "AND table_name = 'api_calls'").fetchall()]
        assert "url" not in columns and "body" not in columns
        assert con.execute("SELECT system, status, run_id FROM audit.api_calls").fetchall() == [
            ("caspio", 201, "run-1")]
