"""FHIR Bulk Data export client against the athenahealth emulator, faults switched on per test.

What a user notices: the landing folder holds exactly the server's data (every file's line
count equals the manifest's), ``export.json`` follows the loader's contract, transient trouble
(429 storms, 5xx polls, timeouts, truncated or expired files, an expired token) costs time but
not correctness, a killed run resumes the same export, and nothing secret or identifying ever
reaches logs, call records or error messages.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from athena_pipeline.athena.bulk import (
    BulkExportError,
    ExportCancelled,
    check_ndjson,
    find_resumable_export,
    normalize_since,
    run_export,
)
from athena_pipeline.http import ApiError, AuthError, CallRecord, RetryExhausted, RetryPolicy
from athena_pipeline.sandbox.advance import advance_world
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.world import WorldOptions
from tests.athena import (
    CLIENT_ID,
    SECRET,
    ScriptedServer,
    athena_client,
    bulk_config,
    emulator_requests,
    group_of,
    json_response,
    kickoffs,
    read_ndjson,
)
from tests.sandbox import conftest as sandbox
from tests.sandbox.conftest import query

# the emulator fixtures of tests/sandbox, registered in this module by name
fhir_world = sandbox.fhir_world
resources_per_file = sandbox.resources_per_file
test_config = sandbox.test_config
start_emulator = sandbox.start_emulator

EXPORT_KEYS = {"export_id", "kind", "since", "transaction_time", "request", "status_url", "types",
               "files", "deleted", "errors", "downloaded_at"}
KICKOFF = "/Group/{group_id}/$export"
FILES = "/bulkfiles/{job_id}/{name}"
STATUS = "/bulkstatus/{job_id}"


def world_counts(world: Path, where: str = "TRUE") -> dict[str, int]:
    return dict(query(world, f"SELECT resource_type, count(*) FROM fhir.resources WHERE {where} "
                      "GROUP BY 1"))


def calls_of(export_dir: Path) -> list[dict]:
    return read_ndjson(export_dir / "api_calls.ndjson")


def assert_landing_is_consistent(export_dir: Path) -> dict:
    """export.json matches the files on disk, line for line and byte for byte."""
    doc = json.loads((export_dir / "export.json").read_text())
    assert set(doc) == EXPORT_KEYS
    listed = {e["path"] for e in doc["files"] + doc["deleted"] + doc["errors"]}
    on_disk = {str(p.relative_to(export_dir)) for p in export_dir.rglob("*.ndjson")
               if p.name != "api_calls.ndjson"}
    assert listed == on_disk
    assert not list(export_dir.rglob("*.part"))
    numbering: dict[str, list[int]] = {}
    for entry in doc["files"]:
        path = export_dir / entry["path"]
        m = re.fullmatch(r"([A-Za-z]+)\.(\d{3})\.ndjson", entry["path"])
        assert m and m.group(1) == entry["type"]
        numbering.setdefault(entry["type"], []).append(int(m.group(2)))
        assert path.stat().st_size == entry["bytes"]
        lines = read_ndjson(path)
        assert len(lines) == entry["count"]
        assert {r["resourceType"] for r in lines} == {entry["type"]}
    for numbers in numbering.values():
        assert numbers == list(range(len(numbers)))
    for entry in doc["deleted"]:
        assert entry["path"].startswith("deleted/")
        assert len(read_ndjson(export_dir / entry["path"])) == entry["count"]
    for entry in doc["errors"]:
        assert entry["path"].startswith("error/")
        assert len(read_ndjson(export_dir / entry["path"])) == entry["count"]
    return doc


def landed_counts(doc: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in doc["files"]:
        out[entry["type"]] = out.get(entry["type"], 0) + entry["count"]
    return out


# --- the happy path ---------------------------------------------------------------------------------
def test_full_export_lands_every_resource_and_the_contract(start_emulator, fhir_world, tmp_path):
    server = start_emulator()
    records: list[CallRecord] = []
    with emulator_requests() as reqs:
        result = run_export(bulk_config(server, tmp_path), on_call=records.append)
    export_dir = result.export_dir
    assert export_dir.parent == tmp_path / "fhir" and export_dir.name == result.export_id
    doc = assert_landing_is_consistent(export_dir)
    expected = world_counts(fhir_world)
    assert landed_counts(doc) == expected == result.counts
    assert max(len([f for f in doc["files"] if f["type"] == t]) for t in expected) > 1
    assert doc["kind"] == "full" and doc["since"] is None and result.kind == "full"
    assert doc["transaction_time"] == result.transaction_time == "2026-11-23T23:59:59Z"
    assert doc["types"] == list(dict.fromkeys(f["type"] for f in doc["files"]))
    assert doc["request"] == f"{server.fhir_base}/Group/{group_of(server)}/$export"
    assert doc["deleted"] == [] and doc["errors"] == []
    job = doc["status_url"].rsplit("/", 1)[-1]
    # the job was deleted on the server after the download
    assert reqs.count("DELETE", STATUS, 202) == 1
    assert server.emulator.exporter.get(job) is None
    # call records: the same in api_calls.ndjson and on_call; no ids, no job, no file names
    stored = calls_of(export_dir)
    assert [r["request_id"] for r in stored] == [r.request_id for r in records]
    templates = {r["path_template"] for r in stored}
    assert templates == {"/oauth2/v1/token", "/fhir/r4/Group/{id}/$export", "/bulkstatus/{job}",
                         "/bulkfiles/{job}/{file}"}
    assert not any(job in json.dumps(r) or "a-1.c-" in json.dumps(r) for r in stored)
    files = [r for r in stored if r["path_template"] == "/bulkfiles/{job}/{file}"]
    assert len(files) == result.files == result.downloaded_files
    assert sum(r["resource_count"] for r in files) == sum(expected.values())
    # gzip on the wire: fewer bytes received than landed
    assert sum(r["bytes"] for r in files) < result.bytes
    assert result.calls == len(stored) and not result.resumed and result.reexports == 0
    state = json.loads((export_dir / "state.json").read_text())
    assert state["status_url"] == doc["status_url"] and len(state["files"]) == result.files


def test_type_filter_is_one_comma_joined_parameter(start_emulator, fhir_world, tmp_path):
    server = start_emulator()
    result = run_export(bulk_config(server, tmp_path), types=["Patient", "Encounter", "Patient"])
    doc = assert_landing_is_consistent(result.export_dir)
    assert doc["request"].count("_type=") == 1 and "_type=Encounter,Patient" in doc["request"]
    assert doc["types"] == ["Encounter", "Patient"]
    assert landed_counts(doc) == world_counts(fhir_world, "resource_type IN ('Patient','Encounter')")


# --- transient trouble ---------------------------------------------------------------------------------
def test_429_storms_on_token_kickoff_poll_and_files(start_emulator, fhir_world, tmp_path):
    server = start_emulator(
        faults="token_429=1,kickoff_429=2,poll_429=2,file_429=6,retry_after_seconds=0")
    result = run_export(bulk_config(server, tmp_path))
    for name, n in (("token_429", 1), ("kickoff_429", 2), ("poll_429", 2), ("file_429", 6)):
        assert server.faults.fired(name) == n
    doc = assert_landing_is_consistent(result.export_dir)
    assert landed_counts(doc) == world_counts(fhir_world)
    statuses: dict[str, list[int]] = {}
    for r in calls_of(result.export_dir):
        statuses.setdefault(r["path_template"], []).append(r["status"])
    assert statuses["/oauth2/v1/token"] == [429, 200]
    assert statuses["/fhir/r4/Group/{id}/$export"] == [429, 429, 202]
    assert statuses["/bulkfiles/{job}/{file}"].count(429) == 6
    assert len(kickoffs(calls_of(result.export_dir))) == 3


def test_5xx_and_transient_status_polls(start_emulator, fhir_world, tmp_path, caplog):
    server = start_emulator(faults="poll_500=2,poll_transient=2",
                            export_processing_delay_seconds=1.5)
    caplog.set_level(logging.INFO, logger="athena_pipeline.athena.bulk")
    result = run_export(bulk_config(server, tmp_path), types=["Patient"])
    assert server.faults.fired("poll_500") == 2 and server.faults.fired("poll_transient") == 2
    polls = [r["status"] for r in calls_of(result.export_dir)
             if r["path_template"] == "/bulkstatus/{job}" and r["method"] == "GET"]
    assert polls.count(500) == 4 and polls[-1] == 200
    assert "transient error" in caplog.text
    assert re.search(r"in progress: \d+% complete", caplog.text)  # X-Progress is reported
    assert result.counts == world_counts(fhir_world, "resource_type = 'Patient'")


def test_a_transient_poll_error_without_retry_after_backs_off_briefly(start_emulator, fhir_world, tmp_path):
    """The SMART reference server answers a transient status error with no Retry-After: the client
    backs off from the retry policy's base rather than waiting its full default poll interval."""
    server = start_emulator(faults="poll_transient=2", export_processing_delay_seconds=0.5)
    started = time.monotonic()
    result = run_export(bulk_config(server, tmp_path, poll_default_seconds=30.0, poll_max_seconds=60.0,
                                    max_export_seconds=120.0), types=["Patient"])
    assert server.faults.fired("poll_transient") == 2
    assert time.monotonic() - started < 15, "two transient errors must not cost two 30 s poll intervals"
    assert result.counts == world_counts(fhir_world, "resource_type = 'Patient'")


