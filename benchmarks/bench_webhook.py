"""Benchmark: webhook receiver acknowledgement latency under a steady load of signed notifications.

Starts ``athena-pipeline webhook serve`` in its own process (as in production: uvicorn, the inbox
on disk, ``synchronous=FULL`` unless ``--no-fsync``), then sends signed athenahealth-style
notification bundles on loopback at a fixed rate (default 200 requests/s for 60 s), each with
``--events`` new event ids. The load is **open loop**: request *i* is sent at ``t0 + i/rate`` whatever
happened to earlier ones, so a slow answer cannot hide the requests queued behind it
(no coordinated omission). Latency is measured per request from its send to the complete 2xx;
``sched_p99`` measures from the *scheduled* time and shows any sender lag.

At the end the inbox is read back: every acknowledged event must be there.

    .venv/bin/python benchmarks/bench_webhook.py                   # 200 req/s for 60 s
    .venv/bin/python benchmarks/bench_webhook.py --rate 500 --seconds 20 --no-fsync

Prints a markdown table (the README's) and writes ``benchmarks/results/webhook.json``
(``webhook_nofsync.json`` with ``--no-fsync``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from athena_pipeline.events.signature import sign

SECRET = "bench-webhook-secret"
PRACTICE = "195900"


def bundle(n_events: int) -> tuple[bytes, list[str]]:
    """An athena STU1 id-only notification with ``n_events`` fresh event ids."""
    ids = [str(uuid.uuid4()) for _ in range(n_events)]
    status = {"resourceType": "SubscriptionStatus", "status": "active", "type": "event-notification",
              "eventsSinceSubscriptionStart": str(n_events), "eventsInNotification": n_events,
              "subscription": {"reference": "Subscription/bench"},
              "topic": "https://api.platform.athenahealth.com/fhir/r4/SubscriptionTopic/Appointment.update",
              "notificationEvent": [
                  {"eventNumber": str(i), "id": eid, "timestamp": "2026-11-24T10:00:00Z",
                   "focus": {"reference": f"Appointment/a-{PRACTICE}.Appointment-{1000000 + i}",
                             "identifier": {"system": f"urn:athenahealth:athenanet:appointment:{PRACTICE}",
                                            "value": str(1000000 + i)}}}
                  for i, eid in enumerate(ids, start=1)]}
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status}] + [
        {"fullUrl": f"urn:uuid:{eid}", "resource": {
            "resourceType": "AuditEvent", "id": eid,
            "type": {"system": "https://fhir.athena.io/CodeSystem/SubscriptionTopic", "code": "Appointment.update"},
            "recorded": "2026-11-24T10:00:00Z",
            "source": {"observer": {"reference": f"Organization/a-1.Practice-{PRACTICE}"}},
            "entity": [{"what": {"reference": f"Appointment/a-{PRACTICE}.Appointment-{1000000 + i}"}}]}}
        for i, eid in enumerate(ids, start=1)]
    doc = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "history",
           "timestamp": "2026-11-24T10:00:01Z", "entry": entries}
    return json.dumps(doc, separators=(",", ":")).encode(), ids


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_receiver(inbox: Path, fsync: bool) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).with_name("athena-pipeline")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "athena_pipeline.cli"]),
           "--log-level", "WARNING", "webhook", "serve", "--port", "0", "--inbox", str(inbox),
           "--fsync" if fsync else "--no-fsync"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "WEBHOOK_SECRET": SECRET})
    line = proc.stdout.readline()
    if not line.startswith("webhook receiver:"):
        proc.kill()
        raise SystemExit(f"the receiver did not start: {line!r}")
    return proc, line.split("url=", 1)[1].split()[0]


class _Closed(Exception):
    """The server closed the connection before answering."""


class _Pool:
    """Keep-alive HTTP/1.1 connections over raw asyncio streams.

    Why not httpx here: at hundreds of requests a second its per-request overhead in the *load
    generator* (same two cores as the receiver) showed up as receiver latency. Requests are
    pre-serialised bytes; a response is read by its Content-Length. A new connection is opened
    whenever none is idle, so the load stays open loop.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def send(self, raw: bytes) -> int:
        if self.idle:
            reader, writer = self.idle.pop()
            try:
                return await self._exchange(reader, writer, raw)
            except (OSError, asyncio.IncompleteReadError, _Closed):
                writer.close()  # the server closed this idle keep-alive connection: reconnect, resend
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.opened += 1
        return await self._exchange(reader, writer, raw)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
        writer.write(raw)
        await writer.drain()
        first = await reader.readline()
        if not first:
            raise _Closed
        status = int(first.split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


def raw_request(url: str, body: bytes) -> bytes:
    split = urlsplit(url)
    head = (f"POST {split.path} HTTP/1.1\r\nHost: {split.netloc}\r\n"
            f"Content-Type: application/fhir+json\r\nX-Hub-Signature: {sign(SECRET, body)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


async def run_load(url: str, rate: float, seconds: float, n_events: int) -> dict:
    total = int(rate * seconds)
    requests = [(raw_request(url, body), ids) for body, ids in (bundle(n_events) for _ in range(total + 1))]
    latencies: list[float] = []
    sched_latencies: list[float] = []
    statuses: dict[str, int] = {}
    acked: list[str] = []
    split = urlsplit(url)
    pool = _Pool(split.hostname or "127.0.0.1", split.port or 80)
    warm, warm_ids = requests.pop()  # warm up: a connection, the receiver's first commit
    if await pool.send(warm) == 200:
        acked += warm_ids

    async def one(i: int, scheduled: float) -> None:
        raw, ids = requests[i]
        started = time.perf_counter()
        try:
            key = str(await asyncio.wait_for(pool.send(raw), 10))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, _Closed) as exc:
            key = type(exc).__name__
        done = time.perf_counter()
        statuses[key] = statuses.get(key, 0) + 1
        if key == "200":
            latencies.append((done - started) * 1000)
            sched_latencies.append((done - scheduled) * 1000)
            acked.extend(ids)

    tasks = []
    t0 = time.perf_counter() + 0.2
    for i in range(total):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    pool.close()
    return {"requests": total, "events": total * n_events, "elapsed_seconds": elapsed,
            "achieved_rate": total / elapsed, "statuses": statuses, "connections": pool.opened,
            "latencies_ms": latencies, "sched_latencies_ms": sched_latencies, "acked": acked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second [200]")
    ap.add_argument("--seconds", type=float, default=60.0, help="duration [60]")
    ap.add_argument("--events", type=int, default=1, help="events per notification [1]")
    ap.add_argument("--no-fsync", dest="fsync", action="store_false", help="synchronous=NORMAL inbox")
    ap.add_argument("--out", type=Path, default=None, help="results JSON [benchmarks/results/webhook.json]")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_webhook_") as tmp:
        inbox = Path(tmp) / "events.sqlite"
        proc, url = start_receiver(inbox, args.fsync)
        try:
            try:
                import uvloop  # the generator's own overhead is part of what we measure: keep it low
                runner = uvloop.run
            except ImportError:
                runner = asyncio.run
            result = runner(run_load(url, args.rate, args.seconds, args.events))
            health = httpx.get(url.replace("/webhook", "/health"), timeout=10).json()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        con = sqlite3.connect(inbox)
        stored = {r[0] for r in con.execute("SELECT event_id FROM events")}
        con.close()

    lat, sched = result.pop("latencies_ms"), result.pop("sched_latencies_ms")
    acked = result.pop("acked")
    summary = {
        "rate": args.rate, "seconds": args.seconds, "events_per_request": args.events, "fsync": args.fsync,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        # the machine's 1-minute load average before/after: latency tails follow it on shared hosts
        "loadavg_before": round(load_before, 2), "loadavg_after": round(os.getloadavg()[0], 2),
        **result,
        "ack_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "p999": pct(lat, 99.9),
                   "max": max(lat), "mean": sum(lat) / len(lat)} if lat else {},
        "sched_p99_ms": pct(sched, 99) if sched else None,
        "inbox_commits": health.get("commits"),
        "server_ack_ms": health.get("ack_ms"),
        "acked_events": len(acked), "acked_events_missing_from_inbox": len(set(acked) - stored),
        "target_p99_ms": 20.0,
    }
    summary["meets_target"] = bool(lat) and summary["ack_ms"]["p99"] < 20.0 and \
        summary["acked_events_missing_from_inbox"] == 0 and set(result["statuses"]) == {"200"}
    out = args.out or ROOT / "benchmarks" / "results" / ("webhook.json" if args.fsync else "webhook_nofsync.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")

    a = summary["ack_ms"]
    print("| load | fsync | requests | non-2xx | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rate:g} req/s x {args.seconds:g} s, {args.events} event(s)/req | {'yes' if args.fsync else 'no'} "
          f"| {result['requests']:,} | {sum(v for k, v in result['statuses'].items() if k != '200')} "
          f"| {a.get('p50', 0):.1f} | {a.get('p90', 0):.1f} | {a.get('p99', 0):.1f} | {a.get('p999', 0):.1f} "
          f"| {a.get('max', 0):.1f} | {summary['acked_events_missing_from_inbox']} |")
    server = summary["server_ack_ms"] or {}
    print(f"server side: p50 {server.get('p50', 0):.1f} ms, p99 {server.get('p99', 0):.1f} ms; "
          f"{result['connections']} connection(s)")
    print(f"achieved {result['achieved_rate']:.1f} req/s; {summary['inbox_commits']} inbox commits "
          f"(group commit); results in {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
