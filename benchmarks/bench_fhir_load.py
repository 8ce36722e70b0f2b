"""Benchmark: loading a landed FHIR bulk export into the warehouse vs bare DuckDB reads of the same files.

Builds an export folder like the bulk-export client lands (``{Type}.{NNN}.ndjson`` + ``export.json``,
10,000 resources per file as the emulator and athenahealth serve them) from a sandbox world's
``fhir.duckdb`` with DuckDB ``COPY`` (generating the world first unless ``--world`` names one), then
times each step in a fresh subprocess (so peak RSS and CPU time are that step's own), all under the
same DuckDB ``memory_limit`` (``--memory-limit``, what ``WAREHOUSE_MEMORY_LIMIT`` sets for a load):

* ``count``        — ``SELECT count(*) FROM read_ndjson_objects(<all files>)``: reading only;
* ``copy_default`` — ``CREATE TABLE t AS SELECT json FROM read_ndjson_objects(<all files>)`` into a
  new DuckDB file, DuckDB's defaults: the bare read-and-persist floor the issue names;
* ``copy``         — the same into a column declared ``JSON USING COMPRESSION zstd``, the storage
  choice the loader makes for ``resource``: the strictest floor (no keys, no line numbers, no
  checks, no upsert, one parallel multi-file scan);
* ``copy_types``   — the ``copy`` split the way the loader must store it: one zstd table per resource
  type, one ``INSERT`` per type, all in one transaction (still no keys, line numbers or checks).
  What that contract alone costs over ``copy`` is not the loader's doing;
* ``load``         — :func:`load_fhir_export` into an empty warehouse (a first load: the fast path);
* ``reload``       — the same export again into that warehouse (every line ``unchanged``).

Every step ends with a ``CHECKPOINT`` (the data is in the database file, not only in the WAL). The
steps run in rounds (each round runs every step once), and the best round of each step is reported,
so that all steps see the same background load of a shared machine. CPU seconds (user + system of
the step's process, over the same span as the wall time: interpreter start-up and imports are left
out of both) are reported beside wall time: on a busy machine they vary less.

    .venv/bin/python benchmarks/bench_fhir_load.py --world .sandbox/world
    .venv/bin/python benchmarks/bench_fhir_load.py --providers 3 --per-file 100000 --memory-limit 2GB

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
step, export_dir, db, memory_limit = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] or None
files = sorted(str(p) for p in export_dir.glob("*.ndjson"))
reader = "read_ndjson_objects(?, ignore_errors = true)"
if step in ("load", "reload"):
    from athena_pipeline.warehouse.connection import connect
    from athena_pipeline.warehouse.fhir_loader import load_fhir_export
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
t, cpu0 = time.perf_counter(), cpu()
out = {}
if step == "count":
    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    out["rows"] = con.execute(f"SELECT count(*) FROM {reader}", [files]).fetchone()[0]
elif step in ("copy", "copy_default"):
    con = duckdb.connect(db)
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    if step == "copy":  # the loader's storage choice for the resource column
        con.execute("CREATE TABLE t (json JSON USING COMPRESSION zstd)")
        con.execute(f"INSERT INTO t SELECT json FROM {reader}", [files])
    else:
        con.execute(f"CREATE TABLE t AS SELECT json FROM {reader}", [files])
    con.execute("CHECKPOINT")
    out["rows"] = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
elif step == "copy_types":  # the loader's contract: one zstd table per type, one transaction
    con = duckdb.connect(db)
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    by_type = {}
    for f in files:
        by_type.setdefault(Path(f).name.split(".")[0], []).append(f)
    con.execute("BEGIN TRANSACTION")
    for rtype, paths in sorted(by_type.items()):
        con.execute(f'CREATE TABLE "{rtype.lower()}" (json JSON USING COMPRESSION zstd)')
        con.execute(f'INSERT INTO "{rtype.lower()}" SELECT json FROM {reader}', [paths])
    con.execute("COMMIT")
    con.execute("CHECKPOINT")
    out["rows"] = sum(con.execute(f'SELECT count(*) FROM "{t.lower()}"').fetchone()[0] for t in by_type)
    con.close()
else:
    with connect(db, memory_limit=memory_limit) as con:
        r = load_fhir_export(con, export_dir)
        con.execute("CHECKPOINT")
    out.update(rows=r.lines_read, inserted=r.inserted, updated=r.updated, unchanged=r.unchanged,
               quarantined=r.quarantined, mismatches=len(r.count_mismatches))
out["seconds"] = time.perf_counter() - t
out["cpu_seconds"] = cpu() - cpu0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child spawned (vfork) by a parent
# that has just written the export would report the parent's peak.
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
out["db_mb"] = Path(db).stat().st_size / 2**20 if Path(db).exists() else 0.0
print(json.dumps(out))
"""

