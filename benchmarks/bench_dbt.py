"""Benchmark: ``dbt build`` of the whole project on a 15-provider practice, full and nightly-incremental.

On a COPY of a sandbox world (``--world``, default ``.sandbox/world`` when it has 15 providers, else a
15-provider world generated into the temp folder), with the emulator serving it in its own process:

1. **full extract**: FHIR bulk export (full) + load, every Data View table; the project's own steps
   (:mod:`athena_pipeline.extract`, what the CLI and the Dagster assets run);
2. **full build**: ``dbt build`` (seeds, every model, every data test; unit tests are CI's, as in the
   Dagster step) into that empty warehouse, ``as_of_date`` = the world's day;
3. ``sandbox advance --days 1`` on the copy (the practice lives one more day);
4. **incremental extract**: FHIR ``_since`` the watermark + Data View from each table's watermark;
5. **nightly build**: ``dbt build`` again (incremental FHIR staging, everything else rebuilt),
   ``as_of_date`` = the new day;
6. with ``--verify``: the FHIR staging tables rebuilt with ``--full-refresh`` on a copy of the
   warehouse and compared row for row with the incremental result (must be identical).

``--via dagster`` runs both builds as the pipeline does (``transform_job`` in process: the
``@dbt_assets`` step, its checks and metadata) instead of the dbt CLI.

    .venv/bin/python benchmarks/bench_dbt.py                  # .sandbox/world if it has 15 providers
    .venv/bin/python benchmarks/bench_dbt.py --verify --via dagster

dbt's target and logs go to the temp folder. Each build also records its CPU seconds (user + system
of the dbt process: a busy shared machine stretches the wall time, much less the CPU time) and the
load average around it. Per-model times come from dbt's ``run_results.json``:
"busy" is the sum of node execution times in a layer (dbt runs 4 threads on our 2 cores, so it can
exceed the wall time), "span" from the first node of the layer starting to the last one finishing.
Prints markdown tables (the README's) and writes ``benchmarks/results/dbt.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_extract import start_emulator  # the emulator in its own process, as the extract benchmark runs it

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DBT_PROJECT = ROOT / "dbt_project"
RESULTS = Path(__file__).parent / "results" / "dbt.json"
LAYERS = ("seeds", "staging", "intermediate", "marts", "tests", "unit tests")


# --- the world and the emulator --------------------------------------------------------------------
def world_providers(world: Path) -> int | None:
    meta = world / "world.json"
    return int(json.loads(meta.read_text())["options"]["providers"]) if meta.is_file() else None


def world_date(world: Path) -> str:
    return json.loads((world / "world.json").read_text())["current_date"]


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def pipeline_env(world: Path, base: str, work: Path) -> dict[str, str]:
    from athena_pipeline.settings import ENV_VARS

    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(ATHENA_FHIR_BASE_URL=f"{base}/fhir/r4", ATHENA_TOKEN_URL=f"{base}/oauth2/v1/token",
               ATHENA_REQUESTS_PER_SECOND="1000", ATHENA_BULK_POLL_SECONDS="1",
               SANDBOX_WORLD=str(world), DATAVIEW_DUCKDB_PATH=str(world / "dataview.duckdb"),
               LANDING_DIR=str(work / "landing"), WAREHOUSE_PATH=str(work / "warehouse.duckdb"),
               WAREHOUSE_MEMORY_LIMIT="1GB", DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    return env


EXTRACT = r"""
import json, sys, time
from athena_pipeline import extract
from athena_pipeline.settings import Settings
settings = Settings.from_env()
full = sys.argv[1] == "full"
t = time.perf_counter()
exported = extract.export_fhir(settings, full=full)
t_export = time.perf_counter() - t
loads = extract.load_unloaded_fhir(settings)
t_load = time.perf_counter() - t - t_export
dv = extract.extract_dataview(settings)
t_dv = time.perf_counter() - t - t_export - t_load
print(json.dumps({
    "fhir_resources": sum(exported.counts.values()), "fhir_deleted": exported.deleted_count,
    "fhir_inserted": sum(r.inserted for _, r in loads), "fhir_updated": sum(r.updated for _, r in loads),
    "fhir_rows_deleted": sum(r.deleted for _, r in loads),
    "dataview_rows": sum(r.received for r in dv.values()),
    "dataview_soft_deleted": sum(r.soft_deleted for r in dv.values()),
    "fhir_export_seconds": t_export, "fhir_load_seconds": t_load, "dataview_seconds": t_dv}))
