"""`athena-pipeline extract` end to end against the athenahealth emulator on loopback.

What a user notices: one command brings the warehouse up to date; faults on the wire (429 storms,
5xx and transient polls, slow and truncated downloads, expired files, a token expiring mid-export)
cost time, not rows; the second run is incremental and applies updates and deletions; and a run
killed with SIGKILL mid-download or mid-load, then re-run, ends with the same rows as a run nobody
killed, without asking the server for a second export.

Compared content: every column of every ``raw_fhir``/``raw_dataview`` table except the load stamps
``loaded_at``, ``export_id`` (FHIR) and ``_loaded_at``, ``_run_id`` (Data View), which name the run
that wrote a row; the incremental test also leaves out ``source_file``/``source_line`` (the
incremental and the full export put a resource in different files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from athena_pipeline.cli import main
from athena_pipeline.sandbox.server import RunningServer, run_in_thread
from tests.athena import emulator_requests
from tests.extract_support import (
    ADVANCE_DAYS,
    PROVENANCE_COLUMNS,
    clean_environ,
    content_fingerprints,
    copy_world,
    emulator_config,
    generate,
    pipeline_env,
    query,
    raw_counts,
    world_counts,
)

KICKOFF = "/Group/{group_id}/$export"
EXE = str(Path(sys.executable).with_name("athena-pipeline"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("extract_cli") / "world")


@pytest.fixture(scope="module")
def server(world: Path) -> Iterator[RunningServer]:
    srv = run_in_thread(world, config=emulator_config())
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _no_faults(server: RunningServer) -> Iterator[None]:
    server.faults.reset()
    yield
    server.faults.reset()


def cli(env: dict[str, str], *args: str):
    """Run the CLI in-process with exactly these pipeline variables."""
    from athena_pipeline.settings import ENV_VARS

    full = {name: None for name in ENV_VARS}
    full.update(env)
    return CliRunner().invoke(main, ["--log-level", "warning", *args], env=full)


@pytest.fixture(scope="module")
def clean_run(world: Path, server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted, fault-free `extract fhir` + `extract dataview`: the reference content."""
    state = tmp_path_factory.mktemp("clean")
    env = pipeline_env(server, world, state)
    for args in (["extract", "fhir"], ["extract", "dataview"]):
        result = cli(env, *args)
        assert result.exit_code == 0, result.output
    db = state / "warehouse.duckdb"
    return {"db": db, "fingerprints": content_fingerprints(db), "output": result.output}


def test_extract_fhir_loads_every_resource_and_prints_a_summary(world: Path, clean_run: dict) -> None:
    counts = raw_counts(clean_run["db"])
    assert counts == {t.lower(): n for t, n in world_counts(world).items()}
    assert set(raw_counts(clean_run["db"], "raw_dataview")) == {
        t for (t,) in query(world / "dataview.duckdb", "SELECT lower(table_name) FROM duckdb_tables()")}
    (watermark,) = query(clean_run["db"], "SELECT value FROM meta.watermarks WHERE source = 'fhir'")[0]
    assert watermark.date().isoformat() == json.loads((world / "world.json").read_text())["current_date"]


def test_faults_on_the_wire_cost_time_not_rows(world: Path, server: RunningServer, clean_run: dict,
                                               tmp_path: Path) -> None:
    server.faults.configure(
        "token_429=1,kickoff_429=2,poll_429=1,poll_transient=2,poll_500=1,file_429=4,slow_file=2:1.0,"
        "truncate=1,truncate_clean=1,files_expired=1,bearer_expired=1,retry_after_seconds=0")
    env = pipeline_env(server, world, tmp_path)
    with emulator_requests() as reqs:
        result = cli(env, "extract", "fhir")
    assert result.exit_code == 0, result.output
    for fault in ("token_429", "kickoff_429", "poll_transient", "poll_500", "file_429", "truncate",
                  "truncate_clean", "files_expired", "bearer_expired", "slow_file"):
        assert server.faults.fired(fault) >= 1, fault
    assert reqs.count("GET", KICKOFF, 202) == 2  # the expired files forced one fresh export
    assert cli(env, "extract", "dataview").exit_code == 0
    assert content_fingerprints(tmp_path / "warehouse.duckdb") == clean_run["fingerprints"]


