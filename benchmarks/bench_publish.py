"""Benchmark: publishing the 15-provider world's marts into Caspio (the emulator at ~300 ms per call).

Steps, all with the project's own code:

1. **Marts** (skipped with ``--warehouse``, which reuses a built one): the world's FHIR rendering
   written as bulk-export NDJSON and loaded with the FHIR loader, its Data View tables loaded with the
   Data View loader, then ``dbt run --select +marts`` at the world's clock into a temp
   ``warehouse.duckdb`` (dbt's target and logs in the temp dir, never ``dbt_project/target``).
2. **Caspio**: the emulator on loopback with ``--latency-ms`` per call (default 300, Caspio's measured
   latency), ``CASPIO_API_VERSION=v3`` (one POST per row), ``--concurrency`` parallel calls, no
   client-side throttle. Calls are counted by the emulator (``/_emulator/stats``).
3. **Runs**: the initial publish of every aggregate mart (patient-level ones stay out, the default),
   an unchanged re-publish, then ~2 % of each mart's rows changed and published again; and, for
   comparison, the initial publish again through v4 bulk insert. Each reports calls by kind,
   writes, wall time and calls per second (v3 runs: against the ceiling).
4. **Throughput vs concurrency**: ``--sweep-rows`` rows of the biggest mart inserted into an existing
   table at several concurrencies, compared with the ceiling ``concurrency / latency`` calls per
   second (target: at least 90 %). "Insert phase" is the table's Caspio part (POSTs, journal writes);
   "end to end" adds the client start, the token and the two warehouse steps.

    .venv/bin/python benchmarks/bench_publish.py                        # .sandbox/world, build the marts
    .venv/bin/python benchmarks/bench_publish.py --warehouse /tmp/x/warehouse.duckdb --latency-ms 300

Prints a markdown table (the README's) and writes ``benchmarks/results/publish.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from athena_pipeline.athena.dataview import DuckDBDataViewSource
from athena_pipeline.athena.dataview_catalog import CATALOG
from athena_pipeline.caspio.publish import client_for, mart_catalog, publish, warehouse_factory
from athena_pipeline.sandbox.caspio.config import CaspioConfig
from athena_pipeline.sandbox.caspio.server import run_caspio_in_thread
from athena_pipeline.sandbox.world import World
from athena_pipeline.settings import Settings
from athena_pipeline.warehouse.connection import connect
from athena_pipeline.warehouse.dataview_loader import load_dataview_batches
from athena_pipeline.warehouse.fhir_loader import load_fhir_directory
from tests.dbt.test_staging import export_fhir_ndjson, run_dbt

RESULTS = REPO / "benchmarks" / "results" / "publish.json"


def build_marts(world: World, work: Path) -> tuple[Path, dict[str, float]]:
    """A warehouse with every mart of ``world``, built as a user would; returns it and step timings."""
    timings: dict[str, float] = {}
    warehouse = work / "warehouse.duckdb"
    t = time.perf_counter()
    export_fhir_ndjson(world, work / "export")
    with connect(warehouse, memory_limit="2GB") as con:
        load_fhir_directory(con, work / "export")
        timings["load_fhir_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with DuckDBDataViewSource(world.dataview_path) as source:
            for entry in CATALOG:
                load_dataview_batches(con, entry.name, source.fetch(entry.name), window=(None, None), run_id="bench")
    timings["load_dataview_s"] = time.perf_counter() - t
    shutil.rmtree(work / "export", ignore_errors=True)
    t = time.perf_counter()
    for args in (("seed",), ("run", "--select", "+path:models/marts")):
        result = run_dbt(warehouse, *args, "--vars", json.dumps({"as_of_date": world.current_date.isoformat()}))
        if result.returncode != 0:
            raise SystemExit(f"dbt {args[0]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    timings["dbt_run_s"] = time.perf_counter() - t
    return warehouse, timings


def mart_rows(warehouse: Path) -> dict[str, int]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = 'marts' ORDER BY 1").fetchall()]
        return {n: con.execute(f'SELECT count(*) FROM marts."{n}"').fetchall()[0][0] for n in names}


def change_two_percent(warehouse: Path) -> dict[str, int]:
    """Change ~2 % of each published mart's rows: a numeric column that is not part of the grain."""
    changed: dict[str, int] = {}
    catalog = mart_catalog()
    with duckdb.connect(str(warehouse)) as con:
        for mart, info in catalog.items():
            if info.contains_phi or not info.grain:
                continue
            cols = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                               "'marts' AND table_name = ? ORDER BY ordinal_position", [mart]).fetchall()
            numeric = [c for c, t in cols if c not in info.grain and t.split("(")[0] in
                       ("BIGINT", "INTEGER", "DOUBLE", "DECIMAL", "HUGEINT")]
            if not numeric:
                continue
            grain = ", ".join(f'"{g}"' for g in info.grain)
            n = con.execute(f'UPDATE marts."{mart}" SET "{numeric[0]}" = coalesce("{numeric[0]}", 0) + 1 '
                            f"WHERE hash({grain}) % 50 = 0").fetchall()[0][0]
            changed[mart] = int(n)
    return changed


