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
* ``count``, ``copy_default``, ``copy``, ``load (no limit)`` — ``benchmarks/bench_fhir_load.py``'s
  steps on the same output files: ``SELECT count(*) FROM read_ndjson_objects(...)`` (the read floor),
  ``CREATE TABLE AS SELECT json FROM read_ndjson_objects(...)`` with DuckDB's defaults (the bare
  read-and-persist floor), the same into a ``JSON USING COMPRESSION zstd`` column (the loader's
  storage) and the loader without a memory limit;
* ``curl``         — the same Bulk Data protocol driven by plain ``curl`` (the established-bulk-client
  baseline of issue 3): a NEW export with the same kick-off URL as ours (kick-off and polls with httpx,
  honouring ``Retry-After``), then every manifest file (``output``, ``deleted``, ``error``) downloaded
  by ONE ``curl --parallel --parallel-max N`` run, N = ``ATHENA_BULK_CONCURRENCY`` like our client, with
  ``--compressed`` because our client asks for gzip too, and the bearer token when the manifest says
  ``requiresAccessToken``. Timed from kick-off to the last byte on disk ("curl: export + download") and
  the curl run alone ("curl: download only"); its files' line counts are then checked against the
  manifest (equal work). It runs right after our export, against the same emulator process and world.

The result that issue 3 sets: (our export + our load) / (curl export + download) <= 1.1. Wall seconds
and CPU seconds (user + system) are reported for every step, and the emulator's CPU seconds for the
two exports (the server gzips every file: on a shared 2-core machine that is the client's competitor).

    .venv/bin/python benchmarks/bench_extract.py                      # the 15-provider world
    .venv/bin/python benchmarks/bench_extract.py --world .sandbox/world --memory-limit 1GB

Prints markdown tables (the README's) and writes ``benchmarks/results/extract.json`` (or ``--out``; a
run on a small world should not overwrite the recorded 15-provider result).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
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
import json, resource, sys, time
from pathlib import Path
from athena_pipeline.settings import Settings
from athena_pipeline import extract
step, arg = sys.argv[1], sys.argv[2]
settings = Settings.from_env()
t0_wall, t = time.time(), time.perf_counter()
if step == "export":
    r = extract.export_fhir(settings, full=True)
    out = {"rows": sum(r.counts.values()), "files": r.files, "bytes": r.bytes, "calls": r.calls,
           "export_dir": str(r.export_dir)}
else:
    r = extract.load_fhir(settings, Path(arg))
    out = {"rows": r.lines_read, "inserted": r.inserted, "files": r.files, "bytes": r.bytes,
           "mismatches": len(r.count_mismatches)}
out["seconds"] = time.perf_counter() - t
out["t0_wall"] = t0_wall
usage = resource.getrusage(resource.RUSAGE_SELF)
out["cpu_seconds"] = usage.ru_utime + usage.ru_stime
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


# --- the established-bulk-client baseline: the Bulk Data protocol driven by plain curl -------------------
#: Our client sends ``Accept-Encoding: gzip`` on every file download (``athena/bulk.py``), so the emulator
#: gzips every file for it; curl must ask for the same (``--compressed``) for the server to do equal work.
OUR_CLIENT_ASKS_GZIP = True
_CURL_WRITE_OUT = r"%{filename_effective}\t%{http_code}\t%{size_download}\t%{time_starttransfer}\t%{time_total}\n"
_CURL_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); import bench_extract; "
               "bench_extract.curl_child(sys.argv[2], sys.argv[3])")


def _curl_quote(value: str) -> str:
    """A double-quoted value for a curl config file (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def count_lines(path: Path) -> int:
    """Non-empty-final-line-aware newline count, in 8 MB chunks (C-speed ``bytes.count``, no row loop)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _manifest_files(pages: list[dict], base_url: str) -> list[dict]:
    """Every ``output``/``deleted``/``error`` entry of the manifest pages, with a landing path per file
    named like our client's (``Patient.000.ndjson``, ``deleted/Bundle.000.ndjson``)."""
    from urllib.parse import urljoin

    numbering: dict[tuple[str, str], int] = {}
    files = []
    for page in pages:
        for kind, prefix in (("output", ""), ("deleted", "deleted/"), ("error", "error/")):
            for entry in page.get(kind) or []:
                n = numbering.get((kind, entry["type"]), 0)
                numbering[(kind, entry["type"])] = n + 1
                files.append({"kind": kind, "type": entry["type"], "url": urljoin(base_url, entry["url"]),
                              "count": entry.get("count"), "path": f"{prefix}{entry['type']}.{n:03d}.ndjson"})
    return files


