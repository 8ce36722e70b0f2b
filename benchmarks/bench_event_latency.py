"""Benchmark: event-to-Caspio latency of an appointment change in the sandbox (target: under 60 s).

What runs, all of it the project's own code on loopback:

1. **A sandbox world** (``--providers``/``--patients``, default 1 / 600) is generated in a temp dir.
2. **The athenahealth emulator** serves it (webhook delivery on, Event Subscription scopes granted as
   athena's operations team would); **the Caspio emulator** beside it with ``--caspio-latency-ms`` per
   call (default 300, Caspio's measured latency).
3. **The webhook receiver** runs as its own process, ``athena-pipeline webhook serve --port 0``, with
   its inbox in the temp dir; ``subscriptions ensure`` registers one Subscription per Appointment
   topic to it.
4. **Dagster, in this process**: an instance, ``athena_events_sensor`` evaluated every
   ``--tick-seconds`` (default 15, its ``minimum_interval_seconds``) on a fixed cadence that knows
   nothing of the changes, and each ``appointment_sync_job`` run it requests executed in-process
   (``execute_in_process``) right after the tick, skipping run keys already run as the daemon does.
5. **Changes**: ``--days`` times, ``sandbox advance`` by one day (bookings, check-ins, check-outs,
   cancellations, reschedules). The emulator derives the day's events and delivers them, signed, to
   the receiver, which commits them to the inbox; the next tick requests a sync; the run reads each
   appointment from the v1 API and upserts it in Caspio.

Latency of a change = from the moment ``advance`` has made the new day visible (its world clock
saved) to the end of the sync run that wrote that appointment's row. Per day, the worst
appointment of the day counts (the day's changes are "in Caspio" when all are); the summary gives
p50 and max over days, plus a breakdown: change -> inbox (emulator + receiver), inbox -> tick
(waiting for the sensor), tick -> Caspio (the run). Afterwards every changed appointment is checked
in Caspio against the Data View (status; deleted ones absent).

What in-process execution leaves out: a real deployment launches each run in a new process, which
loads the code location first. That load is timed here too (``run_launch_overhead_s``: a fresh
interpreter importing the definitions) and added in ``projected_daemon_*``.

    .venv/bin/python benchmarks/bench_event_latency.py                 # 5 days, 1 provider
    .venv/bin/python benchmarks/bench_event_latency.py --days 3 --providers 2 --patients 1200

Prints a markdown table and writes ``benchmarks/results/event_latency.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dagster as dg

from athena_pipeline.caspio.client import CaspioClient
from athena_pipeline.defs.events.assets import (
    APPOINTMENT_SYNC_JOB,
    appointment_sync_job,
    appointments,
    inbox_events_not_stale,
)
from athena_pipeline.defs.events.resources import build_events_resources
from athena_pipeline.defs.events.sensors import MINIMUM_INTERVAL_SECONDS, athena_events_sensor
from athena_pipeline.defs.publish.resources import build_publish_resources
from athena_pipeline.defs.resources import build_resources
from athena_pipeline.events.appointments import appointments_table_name
from athena_pipeline.events.inbox import Inbox
from athena_pipeline.events.subscriptions import ensure_subscriptions
from athena_pipeline.sandbox.advance import advance_world
from athena_pipeline.sandbox.caspio.config import CaspioConfig
from athena_pipeline.sandbox.caspio.server import run_caspio_in_thread
from athena_pipeline.sandbox.emulator.config import EmulatorConfig
from athena_pipeline.sandbox.emulator.delivery import derive_world_events
from athena_pipeline.sandbox.emulator.subscriptions import grant_subscription_scopes
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.server import run_in_thread
from athena_pipeline.sandbox.world import World, WorldOptions
from athena_pipeline.settings import Settings

RESULTS = REPO / "benchmarks" / "results" / "event_latency.json"
TARGET_SECONDS = 60.0
SECRET = "bench-webhook-secret"
_URL = re.compile(r"url=(\S+)")


# --- the receiver process -------------------------------------------------------------------------
def start_receiver(inbox: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``athena-pipeline webhook serve --port 0`` in its own process; returns it and its webhook URL."""
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "athena_pipeline.cli", "webhook", "serve", "--port", "0",
                             "--inbox", str(inbox)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True)
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"the receiver exited ({proc.returncode}); see {log_path}")
            continue
        if (m := _URL.search(line)):
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("the receiver did not start within 60 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def definitions_load_seconds(samples: int = 3) -> list[float]:
    """A fresh interpreter importing the project's definitions, ``samples`` times: what launching a
    run in a new process costs before its first step (the daemon's default run launcher does that)."""
    code = "from athena_pipeline.definitions import defs; defs()"
    out: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(f"definitions did not load in a fresh process: {done.stderr.strip().splitlines()[-1:]}")
            return []
        out.append(round(time.perf_counter() - started, 2))
    return out


# --- the Dagster side ------------------------------------------------------------------------------
@dataclasses.dataclass
class Daemon:
    """The sensor daemon's job, done in-process: tick on a cadence, run what the ticks request."""

    instance: dg.DagsterInstance
    job: Any
    resources: dict[str, Any]
    tick_seconds: float
    cursor: str | None = None
    next_tick: float = 0.0
    run_keys: set[str] = dataclasses.field(default_factory=set)
    ticks: int = 0
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def due(self, now: float) -> bool:
        return now >= self.next_tick

    def tick(self) -> list[dict[str, Any]]:
        """One evaluation plus the runs it requests; returns those runs with their times."""
        tick_at = time.time()
        self.next_tick = (self.next_tick or tick_at) + self.tick_seconds
        while self.next_tick <= tick_at:  # a long run made us miss ticks: the daemon would skip them too
            self.next_tick += self.tick_seconds
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                      resources={"event_inbox": self.resources["event_inbox"]})
        result = athena_events_sensor(ctx)
        self.ticks += 1
        self.cursor = result.cursor
        for event in result.asset_events or []:
            self.instance.report_runless_asset_event(event)
        done = []
        for request in result.run_requests or []:
            if request.job_name != APPOINTMENT_SYNC_JOB or request.run_key in self.run_keys:
                continue
            self.run_keys.add(request.run_key)
            started = time.time()
            outcome = self.job.execute_in_process(run_config=request.run_config, instance=self.instance,
                                                  tags={**request.tags, "dagster/run_key": request.run_key},
                                                  raise_on_error=False)
            run = {"run_key": request.run_key, "tick_at": tick_at, "started_at": started,
                   "finished_at": time.time(), "success": outcome.success,
                   "ids": request.run_config["ops"]["caspio__appointments"]["config"]["appointment_ids"]}
            mats = outcome.asset_materializations_for_node("caspio__appointments") if outcome.success else []
            run["metadata"] = {k: v.value for k, v in mats[0].metadata.items()} if mats else {}
            self.runs.append(run)
            done.append(run)
        return done


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))], 2)


