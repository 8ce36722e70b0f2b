"""SIGKILL `athena-pipeline extract` at random moments, re-run it: the warehouse a run nobody killed.

Two days of a practice, as a nightly job sees them: day 0 is a full extract (``extract fhir``, then
``extract dataview``), then the world advances ``ADVANCE_DAYS`` (updates and deletions) and day 1
is the incremental extract. The reference warehouse runs each step once, uninterrupted, as a
subprocess, which also times it. The chaos warehouse runs each step as a subprocess that is killed
with SIGKILL after a random delay drawn from ``[0, that step's reference duration]`` (so kills land
anywhere: start-up, token, kick-off, polling, downloads, the load, the status DELETE, Data View
windows), ``CHAOS_KILLS`` times, and then lets it finish.

What a user would notice, and what is asserted:

* after every kill, the FHIR side of the warehouse is all or nothing: its ``raw_fhir`` rows are
  exactly the previous day's or exactly the new day's, never a part of a load, and no id is
  stored twice;
* each step still exits 0 when finally left alone, however often it was killed;
* at the end, every ``raw_fhir`` and ``raw_dataview`` table holds the same rows as the reference
  (every column but the load stamps), and the watermarks are the reference's.

The kill delays come from ``CHAOS_SEED`` and are printed, so a failure can be replayed. The suite
runs a few kills per step; a longer soak (``CHAOS_KILLS=25``) is recorded in the README.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from athena_pipeline.sandbox.server import RunningServer, run_in_thread
from tests.extract_support import (
    ADVANCE_DAYS,
    clean_environ,
    content_fingerprints,
    copy_world,
    emulator_config,
    generate,
    pipeline_env,
)

EXE = str(Path(sys.executable).with_name("athena-pipeline"))
SEED = int(os.environ.get("CHAOS_SEED", "20261124"))
KILLS = int(os.environ.get("CHAOS_KILLS", "3"))
STEPS = (("extract", "fhir"), ("extract", "dataview"))


@dataclass
class ChaosLog:
    """What happened, for the failure message and the soak's summary."""

    kills_landed: int = 0
    finished_before_kill: int = 0
    events: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = generate(tmp_path_factory.mktemp("kill_anywhere") / "generated")
    return copy_world(base, base.parent / "world")  # advanced by the test


@pytest.fixture(scope="module")
def server(world: Path) -> Iterator[RunningServer]:
    srv = run_in_thread(world, config=emulator_config())
    yield srv
    srv.stop()


def _start(args: tuple[str, ...], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Output to a file, not a pipe: a pipe nobody reads could block the process and skew the timing.
    with log.open("a") as out:
        return subprocess.Popen([EXE, "--log-level", "info", *args], env=clean_environ(dict(os.environ), env),
                                stdout=out, stderr=subprocess.STDOUT)


def _run_to_end(args: tuple[str, ...], env: dict[str, str], log: Path) -> float:
    started = time.monotonic()
    proc = _start(args, env, log)
    code = proc.wait(timeout=600)
    assert code == 0, f"{' '.join(args)} exited {code}:\n{log.read_text()[-4000:]}"
    return time.monotonic() - started


def _fhir_rows(db: Path) -> tuple[int, int]:
    """(rows in raw_fhir, ids stored more than once), read from a copy so the WAL a killed process
    left is replayed without touching the warehouse under test."""
    if not db.exists():
        return 0, 0
    probe = db.with_name("probe.duckdb")
    for suffix in ("", ".wal"):
        src = Path(str(db) + suffix)
        dst = Path(str(probe) + suffix)
        dst.unlink(missing_ok=True)
        if src.exists():
            dst.write_bytes(src.read_bytes())
    con = duckdb.connect(str(probe))
    try:
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'raw_fhir'").fetchall()]
        rows = dupes = 0
        for t in tables:
            n, distinct = con.execute(f'SELECT count(*), count(DISTINCT id) FROM raw_fhir."{t}"').fetchone()
            rows += n
            dupes += n - distinct
        return rows, dupes
    finally:
        con.close()
        for suffix in ("", ".wal"):
            Path(str(probe) + suffix).unlink(missing_ok=True)


def _chaos_step(args: tuple[str, ...], env: dict[str, str], duration: float, rng: random.Random,
                log: Path, chaos: ChaosLog, fhir_states: tuple[int, ...]) -> None:
    """Kill ``args`` KILLS times at random delays, checking the warehouse after each kill; then finish it."""
    db = Path(env["WAREHOUSE_PATH"])
    for _ in range(KILLS):
        delay = rng.uniform(0, duration)
        proc = _start(args, env, log)
        try:
            code = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            code = proc.wait(timeout=30)  # 0 if it ended just before the signal
        if code == -signal.SIGKILL:
            chaos.kills_landed += 1
            chaos.events.append(f"{' '.join(args)}: killed at {delay:.2f} s")
        else:
            assert code == 0, f"{' '.join(args)} exited {code}:\n{log.read_text()[-4000:]}"
            chaos.finished_before_kill += 1
            chaos.events.append(f"{' '.join(args)}: finished before {delay:.2f} s")
        rows, dupes = _fhir_rows(db)
        assert dupes == 0, f"{dupes} ids stored twice after: {chaos.events[-1]}"
        assert rows in fhir_states, (f"raw_fhir holds {rows} rows after {chaos.events[-1]}; "
                                     f"a committed state has one of {fhir_states}")
    _run_to_end(args, env, log)


def _watermarks(db: Path) -> dict[tuple[str, str], str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {(s, k): str(v) for s, k, v in con.execute(
            "SELECT source, key, value FROM meta.watermarks").fetchall()}
    finally:
        con.close()


def test_killed_anywhere_then_rerun_gives_the_uninterrupted_warehouse(world: Path, server: RunningServer,
                                                                      tmp_path: Path) -> None:
    from athena_pipeline.sandbox.advance import advance_world

    ref_env = pipeline_env(server, world, tmp_path / "reference")
    chaos_env = pipeline_env(server, world, tmp_path / "chaos")
    (tmp_path / "reference").mkdir()
    (tmp_path / "chaos").mkdir()
    rng = random.Random(SEED)
    chaos = ChaosLog()
    ref_log, chaos_log = tmp_path / "reference.log", tmp_path / "chaos.log"
    ref_db, chaos_db = Path(ref_env["WAREHOUSE_PATH"]), Path(chaos_env["WAREHOUSE_PATH"])

    fhir_states: tuple[int, ...] = (0,)
    for day in (0, 1):
        if day:
            advance_world(world, ADVANCE_DAYS)
        for args in STEPS:
            duration = _run_to_end(args, ref_env, ref_log)
            if args[1] == "fhir":
                fhir_states = (*fhir_states, _fhir_rows(ref_db)[0])
            try:
                _chaos_step(args, chaos_env, duration, rng, chaos_log, chaos, fhir_states[-2:])
            except AssertionError as exc:
                raise AssertionError(f"seed {SEED}, day {day}: {exc}\n" + "\n".join(chaos.events)) from exc

    print(f"seed {SEED}: {chaos.kills_landed} kills landed, {chaos.finished_before_kill} runs finished first")
    print("\n".join(chaos.events))
    assert chaos.kills_landed >= KILLS, chaos.events  # most delays fall inside the run
    assert fhir_states[1] != fhir_states[2], "day 1 changed nothing: the test would not see a lost update"
    assert content_fingerprints(chaos_db) == content_fingerprints(ref_db), "\n".join(chaos.events)
    assert _watermarks(chaos_db) == _watermarks(ref_db)