@pytest.mark.parametrize(("cap", "first_waits"), [(30.0, [0.5, 1.0, 2.0]), (1.0, [0.5, 1.0, 1.0])])
def test_without_retry_after_status_polls_back_off_exponentially(start_emulator, fhir_world, tmp_path, caplog,
                                                                 cap, first_waits):
    """Whether athena sends Retry-After is not documented. Without one the client waits 1, 2, 4 ...
    times its first wait (the Bulk Data IG's exponential back-off), never more than
    ATHENA_BULK_POLL_SECONDS: a quick export is picked up soon after it finishes, not a whole
    default interval later, and a long one is not polled every second for hours."""
    caplog.set_level(logging.INFO, logger="athena_pipeline.athena.bulk")
    server = start_emulator(poll_retry_after_seconds=None, export_processing_delay_seconds=3.0)
    started = time.monotonic()
    result = run_export(bulk_config(server, tmp_path, poll_initial_seconds=0.5, poll_default_seconds=cap,
                                    poll_min_seconds=0.05), types=["Patient"])
    waits = [float(w) for w in re.findall(r"in progress: .*\(next poll in ([\d.]+)s\)", caplog.text)]
    assert waits[:3] == first_waits, caplog.text
    assert waits == [min(cap, 0.5 * 2 ** i) for i in range(len(waits))]
    assert time.monotonic() - started < 15
    assert result.counts == world_counts(fhir_world, "resource_type = 'Patient'")


