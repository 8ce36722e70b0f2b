"""Benchmark: what a nightly Caspio publish costs after one real simulated day of the practice.

The question it answers: does an unattended nightly publish of the 15-provider world stay inside the
default ``CASPIO_CALL_BUDGET`` (5,000)? Each mart is rebuilt every night with a new ``as_of_date``;
the publish must write only the rows whose numbers moved, not every row.

Steps, all with the project's own code, on a *copy* of the world (the original is not advanced):

1. Day 0: the world's FHIR rendering (bulk-export NDJSON) and Data View tables loaded into a temp
   ``warehouse.duckdb``, ``dbt run --select +marts`` at the world's clock, and the initial publish
   of every aggregate mart into the Caspio emulator (v4 bulk, no latency: only the calls matter).
2. ``sandbox advance --days 1`` on the copy: a day of new visits, claims, payments, denials,
   rescheduled appointments.
3. Day 1: the new renderings upserted into the *same* warehouse (its publish state included), dbt
   again at the new clock, then the nightly publish over v3 (one call per changed row), counted by
   the emulator. Reported per mart: rows, rows changed, calls; and for comparison the calls the same
   night would cost if ``as_of_date`` were still a field of every row (every row an update).

    .venv/bin/python benchmarks/bench_nightly_publish.py --world .sandbox/world

Prints a markdown table and writes ``benchmarks/results/nightly_publish.json``.
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

from athena_pipeline.athena.dataview import DuckDBDataViewSource  # noqa: E402
from athena_pipeline.athena.dataview_catalog import CATALOG  # noqa: E402
from athena_pipeline.caspio.publish import client_for, publish, warehouse_factory  # noqa: E402
from athena_pipeline.sandbox.advance import advance_world  # noqa: E402
from athena_pipeline.sandbox.caspio.server import run_caspio_in_thread  # noqa: E402
from athena_pipeline.sandbox.world import World  # noqa: E402
from athena_pipeline.settings import Settings  # noqa: E402
from athena_pipeline.warehouse.connection import connect  # noqa: E402
from athena_pipeline.warehouse.dataview_loader import load_dataview_batches  # noqa: E402
from athena_pipeline.warehouse.fhir_loader import load_fhir_directory  # noqa: E402
from tests.dbt.test_staging import export_fhir_ndjson, run_dbt  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "nightly_publish.json"


def load_and_build(world_dir: Path, warehouse: Path, work: Path) -> float:
    """Upsert the world's current renderings into ``warehouse`` and rebuild the marts; returns seconds."""
    world = World.load(world_dir)
    t = time.perf_counter()
    export = work / "export"
    shutil.rmtree(export, ignore_errors=True)
    export_fhir_ndjson(world, export)
    with connect(warehouse, memory_limit="2GB") as con:
        load_fhir_directory(con, export)
        with DuckDBDataViewSource(world.dataview_path) as source:
            for entry in CATALOG:
                load_dataview_batches(con, entry.name, source.fetch(entry.name), window=(None, None), run_id="bench")
    shutil.rmtree(export, ignore_errors=True)
    dbt_vars = json.dumps({"as_of_date": world.current_date.isoformat()})
    for args in (("seed",), ("run", "--select", "+path:models/marts")):
        result = run_dbt(warehouse, *args, "--vars", dbt_vars)
        if result.returncode != 0:
            raise SystemExit(f"dbt {args[0]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - t


def snapshot_marts(warehouse: Path, into: Path) -> None:
    """A copy of the marts schema (to count what changed overnight)."""
    with duckdb.connect(str(into)) as con:
        con.execute(f"ATTACH '{warehouse}' AS w (READ_ONLY)")
        con.execute("CREATE SCHEMA IF NOT EXISTS marts")
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables "
                                   "WHERE table_catalog = 'w' AND table_schema = 'marts'").fetchall():
            con.execute(f'CREATE OR REPLACE TABLE marts."{name}" AS SELECT * FROM w.marts."{name}"')