def test_second_run_is_incremental_with_updates_and_deletes(world: Path, tmp_path: Path) -> None:
    own = copy_world(world, tmp_path / "world")
    srv = run_in_thread(own, config=emulator_config())
    try:
        env = pipeline_env(srv, own, tmp_path / "incremental")
        assert cli(env, "extract", "fhir").exit_code == 0
        assert cli(env, "extract", "dataview").exit_code == 0
        (t0,) = query(tmp_path / "incremental" / "warehouse.duckdb",
                      "SELECT value FROM meta.watermarks WHERE source = 'fhir'")[0]

        from athena_pipeline.sandbox.advance import advance_world

        advance_world(own, ADVANCE_DAYS)
        # The generator deletes mostly what it created days before (a booked then cancelled visit),
        # i.e. after our first load; delete one resource the warehouse already holds as well.
        loaded_id = delete_resource(own, "Observation")
        deleted = query(own / "fhir.duckdb", "SELECT resource_type, id FROM deletions WHERE deleted_at > ?",
                        [t0.replace(tzinfo=None)])
        assert ("Observation", loaded_id) in deleted and len(deleted) >= 2, deleted

        with emulator_requests() as reqs:
            second = cli(env, "extract", "fhir")
        assert second.exit_code == 0, second.output
        assert re.search(r"export \S+: incremental since \S+Z, new;", second.output), second.output
        assert reqs.count("GET", KICKOFF) == 1
        updated = sum(int(m) for m in re.findall(r"^\s+\w+\s+[\d,]+\s+[\d,]+\s+([\d,]+)", second.output,
                                                  flags=re.MULTILINE))
        assert updated > 0, second.output
        incremental_db = tmp_path / "incremental" / "warehouse.duckdb"
        for rtype, rid in deleted:
            assert not query(incremental_db, f'SELECT 1 FROM raw_fhir."{rtype.lower()}" WHERE id = ?', [rid])
        # applied to the row we held; kept as a tombstone for the ones we never saw
        assert query(incremental_db, "SELECT resource_type, id FROM meta.fhir_deletions WHERE applied") \
            == [("Observation", loaded_id)]
        assert query(incremental_db, "SELECT count(*) FROM meta.fhir_deletions")[0][0] == len(deleted)
        third = cli(env, "extract", "dataview")
        assert third.exit_code == 0, third.output

        fresh = pipeline_env(srv, own, tmp_path / "fresh")
        assert cli(fresh, "extract", "fhir", "--full").exit_code == 0
        assert cli(fresh, "extract", "dataview", "--full-refresh").exit_code == 0
    finally:
        srv.stop()
    assert content_fingerprints(incremental_db, exclude=PROVENANCE_COLUMNS) == \
        content_fingerprints(tmp_path / "fresh" / "warehouse.duckdb", exclude=PROVENANCE_COLUMNS)


def delete_resource(world: Path, resource_type: str) -> str:
    """Delete one resource from the world's FHIR rendering as of its clock, as the server would;
    replaced atomically, like ``sandbox advance`` does, so the running emulator picks it up."""
    edit = world / "fhir.edit.duckdb"
    shutil.copy2(world / "fhir.duckdb", edit)
    con = duckdb.connect(str(edit))
    try:
        rid, clock = con.execute(
            "SELECT id, (SELECT max(last_updated) FROM resources) FROM resources WHERE resource_type = ? "
            "ORDER BY last_updated, id LIMIT 1", [resource_type]).fetchone()
        con.execute("DELETE FROM resources WHERE resource_type = ? AND id = ?", [resource_type, rid])
        con.execute("INSERT INTO deletions (resource_type, id, deleted_at) VALUES (?, ?, ?)",
                    [resource_type, rid, clock])
    finally:
        con.close()
    os.replace(edit, world / "fhir.duckdb")
    return rid