STEPS = ("count", "copy_default", "copy", "copy_types", "load", "reload")


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


def run(step: str, export_dir: Path, db: Path, memory_limit: str | None = None) -> dict:
    """One step in a fresh process; ``reload`` loads into ``db`` as it is, the others start from scratch.

    Also used by ``bench_extract.py`` for its floor steps (``count``, ``copy``, ``load``).
    """
    if step != "reload":
        for p in (db, Path(f"{db}.wal")):
            p.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, "reload" if step == "reload" else step, str(export_dir),
                           str(db), memory_limit or ""], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="an existing sandbox world (default: generate one)")
    ap.add_argument("--providers", type=int, default=15, help="providers of the generated world [15]")
    ap.add_argument("--export", type=Path, help="an export folder written by an earlier run (skips writing one)")
    ap.add_argument("--per-file", type=int, default=10_000, help="resources per NDJSON file [10000]")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of all steps; the best of each is reported [2]")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit of every step ('' for none) [1GB]")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_fhir_") as tmp:
        tmp_path = Path(tmp)
        export_dir = args.export
        if export_dir is None:
            world = args.world
            if world is None:
                from athena_pipeline.sandbox.generate import generate_world
                from athena_pipeline.sandbox.world import WorldOptions
                world = tmp_path / "world"
                generate_world(world, WorldOptions(providers=args.providers))
            export_dir = tmp_path / "export"
            write_export(world / "fhir.duckdb", export_dir, args.per_file)
        manifest = json.loads((export_dir / "export.json").read_text())
        size_mb = sum(f["bytes"] for f in manifest["files"]) / 1e6

        results: dict[str, dict] = {}
        for _ in range(args.rounds):
            for step in STEPS:
                db = tmp_path / f"{'load' if step == 'reload' else step}.duckdb"
                r = run(step, export_dir, db, args.memory_limit or None)
                if step not in results or r["seconds"] < results[step]["seconds"]:
                    results[step] = r

    base, bare, strict, typed = (results[s]["seconds"] for s in ("count", "copy_default", "copy", "copy_types"))
    strict_cpu = results["copy"]["cpu_seconds"]
    print(f"\nFHIR export: {results['count']['rows']:,} resources, {len(manifest['files'])} files, "
          f"{size_mb:,.0f} MB; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"memory_limit {args.memory_limit or 'none'}, best of {args.rounds} rounds\n")
    print("| step | seconds | CPU s | rows/s | MB/s | x read | x bare copy | x zstd copy | x zstd copy (CPU) "
          "| x per-type copy | peak RSS MiB | file MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for step, r in results.items():
        print(f"| {step} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['rows'] / r['seconds']:,.0f} | "
              f"{size_mb / r['seconds']:,.0f} | {r['seconds'] / base:.1f} | {r['seconds'] / bare:.2f} | "
              f"{r['seconds'] / strict:.2f} | {r['cpu_seconds'] / strict_cpu:.2f} | {r['seconds'] / typed:.2f} | "
              f"{r['peak_rss_mb']:,.0f} | {r['db_mb']:,.0f} |")
    out = Path(__file__).parent / "results" / "fhir_load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"resources": results["count"]["rows"], "files": len(manifest["files"]),
                               "megabytes": size_mb, "cpus": os.cpu_count(), "memory_limit": args.memory_limit,
                               "rounds": args.rounds, "steps": results,
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