def changed_rows(warehouse: Path, before: Path) -> dict[str, dict[str, int]]:
    """Per mart: rows now, rows not identical to a row of the night before, the same ignoring as_of_date."""
    out: dict[str, dict[str, int]] = {}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        con.execute(f"ATTACH '{before}' AS b (READ_ONLY)")
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = "
                                   "current_database() AND table_schema = 'marts' ORDER BY 1").fetchall():
            cols = [c for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
                "AND table_schema = 'marts' AND table_name = ? ORDER BY ordinal_position", [name]).fetchall()]
            rest = ", ".join(f'"{c}"' for c in cols if c != "as_of_date")
            q = 'SELECT count(*) FROM (SELECT {c} FROM marts."{n}" EXCEPT ALL SELECT {c} FROM b.marts."{n}")'
            out[name] = {"rows": con.execute(f'SELECT count(*) FROM marts."{name}"').fetchone()[0],
                         "changed": con.execute(q.format(c="*", n=name)).fetchone()[0],
                         "changed_ignoring_as_of_date": con.execute(q.format(c=rest, n=name)).fetchone()[0]}
    return out


def calls_by_route(base_url: str) -> dict[str, int]:
    return httpx.get(f"{base_url}/_emulator/stats", timeout=30).json()["by_route"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=REPO / ".sandbox" / "world")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    world_dir = work / "world"
    print(f"copying the world to {world_dir} ...", flush=True)
    shutil.copytree(args.world, world_dir)
    warehouse = work / "warehouse.duckdb"
    report: dict = {"world": json.loads((world_dir / "world.json").read_text()),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}

    print("day 0: load and build the marts ...", flush=True)
    report["day0_build_s"] = round(load_and_build(world_dir, warehouse, work), 1)
    with run_caspio_in_thread(work / "caspio") as caspio:
        settings = dataclasses.replace(
            Settings.from_env({}), warehouse_path=warehouse, caspio_base_url=caspio.base_url,
            caspio_api_version="v4", caspio_requests_per_second=0, caspio_reconcile_every=0, caspio_table_prefix="ap_")
        print("day 0: initial publish (v4 bulk) ...", flush=True)
        with client_for(settings, force=True) as client:
            publish(warehouse_factory(settings), client, settings=settings, force=True)
        snapshot_marts(warehouse, work / "day0.duckdb")

        print("advance the world one day ...", flush=True)
        advance_world(world_dir, 1)
        print("day 1: load and build the marts ...", flush=True)
        report["day1_build_s"] = round(load_and_build(world_dir, warehouse, work), 1)
        report["marts"] = changed_rows(warehouse, work / "day0.duckdb")

        print("day 1: nightly publish (v3, within the default budget) ...", flush=True)
        nightly = dataclasses.replace(settings, caspio_api_version="v3")
        before = calls_by_route(caspio.base_url)
        t = time.perf_counter()
        with client_for(nightly) as client:  # not forced: the default CASPIO_CALL_BUDGET applies
            results = publish(warehouse_factory(nightly), client, settings=nightly)
        wall = time.perf_counter() - t
        after = calls_by_route(caspio.base_url)
    calls = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    published = {r.mart: r for r in results if r.status != "skipped"}
    report["nightly"] = {
        "budget": nightly.caspio_call_budget, "calls": sum(calls.values()), "calls_by_route": calls,
        "wall_s": round(wall, 1),
        "tables": {m: {"status": r.status, "rows": r.rows, "inserted": r.inserted, "updated": r.updated,
                       "deleted": r.deleted, "calls": r.calls} for m, r in published.items()},
        # were as_of_date a field of every row, every row of every published table would be an update
        "calls_if_as_of_date_were_per_row": sum(r.rows for r in published.values()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")

    options = report["world"].get("options", {})
    print(f"\nNightly publish after one simulated day ({options.get('providers')} providers, "
          f"{options.get('patients', 0):,} patients):\n")
    print("| mart | rows | rows whose numbers changed | inserted | updated | deleted | calls |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, r in report["nightly"]["tables"].items():
        c = report["marts"].get(m, {})
        print(f"| {m} | {r['rows']:,} | {c.get('changed_ignoring_as_of_date', 0):,} | {r['inserted']:,} | "
              f"{r['updated']:,} | {r['deleted']:,} | {r['calls']:,} |")
    n = report["nightly"]
    print(f"\nnightly publish: {n['calls']:,} calls (budget {n['budget']:,}), {n['wall_s']} s; "
          f"with as_of_date on every row it would be {n['calls_if_as_of_date_were_per_row']:,} updates")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
