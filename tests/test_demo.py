"""``athena-pipeline demo`` (``make demo``): the whole pipeline on a small world, and nothing left running.

What a user notices: the command ends with a summary (rows per mart, the headline KPIs, events, calls,
where to look), the Dagster runs are in the instance ``make dev`` opens, the marts are in Caspio, and
no emulator or receiver keeps running afterwards, also when interrupted with Ctrl-C. The full run is
slow (a world, every Dagster run, dbt twice): marked ``slow``. The process-group and environment
helpers it relies on are tested quickly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from athena_pipeline.demo import Child, DemoOptions, choose_port, sandbox_environment
from athena_pipeline.settings import ENV_VARS, Settings

ROOT = Path(__file__).resolve().parents[1]
AGGREGATE_MARTS = {"appointment_utilization", "ar_aging", "denial_reasons", "denials_by_payer_month",
                   "mart_status", "quality_measure_performance", "revenue_cycle_kpis"}


def _clean_env(tmp: Path) -> dict[str, str]:
    """The test's environment: no pipeline variable from the shell, dbt's target in the tmp dir."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k != "DAGSTER_HOME"}
    env.update({"DBT_TARGET_PATH": str(tmp / "dbt_target"), "PYTHONUNBUFFERED": "1"})
    return env


def _demo_args(tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "athena_pipeline.cli", "demo", "--world", str(tmp / "sandbox" / "world"),
            "--warehouse", str(tmp / "data" / "warehouse.duckdb"), "--dagster-home", str(tmp / "dagster_home"),
            "--port", "0", "--webhook-port", "0", *extra]


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text`` (every child of a demo names its world)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((line for line in (entry / "status").read_text().splitlines()
                          if line.startswith("State:")), "")
        except OSError:
            continue
        if text in cmdline and "zombie" not in state:
            found.append((int(entry.name), cmdline.strip()))
    return found


