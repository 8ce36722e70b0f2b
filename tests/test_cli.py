"""The `athena-pipeline` command: help, clean errors, logging, and generating a tiny world."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import pytest
from click.testing import CliRunner

from athena_pipeline.cli import default_end_date, default_start_date, main
from athena_pipeline.sandbox.facts_schema import FACT_TABLES
from athena_pipeline.settings import ENV_VARS


@pytest.fixture
def runner(default_env: None) -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ([], ["--log-level", "--version", "sandbox", "settings"]),
        (["sandbox"], ["generate", "serve", "advance"]),
        (
            ["sandbox", "generate"],
            [
                "--out",
                "--seed",
                "--providers",
                "--patients",
                "--start",
                "--end",
                "--practice-id",
                "SANDBOX_WORLD",
                "ATHENA_PRACTICE_ID",
            ],
        ),
        (["sandbox", "serve"], ["--world", "--host", "--port", "--faults", "SANDBOX_WORLD", "SANDBOX_PORT"]),
        (["sandbox", "advance"], ["--world", "--days", "SANDBOX_WORLD"]),
        (["settings"], ["secrets shown as ***"]),
    ],
)
def test_help_lists_the_documented_options(runner: CliRunner, command: list[str], options: list[str]) -> None:
    result = runner.invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output


@pytest.mark.parametrize("command", [["sandbox", "serve"], ["sandbox", "advance", "--days", "3"]])
def test_a_missing_world_is_a_clean_one_line_error(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "no-world-here"
    result = runner.invoke(main, [*command, "--world", str(missing)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert "not a sandbox world" in lines[0]
    assert "Traceback" not in result.output


def test_the_world_option_falls_back_to_sandbox_world(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_WORLD", str(tmp_path / "from-env"))
    result = runner.invoke(main, ["sandbox", "advance", "--days", "1"])
    assert result.exit_code == 1
    assert "from-env" in result.output


def test_bad_options_are_clean_errors(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main, ["sandbox", "generate", "--out", str(tmp_path), "--start", "2025-02-01", "--end", "2025-01-01"]
    )
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --start 2025-02-01 is after --end 2025-01-01"

    result = runner.invoke(main, ["sandbox", "advance", "--world", str(tmp_path), "--days", "0"])
    assert result.exit_code == 2  # click's usage error
    assert "--days" in result.output


def test_serve_help_lists_the_emulator_faults(runner: CliRunner) -> None:
    faults = pytest.importorskip(
        "athena_pipeline.sandbox.emulator.faults", reason="the emulator's faults.py is not written yet"
    )
    result = runner.invoke(main, ["sandbox", "serve", "--help"])
    assert result.exit_code == 0
    flat = "".join(result.output.split())  # help text is wrapped, sometimes mid-word
    for name in faults.FAULTS:
        assert name in flat


def test_default_dates_cover_three_years_ending_yesterday() -> None:
    assert default_end_date(dt.date(2026, 11, 24)) == dt.date(2026, 11, 23)
    assert default_start_date(dt.date(2026, 11, 23)) == dt.date(2023, 11, 24)
    assert default_start_date(dt.date(2028, 2, 29)) == dt.date(2025, 3, 1)
    assert default_start_date(dt.date(2026, 12, 31)) == dt.date(2024, 1, 1)


def test_settings_prints_the_configuration_without_secrets(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASPIO_CLIENT_SECRET", "caspio-very-secret-value")
    result = runner.invoke(main, ["settings"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["is_sandbox"] is True
    assert shown["caspio_client_secret"] == "***"
    assert "caspio-very-secret-value" not in result.output

    monkeypatch.setenv("ATHENA_AUTH", "kerberos")
    result = runner.invoke(main, ["settings"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ATHENA_AUTH must be one of")


def test_log_level_sets_the_threshold_and_format(runner: CliRunner) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        result = runner.invoke(main, ["--log-level", "warning", "settings"])
        assert result.exit_code == 0
        assert root.level == logging.WARNING
        formats = [h.formatter._fmt for h in root.handlers if h.formatter is not None]
        assert any("%(asctime)s" in f and "%(name)s" in f for f in formats)
    finally:
        root.setLevel(before)


def test_generate_then_advance_a_tiny_world(runner: CliRunner, tmp_path: Path) -> None:
    pytest.importorskip(
        "athena_pipeline.sandbox.generate",
        reason="athena_pipeline/sandbox/generate.py (the world generator) is not written yet",
    )
    out = tmp_path / "world"
    result = runner.invoke(
        main, ["sandbox", "generate", "--out", str(out), "--providers", "1", "--patients", "200"]
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    meta = json.loads((out / "world.json").read_text())
    yesterday = dt.date.today() - dt.timedelta(days=1)
    assert meta["options"]["end"] == yesterday.isoformat()
    assert meta["options"]["start"] == default_start_date(yesterday).isoformat()
    assert meta["options"]["providers"] == 1 and meta["options"]["patients"] == 200
    assert (out / "facts.duckdb").exists()
    # the summary: one line per facts table with its count, and the time taken
    for table in FACT_TABLES:
        assert re.search(rf"^\s+{table}\s+[\d,]+$", result.output, flags=re.MULTILINE), table
    with duckdb.connect(str(out / "facts.duckdb"), read_only=True) as con:
        patients = con.execute("SELECT count(*) FROM patients").fetchone()[0]
    assert re.search(rf"^\s+patients\s+{patients:,}$", result.output, flags=re.MULTILINE)
    assert re.search(r"^generated in \d+\.\d s$", result.output, flags=re.MULTILINE)

    pytest.importorskip("athena_pipeline.sandbox.advance", reason="sandbox/advance.py is not written yet")
    result = runner.invoke(main, ["sandbox", "advance", "--world", str(out), "--days", "3"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert (
        json.loads((out / "world.json").read_text())["current_date"]
        == (yesterday + dt.timedelta(days=3)).isoformat()
    )
    assert re.search(r"^advanced 3 day\(s\) in \d+\.\d s$", result.output, flags=re.MULTILINE)
    assert "Traceback" not in result.output


def test_serve_runs_the_emulator_and_prints_where_it_listens(tmp_path: Path) -> None:
    """The real command in a subprocess, on an ephemeral loopback port, stopped with SIGINT."""
    pytest.importorskip(
        "athena_pipeline.sandbox.server", reason="the emulator's server.py is not written yet"
    )
    build_fhir_world = pytest.importorskip("tests.sandbox.conftest").build_fhir_world
    world = build_fhir_world(tmp_path / "world")
    exe = Path(sys.executable).with_name("athena-pipeline")
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    proc = subprocess.Popen(
        [str(exe), "--log-level", "warning", "sandbox", "serve", "--world", str(world), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"fhir=(http://127\.0\.0\.1:\d+/fhir/r4)", line)
        assert match, f"no listening line: {line!r}"
        response = httpx.get(f"{match.group(1)}/metadata", timeout=10)
        assert response.status_code == 200
        assert response.json()["resourceType"] == "CapabilityStatement"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


# --- sandbox serve: open mode, external OAuth clients, emulator knobs ---------------------------------
SERVE_OPTIONS = [
    "--open",
    "--jwt-client",
    "--client-secret",
    "--environment",
    "--token-lifetime",
    "--expires-in-string",
    "--resources-per-file",
    "--file-expiry",
    "--export-delay",
    "--per-second-limit",
]


def test_serve_help_documents_every_emulator_option_with_its_real_default(runner: CliRunner) -> None:
    config_mod = pytest.importorskip("athena_pipeline.sandbox.emulator.config")
    result = runner.invoke(main, ["sandbox", "serve", "--help"])
    assert result.exit_code == 0
    for option in SERVE_OPTIONS:
        assert option in result.output
    flat = " ".join(result.output.split())
    c = config_mod.EmulatorConfig()
    for shown in (
        f"[default: {c.environment}]",
        f"(expires_in). [default: {c.token_lifetime_seconds:g}]",
        f"several files. [default: {c.resources_per_file}]",
        f"answer 404. [default: {c.file_expiry_seconds:g}]",
        f"this long. [default: {c.export_processing_delay_seconds:g}]",
        "Retry-After: 1. [default: off]"
        if c.per_second_limit is None
        else f"[default: {c.per_second_limit}]",
    ):
        assert shown in flat, shown


def test_serve_rejects_bad_client_options_naming_the_problem(runner: CliRunner, tmp_path: Path) -> None:
    not_a_key = tmp_path / "not-a-key.json"
    not_a_key.write_text("{}")
    cases = [
        (["--jwt-client", f"me={not_a_key}"], "not-a-key.json"),
        (["--jwt-client", f"me={tmp_path / 'nowhere.pem'}"], "nowhere.pem"),
        (["--jwt-client", "no-equals-sign"], "CLIENT_ID=PATH"),
        (["--client-secret", "etl=one", "--client-secret", "etl=two"], "two different secrets"),
        (["--environment", "staging"], "staging"),
    ]
    for args, shown in cases:
        result = runner.invoke(main, ["sandbox", "serve", "--world", str(tmp_path), *args])
        assert result.exit_code == 2, (args, result.output)
        assert shown in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_serve_options_reach_the_running_emulator(tmp_path: Path) -> None:
    """--open, --jwt-client, --client-secret, --environment and the token/export knobs, end to end."""
    pytest.importorskip(
        "athena_pipeline.sandbox.server", reason="the emulator's server.py is not written yet"
    )
    import time
    import uuid

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    build_fhir_world = pytest.importorskip("tests.sandbox.conftest").build_fhir_world
    world = build_fhir_world(tmp_path / "world")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = tmp_path / "bulk-client.jwks"  # key pair in one file, as the SMART bulk-data-client keeps it
    jwks.write_text(
        json.dumps({"keys": [{**jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True), "kid": "k1"}]})
    )
    exe = Path(sys.executable).with_name("athena-pipeline")
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    args = [
        "--open", "--jwt-client", f"bulk-client={jwks}", "--client-secret", "etl=etl-secret",
        "--environment", "preview", "--token-lifetime", "120", "--expires-in-string",
        "--resources-per-file", "7", "--export-delay", "0", "--file-expiry", "60", "--per-second-limit", "1000",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [str(exe), "--log-level", "warning", "sandbox", "serve", "--world", str(world), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"base=(http://127\.0\.0\.1:\d+) ", line)
        assert match and "auth=open" in line, f"unexpected listening line: {line!r}"
        base = match.group(1)
        token_url = f"{base}/oauth2/v1/token"

        assert httpx.get(f"{base}/fhir/r4/Patient", timeout=10).status_code == 200  # open: no token

        r = httpx.post(
            token_url, data={"grant_type": "client_credentials"}, auth=("etl", "etl-secret"), timeout=10
        )
        assert r.status_code == 200, r.text
        assert r.json()["expires_in"] == "120"
        assert r.headers["x-ratelimit-limit-minute"] == "5"  # preview's token limit

        claims = {"iss": "bulk-client", "sub": "bulk-client", "aud": token_url, "exp": int(time.time()) + 120,
                  "jti": str(uuid.uuid4())}  # fmt: skip
        r = httpx.post(token_url, timeout=10, data={
            "grant_type": "client_credentials", "scope": "system/*.read",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": jwt.encode(claims, key, algorithm="RS384", headers={"kid": "k1"}),
        })  # fmt: skip
        assert r.status_code == 200, r.text

        kickoff = httpx.get(
            f"{base}/fhir/r4/Group/a-1.c-195900/$export",
            params={"_type": "Patient"},
            headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
            timeout=10,
        )
        assert kickoff.status_code == 202, kickoff.text
        deadline = time.monotonic() + 20
        while (poll := httpx.get(kickoff.headers["content-location"], timeout=10)).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        manifest = poll.json()
        assert manifest["requiresAccessToken"] is False
        counts = [o["count"] for o in manifest["output"]]
        assert len(counts) > 1 and max(counts) == 7
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_sandbox_fingerprint_prints_a_stable_line_per_table(tmp_path):
    """`sandbox fingerprint` prints one sha256 line per table; running it twice prints the same."""
    from click.testing import CliRunner

    from athena_pipeline.cli import main

    runner = CliRunner()
    world = tmp_path / "w"
    gen = runner.invoke(main, ["sandbox", "generate", "--out", str(world), "--providers", "1", "--patients", "150",
                               "--end", "2026-06-30"])
    assert gen.exit_code == 0, gen.output
    first = runner.invoke(main, ["sandbox", "fingerprint", "--world", str(world)])
    second = runner.invoke(main, ["sandbox", "fingerprint", "--world", str(world)])
    assert first.exit_code == 0, first.output
    lines = first.output.strip().splitlines()
    assert any(line.endswith("facts.duckdb:main.patients") for line in lines)
    assert any(line.endswith("fhir.duckdb:main.resources") for line in lines)
    assert all(len(line.split()[0]) == 64 for line in lines)
    assert first.output == second.output