def curl_export(request_url: str, out_dir: Path) -> dict:
    """One Bulk Data export by the book, downloaded by ONE parallel curl run; timings and checks.

    Kick-off ``request_url`` (ours, so the same ``_type``/``_since``), poll the Content-Location until 200
    honouring ``Retry-After`` (``ATHENA_BULK_POLL_SECONDS`` when absent), read the manifest (following
    ``link`` next pages), write a curl config (0600: it holds the bearer token, which must not show in
    ``ps``) and run ``curl --parallel --parallel-max ATHENA_BULK_CONCURRENCY``. The clock runs from the
    kick-off to curl's exit; the token fetch before it is reported on its own. The job is DELETEd after
    the clock stops, and the files' line counts are checked against the manifest.
    """
    import resource
    from urllib.parse import urljoin

    import httpx

    from athena_pipeline.athena.auth import build_authenticator
    from athena_pipeline.http import HttpPolicy, parse_retry_after
    from athena_pipeline.settings import Settings

    settings = Settings.from_env()
    timeout = httpx.Timeout(connect=10.0, read=120.0, write=60.0, pool=120.0)
    out_dir.mkdir(parents=True)
    started = time.perf_counter()
    with HttpPolicy("athena", timeout=timeout) as policy:
        auth = build_authenticator(
            settings.athena_auth, policy=policy, token_url=settings.athena_token_url,
            client_id=settings.athena_client_id, client_secret=settings.athena_client_secret,
            private_key_path=settings.athena_private_key_path, key_id=settings.athena_key_id,
            jwt_algorithm=settings.athena_jwt_algorithm, scopes=settings.athena_scopes)
        bearer = auth.auth_headers()  # {} when ATHENA_AUTH=none
    token_s = time.perf_counter() - started

    with httpx.Client(timeout=timeout, follow_redirects=False) as http:
        t0 = time.perf_counter()
        kick = http.get(request_url, headers={**bearer, "Accept": "application/fhir+json",
                                              "Prefer": "respond-async"})
        if kick.status_code != 202 or "content-location" not in kick.headers:
            raise SystemExit(f"curl baseline: kick-off answered HTTP {kick.status_code}")
        status_url = urljoin(request_url, kick.headers["content-location"])
        polls = 0
        while True:
            r = http.get(status_url, headers={**bearer, "Accept": "application/json"})
            polls += 1
            if r.status_code == 200:
                break
            if r.status_code not in (202, 429) and not (r.status_code >= 500 and "transient" in r.text):
                raise SystemExit(f"curl baseline: status poll answered HTTP {r.status_code}")
            hinted = parse_retry_after(r.headers.get("retry-after"))
            time.sleep(settings.athena_bulk_poll_seconds if hinted is None else hinted)
        pages = [r.json()]
        while nxt := next((link.get("url") for link in pages[-1].get("link") or []
                           if link.get("relation") == "next"), None):
            pages.append(http.get(urljoin(status_url, nxt),
                                  headers={**bearer, "Accept": "application/json"}).json())
        t_manifest = time.perf_counter()

        files = _manifest_files(pages, status_url)
        config = out_dir / ".curl.cfg"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as cfg:
            cfg.write("silent\nshow-error\nfail\ncreate-dirs\n")
            if OUR_CLIENT_ASKS_GZIP:
                cfg.write("compressed\n")
            cfg.write("header = " + _curl_quote("Accept: application/fhir+ndjson") + "\n")
            if pages[0].get("requiresAccessToken", True) and bearer:
                cfg.write("header = " + _curl_quote(f"Authorization: {bearer['Authorization']}") + "\n")
            cfg.write("write-out = " + _curl_quote(_CURL_WRITE_OUT) + "\n")
            for f in files:
                cfg.write(f"url = {_curl_quote(f['url'])}\noutput = {_curl_quote(str(out_dir / f['path']))}\n")
        concurrency = settings.athena_bulk_concurrency
        t_curl = time.perf_counter()
        proc = subprocess.run(["curl", "--parallel", "--parallel-max", str(concurrency), "--config", str(config)],
                              capture_output=True, text=True, check=False)
        t_end = time.perf_counter()
        config.unlink()
        http.delete(status_url, headers={**bearer, "Accept": "application/fhir+json"})
    if proc.returncode != 0:
        raise SystemExit(f"curl baseline: curl exited {proc.returncode}: {proc.stderr[-2000:]}")
    curl_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_usage = resource.getrusage(resource.RUSAGE_SELF)

    transfers = [line.split("\t") for line in proc.stdout.splitlines() if line.strip()]
    not_ok = [t for t in transfers if t[1] != "200"]
    wire_bytes = sum(int(t[2]) for t in transfers)
    mismatches = []
    disk_bytes = 0
    for f in files:
        path = out_dir / f["path"]
        disk_bytes += path.stat().st_size
        if f["count"] is not None and (n := count_lines(path)) != f["count"]:
            mismatches.append({"path": f["path"], "lines": n, "manifest": f["count"]})
    output = [f for f in files if f["kind"] == "output"]
    return {
        "seconds": t_end - t0, "download_seconds": t_end - t_curl, "server_export_seconds": t_manifest - t0,
        "token_seconds": token_s, "polls": polls, "concurrency": concurrency, "compressed": OUR_CLIENT_ASKS_GZIP,
        "files": len(files), "transfers": len(transfers), "transfers_not_200": len(not_ok),
        "rows": sum(f["count"] or 0 for f in output), "bytes": disk_bytes, "wire_bytes": wire_bytes,
        "slowest_file_seconds": max((float(t[4]) for t in transfers), default=0.0),
        "count_mismatches": mismatches,
        "cpu_seconds": curl_usage.ru_utime + curl_usage.ru_stime,  # curl itself
        "orchestrator_cpu_seconds": self_usage.ru_utime + self_usage.ru_stime,  # httpx kick-off/poll, checks
        "peak_rss_mb": curl_usage.ru_maxrss / 1024,
    }