def test_slow_responses_beyond_the_timeout_are_retried(start_emulator, fhir_world, tmp_path):
    server = start_emulator(faults="slow_poll=1:2.0,slow_file=2:2.0")
    result = run_export(bulk_config(server, tmp_path, timeout=httpx.Timeout(0.7)),
                        types=["Patient", "Observation"])
    timed_out = [r for r in calls_of(result.export_dir) if r["status"] is None]
    assert len(timed_out) == 3
    assert {r["path_template"] for r in timed_out} == {"/bulkstatus/{job}",
                                                       "/bulkfiles/{job}/{file}"}
    doc = assert_landing_is_consistent(result.export_dir)
    assert landed_counts(doc) == world_counts(fhir_world,
                                              "resource_type IN ('Patient','Observation')")


@pytest.mark.parametrize("fault", ["truncate", "truncate_clean"])
def test_truncated_downloads_are_retried_and_end_correct(start_emulator, fhir_world, tmp_path,
                                                          caplog, fault):
    server = start_emulator(faults=f"{fault}=3")
    caplog.set_level(logging.WARNING, logger="athena_pipeline.athena.bulk")
    result = run_export(bulk_config(server, tmp_path), types=["Observation", "Encounter"])
    assert server.faults.fired(fault) == 3
    doc = assert_landing_is_consistent(result.export_dir)
    assert landed_counts(doc) == world_counts(fhir_world,
                                              "resource_type IN ('Observation','Encounter')")
    assert caplog.text.count("downloading it again") == 3
    file_calls = [r for r in calls_of(result.export_dir)
                  if r["path_template"] == "/bulkfiles/{job}/{file}"]
    assert len(file_calls) == result.files + 3


def test_a_file_that_stays_truncated_fails_loudly(start_emulator, tmp_path):
    server = start_emulator(faults="truncate_clean=p1")
    with pytest.raises(BulkExportError) as info:
        run_export(bulk_config(server, tmp_path, max_file_attempts=2), types=["Patient"])
    assert info.value.transient is True
    assert re.search(r"Patient\.\d{3}\.ndjson: .* after 2 download attempt", str(info.value))