def run_day(day: int, world_dir: Path, pid: int, inbox: Inbox, daemon: Daemon, timeout: float) -> dict[str, Any]:
    """Advance the world one day and wait until every appointment event of the day is in Caspio."""
    old_clock = World.load(world_dir).clock
    advance_started = time.time()
    summary = advance_world(world_dir, 1)
    changed_at = time.time()  # the new day is visible: world.json (the clock) is written last
    new_clock = World.load(world_dir).clock
    expected = [e for e in derive_world_events(world_dir, old_clock, new_clock, pid)
                if e.topic.startswith("Appointment.")]
    waiting = {e.event_id: e for e in expected}
    arrived: dict[str, float] = {}
    synced: dict[str, tuple[float, float]] = {}  # event id -> (tick time, run finished)
    deadline = changed_at + timeout
    while len(synced) < len(waiting) and time.time() < deadline:
        for event_id in waiting.keys() - arrived.keys():
            row = inbox.get(event_id)
            if row is not None:
                arrived[event_id] = row.received_at
        if daemon.due(time.time()):
            for run in daemon.tick():
                ids = set(run["ids"])
                for event_id, event in waiting.items():
                    if event_id in arrived and event_id not in synced and event.athena_id in ids and run["success"]:
                        synced[event_id] = (run["tick_at"], run["finished_at"])
        time.sleep(0.02)
    lat = [synced[e][1] - changed_at for e in synced]
    return {
        "day": day, "date": summary["to"], "advance_s": round(changed_at - advance_started, 2),
        "appointment_events": len(waiting),
        "topics": sorted({e.topic for e in expected}),
        "distinct_appointments": len({e.athena_id for e in expected}),
        "synced_events": len(synced), "timed_out": len(synced) < len(waiting),
        "latency_max_s": round(max(lat), 2) if lat else None,
        "latency_p50_s": pct(lat, 0.5) if lat else None,
        "change_to_inbox_s": round(max(arrived.values()) - changed_at, 2) if arrived else None,
        "inbox_to_tick_s": round(max(t for t, _ in synced.values()) - max(arrived.values()), 2) if synced else None,
        "tick_to_caspio_s": round(max(f - t for t, f in synced.values()), 2) if synced else None,
        "event_latencies_s": [round(x, 2) for x in lat],
        "appointment_ids": sorted({e.athena_id for e in expected}),
    }