"""


def extract(world: Path, work: Path, kind: str) -> dict:
    """Export + load FHIR and copy Data View, in a subprocess against a fresh emulator."""
    emulator, base = start_emulator(world)
    try:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", EXTRACT, kind], env=pipeline_env(world, base, work),
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t
    finally:
        stop(emulator)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} extract failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "seconds": seconds}


# --- dbt -------------------------------------------------------------------------------------------------
def children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process so far (and their children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dbt_cli(work: Path, env: dict[str, str], target: Path, *args: str) -> tuple[float, Path]:
    target.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    proc = subprocess.run([str(BIN / "dbt"), *args, "--project-dir", str(DBT_PROJECT), "--profiles-dir",
                           str(DBT_PROJECT), "--target-path", str(target), "--log-path", str(target)],
                          env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    (target / "stdout.log").write_text(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stdout.splitlines() if "ERROR" in line or "FAIL" in line)
        raise SystemExit(f"dbt {' '.join(args)} failed (see {target}/stdout.log):\n{tail[-4000:]}")
    return seconds, target / "run_results.json"


DAGSTER = r"""
import json, os, sys, time
from pathlib import Path
import dagster as dg
from dagster_dbt import DbtCliResource
from athena_pipeline.defs.resources import WarehouseResource
from athena_pipeline.defs.transform.assets import dbt_models, transform_run_config
from athena_pipeline.defs.transform.project import dbt_executable, dbt_project
t = time.perf_counter()
# a persistent instance: the nightly run must see the full build's logic fingerprints to stay incremental
instance = dg.DagsterInstance.get()
result = dg.materialize([dbt_models], instance=instance, resources={
    "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable()),
    "warehouse": WarehouseResource(path=os.environ["WAREHOUSE_PATH"])},
    run_config=transform_run_config(as_of_date=sys.argv[1]), raise_on_error=False)
seconds = time.perf_counter() - t
runs = sorted(Path(os.environ["DBT_TARGET_PATH"]).glob("dbt_models-*/run_results.json"), key=lambda p: p.stat().st_mtime)
checks = result.get_asset_check_evaluations()
print(json.dumps({"seconds": seconds, "success": result.success, "run_results": str(runs[-1]),
                  "materializations": len(result.get_asset_materialization_events()),
                  "checks": len(checks), "checks_failed": sum(not c.passed for c in checks)}))