def test_expired_files_lead_to_a_fresh_export(start_emulator, fhir_world, tmp_path):
    server = start_emulator(faults="files_expired=1")
    with emulator_requests() as reqs:
        result = run_export(bulk_config(server, tmp_path), types=["Patient", "Condition"])
    assert result.reexports == 1
    assert reqs.count("GET", KICKOFF, 202) == 2
    assert reqs.count("DELETE", STATUS, 202) == 2  # the abandoned job, then the finished one
    doc = assert_landing_is_consistent(result.export_dir)
    assert landed_counts(doc) == world_counts(fhir_world,
                                              "resource_type IN ('Patient','Condition')")


def test_fresh_exports_are_bounded(start_emulator, tmp_path):
    server = start_emulator(faults="files_expired=p1")
    with pytest.raises(BulkExportError) as info:
        run_export(bulk_config(server, tmp_path, max_reexports=1), types=["Patient"])
    assert "gave up after 1 fresh export" in str(info.value) and info.value.transient
    state = json.loads(next(tmp_path.glob("fhir/*/state.json")).read_text())
    assert state["reexports"] == 1
    # once the server behaves, the next run picks the same export folder up and finishes
    server.faults.clear()
    result = run_export(bulk_config(server, tmp_path, max_reexports=1), types=["Patient"])
    assert result.resumed and result.export_dir == next(tmp_path.glob("fhir/*/state.json")).parent
    assert_landing_is_consistent(result.export_dir)


def test_error_lines_are_written_and_listed(start_emulator, tmp_path, caplog):
    server = start_emulator(faults="error_lines=1:3")
    caplog.set_level(logging.WARNING, logger="athena_pipeline.athena.bulk")
    result = run_export(bulk_config(server, tmp_path), types=["Patient"])
    doc = assert_landing_is_consistent(result.export_dir)
    assert doc["errors"] == [{"path": "error/OperationOutcome.000.ndjson", "count": 3}]
    lines = read_ndjson(result.export_dir / "error" / "OperationOutcome.000.ndjson")
    assert [r["resourceType"] for r in lines] == ["OperationOutcome"] * 3
    assert result.error_count == 3
    assert "3 error line(s)" in caplog.text


def test_token_expiry_mid_export_costs_one_reauthentication(start_emulator, tmp_path):
    server = start_emulator()
    armed = threading.Event()

    def on_call(record: CallRecord) -> None:  # expire the token once the downloads have begun
        if record.path_template == "/bulkfiles/{job}/{file}" and not armed.is_set():
            armed.set()
            server.faults.set("bearer_expired", 1)

    result = run_export(bulk_config(server, tmp_path, concurrency=1), on_call=on_call)
    assert server.faults.fired("bearer_expired") == 1
    records = calls_of(result.export_dir)
    assert [r["status"] for r in records if r["path_template"] == "/oauth2/v1/token"] == [200, 200]
    assert [r["status"] for r in records].count(401) == 1
    assert_landing_is_consistent(result.export_dir)


# --- incremental exports -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated_world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated") / "world"
    generate_world(root, WorldOptions(providers=1, patients=300))
    return root


def test_since_export_after_advancing_the_world(start_emulator, generated_world, tmp_path):
    server = start_emulator(world=generated_world, resources_per_file=2000)
    config = bulk_config(server, tmp_path)
    first = run_export(config)
    assert first.counts == world_counts(generated_world)
    t1 = first.transaction_time

    advance_world(generated_world, 10)
    second = run_export(config, since=t1)
    assert second.kind == "since" and second.since == t1
    assert second.transaction_time > t1
    bound = f"TIMESTAMP '{t1[:-1].replace('T', ' ')}'"
    changed = world_counts(generated_world, f"last_updated > {bound}")
    assert changed and second.counts == changed
    assert sum(second.counts.values()) < sum(first.counts.values()) / 5
    doc = assert_landing_is_consistent(second.export_dir)
    assert doc["since"] == t1 and doc["kind"] == "since"
    for entry in doc["files"]:
        for resource in read_ndjson(second.export_dir / entry["path"]):
            assert resource["meta"]["lastUpdated"] > t1
    deleted = query(generated_world, f"SELECT count(*) FROM fhir.deletions WHERE deleted_at > {bound}")
    assert sum(e["count"] for e in doc["deleted"]) == deleted[0][0]
    # the client does not advance any watermark: a third run with the same since sees the same
    third = run_export(config, since=t1)
    assert third.counts == second.counts and third.export_id != second.export_id