def curl_child(request_url: str, out_dir: str) -> None:
    """Entry point of the curl step's own process: prints :func:`curl_export`'s result as JSON."""
    print(json.dumps(curl_export(request_url, Path(out_dir))))


def run_curl_step(request_url: str, out_dir: Path, env: dict[str, str]) -> dict:
    """The curl baseline in a fresh process (like every other step)."""
    proc = subprocess.run([sys.executable, "-c", _CURL_CHILD, str(Path(__file__).resolve().parent), request_url,
                           str(out_dir)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"curl step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- where the time goes ---------------------------------------------------------------------------
def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_phases(export_dir: Path, t0_wall: float, seconds: float) -> dict:
    """Our export's wall time split by its own call log (``api_calls.ndjson``: start + duration of every
    HTTP attempt; a file download's duration includes its line-count/JSON check).

    ``server_export_seconds`` is kick-off start to the manifest's arrival (the emulator writing the files,
    seen through 1 s polls, as curl sees it), ``download_seconds`` the manifest to the last verified file,
    ``before_kickoff_seconds`` (warehouse watermark read, token) and ``after_download_seconds``
    (DELETE, export.json) the rest.
    """
    import datetime as dt

    calls = [json.loads(line) for line in (export_dir / "api_calls.ndjson").read_text().splitlines() if line]

    def start(c: dict) -> float:
        return dt.datetime.fromisoformat(c["ts"]).timestamp()

    def end(c: dict) -> float:
        return start(c) + c["duration_ms"] / 1000

    kick = next(c for c in calls if c["path_template"].endswith("/$export"))
    files = [c for c in calls if c["path_template"].endswith("{file}")]
    polls = [c for c in calls if c["method"] == "GET" and c["path_template"].endswith("{job}")]
    manifest = max(end(c) for c in polls if c["status"] == 200)
    last_file = max(end(c) for c in files)
    return {"before_kickoff_seconds": start(kick) - t0_wall, "server_export_seconds": manifest - start(kick),
            "download_seconds": last_file - manifest,
            "after_download_seconds": t0_wall + seconds - last_file, "polls": len(polls),
            "file_calls": len(files), "slowest_file_seconds": max(c["duration_ms"] for c in files) / 1000}


def check_equal_work(export: dict, curl: dict) -> list[str]:
    """Why the two downloads are NOT the same work (empty when they are): curl must have fetched every
    manifest file with HTTP 200, each with the manifest's line count, and as many resources and bytes as
    our export landed (same world, same request, so the same files)."""
    problems = []
    if curl["transfers"] != curl["files"] or curl["transfers_not_200"]:
        problems.append(f"curl made {curl['transfers']} transfers for {curl['files']} files, "
                        f"{curl['transfers_not_200']} not HTTP 200")
    if curl["count_mismatches"]:
        problems.append(f"{len(curl['count_mismatches'])} curl file(s) differ from the manifest's line count: "
                        f"{curl['count_mismatches'][:3]}")
    for what in ("rows", "files", "bytes"):
        if curl[what] != export[what]:
            problems.append(f"curl landed {curl[what]:,} {what}, our export {export[what]:,}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="an existing sandbox world (default: generate one)")
    ap.add_argument("--providers", type=int, default=15, help="providers of the generated world [15]")
    ap.add_argument("--memory-limit", default="1GB", help="WAREHOUSE_MEMORY_LIMIT for the load [1GB]")
    ap.add_argument("--concurrency", type=int, default=4, help="ATHENA_BULK_CONCURRENCY [4]")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "extract.json",
                    help="where to write the results [benchmarks/results/extract.json]")
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
                       ATHENA_BULK_CONCURRENCY=str(args.concurrency),  # otherwise the defaults a user gets
                       LANDING_DIR=str(tmp_path / "landing"),
                       WAREHOUSE_PATH=str(tmp_path / "warehouse.duckdb"), WAREHOUSE_MEMORY_LIMIT=args.memory_limit)
            print("export ...", flush=True)
            server_cpu = cpu_seconds_of(emulator.pid)
            export = child("export", "", env)
            export["emulator_cpu_seconds"] = cpu_seconds_of(emulator.pid) - server_cpu
            export_dir = Path(export["export_dir"])
            export["phases"] = client_phases(export_dir, export["t0_wall"], export["seconds"])
            request_url = json.loads((export_dir / "export.json").read_text())["request"]
            print("curl: export + download ...", flush=True)
            server_cpu = cpu_seconds_of(emulator.pid)
            curl = run_curl_step(request_url, tmp_path / "curl", env)
            curl["emulator_cpu_seconds"] = cpu_seconds_of(emulator.pid) - server_cpu
            shutil.rmtree(tmp_path / "curl")  # checked in its step; the disk is shared
        finally:
            emulator.send_signal(signal.SIGINT)
            emulator.wait(timeout=60)
        problems = check_equal_work(export, curl)
        if problems:
            raise SystemExit("the curl baseline did not do the same work as our export:\n  " + "\n  ".join(problems))
        print("load ...", flush=True)
        load = child("load", str(export_dir), env)
        floor_dir = floor_folder(export_dir, tmp_path / "floor")
        results = {"export": export, "load": load}
        for step, label in (("count", "count"), ("copy_default", "copy_default"), ("copy", "copy"),
                            ("load", "load_no_limit")):
            print(f"{label} ...", flush=True)
            db = tmp_path / f"{label}.duckdb"
            results[label] = run_floor_step(step, floor_dir, db)
        results["curl"] = curl

    megabytes = export["bytes"] / 1e6
    count, bare, copy = (results[s]["seconds"] for s in ("count", "copy_default", "copy"))
    e2e = export["seconds"] + load["seconds"]
    e2e_cpu = export["cpu_seconds"] + load["cpu_seconds"]
    ratio = e2e / curl["seconds"]
    print(f"\nFHIR extract: {export['rows']:,} resources, {export['files']} files, {megabytes:,.0f} MB "
          f"({curl['wire_bytes'] / 1e6:,.0f} MB gzipped on the wire); {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; export + load {e2e:.1f} s ({export['rows'] / e2e:,.0f} rows/s)\n")
    print("| step | seconds | CPU s | rows/s | MB/s | x read floor | x bare copy | x zstd copy | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("export (emulator -> landing)", export), (f"load (memory limit {args.memory_limit})", load),
            ("load (no memory limit)", results["load_no_limit"]),
            ("floor: count(*) read_ndjson_objects", results["count"]),
            ("floor: CREATE TABLE AS read_ndjson_objects (DuckDB defaults)", results["copy_default"]),
            ("floor: the same into a JSON column USING COMPRESSION zstd", results["copy"])]
    for label, r in rows:
        cpu = f"{r['cpu_seconds']:.2f}" if "cpu_seconds" in r else "-"
        print(f"| {label} | {r['seconds']:.2f} | {cpu} | {r['rows'] / r['seconds']:,.0f} | "
              f"{megabytes / r['seconds']:,.0f} | {r['seconds'] / count:.1f} | {r['seconds'] / bare:.2f} | "
              f"{r['seconds'] / copy:.2f} | "
              f"{r['peak_rss_mb']:,.0f} |")

    print(f"\nIssue 3: export + load vs an established bulk client (curl {curl['concurrency']} parallel, "
          f"{'--compressed' if curl['compressed'] else 'identity'}) downloading the same export from the same "
          "emulator\n")
    print("| | wall s | client CPU s | emulator CPU s |")
    print("|---|---:|---:|---:|")
    print(f"| our export | {export['seconds']:.2f} | {export['cpu_seconds']:.2f} | "
          f"{export['emulator_cpu_seconds']:.2f} |")
    print(f"| our load | {load['seconds']:.2f} | {load['cpu_seconds']:.2f} | - |")
    print(f"| **our export + load** | **{e2e:.2f}** | {e2e_cpu:.2f} | {export['emulator_cpu_seconds']:.2f} |")
    print(f"| **curl: export + download** | **{curl['seconds']:.2f}** | {curl['cpu_seconds']:.2f} "
          f"(+{curl['orchestrator_cpu_seconds']:.2f} Python kick-off/poll) | {curl['emulator_cpu_seconds']:.2f} |")
    print(f"| curl: download only | {curl['download_seconds']:.2f} | {curl['cpu_seconds']:.2f} | - |")
    print(f"\nratio (our export + load) / (curl export + download) = **{ratio:.2f}** (target <= 1.1: "
          f"{'met' if ratio <= 1.1 else 'NOT met'}); our export alone / curl = {export['seconds'] / curl['seconds']:.2f}\n")
    ph = export["phases"]
    print("| where the time goes (wall s) | ours | curl |")
    print("|---|---:|---:|")
    print(f"| before the kick-off (token; ours also reads the warehouse watermark) | {ph['before_kickoff_seconds']:.2f} | "
          f"({curl['token_seconds']:.2f}, not timed) |")
    print(f"| server-side export: kick-off -> manifest ({ph['polls']} / {curl['polls']} polls) | "
          f"{ph['server_export_seconds']:.2f} | {curl['server_export_seconds']:.2f} |")
    print(f"| download: manifest -> last file on disk (ours: with line-count/JSON checks) | "
          f"{ph['download_seconds']:.2f} | {curl['download_seconds']:.2f} |")
    print(f"| after the download (DELETE job, export.json) | {ph['after_download_seconds']:.2f} | - |")
    print(f"| load into the warehouse | {load['seconds']:.2f} | - |")
    print(f"| total | {e2e:.2f} | {curl['seconds']:.2f} |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"resources": export["rows"], "files": export["files"], "megabytes": megabytes,
                                    "cpus": os.cpu_count(), "memory_limit": args.memory_limit,
                                    "export_plus_load_seconds": e2e, "export_plus_load_cpu_seconds": e2e_cpu,
                                    "curl_export_plus_download_seconds": curl["seconds"],
                                    "ratio_vs_curl": ratio, "ratio_target": 1.1, "steps": results,
                                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