def verify(world_dir: Path, caspio: CaspioClient, ids: list[str], table: str) -> dict[str, int]:
    """Every changed appointment as Caspio holds it vs the Data View: status equal, deleted ones absent."""
    with duckdb.connect(str(world_dir / "dataview.duckdb"), read_only=True) as con:
        live = dict(con.execute(
            "SELECT CAST(APPOINTMENTID AS VARCHAR), APPOINTMENTSTATUS FROM ATHENAONE.APPOINTMENT "
            "WHERE DELETEDDATETIME IS NULL AND list_contains(?, APPOINTMENTID)", [[int(i) for i in ids]]).fetchall())
    rows = {r["appointment_id"]: r for page in caspio.iter_records(table) for r in page}
    return {
        "checked": len(ids),
        "matching": sum(1 for i in ids if (i in live and i in rows and rows[i]["status"] == live[i])
                        or (i not in live and i not in rows)),
        "caspio_rows": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5, help="changes (sandbox days) to measure")
    parser.add_argument("--providers", type=int, default=1)
    parser.add_argument("--patients", type=int, default=600)
    parser.add_argument("--tick-seconds", type=float, default=float(MINIMUM_INTERVAL_SECONDS))
    parser.add_argument("--caspio-latency-ms", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=240.0, help="give up on a day after this many seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_event_latency_"))
    receiver = None
    try:
        t0 = time.perf_counter()
        world = generate_world(work / "world", WorldOptions(providers=args.providers, patients=args.patients))
        generate_s = time.perf_counter() - t0
        pid = world.practice_id
        inbox_path = work / "events.sqlite"
        caspio_config = dataclasses.replace(CaspioConfig(), latency_seconds=args.caspio_latency_ms / 1000.0)
        with run_in_thread(world.root, config=grant_subscription_scopes(EmulatorConfig())) as emu, \
                run_caspio_in_thread(work / "caspio", caspio_config) as cas:
            receiver, url = start_receiver(inbox_path, work / "receiver.log")
            profile = caspio_config.clients[0]
            settings = dataclasses.replace(
                Settings(), athena_fhir_base_url=emu.fhir_base, athena_token_url=emu.token_url,
                athena_practice_id=pid, athena_group_id=f"a-1.c-{pid}", webhook_secret=SECRET, webhook_url=url,
                caspio_base_url=cas.base_url, caspio_client_id=profile.client_id,
                caspio_client_secret=profile.secret, events_inbox_path=inbox_path,
                warehouse_path=work / "warehouse.duckdb", landing_dir=work / "landing")
            subs = ensure_subscriptions(settings, endpoint=url, topics=["Appointment"])
            resources = {**build_resources(settings), **build_publish_resources(settings),
                         **build_events_resources(settings)}
            defs = dg.Definitions(assets=[appointments], asset_checks=[inbox_events_not_stale],
                                  jobs=[appointment_sync_job], resources=resources)
            (work / "dagster").mkdir()
            with dg.instance_for_test(temp_dir=str(work / "dagster")) as instance, Inbox(inbox_path) as inbox:
                daemon = Daemon(instance, defs.resolve_job_def(APPOINTMENT_SYNC_JOB), resources, args.tick_seconds)
                days = []
                for day in range(1, args.days + 1):
                    result = run_day(day, world.root, pid, inbox, daemon, args.timeout)
                    days.append(result)
                    print(f"day {day} ({result['date']}): {result['appointment_events']} appointment events, "
                          f"max {result['latency_max_s']} s (inbox {result['change_to_inbox_s']} s, "
                          f"tick wait {result['inbox_to_tick_s']} s, run {result['tick_to_caspio_s']} s)",
                          flush=True)
                with CaspioClient(cas.base_url, profile.client_id, profile.secret) as caspio:
                    ids = sorted({i for d in days for i in d["appointment_ids"]})
                    check = verify(world.root, caspio, ids, appointments_table_name(settings.caspio_table_prefix))
                stats = inbox.stats().to_dict()
        launch_samples = definitions_load_seconds()
        launch = statistics.median(launch_samples) if launch_samples else float("nan")
        per_day = [d["latency_max_s"] for d in days if d["latency_max_s"] is not None]
        per_event = [x for d in days for x in d["event_latencies_s"]]
        summary = {
            "days": len(days),
            "appointment_events": sum(d["appointment_events"] for d in days),
            "timed_out_days": sum(1 for d in days if d["timed_out"]),
            "p50_s": pct(per_day, 0.5), "max_s": max(per_day) if per_day else None,
            "event_p50_s": pct(per_event, 0.5), "event_max_s": max(per_event) if per_event else None,
            "change_to_inbox_p50_s": pct([d["change_to_inbox_s"] for d in days if d["change_to_inbox_s"] is not None], 0.5),
            "inbox_to_tick_p50_s": pct([d["inbox_to_tick_s"] for d in days if d["inbox_to_tick_s"] is not None], 0.5),
            "tick_to_caspio_p50_s": pct([d["tick_to_caspio_s"] for d in days if d["tick_to_caspio_s"] is not None], 0.5),
            "run_launch_overhead_s": launch,
            "run_launch_overhead_samples_s": launch_samples,
        }
        summary["projected_daemon_p50_s"] = round(summary["p50_s"] + launch, 2) if per_day else None
        summary["projected_daemon_max_s"] = round(summary["max_s"] + launch, 2) if per_day else None
        summary["target_s"] = TARGET_SECONDS
        summary["meets_target"] = bool(per_day) and summary["max_s"] < TARGET_SECONDS and not summary["timed_out_days"]
        summary["meets_target_projected"] = bool(per_day) and summary["projected_daemon_max_s"] < TARGET_SECONDS
        out = {
            "what": "sandbox appointment change -> signed webhook -> receiver -> inbox -> athena_events_sensor tick "
                    "-> appointment_sync_job (in-process) -> Caspio row",
            "world": {"providers": args.providers, "patients": args.patients, "generate_s": round(generate_s, 1)},
            "config": {"tick_seconds": args.tick_seconds, "caspio_latency_ms": args.caspio_latency_ms,
                       "athena_requests_per_second": settings.athena_requests_per_second,
                       "caspio_requests_per_second": settings.caspio_requests_per_second,
                       "caspio_api_version": settings.caspio_api_version, "subscriptions": len(subs.created)},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "summary": summary,
            "verification": check,
            "inbox": {k: stats[k] for k in ("total", "unprocessed", "duplicates_ignored")},
            "sensor_ticks": daemon.ticks,
            "runs": [{k: v for k, v in r.items() if k not in ("ids",)} | {"appointments": len(r["ids"])}
                     for r in daemon.runs],
            "per_day": [{k: v for k, v in d.items() if k not in ("appointment_ids", "event_latencies_s")}
                        for d in days],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print()
        print("| measure | value |")
        print("|---|---|")
        print(f"| changes (sandbox days) / appointment events | {summary['days']} / {summary['appointment_events']} |")
        print(f"| change -> row in Caspio, p50 / max over days | {summary['p50_s']} s / {summary['max_s']} s |")
        print(f"| per event, p50 / max | {summary['event_p50_s']} s / {summary['event_max_s']} s |")
        print(f"| breakdown p50: change -> inbox / wait for tick / run | {summary['change_to_inbox_p50_s']} s / "
              f"{summary['inbox_to_tick_p50_s']} s / {summary['tick_to_caspio_p50_s']} s |")
        print(f"| + run launch in a new process (definitions load, median of {len(launch_samples)}) | {launch} s |")
        print(f"| projected with the daemon, p50 / max | {summary['projected_daemon_p50_s']} s / "
              f"{summary['projected_daemon_max_s']} s (target < {TARGET_SECONDS:.0f} s) |")
        print(f"| Caspio rows verified against the Data View | {check['matching']} / {check['checked']} |")
        print(f"\nwrote {args.out}")
    finally:
        if receiver is not None:
            stop(receiver)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