def test_since_export_lists_deleted_resources(start_emulator, fhir_world, tmp_path):
    server = start_emulator()
    result = run_export(bulk_config(server, tmp_path), since="2026-11-01T00:00:00+00:00")
    doc = assert_landing_is_consistent(result.export_dir)
    assert doc["since"] == "2026-11-01T00:00:00Z"
    gone = query(fhir_world, "SELECT resource_type || '/' || id FROM fhir.deletions "
                 "WHERE deleted_at > TIMESTAMP '2026-11-01 00:00:00'")
    assert doc["deleted"] == [{"path": "deleted/Bundle.000.ndjson", "count": len(gone)}]
    bundles = read_ndjson(result.export_dir / "deleted" / "Bundle.000.ndjson")
    urls = {e["request"]["url"] for b in bundles for e in b["entry"]
            if e["request"]["method"] == "DELETE"}
    assert urls == {g for (g,) in gone}
    assert result.deleted_count == len(gone)
    assert landed_counts(doc) == world_counts(
        fhir_world, "last_updated > TIMESTAMP '2026-11-01 00:00:00'")


# --- resume --------------------------------------------------------------------------------------------
def test_a_failed_run_is_resumed_not_restarted(start_emulator, fhir_world, tmp_path):
    server = start_emulator(faults="poll_500=p1")
    config = bulk_config(server, tmp_path, retry=RetryPolicy(backoff_base=0.01,
                                                             max_total_seconds=0.5))
    with emulator_requests() as reqs:
        with pytest.raises(RetryExhausted):
            run_export(config, types=["Patient"], since="2024-01-01T00:00:00Z")
        found = find_resumable_export(tmp_path, config.group_id, "2024-01-01T00:00:00Z",
                                      ["Patient"])
        assert found is not None
        assert find_resumable_export(tmp_path, config.group_id, None, ["Patient"]) is None
        assert find_resumable_export(tmp_path, config.group_id, "2024-01-01T00:00:00Z",
                                     ["Patient", "Encounter"]) is None
        assert find_resumable_export(tmp_path, "a-1.c-1", "2024-01-01T00:00:00Z",
                                     ["Patient"]) is None
        server.faults.clear()
        result = run_export(config, types=["Patient"], since="2024-01-01T00:00:00Z")
    assert result.resumed and result.export_dir == found
    assert reqs.count("GET", KICKOFF) == 1
    assert len(kickoffs(calls_of(found))) == 1  # the failed run's calls are kept
    assert find_resumable_export(tmp_path, config.group_id, "2024-01-01T00:00:00Z",
                                 ["Patient"]) is None  # finished
    assert_landing_is_consistent(found)


RESUME_SCRIPT = """
import json, sys
from pathlib import Path
import httpx
from athena_pipeline.athena.bulk import BulkExportConfig, run_export
from athena_pipeline.http import RetryPolicy
a = json.loads(sys.argv[1])
run_export(BulkExportConfig(
    fhir_base_url=a["fhir"], group_id=a["group"], landing_dir=Path(a["landing"]),
    token_url=a["token"], client_id=a["client_id"], client_secret=a["secret"],
    requests_per_second=500, concurrency=1, poll_min_seconds=0.05, poll_default_seconds=0.2,
    retry=RetryPolicy(backoff_base=0.02, max_total_seconds=30), timeout=httpx.Timeout(10)))
"""


