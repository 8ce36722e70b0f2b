"""Benchmark: sandbox world generation time and peak memory, by practice size.

Each size runs in a fresh subprocess (so peak RSS is that run's own) and is timed end to end:
facts timeline + as-of materialisation + Data View rendering + FHIR rendering + ground truth.

    .venv/bin/python benchmarks/bench_generate.py --providers 15 150

Results are printed as a markdown table and written to benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, logging
from pathlib import Path
from athena_pipeline.sandbox.world import WorldOptions
from athena_pipeline.sandbox.generate import generate_world
import duckdb
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
t = time.perf_counter()
w = generate_world(Path(sys.argv[1]), WorldOptions(seed=42, providers=int(sys.argv[2])))
elapsed = time.perf_counter() - t
con = duckdb.connect(str(w.facts_path), read_only=True)
rows = sum(con.execute(f"SELECT count(*) FROM main.{t}").fetchone()[0] for (t,) in con.execute(
    "SELECT table_name FROM duckdb_tables() WHERE schema_name='main'").fetchall())
patients = con.execute("SELECT count(*) FROM patients").fetchone()[0]
fhir = duckdb.connect(str(w.fhir_path), read_only=True).execute("SELECT count(*) FROM resources").fetchone()[0]
print(json.dumps({"seconds": elapsed, "fact_rows": rows, "patients": patients, "fhir_resources": fhir}))
"""


def run(providers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(Path(tmp) / "world"), str(providers)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"generating {providers} providers failed:\n{out.stderr[-4000:]}")
        wall = time.perf_counter() - t
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = json.loads(out.stdout.strip().splitlines()[-1])
        size = sum(f.stat().st_size for f in (Path(tmp) / "world").glob("*.duckdb"))
    return {"providers": providers, **result, "process_seconds": wall,
            "peak_rss_mib": round(max(peak_kb, before) / 1024), "world_mib": round(size / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--providers", type=int, nargs="+", default=[15])
    args = ap.parse_args()
    results = [run(p) for p in args.providers]
    print("| providers | patients | fact rows | FHIR resources | generate (s) | peak RSS (MiB) | world on disk (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['providers']} | {r['patients']:,} | {r['fact_rows']:,} | {r['fhir_resources']:,} | "
              f"{r['seconds']:.1f} | {r['peak_rss_mib']:,} | {r['world_mib']:,} |")
    out = Path(__file__).parent / "results" / "generate.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