def _start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([EXE, "--log-level", "info", "extract", "fhir"], env=clean_environ(dict(os.environ), env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return err


def test_killed_mid_download_resumes_without_a_second_export(world: Path, server: RunningServer,
                                                             clean_run: dict, tmp_path: Path) -> None:
    server.faults.set("slow_file", 10_000, arg=0.15)
    env = pipeline_env(server, world, tmp_path)
    with emulator_requests() as reqs:
        proc = _start(env)
        deadline = time.monotonic() + 60
        try:
            while True:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the export never got going"
                states = list((tmp_path / "landing").glob("fhir/*/state.json"))
                if states and len(json.loads(states[0].read_text()).get("files") or {}) >= 3:
                    break
                time.sleep(0.02)
        finally:
            _kill(proc)
        export_dir = states[0].parent
        assert not (export_dir / "export.json").exists()  # killed before the download finished
        assert not (tmp_path / "warehouse.duckdb").exists() or not raw_counts(tmp_path / "warehouse.duckdb")
        server.faults.clear()

        result = cli(env, "extract", "fhir")
        assert result.exit_code == 0, result.output
        assert f"export {export_dir.name}: full, resumed;" in result.output
        assert reqs.count("GET", KICKOFF) == 1  # resumed: no second kick-off
    assert [p.name for p in (tmp_path / "landing" / "fhir").iterdir()] == [export_dir.name]
    assert cli(env, "extract", "dataview").exit_code == 0
    assert content_fingerprints(tmp_path / "warehouse.duckdb") == clean_run["fingerprints"]


def test_killed_mid_load_loads_the_landed_export_without_exporting_again(
        world: Path, server: RunningServer, clean_run: dict, tmp_path: Path) -> None:
    env = pipeline_env(server, world, tmp_path)
    with emulator_requests() as reqs:
        proc = _start(env)
        deadline = time.monotonic() + 60
        seen = []
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                seen.append(line)
                if "loading export" in line:
                    time.sleep(0.15)  # well inside the load (the transaction takes seconds here)
                    break
                assert time.monotonic() < deadline, "".join(seen[-20:])
            else:
                pytest.fail("the process ended before loading: " + "".join(seen[-20:]))
        finally:
            _kill(proc)
        export_dirs = list((tmp_path / "landing" / "fhir").iterdir())
        assert len(export_dirs) == 1 and (export_dirs[0] / "export.json").exists()  # download complete
        # the load did not commit: nothing was recorded as loaded and no resource is in the warehouse
        assert not query(tmp_path / "warehouse.duckdb", "SELECT count(*) FROM duckdb_tables() "
                                                        "WHERE schema_name = 'meta' AND table_name = 'fhir_exports'"
                         )[0][0] or not query(tmp_path / "warehouse.duckdb", "SELECT * FROM meta.fhir_exports")

        result = cli(env, "extract", "fhir")
        assert result.exit_code == 0, result.output
        assert "reused (landed earlier, not loaded)" in result.output
        assert reqs.count("GET", KICKOFF) == 1  # the landed export was loaded, not exported again
    assert cli(env, "extract", "dataview").exit_code == 0
    assert content_fingerprints(tmp_path / "warehouse.duckdb") == clean_run["fingerprints"]


def test_failures_are_one_line_errors_with_a_nonzero_exit(world: Path, server: RunningServer,
                                                          tmp_path: Path) -> None:
    env = pipeline_env(server, world, tmp_path)
    cases = [
        ({**env, "ATHENA_CLIENT_SECRET": "not-the-secret"}, ["extract", "fhir"], "AuthError"),
        (env, ["extract", "fhir", "--since", "last tuesday"], "since must be an ISO 8601 instant"),
        (env, ["extract", "fhir", "--full", "--since", "2026-01-01T00:00:00Z"], "either --since or --full"),
        (env, ["extract", "dataview", "--tables", "NOSUCHTABLE"], "not a catalogued Data View table"),
        (env, ["extract", "dataview", "--start", "2026-05-02", "--end", "2026-05-01"], "the window is empty"),
        ({**env, "DATAVIEW_DUCKDB_PATH": str(tmp_path / "missing.duckdb")}, ["extract", "dataview"], "not found"),
    ]
    for case_env, args, shown in cases:
        result = cli(case_env, *args)
        assert result.exit_code in (1, 2), (args, result.output)
        lines = result.output.strip().splitlines()
        assert lines and lines[-1].startswith("Error: ") and shown in lines[-1], (args, result.output)
        assert "Traceback" not in result.output
        assert "not-the-secret" not in result.output


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS held (x INT)")
print("holding", flush=True)
time.sleep(30)
"""


def test_a_busy_warehouse_is_waited_for_then_named(world: Path, server: RunningServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process writing the warehouse: the export waits a little to read _since, then says why."""
    import athena_pipeline.extract as extract_mod

    monkeypatch.setattr(extract_mod, "WATERMARK_WAIT_SECONDS", 0.5)
    env = pipeline_env(server, world, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, env["WAREHOUSE_PATH"]], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with emulator_requests() as reqs:
            result = cli(env, "extract", "fhir")
        assert reqs.count("GET", KICKOFF) == 0  # nothing was exported on a guessed _since
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ExtractError: could not read the FHIR _since watermark")
    assert f"process {holder.pid}" in line and "pool 'warehouse'" in line


def test_export_errors_are_loaded_and_reported_loudly(world: Path, server: RunningServer, tmp_path: Path) -> None:
    server.faults.set("error_lines", 1, arg=2)
    env = pipeline_env(server, world, tmp_path)
    result = cli(env, "extract", "fhir", "--types", "Patient")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: the server reported 2 fatal/error issue(s)")
    assert raw_counts(tmp_path / "warehouse.duckdb") == {"patient": world_counts(world)["Patient"]}
    assert query(tmp_path / "warehouse.duckdb", "SELECT severity, count(*) FROM audit.export_errors GROUP BY 1") \
        == [("error", 2)]


def test_extract_help_lists_the_options(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, options in ((["extract"], ["fhir", "dataview"]),
                          (["extract", "fhir"], ["--types", "--since", "--full"]),
                          (["extract", "dataview"], ["--tables", "--start", "--end", "--full-refresh"])):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0
        for option in options:
            assert option in result.output