def test_resume_after_sigkill_mid_download(start_emulator, fhir_world, tmp_path):
    server = start_emulator(faults="slow_file=1000:0.25")
    config = bulk_config(server, tmp_path)
    args = {"fhir": server.fhir_base, "group": config.group_id, "landing": str(tmp_path),
            "token": server.token_url, "client_id": CLIENT_ID, "secret": SECRET}
    with emulator_requests() as reqs:
        proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, json.dumps(args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 45
        state_path = None
        try:
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the export never got going"
                found = list(tmp_path.glob("fhir/*/state.json"))
                if found:
                    state_path = found[0]
                    state = json.loads(state_path.read_text())
                    if len(state.get("files") or {}) >= 3:
                        break
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        export_dir = state_path.parent
        before = set(json.loads(state_path.read_text())["files"])
        assert not (export_dir / "export.json").exists()
        kickoffs_before = reqs.count("GET", KICKOFF)
        assert kickoffs_before == 1

        server.faults.clear()
        records: list[CallRecord] = []
        result = run_export(config, on_call=records.append)
    assert result.resumed and result.export_dir == export_dir
    assert reqs.count("GET", KICKOFF) == 1  # no second kick-off
    assert [r for r in records if r.path_template.endswith("$export")] == []
    downloaded = [r for r in records if r.path_template == "/bulkfiles/{job}/{file}"]
    assert len(downloaded) == result.files - len(before) == result.downloaded_files
    doc = assert_landing_is_consistent(export_dir)
    assert landed_counts(doc) == world_counts(fhir_world)
    ids = {(r["resourceType"], r["id"]) for e in doc["files"]
           for r in read_ndjson(export_dir / e["path"])}
    assert ids == set(query(fhir_world, "SELECT resource_type, id FROM fhir.resources"))
    assert len(kickoffs(calls_of(export_dir))) == 1  # the killed run's kick-off is on record


def test_killed_after_the_last_file_finishes_without_the_network(start_emulator, tmp_path):
    server = start_emulator()
    config = bulk_config(server, tmp_path)
    result = run_export(config, types=["Patient"])
    # pretend the process died just before export.json: the job is already deleted upstream
    (result.export_dir / "export.json").unlink()
    records: list[CallRecord] = []
    again = run_export(config, types=["Patient"], on_call=records.append)
    assert again.resumed and again.export_dir == result.export_dir
    assert again.downloaded_files == 0 and again.counts == result.counts
    assert [r.method for r in records] in ([], ["POST", "DELETE"], ["DELETE"])
    assert_landing_is_consistent(result.export_dir)


# --- cancellation --------------------------------------------------------------------------------------
def test_cancel_deletes_the_job(start_emulator, tmp_path):
    server = start_emulator(export_processing_delay_seconds=30)
    config = bulk_config(server, tmp_path)
    cancel = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_export(config, types=["Patient"], cancel=cancel)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with emulator_requests() as reqs:
        worker = threading.Thread(target=run)
        worker.start()
        while reqs.count("GET", STATUS, 202) < 1:
            time.sleep(0.02)
        cancel.set()
        worker.join(10)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ExportCancelled)
    assert reqs.count("DELETE", STATUS, 202) == 1
    state = json.loads(next(tmp_path.glob("fhir/*/state.json")).read_text())
    assert state["cancelled"] is True
    assert server.emulator.exporter.get(state["status_url"].rsplit("/", 1)[-1]) is None
    assert find_resumable_export(tmp_path, config.group_id, None, ["Patient"]) is None


def test_keyboard_interrupt_deletes_the_job_and_propagates(start_emulator, tmp_path):
    server = start_emulator(export_processing_delay_seconds=30)
    fired = threading.Event()

    def on_call(record: CallRecord) -> None:
        if record.path_template == "/bulkstatus/{job}" and not fired.is_set():
            fired.set()
            raise KeyboardInterrupt

    with emulator_requests() as reqs, pytest.raises(KeyboardInterrupt):
        run_export(bulk_config(server, tmp_path), types=["Patient"], on_call=on_call)
    assert reqs.count("DELETE", STATUS, 202) == 1


