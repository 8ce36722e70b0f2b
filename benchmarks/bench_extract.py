"""Benchmark: FHIR extraction end to end (bulk export from the emulator, then the load), with the load
stage compared, in the same run and on the same landed files, to bare DuckDB reads of those files.

Runs the sandbox emulator (``athena-pipeline sandbox serve``) in its own process on a world (generated
with ``--providers`` unless ``--world`` names one), then, each step in a fresh subprocess so its peak
RSS is its own:

* ``export``       — :func:`athena_pipeline.extract.export_fhir`: kick-off, poll, parallel downloads
  with line-count and JSON checks, into ``LANDING_DIR`` (network and disk only);
* ``load``         — :func:`athena_pipeline.extract.load_fhir` of that export into an empty warehouse
  (what ``athena-pipeline extract fhir`` and the ``raw_fhir`` asset run), with
  ``WAREHOUSE_MEMORY_LIMIT`` = ``--memory-limit``;
* ``count``, ``copy``, ``load (no limit)`` — ``benchmarks/bench_fhir_load.py``'s steps on the same
  output files: ``SELECT count(*) FROM read_ndjson_objects(...)`` (the read floor), ``CREATE TABLE AS
  SELECT json FROM read_ndjson_objects(...)`` (the read-and-persist floor) and the loader without a
  memory limit.

    .venv/bin/python benchmarks/bench_extract.py                      # the 15-provider world
    .venv/bin/python benchmarks/bench_extract.py --world .sandbox/world --memory-limit 1GB

Prints a markdown table (the README's) and writes ``benchmarks/results/extract.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fhir_load import run as run_floor_step  # the shared floor steps

EXE = Path(sys.executable).with_name("athena-pipeline")

CHILD = r"""
import json, sys, time
from pathlib import Path
from athena_pipeline.settings import Settings
from athena_pipeline import extract
step, arg = sys.argv[1], sys.argv[2]
settings = Settings.from_env()
t = time.perf_counter()
if step == "export":
    r = extract.export_fhir(settings, full=True)
    out = {"rows": sum(r.counts.values()), "files": r.files, "bytes": r.bytes, "calls": r.calls,
           "export_dir": str(r.export_dir)}
else:
    r = extract.load_fhir(settings, Path(arg))
    out = {"rows": r.lines_read, "inserted": r.inserted, "files": r.files, "bytes": r.bytes,
           "mismatches": len(r.count_mismatches)}
out["seconds"] = time.perf_counter() - t
# VmHWM: this process image's own peak (ru_maxrss would include the parent's size at fork time)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def child(step: str, arg: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, step, arg], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_emulator(world: Path) -> tuple[subprocess.Popen, str]:
    """The emulator in its own process (its CPU and memory are not the client's); returns its base URL."""
    proc = subprocess.Popen([str(EXE), "--log-level", "warning", "sandbox", "serve", "--world", str(world),
                             "--port", "0", "--export-delay", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"base=(http://127\.0\.0\.1:\d+) ", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return proc, match.group(1)


def floor_folder(export_dir: Path, to: Path) -> Path:
    """The export's output files and export.json, hard-linked into a folder of their own (the floor
    steps read ``*.ndjson``; the landing folder also holds the client's api_calls.ndjson)."""
    to.mkdir()
    doc = json.loads((export_dir / "export.json").read_text())
    for entry in doc["files"]:
        os.link(export_dir / entry["path"], to / entry["path"])
    os.link(export_dir / "export.json", to / "export.json")
    return to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="an existing sandbox world (default: generate one)")
    ap.add_argument("--providers", type=int, default=15, help="providers of the generated world [15]")
    ap.add_argument("--memory-limit", default="1GB", help="WAREHOUSE_MEMORY_LIMIT for the load [1GB]")
    ap.add_argument("--concurrency", type=int, default=4, help="ATHENA_BULK_CONCURRENCY [4]")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        tmp_path = Path(tmp)
        world = args.world
        if world is None:
            # in a subprocess: this process must stay small, its size at fork time shows up in the
            # floor steps' ru_maxrss (bench_fhir_load measures with it)
            world = tmp_path / "world"
            print(f"generating a {args.providers}-provider world ...", flush=True)
            script = ("import sys; from pathlib import Path; "
                      "from athena_pipeline.sandbox.generate import generate_world; "
                      "from athena_pipeline.sandbox.world import WorldOptions; "
                      "generate_world(Path(sys.argv[1]), WorldOptions(providers=int(sys.argv[2])))")
            subprocess.run([sys.executable, "-c", script, str(world), str(args.providers)], check=True)
        emulator, base = start_emulator(world)
        try:
            from athena_pipeline.settings import ENV_VARS

            env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
            env.update(ATHENA_FHIR_BASE_URL=f"{base}/fhir/r4", ATHENA_TOKEN_URL=f"{base}/oauth2/v1/token",
                       ATHENA_REQUESTS_PER_SECOND="1000", ATHENA_BULK_CONCURRENCY=str(args.concurrency),
                       ATHENA_BULK_POLL_SECONDS="1", LANDING_DIR=str(tmp_path / "landing"),
                       WAREHOUSE_PATH=str(tmp_path / "warehouse.duckdb"), WAREHOUSE_MEMORY_LIMIT=args.memory_limit)
            print("export ...", flush=True)
            export = child("export", "", env)
        finally:
            emulator.send_signal(signal.SIGINT)
            emulator.wait(timeout=60)
        export_dir = Path(export["export_dir"])
        print("load ...", flush=True)
        load = child("load", str(export_dir), env)
        floor_dir = floor_folder(export_dir, tmp_path / "floor")
        results = {"export": export, "load": load}
        for step, label in (("count", "count"), ("copy", "copy"), ("load", "load_no_limit")):
            print(f"{label} ...", flush=True)
            db = tmp_path / f"{label}.duckdb"
            results[label] = run_floor_step(step, floor_dir, db)

    megabytes = export["bytes"] / 1e6
    count, copy = results["count"]["seconds"], results["copy"]["seconds"]
    e2e = export["seconds"] + load["seconds"]
    print(f"\nFHIR extract: {export['rows']:,} resources, {export['files']} files, {megabytes:,.0f} MB; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; export + load {e2e:.1f} s "
          f"({export['rows'] / e2e:,.0f} rows/s)\n")
    print("| step | seconds | rows/s | MB/s | x read floor | x read+persist floor | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("export (emulator -> landing)", export), (f"load (memory limit {args.memory_limit})", load),
            ("load (no memory limit)", results["load_no_limit"]),
            ("floor: count(*) read_ndjson_objects", results["count"]),
            ("floor: CREATE TABLE AS read_ndjson_objects", results["copy"])]
    for label, r in rows:
        print(f"| {label} | {r['seconds']:.2f} | {r['rows'] / r['seconds']:,.0f} | {megabytes / r['seconds']:,.0f} | "
              f"{r['seconds'] / count:.1f} | {r['seconds'] / copy:.2f} | {r['peak_rss_mb']:,.0f} |")
    out = Path(__file__).parent / "results" / "extract.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"resources": export["rows"], "files": export["files"], "megabytes": megabytes,
                               "cpus": os.cpu_count(), "memory_limit": args.memory_limit,
                               "export_plus_load_seconds": e2e, "steps": results,
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
