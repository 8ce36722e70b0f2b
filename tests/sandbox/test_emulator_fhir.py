"""FHIR R4 discovery, read, search and paging, v1 ping, and world reloads of the athena emulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import pytest

from athena_pipeline.sandbox.emulator.config import RESOURCE_TYPES
from athena_pipeline.sandbox.world import World
from tests.sandbox.conftest import get_token, practice_of, query


def stored(server, rtype: str, rid: str) -> dict:
    rows = query(server.emulator.world_dir,
                 "SELECT resource FROM fhir.resources WHERE resource_type = ? AND id = ?", [rtype, rid])
    return json.loads(rows[0][0])


def follow_all(client: httpx.Client, url: str, headers: dict, params: dict | None = None):
    """Every page of a search: (list of bundles)."""
    bundles = []
    r = client.get(url, params=params, headers=headers)
    while True:
        assert r.status_code == 200, r.text
        bundle = r.json()
        bundles.append(bundle)
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return bundles
        r = client.get(nxt[0], headers=headers)


# --- discovery --------------------------------------------------------------------------------------
def test_capability_statement_lists_types_and_export(client):
    r = client.get("/fhir/r4/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in cs["instantiates"]
    assert any("bulkdata|2.0.0" in ig for ig in cs["implementationGuide"])
    rest = cs["rest"][0]
    types = {res["type"]: res for res in rest["resource"]}
    assert set(RESOURCE_TYPES) <= set(types)
    assert types["Group"]["operation"][0]["name"] == "export"
    assert any(op["name"] == "export" for op in rest["operation"])
    token_uri = rest["security"]["extension"][0]["extension"][0]["valueUri"]
    assert token_uri.endswith("/oauth2/v1/token")


def test_smart_configuration(emulator, client):
    r = client.get("/fhir/r4/.well-known/smart-configuration")
    assert r.status_code == 200
    conf = r.json()
    assert conf["token_endpoint"] == emulator.token_url
    assert "client_credentials" in conf["grant_types_supported"]
    assert {"private_key_jwt", "client_secret_basic"} <= set(conf["token_endpoint_auth_methods_supported"])
    assert {"RS384", "ES384"} <= set(conf["token_endpoint_auth_signing_alg_values_supported"])
    assert "system/*.read" in conf["scopes_supported"]


# --- read ------------------------------------------------------------------------------------------------
def test_read_every_type(emulator, client, auth):
    present = query(emulator.emulator.world_dir,
                    "SELECT resource_type, min(id) FROM fhir.resources GROUP BY 1")
    assert len(present) >= 5
    for rtype, rid in present:
        r = client.get(f"/fhir/r4/{rtype}/{rid}", headers=auth)
        assert r.status_code == 200, (rtype, r.text)
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert "last-modified" in r.headers
        body = r.json()
        assert (body["resourceType"], body["id"]) == (rtype, rid)
        assert body == stored(emulator, rtype, rid)


def test_read_missing_deleted_and_unknown_type(emulator, client, auth):
    r = client.get("/fhir/r4/Patient/does-not-exist", headers=auth)
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"
    gone = query(emulator.emulator.world_dir,
                 "SELECT d.resource_type, d.id FROM fhir.deletions d ANTI JOIN fhir.resources r "
                 "USING (resource_type, id) ORDER BY 1, 2 LIMIT 1")
    assert gone, "the world should have at least one deletion"
    r = client.get(f"/fhir/r4/{gone[0][0]}/{gone[0][1]}", headers=auth)
    assert r.status_code == 410
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/r4/Basic/x", headers=auth).status_code == 404


# --- search -----------------------------------------------------------------------------------------------
def test_search_by_patient(emulator, client, auth):
    pat, rtype, n = query(emulator.emulator.world_dir, """
        SELECT patient_id, resource_type, count(*) FROM fhir.resources
        WHERE patient_id IS NOT NULL AND resource_type <> 'Patient'
        GROUP BY ALL ORDER BY 3 DESC, 1, 2 LIMIT 1""")[0]
    expected = {r[0] for r in query(emulator.emulator.world_dir,
                "SELECT id FROM fhir.resources WHERE resource_type = ? AND patient_id = ?", [rtype, pat])}
    for value in (pat, f"Patient/{pat}"):
        bundles = follow_all(client, f"/fhir/r4/{rtype}", auth, {"patient": value})
        assert all(b["resourceType"] == "Bundle" and b["type"] == "searchset" for b in bundles)
        assert bundles[0]["total"] == n
        entries = [e for b in bundles for e in b["entry"]]
        assert {e["resource"]["id"] for e in entries} == expected
        for e in entries:
            assert e["fullUrl"] == f"{emulator.fhir_base}/{rtype}/{e['resource']['id']}"
            assert e["search"]["mode"] == "match"


def test_search_by_id_and_practice(emulator, client, auth):
    ids = [r[0] for r in query(emulator.emulator.world_dir,
           "SELECT id FROM fhir.resources WHERE resource_type = 'Patient' ORDER BY id LIMIT 3")]
    bundle = client.get("/fhir/r4/Patient", params={"_id": ",".join(ids[:2])}, headers=auth).json()
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == ids[:2]
    assert bundle["total"] == 2
    org = f"Organization/a-1.Practice-{practice_of(emulator)}"
    everyone = client.get("/fhir/r4/Patient", params={"ah-practice": org}, headers=auth).json()
    assert everyone["total"] > 0
    nobody = client.get("/fhir/r4/Patient", params={"ah-practice": "Organization/a-1.Practice-1"},
                        headers=auth).json()
    assert nobody["total"] == 0 and nobody["entry"] == []


@pytest.mark.parametrize("prefix,op", [("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")])
def test_search_by_last_updated(emulator, client, auth, prefix, op):
    world = emulator.emulator.world_dir
    median = query(world, "SELECT quantile_disc(last_updated, 0.5) FROM fhir.resources "
                          "WHERE resource_type = 'Observation'")[0][0].replace(microsecond=0)
    expected = query(world, f"SELECT count(*) FROM fhir.resources WHERE resource_type = 'Observation' "
                            f"AND date_trunc('second', last_updated) {op} ?", [median])[0][0]
    value = prefix + median.isoformat() + "Z"
    bundle = client.get("/fhir/r4/Observation", params={"_lastUpdated": value, "_count": 0},
                        headers=auth).json()
    assert bundle["total"] == expected


def test_search_last_updated_range_by_day(emulator, client, auth):
    world = emulator.emulator.world_dir
    expected = query(world, "SELECT count(*) FROM fhir.resources WHERE resource_type = 'Encounter' "
                            "AND last_updated >= '2025-01-01' AND last_updated < '2026-01-01'")[0][0]
    bundle = client.get("/fhir/r4/Encounter", params=[("_lastUpdated", "ge2025-01-01"),
                                                       ("_lastUpdated", "lt2026-01-01"), ("_count", "0")],
                        headers=auth).json()
    assert bundle["total"] == expected
    year = client.get("/fhir/r4/Encounter", params={"_lastUpdated": "2025", "_count": 0}, headers=auth).json()
    assert year["total"] == expected


def test_paging_with_cursor_visits_every_resource_once(emulator, client, auth):
    world = emulator.emulator.world_dir
    rtype = query(world, "SELECT resource_type FROM fhir.resources GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")[0][0]
    expected = sorted(r[0] for r in query(world, "SELECT id FROM fhir.resources WHERE resource_type = ?", [rtype]))
    bundles = follow_all(client, f"/fhir/r4/{rtype}", auth, {"_count": 7})
    seen = [e["resource"]["id"] for b in bundles for e in b.get("entry", [])]
    assert seen == expected  # ordered by id, no duplicates, nothing missing
    assert all(b["total"] == len(expected) for b in bundles)
    assert all(len(b["entry"]) <= 7 for b in bundles)
    assert len(bundles) == -(-len(expected) // 7)
    next_url = next(link["url"] for link in bundles[0]["link"] if link["relation"] == "next")
    assert next_url.startswith(emulator.fhir_base) and "cursor=" in next_url and "_count=7" in next_url


def test_count_default_and_maximum(start_emulator, fhir_world):
    server = start_emulator(search_default_count=5, search_max_count=9)
    headers = {"Authorization": f"Bearer {get_token(server)}"}
    r = httpx.get(f"{server.fhir_base}/Observation", headers=headers)
    assert len(r.json()["entry"]) == 5
    r = httpx.get(f"{server.fhir_base}/Observation", params={"_count": 5000}, headers=headers)
    assert len(r.json()["entry"]) == 9
    default = start_emulator()
    headers = {"Authorization": f"Bearer {get_token(default)}"}
    total = query(fhir_world, "SELECT count(*) FROM fhir.resources WHERE resource_type = 'Observation'")[0][0]
    r = httpx.get(f"{default.fhir_base}/Observation", headers=headers)
    assert len(r.json()["entry"]) == min(50, total)


@pytest.mark.parametrize("params", [{"_count": "-1"}, {"_count": "ten"}, {"_lastUpdated": "gtyesterday"},
                                    {"_lastUpdated": "ne2024-01-01"}, {"cursor": "!!!"}])
def test_bad_search_parameters_are_400(client, auth, params):
    r = client.get("/fhir/r4/Patient", params=params, headers=auth)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


# --- v1 ----------------------------------------------------------------------------------------------------
def test_ping(emulator, client, auth):
    r = client.get(f"/v1/{practice_of(emulator)}/ping", headers=auth)
    assert (r.status_code, r.json()) == (200, {"pong": "true"})
    r = client.get("/v1/1/ping", headers=auth)
    assert r.status_code == 404
    assert r.json() == {"error": "Invalid practice.", "detailedmessage": "The practice ID does not exist."}


# --- the world changes under a running server ------------------------------------------------------------
def test_replaced_world_is_picked_up(own_world, start_emulator):
    server = start_emulator(world=own_world)
    headers = {"Authorization": f"Bearer {get_token(server)}"}
    before = httpx.get(f"{server.fhir_base}/Patient", params={"_count": 0}, headers=headers).json()["total"]
    victim = query(own_world, "SELECT min(id) FROM fhir.resources WHERE resource_type = 'Patient'")[0][0]
    assert httpx.get(f"{server.fhir_base}/Patient/{victim}", headers=headers).status_code == 200

    tmp = own_world / "fhir.duckdb.next"
    shutil.copy2(own_world / "fhir.duckdb", tmp)
    con = duckdb.connect(str(tmp))
    con.execute("DELETE FROM resources WHERE resource_type = 'Patient' AND id = ?", [victim])
    con.execute("INSERT INTO deletions VALUES ('Patient', ?, TIMESTAMP '2026-11-24 10:00:00')", [victim])
    for n in range(3):
        con.execute("INSERT INTO resources VALUES ('Patient', ?, ?, TIMESTAMP '2026-11-24 10:00:00', ?)",
                    [f"new-{n}", f"new-{n}", json.dumps({"resourceType": "Patient", "id": f"new-{n}"})])
    con.execute("UPDATE world_meta SET value = '2026-11-24T23:59:59' WHERE key = 'clock'")
    con.close()
    os.replace(tmp, own_world / "fhir.duckdb")

    after = httpx.get(f"{server.fhir_base}/Patient", params={"_count": 0}, headers=headers).json()["total"]
    assert after == before + 2
    assert httpx.get(f"{server.fhir_base}/Patient/new-1", headers=headers).status_code == 200
    assert httpx.get(f"{server.fhir_base}/Patient/{victim}", headers=headers).status_code == 410
    assert server.emulator.store.snapshot().clock.isoformat() == "2026-11-24T23:59:59"


def test_world_without_fhir_rendering_is_503_but_ping_works(tmp_path, start_emulator, fhir_world):
    world = World.load(fhir_world)
    bare = World(root=tmp_path / "bare", options=world.options, current_date=world.current_date)
    bare.save()
    server = start_emulator(world=bare.root)
    headers = {"Authorization": f"Bearer {get_token(server)}"}
    r = httpx.get(f"{server.fhir_base}/Patient", headers=headers)
    assert r.status_code == 503
    assert r.json()["resourceType"] == "OperationOutcome"
    ping = httpx.get(f"{server.base_url}/v1/{world.practice_id}/ping", headers=headers)
    assert ping.json() == {"pong": "true"}


def test_serve_prints_one_line_and_serves(fhir_world):
    code = "import sys; from pathlib import Path; from athena_pipeline.sandbox.server import serve; " \
           "serve(Path(sys.argv[1]), port=0, log_level='warning')"
    proc = subprocess.Popen([sys.executable, "-c", code, str(fhir_world)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        line = proc.stdout.readline()
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        assert fields["fhir"] == fields["base"] + "/fhir/r4"
        assert fields["token"] == fields["base"] + "/oauth2/v1/token"
        assert fields["dataview"] == str(fhir_world / "dataview.duckdb")
        assert httpx.get(fields["fhir"] + "/metadata", timeout=10).status_code == 200
        r = httpx.post(fields["token"], data={"grant_type": "client_credentials"},
                       auth=(fields["client_id"], fields["client_secret"]), timeout=10)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