# --- paged manifests and opaque servers ------------------------------------------------------------------
def test_paged_manifest_relative_urls_and_files_without_token(tmp_path):
    pages = {
        "p1": {"transactionTime": "2026-01-02T03:04:05Z", "request": "x",
               "requiresAccessToken": False,
               "output": [{"type": "Patient", "url": "/dl/a?sig=abc", "count": 2}],
               "error": [], "link": [{"relation": "next", "url": "/status/j-1/page/2"}]},
        "p2": {"transactionTime": "2026-01-02T03:04:05Z", "request": "x",
               "requiresAccessToken": False,
               "output": [{"type": "Patient", "url": "/dl/b", "count": 1},
                          {"type": "Observation", "url": "/dl/c", "count": 2}],
               "deleted": [{"type": "Bundle", "url": "/dl/d", "count": 1}], "error": []},
    }
    polls = {"n": 0}

    def status(req):
        polls["n"] += 1
        if polls["n"] == 1:  # no Retry-After: the client's default wait applies
            return 202, {"X-Progress": "halfway\x00 there"}, b""
        return json_response(200, pages["p1"])

    def ndjson(*lines: dict) -> tuple[int, dict, bytes]:
        return 200, {"Content-Type": "application/fhir+ndjson"}, \
            b"\n".join(json.dumps(x).encode() for x in lines)  # no final newline

    routes = {
        ("POST", "/token"): lambda r: json_response(200, {"access_token": "tok-xyz",
                                                          "expires_in": "3600"}),
        ("GET", "/fhir/r4/Group/g-1/$export"): lambda r: (202, {"Content-Location": "/status/j-1"}, b""),
        ("GET", "/status/j-1"): status,
        ("DELETE", "/status/j-1"): lambda r: (202, {}, b""),
        ("GET", "/status/j-1/page/2"): lambda r: json_response(200, pages["p2"]),
        ("GET", "/dl/a"): lambda r: ndjson({"resourceType": "Patient", "id": "1"},
                                           {"resourceType": "Patient", "id": "2"}),
        ("GET", "/dl/b"): lambda r: ndjson({"resourceType": "Patient", "id": "3"}),
        ("GET", "/dl/c"): lambda r: ndjson({"resourceType": "Observation", "id": "o1"},
                                           {"resourceType": "Observation", "id": "o2"}),
        ("GET", "/dl/d"): lambda r: ndjson({"resourceType": "Bundle", "type": "transaction",
                                            "entry": [{"request": {"method": "DELETE",
                                                                   "url": "Patient/9"}}]}),
    }
    with ScriptedServer(routes) as srv:
        from athena_pipeline.athena.bulk import BulkExportConfig
        config = BulkExportConfig(
            fhir_base_url=f"{srv.base_url}/fhir/r4", group_id="g-1", landing_dir=tmp_path,
            token_url=f"{srv.base_url}/token", client_id="c", client_secret="s",
            requests_per_second=None, poll_default_seconds=0.1, poll_min_seconds=0.05,
            retry=RetryPolicy(backoff_base=0.01), timeout=5)
        result = run_export(config, types=["Patient", "Observation"])
    doc = assert_landing_is_consistent(result.export_dir)
    assert [(f["type"], f["path"], f["count"]) for f in doc["files"]] == [
        ("Patient", "Patient.000.ndjson", 2), ("Patient", "Patient.001.ndjson", 1),
        ("Observation", "Observation.000.ndjson", 2)]
    assert doc["deleted"] == [{"path": "deleted/Bundle.000.ndjson", "count": 1}]
    assert doc["status_url"] == f"{srv.base_url}/status/j-1"
    assert doc["transaction_time"] == "2026-01-02T03:04:05Z"
    kick = next(r for r in srv.requests if r.path.endswith("$export"))
    assert kick.raw_query == "_type=Observation,Patient"
    assert kick.headers["prefer"] == "respond-async"
    assert kick.headers["accept"] == "application/fhir+json"
    assert kick.headers["authorization"] == "Bearer tok-xyz"
    downloads = [r for r in srv.requests if r.path.startswith("/dl/")]
    assert len(downloads) == 4
    assert all("authorization" not in r.headers for r in downloads)  # requiresAccessToken false
    assert all(r.headers["accept-encoding"] == "gzip" for r in downloads)
    assert [r.method for r in srv.requests if r.path == "/status/j-1"][-1] == "DELETE"
    templates = {c["path_template"] for c in calls_of(result.export_dir)}
    assert "/dl/{file}" in templates and "/status/{job}" in templates
    assert not any("sig" in t or "abc" in t for t in templates)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_the_streaming_tally_counts_lines_and_spots_a_cut_last_line(chunk):
    """What the download decides without reading the file again, whatever the chunking."""
    from athena_pipeline.athena.bulk import _LineTally

    def tally(body: bytes) -> _LineTally:
        t = _LineTally()
        for i in range(0, len(body), chunk):
            t.add(body[i:i + chunk])
        return t

    whole = b'{"resourceType":"Patient","id":"1"}\n{"resourceType":"Patient","id":"2"}\n'
    assert (tally(whole).lines, tally(whole).last_line_complete()) == (2, True)
    unterminated = whole.rstrip(b"\n")
    assert (tally(unterminated).lines, tally(unterminated).last_line_complete()) == (2, True)
    cut = whole[:-10]  # cut inside the last line: the same line count, but not whole
    assert (tally(cut).lines, tally(cut).last_line_complete()) == (2, False)
    at_boundary = whole[: whole.index(b"\n") + 1]  # one line short: the count tells
    assert (tally(at_boundary).lines, tally(at_boundary).last_line_complete()) == (1, True)
    blank = whole + b"\n"  # a blank line counts here, so the count differs and the full check runs
    assert tally(blank).lines == 3
    assert tally(b"").lines == 0