"""


def dbt_dagster(env: dict[str, str], target: Path, as_of: str) -> tuple[float, Path, dict]:
    target.mkdir(parents=True, exist_ok=True)
    home = target.parent / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").touch()
    proc = subprocess.run([sys.executable, "-c", DAGSTER, as_of],
                          env={**env, "DBT_TARGET_PATH": str(target), "DAGSTER_HOME": str(home)},
                          capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"transform_job failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["success"]:
        raise SystemExit(f"transform_job failed: see {out['run_results']}")
    return out["seconds"], Path(out["run_results"]), out


def layer_of(unique_id: str, manifest: dict) -> str:
    kind = unique_id.split(".")[0]
    if kind == "seed":
        return "seeds"
    if kind == "test":
        return "tests"
    if kind == "unit_test":
        return "unit tests"
    fqn = manifest["nodes"].get(unique_id, {}).get("fqn") or ["", "other"]
    return fqn[1]


def summarize(run_results: Path, manifest: dict, seconds: float) -> dict:
    """Wall time, per-layer busy time and span, node counts, the slowest models."""
    doc = json.loads(run_results.read_text())
    busy: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    spans: dict[str, list[dt.datetime]] = defaultdict(list)
    models = []
    for r in doc["results"]:
        layer = layer_of(r["unique_id"], manifest)
        busy[layer] += r["execution_time"]
        nodes[layer] += 1
        for timing in r.get("timing", []):
            for key in ("started_at", "completed_at"):
                if timing.get(key):
                    spans[layer].append(dt.datetime.fromisoformat(timing[key]))
        if r["unique_id"].startswith("model."):
            node = manifest["nodes"].get(r["unique_id"], {})
            models.append({"model": r["unique_id"].split(".")[-1], "layer": layer,
                           "materialized": node.get("config", {}).get("materialized"),
                           "seconds": round(r["execution_time"], 2), "status": r["status"]})
    statuses: dict[str, int] = defaultdict(int)
    for r in doc["results"]:
        statuses[r["status"]] += 1
    layers = {layer: {"nodes": nodes[layer], "busy_seconds": round(busy[layer], 2),
                      "span_seconds": round((max(spans[layer]) - min(spans[layer])).total_seconds(), 2)
                      if spans[layer] else 0.0}
              for layer in sorted(nodes, key=lambda x: LAYERS.index(x) if x in LAYERS else 99)}
    return {"seconds": round(seconds, 2), "dbt_elapsed_seconds": round(doc.get("elapsed_time", 0.0), 2),
            "statuses": dict(statuses), "layers": layers,
            "slowest_models": sorted(models, key=lambda m: -m["seconds"])[:12]}


def build(via: str, work: Path, env: dict[str, str], name: str, as_of: str, manifest: dict) -> dict:
    """One ``dbt build``; the 1-minute load average before and after says how busy the machine was."""
    target = work / f"dbt_{name}"
    vars_ = json.dumps({"as_of_date": as_of})
    load_before, cpu_before = os.getloadavg()[0], children_cpu()
    if via == "dagster":
        seconds, run_results, extra = dbt_dagster(env, target, as_of)
        out = {**summarize(run_results, manifest, seconds), "dagster": extra}
    else:
        # what the Dagster step runs (athena_pipeline.defs.transform.assets.dbt_build_args): unit tests are CI's
        seconds, run_results = dbt_cli(work, env, target, "build", "--vars", vars_,
                                       "--exclude-resource-type", "unit_test")
        out = summarize(run_results, manifest, seconds)
    # CPU seconds are what a busy machine cannot inflate much: on 2 idle cores the wall time is at
    # least cpu_seconds / 2 (dbt's DuckDB queries use both cores, its Python one)
    return {**out, "cpu_seconds": round(children_cpu() - cpu_before, 1),
            "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def verify(work: Path, env: dict[str, str], as_of: str) -> dict:
    """Incremental FHIR staging == the same tables rebuilt from scratch, on a copy of the warehouse."""
    import duckdb

    copy = work / "verify" / "warehouse.duckdb"
    copy.parent.mkdir()
    shutil.copy(work / "warehouse.duckdb", copy)
    seconds, _ = dbt_cli(copy.parent, {**env, "WAREHOUSE_PATH": str(copy)}, copy.parent / "dbt_target",
                         "run", "--full-refresh", "--select", "staging.fhir", "--vars", json.dumps({"as_of_date": as_of}))
    differences = {}
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{work / 'warehouse.duckdb'}' AS incremental_build (READ_ONLY)")
        con.execute(f"ATTACH '{copy}' AS full_build (READ_ONLY)")
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'full_build' AND schema_name = 'main' "
            "AND table_name LIKE 'stg_fhir__%' ORDER BY 1").fetchall()]
        for t in tables:
            n = con.execute(f"""SELECT (SELECT count(*) FROM (SELECT * FROM incremental_build.main.{t}
                                        EXCEPT ALL SELECT * FROM full_build.main.{t}))
                                     + (SELECT count(*) FROM (SELECT * FROM full_build.main.{t}
                                        EXCEPT ALL SELECT * FROM incremental_build.main.{t}))""").fetchone()[0]
            differences[t] = int(n)
    return {"full_refresh_seconds": round(seconds, 2), "tables": len(differences),
            "rows_different": sum(differences.values()),
            "tables_different": sorted(t for t, n in differences.items() if n)}


# --- report ----------------------------------------------------------------------------------------------
def print_report(results: dict) -> None:
    full, nightly = results["full_build"], results["nightly_build"]
    print(f"\ndbt build on a {results['providers']}-provider world ({results['fhir_resources']:,} FHIR resources, "
          f"{results['dataview_rows']:,} Data View rows), {results['cpus']} CPUs, via {results['via']}\n")
    print("| step | wall s | notes |")
    print("|---|---:|---|")
    fe, ie = results["full_extract"], results["nightly_extract"]
    print(f"| full extract (FHIR export + load, Data View) | {fe['seconds']:.1f} | {fe['fhir_resources']:,} resources, "
          f"{fe['dataview_rows']:,} Data View rows |")
    print(f"| **full `dbt build`** | **{full['seconds']:.1f}** | {full['cpu_seconds']:.0f} CPU s; "
          f"{sum(full['statuses'].values())} nodes "
          f"({', '.join(f'{k} {v}' for k, v in full['statuses'].items())}); load average "
          f"{full['load_average_before']:.1f} -> {full['load_average_after']:.1f} |")
    print(f"| `sandbox advance --days 1` | {results['advance_seconds']:.1f} | world day {results['day_before']} -> "
          f"{results['day_after']} |")
    print(f"| nightly extract (`_since` + watermarks) | {ie['seconds']:.1f} | {ie['fhir_resources']:,} FHIR resources "
          f"({ie['fhir_rows_deleted']} deleted), {ie['dataview_rows']:,} Data View rows |")
    print(f"| **nightly `dbt build`** | **{nightly['seconds']:.1f}** | {nightly['cpu_seconds']:.0f} CPU s; "
          f"incremental FHIR staging; "
          f"{nightly['seconds'] / full['seconds']:.0%} of the full build; load average "
          f"{nightly['load_average_before']:.1f} -> {nightly['load_average_after']:.1f} |")
    if "verify" in results:
        v = results["verify"]
        print(f"| check: FHIR staging rebuilt with --full-refresh | {v['full_refresh_seconds']:.1f} | "
              f"{v['tables']} tables, {v['rows_different']} rows differ from the incremental result |")
    print("\n| layer | nodes | full: busy s | full: span s | nightly: busy s | nightly: span s |")
    print("|---|---:|---:|---:|---:|---:|")
    for layer, f in full["layers"].items():
        n = nightly["layers"].get(layer, {"busy_seconds": 0.0, "span_seconds": 0.0})
        print(f"| {layer} | {f['nodes']} | {f['busy_seconds']:.1f} | {f['span_seconds']:.1f} | "
              f"{n['busy_seconds']:.1f} | {n['span_seconds']:.1f} |")
    nightly_by_model = {m["model"]: m["seconds"] for m in nightly["slowest_models"]}
    print("\n| slowest models (full build) | materialized | full s | nightly s |")
    print("|---|---|---:|---:|")
    for m in full["slowest_models"][:10]:
        n = nightly_by_model.get(m["model"])
        print(f"| {m['model']} | {m['materialized']} | {m['seconds']:.1f} | {'' if n is None else f'{n:.1f}'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="a sandbox world (copied; default .sandbox/world if it has 15 "
                                               "providers, else a generated one)")
    ap.add_argument("--providers", type=int, default=15, help="providers of a generated world [15]")
    ap.add_argument("--via", choices=("dbt", "dagster"), default="dbt",
                    help="run the builds with the dbt CLI or as the Dagster transform_job [dbt]")
    ap.add_argument("--verify", action="store_true", help="compare incremental FHIR staging with a full rebuild")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (world copy, warehouse, dbt logs)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_dbt_"))
    try:
        source = args.world
        if source is None and world_providers(ROOT / ".sandbox" / "world") == args.providers:
            source = ROOT / ".sandbox" / "world"
        world = tmp / "world"
        if source is None:
            print(f"generating a {args.providers}-provider world ...", flush=True)
            subprocess.run([str(BIN / "athena-pipeline"), "sandbox", "generate", "--out", str(world),
                            "--providers", str(args.providers)], check=True, stdout=subprocess.DEVNULL)
        else:
            print(f"copying {source} ...", flush=True)
            shutil.copytree(source, world, ignore=shutil.ignore_patterns("emulator"))
        work = tmp / "work"
        work.mkdir()
        env = pipeline_env(world, "http://127.0.0.1:1", work)

        print("full extract ...", flush=True)
        full_extract = extract(world, work, "full")
        day_before = world_date(world)
        print("dbt parse ...", flush=True)
        dbt_cli(work, env, work / "dbt_parse", "parse")
        manifest = json.loads((work / "dbt_parse" / "manifest.json").read_text())
        print(f"full dbt build (via {args.via}) ...", flush=True)
        full = build(args.via, work, env, "full", day_before, manifest)
        print(f"  {full['seconds']:.1f} s", flush=True)

        print("sandbox advance --days 1 ...", flush=True)
        t = time.perf_counter()
        subprocess.run([str(BIN / "athena-pipeline"), "sandbox", "advance", "--world", str(world), "--days", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        advance_seconds = time.perf_counter() - t
        day_after = world_date(world)
        print("nightly extract ...", flush=True)
        nightly_extract = extract(world, work, "since")
        print(f"nightly dbt build (via {args.via}) ...", flush=True)
        nightly = build(args.via, work, env, "nightly", day_after, manifest)
        print(f"  {nightly['seconds']:.1f} s", flush=True)
        results = {
            "providers": world_providers(world), "via": args.via, "cpus": os.cpu_count(),
            "python": platform.python_version(), "fhir_resources": full_extract["fhir_resources"],
            "dataview_rows": full_extract["dataview_rows"], "day_before": day_before, "day_after": day_after,
            "models": sum(1 for n in manifest["nodes"].values() if n["resource_type"] == "model"),
            "incremental_models": sorted(n["name"] for n in manifest["nodes"].values()
                                         if n.get("config", {}).get("materialized") == "incremental"),
            "full_extract": full_extract, "full_build": full, "advance_seconds": round(advance_seconds, 2),
            "nightly_extract": nightly_extract, "nightly_build": nightly,
        }
        if args.verify:
            print("verify: FHIR staging --full-refresh on a copy ...", flush=True)
            results["verify"] = verify(work, env, day_after)
        results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        print_report(results)
        RESULTS.parent.mkdir(exist_ok=True)
        name = RESULTS if args.via == "dbt" else RESULTS.with_name("dbt_dagster.json")
        name.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {name.relative_to(ROOT)}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