def stats(base_url: str) -> dict[str, int]:
    return httpx.get(f"{base_url}/_emulator/stats", timeout=30).json()["by_route"]


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def run_publish(settings: Settings, base_url: str, marts: list[str] | None = None) -> dict:
    before = stats(base_url)
    t = time.perf_counter()
    with client_for(settings, force=True) as client:
        results = publish(warehouse_factory(settings), client, marts, settings=settings, force=True)
    wall = time.perf_counter() - t
    calls = calls_between(before, stats(base_url))
    writes = sum(r.writes for r in results)
    total = sum(calls.values())
    # the Caspio part alone (per table: schema, read-back, writes), without the warehouse steps
    caspio_s = sum(r.duration_s for r in results if r.status != "skipped")
    caspio_calls = sum(r.calls for r in results if r.status != "skipped")
    return {
        "wall_s": round(wall, 2), "calls": total, "calls_by_route": calls, "writes": writes,
        "caspio_s": round(caspio_s, 2),
        "caspio_calls_per_s": round(caspio_calls / caspio_s, 2) if caspio_s else 0.0,
        "tables": {r.table: {"status": r.status, "rows": r.rows, "inserted": r.inserted, "updated": r.updated,
                             "deleted": r.deleted, "calls": r.calls, "seconds": round(r.duration_s, 2)}
                   for r in results if r.status != "skipped"},
        "calls_per_s": round(total / wall, 2) if wall else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=REPO / ".sandbox" / "world")
    parser.add_argument("--warehouse", type=Path, default=None, help="a built warehouse.duckdb to reuse (copied)")
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sweep", default="1,2,4,8", help="concurrencies for the throughput sweep")
    parser.add_argument("--sweep-rows", type=int, default=200, help="rows inserted per sweep point")
    parser.add_argument("--keep", type=Path, default=None, help="copy the built warehouse here for reuse")
    parser.add_argument("--build-only", action="store_true", help="build the marts (with --keep) and stop")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    world = World.load(args.world)
    report: dict = {"world": {"dir": str(args.world), **json.loads((args.world / "world.json").read_text())},
                    "latency_ms": args.latency_ms, "concurrency": args.concurrency,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    if args.warehouse:
        warehouse = work / "warehouse.duckdb"
        shutil.copy(args.warehouse, warehouse)
        report["build"] = {"reused": str(args.warehouse)}
    else:
        print("building the marts ...", flush=True)
        warehouse, timings = build_marts(world, work)
        report["build"] = {k: round(v, 1) for k, v in timings.items()}
        if args.keep:
            args.keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(warehouse, args.keep)
        if args.build_only:
            print(json.dumps({"build": report["build"], "mart_rows": mart_rows(warehouse)}, indent=2))
            shutil.rmtree(work, ignore_errors=True)
            return
    report["mart_rows"] = mart_rows(warehouse)
    print(f"marts: {report['mart_rows']}", flush=True)

    config = CaspioConfig(latency_seconds=args.latency_ms / 1000.0)
    with run_caspio_in_thread(work / "caspio", config) as caspio:
        settings = dataclasses.replace(
            Settings.from_env({}), warehouse_path=warehouse, caspio_base_url=caspio.base_url,
            caspio_api_version="v3", caspio_concurrency=args.concurrency, caspio_requests_per_second=0,
            caspio_reconcile_every=0, caspio_table_prefix="ap_")
        ceiling = args.concurrency / (args.latency_ms / 1000.0)
        runs = {}
        for name in ("initial", "unchanged"):
            print(f"publish: {name} ...", flush=True)
            runs[name] = run_publish(settings, caspio.base_url)
        report["changed_rows"] = change_two_percent(warehouse)
        print(f"publish: 2% changed ({sum(report['changed_rows'].values())} rows) ...", flush=True)
        runs["two_percent_changed"] = run_publish(settings, caspio.base_url)
        # the same initial publish through v4 bulk insert (1,000 rows a call), into fresh tables
        v4_wh = work / "v4" / "warehouse.duckdb"
        v4_wh.parent.mkdir()
        shutil.copy(warehouse, v4_wh)
        with duckdb.connect(str(v4_wh)) as con:
            con.execute("DROP SCHEMA IF EXISTS publish CASCADE")
        print("publish: initial, v4 bulk ...", flush=True)
        runs["initial_v4_bulk"] = run_publish(dataclasses.replace(
            settings, warehouse_path=v4_wh, caspio_api_version="v4", caspio_table_prefix="v4_"), caspio.base_url)
        for run in runs.values():
            run["efficiency"] = round(run["caspio_calls_per_s"] / ceiling, 3) if run["calls"] else None
        report["runs"] = runs

        # throughput vs concurrency: the first sweep-rows rows of the biggest aggregate mart, fresh tables
        biggest = max((m for m, info in mart_catalog().items() if not info.contains_phi and m in report["mart_rows"]),
                      key=lambda m: report["mart_rows"][m])
        sweep = []
        for c in [int(x) for x in args.sweep.split(",") if x.strip()]:
            sweep_wh = work / f"sweep{c}" / "warehouse.duckdb"
            sweep_wh.parent.mkdir()
            s = dataclasses.replace(settings, warehouse_path=sweep_wh, caspio_concurrency=c,
                                    caspio_table_prefix=f"c{c}_")
            # first one row (the table is created: sequential schema calls), then the rest: inserts only
            for limit in (1, args.sweep_rows + 1):
                with duckdb.connect(str(sweep_wh)) as con:
                    con.execute(f"ATTACH '{warehouse}' AS src (READ_ONLY)")
                    con.execute("CREATE SCHEMA IF NOT EXISTS marts")
                    con.execute(f'CREATE OR REPLACE TABLE marts."{biggest}" AS SELECT * FROM src.marts."{biggest}" '
                                f"ORDER BY ALL LIMIT {limit}")
                print(f"sweep: concurrency {c}, {limit} row(s) ...", flush=True)
                run = run_publish(s, caspio.base_url, [biggest])
            posts = run["calls_by_route"].get("POST /integrations/rest/v3/tables/{table}/records", 0)
            table = next(iter(run["tables"].values()))
            rate = posts / table["seconds"] if table["seconds"] else 0.0  # the insert phase
            end_to_end = posts / run["wall_s"] if run["wall_s"] else 0.0  # + client, token, warehouse steps
            ideal = c / (args.latency_ms / 1000.0)
            sweep.append({"concurrency": c, "rows": posts, "calls": run["calls"], "seconds": table["seconds"],
                          "wall_s": run["wall_s"], "calls_per_s": round(rate, 2),
                          "end_to_end_calls_per_s": round(end_to_end, 2), "ceiling_per_s": round(ideal, 2),
                          "efficiency": round(rate / ideal, 3), "end_to_end_efficiency": round(end_to_end / ideal, 3)})
        report["sweep"] = {"mart": biggest, "points": sweep}

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    shutil.rmtree(work, ignore_errors=True)


def print_table(report: dict) -> None:
    lat, conc = report["latency_ms"], report["concurrency"]
    print(f"\nCaspio emulator at {lat:.0f} ms per call, v3, concurrency {conc} "
          f"(ceiling {conc / (lat / 1000):.1f} calls/s)\n")
    print("| run | calls | writes | wall time | Caspio part | calls/s (Caspio part) | of ceiling |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, run in report["runs"].items():
        eff = f"{run['efficiency'] * 100:.0f} %" if run["efficiency"] is not None and "v4" not in name else "-"
        print(f"| {name.replace('_', ' ')} | {run['calls']:,} | {run['writes']:,} | {run['wall_s']:.1f} s | "
              f"{run['caspio_s']:.1f} s | {run['caspio_calls_per_s']:.1f} | {eff} |")
    print(f"\nThroughput vs concurrency ({report['sweep']['points'][0]['rows']} inserts of "
          f"{report['sweep']['mart']} into an existing table):\n")
    print("| concurrency | insert phase | calls/s | ceiling | efficiency | end to end |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in report["sweep"]["points"]:
        print(f"| {p['concurrency']} | {p['seconds']:.1f} s | {p['calls_per_s']:.1f} | {p['ceiling_per_s']:.1f} | "
              f"{p['efficiency'] * 100:.0f} % | {p['end_to_end_efficiency'] * 100:.0f} % |")


if __name__ == "__main__":
    main()