def test_check_ndjson_spots_bad_lines(tmp_path):
    good = tmp_path / "good.ndjson"
    good.write_text('{"resourceType":"Patient","id":"1"}\n\n{"id":"2","resourceType":"Patient"}')
    assert check_ndjson(good, "Patient") == (2, 0, 0)
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"resourceType":"Patient"}\n{"resourceType":"Observation"}\n{"resourceTy')
    assert check_ndjson(bad, "Patient") == (3, 1, 2)
    assert normalize_since("2026-01-01") == "2026-01-01T00:00:00Z"
    assert normalize_since("2026-01-01T01:00:00+01:00") == "2026-01-01T00:00:00Z"


# --- no secrets, no tokens, no PHI ------------------------------------------------------------------------
def test_no_secret_token_or_patient_name_leaks(start_emulator, fhir_world, tmp_path, caplog):
    from athena_pipeline.sandbox.emulator.config import ClientConfig
    secret = "Zq9-very-private-client-secret"
    server = start_emulator(
        clients=(ClientConfig(CLIENT_ID, secret=secret),),
        faults="bearer_expired=1,poll_transient=1,truncate=1,file_429=1,poll_500=1")
    caplog.set_level(logging.DEBUG)
    # httpx's own request lines too: a CLI test run earlier in this process may have quieted them
    caplog.set_level(logging.DEBUG, logger="httpx")
    texts: list[str] = []
    config = bulk_config(server, tmp_path, client_secret=secret)
    result = run_export(config)
    # failures, each with its exception text
    for action in (
        lambda: run_export(bulk_config(server, tmp_path / "b", client_secret="wrong-" + secret)),
        lambda: athena_client(server, client_secret=secret).fhir_read("Patient", "a-1.E-404"),
        lambda: athena_client(server, client_secret=secret).fhir_get(
            "Patient", {"_count": "x", "family": "Doe1"}),
    ):
        with pytest.raises((ApiError, AuthError, BulkExportError)) as info:
            action()
        texts += [str(info.value), repr(info.value), getattr(info.value, "url", "")]
    server.faults.set("files_expired", probability=1.0)
    with pytest.raises(BulkExportError) as info:
        run_export(bulk_config(server, tmp_path / "c", client_secret=secret, max_reexports=0))
    texts.append(str(info.value))

    texts.append(caplog.text)
    for path in list(tmp_path.rglob("*.json")) + list(tmp_path.rglob("api_calls.ndjson")) + \
            list(tmp_path.rglob(".api_calls.partial.ndjson")):
        texts.append(path.read_text())
    texts.append(repr(config))
    blob = "\n".join(texts)
    assert "HTTP Request" in caplog.text and "athena_pipeline.athena.bulk" in caplog.text

    tokens = list(server.emulator.tokens._tokens)
    assert len(tokens) >= 3
    names = {n for (n,) in query(fhir_world, """
        SELECT DISTINCT unnest([json_extract_string(resource, '$.name[0].family'),
                                json_extract_string(resource, '$.name[0].given[0]')])
        FROM fhir.resources WHERE resource_type = 'Patient'""") if n and len(n) >= 4}
    assert names
    patient_ids = [i for (i,) in query(fhir_world,
                                       "SELECT id FROM fhir.resources WHERE resource_type='Patient'")]
    assert secret not in blob
    for token in tokens:
        assert token not in blob
    for name in names:
        assert name not in blob, name
    for pid in patient_ids:
        assert pid not in blob
    for needle in ("a-1.E-404", "Doe1"):
        at = blob.find(needle)
        assert at < 0, blob[max(0, at - 600):at + 100]
    assert result.counts == world_counts(fhir_world)
    shutil.rmtree(tmp_path / "b", ignore_errors=True)
