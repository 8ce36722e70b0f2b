"""Benchmark: loading a landed FHIR bulk export into the warehouse vs bare DuckDB reads of the same files.

Builds an export folder like the bulk-export client lands (``{Type}.{NNN}.ndjson`` + ``export.json``)
from a sandbox world's ``fhir.duckdb`` with DuckDB ``COPY`` (generating the world first unless
``--world`` names one), then times, each in a fresh subprocess (so peak RSS is that step's own):

* ``count``  — ``SELECT count(*) FROM read_ndjson_objects(<all files>)``: the floor, reading only;
* ``copy``   — ``CREATE TABLE ... AS SELECT json FROM read_ndjson_objects(...)`` into a new DuckDB
  file (zstd, as the loader writes): the floor for reading *and persisting* the same bytes, with no
  keys, checks or upsert;
* ``load``   — :func:`load_fhir_export` into an empty warehouse (first load);
* ``reload`` — the same export again (every line ``unchanged``).

    .venv/bin/python benchmarks/bench_fhir_load.py --providers 3
    .venv/bin/python benchmarks/bench_fhir_load.py --world .sandbox/world --per-file 50000

Prints a markdown table and writes ``benchmarks/results/fhir_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import duckdb
step, export_dir, db = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
files = sorted(str(p) for p in export_dir.glob("*.ndjson"))
t = time.perf_counter()
out = {}
if step == "count":
    out["rows"] = duckdb.connect().execute("SELECT count(*) FROM read_ndjson_objects(?)", [files]).fetchone()[0]
elif step == "copy":
    con = duckdb.connect(db)
    con.execute("SET force_compression = 'zstd'")  # the same storage choice the loader makes
    con.execute("CREATE TABLE t AS SELECT json FROM read_ndjson_objects(?)", [files])
    con.execute("CHECKPOINT")
    out["rows"] = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
else:
    from athena_pipeline.warehouse.connection import connect
    from athena_pipeline.warehouse.fhir_loader import load_fhir_export
    with connect(db) as con:
        r = load_fhir_export(con, export_dir)
        con.execute("CHECKPOINT")
    out.update(rows=r.lines_read, inserted=r.inserted, updated=r.updated, unchanged=r.unchanged,
               quarantined=r.quarantined, mismatches=len(r.count_mismatches))
out["seconds"] = time.perf_counter() - t
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def write_export(fhir_db: Path, out_dir: Path, per_file: int, export_id: str = "bench") -> dict:
    """Write ``fhir_db``'s resources as a landed export folder; returns the manifest written."""
    import duckdb

    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("ATTACH ? AS f (READ_ONLY)", [str(fhir_db)])
    files = []
    rows = con.execute("""SELECT resource_type, count(*) FROM f.resources
                          WHERE resource IS NOT NULL GROUP BY 1 ORDER BY 1""").fetchall()
    for rtype, n in rows:
        for part in range((n + per_file - 1) // per_file):
            name = f"{rtype}.{part:03d}.ndjson"
            # Quoting and escaping off, a control character as delimiter: each JSON text verbatim.
            con.execute(f"""COPY (SELECT resource FROM f.resources WHERE resource_type = '{rtype}'
                                  AND resource IS NOT NULL ORDER BY id LIMIT {per_file} OFFSET {part * per_file})
                            TO '{out_dir / name}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x01')""")
            files.append({"type": rtype, "path": name, "count": min(per_file, n - part * per_file),
                          "bytes": (out_dir / name).stat().st_size})
    manifest = {"export_id": export_id, "kind": "full", "since": None,
                "transaction_time": "2026-11-23T23:59:59Z",
                "request": "http://127.0.0.1/fhir/r4/Group/a-1.c-195900/$export", "status_url": "",
                "types": [r[0] for r in rows], "files": files, "deleted": [], "errors": [],
                "downloaded_at": "2026-11-24T00:00:00Z"}
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def run(step: str, export_dir: Path, db: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, step, str(export_dir), str(db)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="an existing sandbox world (default: generate one)")
    ap.add_argument("--providers", type=int, default=3, help="providers of the generated world [3]")
    ap.add_argument("--per-file", type=int, default=100_000, help="resources per NDJSON file [100000]")
    ap.add_argument("--repeat", type=int, default=3, help="runs per step; the best is reported [3]")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_fhir_") as tmp:
        tmp_path = Path(tmp)
        world = args.world
        if world is None:
            from athena_pipeline.sandbox.generate import generate_world
            from athena_pipeline.sandbox.world import WorldOptions
            world = tmp_path / "world"
            generate_world(world, WorldOptions(providers=args.providers))
        export_dir = tmp_path / "export"
        manifest = write_export(world / "fhir.duckdb", export_dir, args.per_file)
        size_mb = sum(f["bytes"] for f in manifest["files"]) / 1e6

        results: dict[str, dict] = {}
        for step in ("count", "copy", "load", "reload"):
            best = None
            for i in range(args.repeat):
                db = tmp_path / f"{step}.duckdb"
                if step != "reload":
                    for p in (db, Path(f"{db}.wal")):
                        p.unlink(missing_ok=True)
                else:
                    db = tmp_path / "reload.duckdb"
                    if i == 0:
                        for p in (db, Path(f"{db}.wal")):
                            p.unlink(missing_ok=True)
                        run("load", export_dir, db)
                r = run(step, export_dir, db)
                if best is None or r["seconds"] < best["seconds"]:
                    best = r
            results[step] = best

    base, copy = results["count"]["seconds"], results["copy"]["seconds"]
    print(f"\nFHIR export: {results['count']['rows']:,} resources, {len(manifest['files'])} files, "
          f"{size_mb:,.0f} MB; {os.cpu_count()} CPUs, {platform.python_version()}, best of {args.repeat}\n")
    print("| step | seconds | rows/s | MB/s | x count(*) | x bare copy | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for step, r in results.items():
        print(f"| {step} | {r['seconds']:.2f} | {r['rows'] / r['seconds']:,.0f} | {size_mb / r['seconds']:,.0f} | "
              f"{r['seconds'] / base:.1f} | {r['seconds'] / copy:.2f} | {r['peak_rss_mb']:,.0f} |")
    out = Path(__file__).parent / "results" / "fhir_load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"resources": results["count"]["rows"], "files": len(manifest["files"]),
                               "megabytes": size_mb, "cpus": os.cpu_count(), "steps": results,
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
