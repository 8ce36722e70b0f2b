"""Bulk Data 2.0 export against the athena emulator: kick-off rules, polling, manifest, files."""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import json
import os
import time
from collections import Counter
from pathlib import Path

import duckdb
import httpx
import pytest

from athena_pipeline.sandbox.emulator.config import ClientConfig
from athena_pipeline.sandbox.world import World, WorldOptions
from tests.sandbox.conftest import get_token, practice_of, query

KICKOFF_HEADERS = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def export_url(server) -> str:
    return f"{server.fhir_base}/Group/a-1.c-{practice_of(server)}/$export"


def kickoff(server, auth: dict, params=None, headers: dict | None = None) -> httpx.Response:
    return httpx.get(export_url(server), params=params, timeout=10,
                     headers={**KICKOFF_HEADERS, **auth, **(headers or {})})


def wait_manifest(status_url: str, auth: dict, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(status_url, headers=auth, timeout=10)
        if r.status_code != 202:
            return r
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def run_export(server, auth: dict, params=None) -> dict:
    r = kickoff(server, auth, params)
    assert r.status_code == 202, r.text
    done = wait_manifest(r.headers["content-location"], auth)
    assert done.status_code == 200, done.text
    return done.json()


def download_lines(entry: dict, auth: dict) -> list[str]:
    r = httpx.get(entry["url"], headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+ndjson")
    assert r.content.endswith(b"\n")
    return r.text.splitlines()


def world_clock(server) -> dt.datetime:
    return server.emulator.store.snapshot().clock


# --- kick-off validation ----------------------------------------------------------------------------------
def test_kickoff_requires_prefer_respond_async(emulator, auth):
    r = httpx.get(export_url(emulator), headers={**auth, "Accept": "application/fhir+json"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["resourceType"] == "OperationOutcome"


def test_kickoff_accept_header(emulator, auth):
    assert kickoff(emulator, auth, headers={"Accept": "application/xml"}).status_code == 400
    r = kickoff(emulator, auth, {"_type": "Patient"}, headers={"Accept": "*/*"})
    assert r.status_code == 202
    httpx.delete(r.headers["content-location"], headers=auth)


@pytest.mark.parametrize("fmt", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_output_format_aliases_are_accepted(emulator, auth, fmt):
    r = kickoff(emulator, auth, {"_outputFormat": fmt, "_type": "Patient"})
    assert r.status_code == 202
    httpx.delete(r.headers["content-location"], headers=auth)


@pytest.mark.parametrize("fmt", ["application/json", "text/csv", "application/fhir+json"])
def test_other_output_formats_are_400(emulator, auth, fmt):
    r = kickoff(emulator, auth, {"_outputFormat": fmt})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


def test_unknown_type_is_400(emulator, auth):
    r = kickoff(emulator, auth, {"_type": "Patient,Spaceship"})
    assert r.status_code == 400
    assert "Spaceship" in r.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("since", ["2024-01-01", "yesterday", "2024-01-01T00:00:00",
                                   "2024-13-01T00:00:00Z", "2024-01-01T00:00Z"])
def test_bad_since_is_400(emulator, auth, since):
    r = kickoff(emulator, auth, {"_since": since})
    assert r.status_code == 400, since


@pytest.mark.parametrize("param,value", [("_typeFilter", "Patient?gender=female"), ("_elements", "id"),
                                         ("includeAssociatedData", "LatestProvenanceResources"),
                                         ("patient", "Patient/x"), ("_until", "2024-01-01T00:00:00Z")])
def test_unsupported_parameters_strict_vs_lenient(emulator, auth, param, value):
    strict = kickoff(emulator, auth, {param: value, "_type": "Patient"})
    assert strict.status_code == 400
    assert param in strict.json()["issue"][0]["diagnostics"]
    lenient = kickoff(emulator, auth, {param: value, "_type": "Patient"},
                      headers={"Prefer": "respond-async, handling=lenient"})
    assert lenient.status_code == 202
    httpx.delete(lenient.headers["content-location"], headers=auth)


def test_wrong_group_is_404(emulator, auth):
    r = httpx.get(f"{emulator.fhir_base}/Group/a-1.c-1/$export", headers={**KICKOFF_HEADERS, **auth})
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_concurrent_export_is_429_until_the_first_ends(start_emulator):
    server = start_emulator(export_processing_delay_seconds=30, concurrent_export_retry_after_seconds=7)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    first = kickoff(server, auth, {"_type": "Patient"})
    assert first.status_code == 202
    second = kickoff(server, auth, {"_type": "Encounter"})
    assert second.status_code == 429
    assert second.headers["retry-after"] == "7"
    assert second.json()["resourceType"] == "OperationOutcome"
    assert httpx.delete(first.headers["content-location"], headers=auth).status_code == 202
    third = kickoff(server, auth, {"_type": "Encounter"})
    assert third.status_code == 202


# --- the whole flow --------------------------------------------------------------------------------------
def test_export_flow_manifest_and_files(start_emulator, resources_per_file):
    server = start_emulator(export_processing_delay_seconds=0.6)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    world = server.emulator.world_dir
    r = kickoff(server, auth)
    assert r.status_code == 202
    status_url = r.headers["content-location"]
    assert status_url.startswith(server.base_url + "/")
    assert "a-1.c-" not in status_url  # opaque, not derived from the request

    first = httpx.get(status_url, headers=auth)
    assert first.status_code == 202
    assert first.headers["x-progress"].endswith("% complete")
    assert len(first.headers["x-progress"]) < 100
    assert int(first.headers["retry-after"]) >= 1

    done = wait_manifest(status_url, auth)
    assert done.status_code == 200
    assert done.headers["content-type"].startswith("application/json")
    expires = email.utils.parsedate_to_datetime(done.headers["expires"])
    assert expires > dt.datetime.now(dt.UTC)
    manifest = done.json()
    assert manifest["transactionTime"] == world_clock(server).isoformat(timespec="seconds") + "Z"
    assert manifest["request"] == str(r.request.url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["deleted"] == [] and manifest["error"] == []

    expected = dict(query(world, "SELECT resource_type, count(*) FROM fhir.resources GROUP BY 1"))
    counts: Counter[str] = Counter()
    files_per_type: Counter[str] = Counter()
    ids: list[tuple[str, str]] = []
    for entry in manifest["output"]:
        assert 0 < entry["count"] <= resources_per_file
        lines = download_lines(entry, auth)
        assert len(lines) == entry["count"]
        for line in lines:
            resource = json.loads(line)
            assert resource["resourceType"] == entry["type"]
            ids.append((entry["type"], resource["id"]))
        counts[entry["type"]] += entry["count"]
        files_per_type[entry["type"]] += 1
    assert dict(counts) == expected
    assert len(ids) == len(set(ids)) == sum(expected.values())
    assert max(files_per_type.values()) >= 3  # a type spans several files
    # the files really are on disk under <world>/emulator/exports/<job>/
    job_dir = world / "emulator" / "exports" / status_url.rsplit("/", 1)[1]
    assert len(list(job_dir.glob("*.ndjson"))) == len(manifest["output"])


def test_type_parameter_comma_and_repeated(emulator, auth):
    manifest = run_export(emulator, auth, [("_type", "Patient,Encounter"), ("_type", "Condition")])
    assert {e["type"] for e in manifest["output"]} == {"Patient", "Encounter", "Condition"}


def test_post_kickoff_with_parameters(emulator, auth):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"},
        {"name": "_outputFormat", "valueString": "ndjson"}]}
    r = httpx.post(export_url(emulator), json=body, headers={**KICKOFF_HEADERS, **auth})
    assert r.status_code == 202
    manifest = wait_manifest(r.headers["content-location"], auth).json()
    assert {e["type"] for e in manifest["output"]} == {"Patient"}
    patient = {"resourceType": "Parameters", "parameter": [{"name": "patient",
                                                            "valueReference": {"reference": "Patient/x"}}]}
    r = httpx.post(export_url(emulator), json=patient, headers={**KICKOFF_HEADERS, **auth})
    assert r.status_code == 400


def test_since_filters_and_reports_deletions(emulator, auth):
    world = emulator.emulator.world_dir
    clock = world_clock(emulator)
    first_deletion = query(world, "SELECT min(deleted_at) FROM fhir.deletions")[0][0]
    since = min(first_deletion - dt.timedelta(seconds=1),
                query(world, "SELECT quantile_disc(last_updated, 0.7) FROM fhir.resources")[0][0])
    since = since.replace(microsecond=0)
    # express _since with an offset to prove it is converted to UTC
    local = (since + dt.timedelta(hours=2)).isoformat() + "+02:00"
    manifest = run_export(emulator, auth, {"_since": local})
    expected = dict(query(world, "SELECT resource_type, count(*) FROM fhir.resources "
                                 "WHERE last_updated > ? AND last_updated <= ? GROUP BY 1", [since, clock]))
    got: Counter[str] = Counter()
    for entry in manifest["output"]:
        for line in download_lines(entry, auth):
            stamp = dt.datetime.fromisoformat(json.loads(line)["meta"]["lastUpdated"])
            assert stamp.replace(tzinfo=None) > since
        got[entry["type"]] += entry["count"]
    assert dict(got) == expected

    wanted = {f"{t}/{i}" for t, i in query(world, "SELECT resource_type, id FROM fhir.deletions "
                                                  "WHERE deleted_at > ? AND deleted_at <= ?", [since, clock])}
    assert wanted
    deleted = set()
    for entry in manifest["deleted"]:
        assert entry["type"] == "Bundle"
        lines = download_lines(entry, auth)
        assert len(lines) == entry["count"]
        for line in lines:
            bundle = json.loads(line)
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
            assert len(bundle["entry"]) == 1
            assert bundle["entry"][0]["request"]["method"] == "DELETE"
            deleted.add(bundle["entry"][0]["request"]["url"])
    assert deleted == wanted

    # the next incremental export starts at transactionTime and finds nothing new
    again = run_export(emulator, auth, {"_since": manifest["transactionTime"]})
    assert again["output"] == [] and again["deleted"] == []


def test_exports_are_deterministic(emulator, auth):
    first = run_export(emulator, auth, {"_type": "Observation,Patient"})
    second = run_export(emulator, auth, {"_type": "Observation,Patient"})
    assert [(e["type"], e["count"]) for e in first["output"]] == [(e["type"], e["count"]) for e in second["output"]]
    for a, b in zip(first["output"], second["output"], strict=True):
        assert httpx.get(a["url"], headers=auth).content == httpx.get(b["url"], headers=auth).content


def test_gzip_download(emulator, auth):
    manifest = run_export(emulator, auth, {"_type": "Patient"})
    url = manifest["output"][0]["url"]
    plain = httpx.get(url, headers={**auth, "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    with httpx.stream("GET", url, headers={**auth, "Accept-Encoding": "gzip"}) as r:
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"
        raw = b"".join(r.iter_raw())
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == plain.content


def test_files_need_the_owners_token(start_emulator):
    clients = (ClientConfig("sandbox-client", secret="sandbox-secret"), ClientConfig("other", secret="o"))
    server = start_emulator(clients=clients)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    manifest = run_export(server, auth, {"_type": "Patient"})
    url = manifest["output"][0]["url"]
    assert httpx.get(url).status_code == 401
    other = {"Authorization": f"Bearer {get_token(server, client_id='other', secret='o')}"}
    assert httpx.get(url, headers=other).status_code == 404
    assert httpx.get(url.rsplit("/", 1)[0] + "/../../world.json", headers=auth).status_code == 404
    assert httpx.get(url, headers=auth).status_code == 200


def test_delete_cancels_a_running_export(start_emulator):
    server = start_emulator(export_processing_delay_seconds=30)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    status_url = kickoff(server, auth).headers["content-location"]
    assert httpx.get(status_url, headers=auth).status_code == 202
    r = httpx.delete(status_url, headers=auth)
    assert r.status_code == 202
    poll = httpx.get(status_url, headers=auth)
    assert poll.status_code == 404
    assert poll.json()["resourceType"] == "OperationOutcome"
    assert httpx.delete(status_url, headers=auth).status_code == 404
    job_dir = server.emulator.world_dir / "emulator" / "exports" / status_url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 10
    while job_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job_dir.exists()


def test_delete_after_completion_removes_the_files(emulator, auth):
    r = kickoff(emulator, auth, {"_type": "Patient"})
    status_url = r.headers["content-location"]
    manifest = wait_manifest(status_url, auth).json()
    assert httpx.delete(status_url, headers=auth).status_code == 202
    assert httpx.get(status_url, headers=auth).status_code == 404
    assert httpx.get(manifest["output"][0]["url"], headers=auth).status_code == 404


def test_files_expire(start_emulator):
    server = start_emulator(file_expiry_seconds=0.5)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    r = kickoff(server, auth, {"_type": "Patient"})
    status_url = r.headers["content-location"]
    manifest = wait_manifest(status_url, auth).json()
    url = manifest["output"][0]["url"]
    time.sleep(0.7)
    gone = httpx.get(url, headers=auth)
    assert gone.status_code == 404
    assert gone.json()["resourceType"] == "OperationOutcome"
    poll = httpx.get(status_url, headers=auth)
    assert poll.status_code == 404
    assert "expired" in poll.json()["issue"][0]["diagnostics"]
    job_dir = server.emulator.world_dir / "emulator" / "exports" / status_url.rsplit("/", 1)[1]
    assert not job_dir.exists()


def test_polling_too_fast_is_429_when_enforced(start_emulator):
    server = start_emulator(export_processing_delay_seconds=30, enforce_poll_interval=True,
                            poll_retry_after_seconds=2)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    status_url = kickoff(server, auth, {"_type": "Patient"}).headers["content-location"]
    first = httpx.get(status_url, headers=auth)
    assert first.status_code == 202 and first.headers["retry-after"] == "2"
    second = httpx.get(status_url, headers=auth)
    assert second.status_code == 429
    assert 1 <= int(second.headers["retry-after"]) <= 2
    httpx.delete(status_url, headers=auth)


def test_transaction_time_follows_the_world_clock(own_world, start_emulator):
    server = start_emulator(world=own_world)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    tmp = own_world / "next.duckdb"
    con = duckdb.connect(str(tmp))
    con.execute(f"ATTACH '{own_world / 'fhir.duckdb'}' AS old (READ_ONLY)")
    con.execute("COPY FROM DATABASE old TO next")
    con.execute("UPDATE world_meta SET value = '2030-01-02T03:04:05' WHERE key = 'clock'")
    con.close()
    os.replace(tmp, own_world / "fhir.duckdb")
    manifest = run_export(server, auth, {"_type": "Patient"})
    assert manifest["transactionTime"] == "2030-01-02T03:04:05Z"


def test_stopping_the_server_deletes_its_exports(own_world, start_emulator):
    server = start_emulator(world=own_world)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    run_export(server, auth, {"_type": "Patient"})
    exports = own_world / "emulator" / "exports"
    assert any(exports.iterdir())
    server.stop()
    assert not any(exports.iterdir())


def test_stale_export_folders_are_removed_at_start(own_world, start_emulator):
    exports = own_world / "emulator" / "exports"
    stale, fresh = exports / "stale-job", exports / "fresh-job"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "Patient.000.ndjson").write_text("{}\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    start_emulator(world=own_world, file_expiry_seconds=600)
    assert not stale.exists()
    assert fresh.exists()


# --- speed -------------------------------------------------------------------------------------------------
def _big_world(root: Path, n: int) -> Path:
    """A world with ``n`` synthetic resources (~600 bytes each), built in DuckDB SQL."""
    World(root=root, options=WorldOptions(providers=1, patients=1), current_date=dt.date(2026, 11, 23)).save()
    con = duckdb.connect(str(root / "fhir.duckdb"))
    con.execute("""
        CREATE TABLE resources AS
        WITH t AS (SELECT i, ['Patient','Encounter','Observation','Condition','Procedure'][i % 5 + 1] AS rt
                   FROM range(?) r(i))
        SELECT rt AS resource_type, 'a-195900.x-' || i AS id, 'a-195900.E-' || (i // 20) AS patient_id,
               TIMESTAMP '2024-01-01' + to_seconds(i) AS last_updated,
               json_object('resourceType', rt, 'id', 'a-195900.x-' || i,
                           'meta', json_object('lastUpdated', strftime(TIMESTAMP '2024-01-01' + to_seconds(i),
                                                                       '%Y-%m-%dT%H:%M:%SZ')),
                           'text', repeat('lorem "ipsum", dolor ', 24))::VARCHAR AS resource
        FROM t""", [n])
    con.execute("CREATE TABLE deletions (resource_type VARCHAR, id VARCHAR, deleted_at TIMESTAMP)")
    con.execute("CREATE TABLE world_meta AS SELECT * FROM (VALUES ('practice_id', '195900'), "
                "('clock', '2026-11-23T23:59:59')) v(key, value)")
    con.close()
    return root


@pytest.mark.slow
def test_two_million_resources_export_in_seconds(tmp_path, start_emulator):
    world = _big_world(tmp_path / "big", 2_000_000)
    server = start_emulator(world=world, resources_per_file=10_000, export_processing_delay_seconds=0)
    auth = {"Authorization": f"Bearer {get_token(server)}"}
    started = time.monotonic()
    manifest = run_export(server, auth)
    elapsed = time.monotonic() - started
    assert sum(e["count"] for e in manifest["output"]) == 2_000_000
    assert len(manifest["output"]) == 200
    assert elapsed < 45, f"export took {elapsed:.1f}s"  # ~6-10 s on 2 shared cores
    last = download_lines(manifest["output"][-1], auth)
    assert len(last) == manifest["output"][-1]["count"]
    json.loads(last[-1])
