"""Benchmark: our ``extract fhir --full`` (export + load) against another bulk client's download of the
same export from the same server: the check of issue 3 ("no more than 1.1x the time an established
bulk client needs just to download the same export").

Neither the server nor the other client is part of this repository: pass the server's FHIR base URL
and group, and the other client as a shell command that runs one complete export and download (it
is run as given, from ``--client-dir``). Each round runs both, the order alternating so neither
always meets a warm server; our side is the real CLI in a fresh subprocess with a fresh warehouse
and landing folder and **default settings** (only the server, the group and the auth mode are set),
so the figure is what a new user gets. Wall time is measured from process start to exit for both,
so start-up costs count on both sides.

    # SMART's bulk-data-client against the SMART reference server (both built outside the repo):
    .venv/bin/python benchmarks/bench_vs_bulk_client.py \\
        --fhir-url 'http://127.0.0.1:9443/eyJkdXIiOjEwfQ/fhir' --group BlueCrossBlueShield \\
        --client-dir /tmp/refclient --client-cmd 'node built/app.js --config config/refserver.js' \\
        --label 'reference server, dur 10' --rounds 3

    # ... or against the sandbox emulator (``athena-pipeline sandbox serve --open``):
    .venv/bin/python benchmarks/bench_vs_bulk_client.py --fhir-url http://127.0.0.1:8799/fhir/r4 \\
        --group a-1.c-195900 --client-dir /tmp/refclient --client-cmd '...' --label 'emulator, 15 providers'

Prints one markdown row per run (the README's table) and appends the rounds to
``benchmarks/results/vs_bulk_client.json`` (``--out``). Our row count is checked against the
export manifest (``export.json``): equal work, not a fast failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("athena-pipeline"))
#: Pipeline variables a caller's shell may have set; ours runs with none of them but the ones below.
PIPELINE_PREFIXES = ("ATHENA_", "WAREHOUSE_", "LANDING_", "DATAVIEW_", "SANDBOX_", "CASPIO_")


def run_ours(fhir_url: str, group: str, auth: str, extra_env: dict[str, str]) -> dict:
    """One ``athena-pipeline extract fhir --full`` in a fresh state folder; wall seconds and rows."""
    with tempfile.TemporaryDirectory(prefix="vs_bulk_client_") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(PIPELINE_PREFIXES)}
        env.update({"ATHENA_FHIR_BASE_URL": fhir_url, "ATHENA_GROUP_ID": group, "ATHENA_AUTH": auth,
                    "WAREHOUSE_PATH": f"{tmp}/warehouse.duckdb", "LANDING_DIR": f"{tmp}/landing"})
        env.update(extra_env)
        started = time.perf_counter()
        proc = subprocess.run([EXE, "--log-level", "warning", "extract", "fhir", "--full"], env=env,
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"our extract failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        manifest_rows = 0
        for doc in Path(tmp, "landing", "fhir").glob("*/export.json"):
            manifest_rows += sum(int(f.get("count") or 0) for f in json.loads(doc.read_text())["files"])
        con = duckdb.connect(f"{tmp}/warehouse.duckdb", read_only=True)
        try:
            tables = [t for (t,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'raw_fhir'").fetchall()]
            rows = sum(con.execute(f'SELECT count(*) FROM raw_fhir."{t}"').fetchone()[0] for t in tables)
        finally:
            con.close()
    if rows != manifest_rows:
        raise SystemExit(f"our warehouse holds {rows} resources, the manifest lists {manifest_rows}")
    return {"seconds": seconds, "rows": rows}


def run_client(cmd: str, cwd: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the other client failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {"seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fhir-url", required=True, help="the server's FHIR base URL")
    ap.add_argument("--group", required=True, help="the Group id to export")
    ap.add_argument("--auth", default="none", help="ATHENA_AUTH for our client [none]")
    ap.add_argument("--client-cmd", required=True, help="shell command: the other client's export + download")
    ap.add_argument("--client-dir", type=Path, default=Path.cwd(), help="working directory of --client-cmd")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--label", default="", help="what was measured, for the table")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="an extra variable for our client (e.g. ATHENA_CLIENT_ID=...)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vs_bulk_client.json")
    args = ap.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)

    rounds = []
    for i in range(args.rounds):
        order = ("client", "ours") if i % 2 == 0 else ("ours", "client")
        result: dict = {}
        for who in order:
            result[who] = (run_client(args.client_cmd, args.client_dir) if who == "client"
                           else run_ours(args.fhir_url, args.group, args.auth, extra))
        result["ratio"] = result["ours"]["seconds"] / result["client"]["seconds"]
        print(f"round {i + 1}: client {result['client']['seconds']:.2f} s, ours {result['ours']['seconds']:.2f} s "
              f"({result['ours']['rows']:,} resources), ratio {result['ratio']:.2f}", file=sys.stderr)
        rounds.append(result)

    client_s = statistics.median(r["client"]["seconds"] for r in rounds)
    ours_s = statistics.median(r["ours"]["seconds"] for r in rounds)
    print("| run | resources | other client: download (s) | ours: export + load (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {args.label} | {rounds[0]['ours']['rows']:,} | {client_s:.2f} | {ours_s:.2f} | "
          f"**{ours_s / client_s:.2f}** |")
    record = {"label": args.label, "fhir_url": args.fhir_url, "group": args.group,
              "client_cmd": args.client_cmd, "cpus": os.cpu_count(), "rounds": rounds,
              "median_client_seconds": client_s, "median_ours_seconds": ours_s,
              "ratio": ours_s / client_s, "ratio_target": 1.1}
    previous = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps([*previous, record], indent=1) + "\n")


if __name__ == "__main__":
    main()