def _listening(url: str) -> bool:
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _wait_gone(text: str, timeout: float = 15.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while (left := _processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# --- quick: the pieces the demo's clean-up and safety rest on ------------------------------------------
def test_stopping_a_child_ends_its_whole_process_group(tmp_path: Path) -> None:
    """A server that started helpers of its own must not leave them behind."""
    marker = f"demo-test-{tmp_path.name}"
    script = ("import subprocess, sys, time; "
              f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', '{marker}']); "
              "print('ready', flush=True); time.sleep(120)")
    child = Child("sleeper", [sys.executable, "-c", script, marker], tmp_path / "sleeper.log", os.environ)
    try:
        import re

        child.wait_for(re.compile("ready"), timeout=30)
        deadline = time.monotonic() + 10
        while len(_processes_mentioning(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_processes_mentioning(marker)) == 2
    finally:
        child.stop(grace=5)
    assert _wait_gone(marker) == []
    assert child.proc.returncode is not None


def test_the_demo_environment_points_only_at_the_sandbox(tmp_path: Path) -> None:
    """A shell set up for production (real athenahealth, Snowflake, Caspio) cannot leak into the demo."""
    shell = {"ATHENA_FHIR_BASE_URL": "https://api.platform.athenahealth.com/fhir/r4",
             "ATHENA_TOKEN_URL": "https://api.platform.athenahealth.com/oauth2/v1/token",
             "ATHENA_CLIENT_SECRET": "real-secret", "DATAVIEW_KIND": "snowflake", "SNOWFLAKE_ACCOUNT": "acme",
             "CASPIO_BASE_URL": "https://c1abc.caspio.com", "CASPIO_CLIENT_SECRET": "real",
             "WEBHOOK_URL": "https://hooks.example.org/athena", "PIPELINE_TIMEZONE": "America/Chicago",
             "PATH": os.environ.get("PATH", "")}
    options = DemoOptions(world=tmp_path / "world", warehouse=tmp_path / "data" / "warehouse.duckdb",
                          dagster_home=tmp_path / "dh").resolved()
    env = sandbox_environment(options, shell, sandbox_port=41001, webhook_port=41002, practice_id=195900)
    settings = Settings.from_env(env)
    assert settings.is_sandbox
    assert settings.athena_fhir_base_url == "http://127.0.0.1:41001/fhir/r4"
    assert settings.caspio_base_url == "http://127.0.0.1:41001/caspio"
    assert settings.webhook_url == "http://127.0.0.1:41002/webhook"
    assert settings.dataview_kind == "duckdb"
    assert settings.dataview_duckdb_path == tmp_path / "world" / "dataview.duckdb"
    assert settings.athena_client_secret == "sandbox-secret"
    assert settings.warehouse_path == tmp_path / "data" / "warehouse.duckdb"
    assert settings.events_inbox_path == tmp_path / "data" / "events.sqlite"
    assert settings.pipeline_timezone == "America/Chicago"  # tuning is kept
    assert env["DAGSTER_HOME"] == str(tmp_path / "dh")


def test_ports_default_to_the_usual_ones_only_when_free() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        assert choose_port(None, taken) == 0  # taken: any free port instead
        assert choose_port(5555, taken) == 5555  # what the user asked for
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert choose_port(None, free) == free


# --- slow: the demo itself --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_runs_the_pipeline_prints_the_summary_and_leaves_nothing_running(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    run = subprocess.run(_demo_args(tmp_path, "--providers", "1", "--json-report", str(report_path)),
                         cwd=ROOT, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=1400,
                         check=False)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    out = run.stdout
    for text in ("[9/9]", "Summary", "Headline KPIs", "Days in A/R", "Open care gaps", "make dev",
                 "/caspio/_emulator/", "Time per stage"):
        assert text in out
    assert "START sql" not in out  # dbt's own log goes to the log file, not the terminal

    report = json.loads(report_path.read_text())
    marts = {m["mart"]: m for m in report["marts"]}
    assert AGGREGATE_MARTS <= set(marts)
    for name in AGGREGATE_MARTS:
        assert marts[name]["rows"] > 0, name
        assert marts[name]["caspio_rows"] == marts[name]["rows"], name  # published, row for row
    assert marts["quality_care_gaps"]["caspio_table"] is None  # patient-level stays out of Caspio

    kpis = report["kpis"]
    ground_truth = json.loads((tmp_path / "sandbox" / "world" / "ground_truth.json").read_text())
    assert kpis["as_of_date"] == report["world"]["clock"] == ground_truth["as_of"]  # as of the advanced day
    assert kpis["days_in_ar"] == pytest.approx(ground_truth["days_in_ar"], abs=0.01)
    assert 0 < kpis["initial_denial_rate_12m"] < 1
    assert {g["measure_id"] for g in report["care_gaps"]} >= {"CMS122", "CMS125", "CMS130", "CMS165"}
    assert all(g["open_gaps"] >= 0 for g in report["care_gaps"])

    events, sync = report["events"], report["appointment_sync"]
    assert events["received"] > 0 and events["dead"] == 0
    assert sync["runs"] >= 1 and sync["appointments"] > 0
    assert sync["inserted"] + sync["updated"] + sync["unchanged"] > 0
    assert report["calls"]["caspio_initial"] > 0 and report["calls"]["caspio_total"] > 0
    # a simulated day changes a few percent of the published rows; the incremental publish writes
    # those (as_of_date is published once per table in mart_status, not on every row)
    published_rows = sum(marts[name]["rows"] for name in AGGREGATE_MARTS)
    assert report["calls"]["caspio_incremental"] < 0.2 * published_rows, (report["calls"], published_rows)

    # the runs are in the instance `make dev` would open
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "dagster_home"))) as instance:
        runs = instance.get_runs()
    jobs = {r.job_name for r in runs}
    assert {"extract_fhir_job", "extract_dataview_job", "transform_job", "publish_job",
            "appointment_sync_job"} <= jobs
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

    assert _wait_gone(str(tmp_path)) == []
    for url in (report["urls"]["athena"], report["urls"]["webhook"]):
        assert not _listening(url)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    demo = subprocess.Popen(_demo_args(tmp_path, "--providers", "1", "--patients", "300"), cwd=ROOT,
                            env=_clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # until the servers are up and the first Dagster run starts
            seen.append(line)
            if line.startswith("[3/9]"):
                break
        assert any("webhook receiver http://" in line for line in seen), "".join(seen)
        assert len(_processes_mentioning(str(tmp_path))) >= 3  # the demo, the emulator, the receiver
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, "".join(seen) + rest
    assert "every process it started has been stopped" in rest
    assert _wait_gone(str(tmp_path)) == []
