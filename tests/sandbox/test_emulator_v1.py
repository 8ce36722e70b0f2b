"""athenaOne v1 REST reads of the emulator: answered from the world's Data View file, paged and
shaped as athena does, behind the same auth, quotas, faults and request log as ping.

The world is a small generated one (facts + Data View only, so these tests do not depend on the
FHIR renderer). Expected values always come from the world's own ``dataview.duckdb``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import duckdb
import httpx
import pytest

from athena_pipeline.sandbox.generate import build_facts
from athena_pipeline.sandbox.render_dataview import render_dataview
from athena_pipeline.sandbox.world import World, WorldOptions
from tests.sandbox.conftest import get_token

V1_SCOPE = "athena/service/Athenanet.MDP.*"
DATE_RE = re.compile(r"^\d{2}/\d{2}/\d{4}$")
DATETIME_RE = re.compile(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}$")


def build_dataview_world(root: Path, *, providers: int = 1, patients: int = 300) -> Path:
    """A generated world with facts and the Data View rendering (no FHIR rendering needed)."""
    options = WorldOptions(providers=providers, patients=patients)
    world = World(root=root, options=options, current_date=options.end)
    root.mkdir(parents=True, exist_ok=True)
    build_facts(world.facts_path, options, world.clock)
    world.save()
    render_dataview(world)
    return root


def dv(world: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Query a world's dataview.duckdb (read-only)."""
    with duckdb.connect(str(world / "dataview.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


@pytest.fixture(scope="module")
def dv_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataview_world(tmp_path_factory.mktemp("dv_world"))


@pytest.fixture
def server(start_emulator, dv_world):
    return start_emulator(world=dv_world)


@pytest.fixture
def pid(dv_world) -> int:
    return World.load(dv_world).practice_id


@pytest.fixture
def http(server, auth_v1):
    with httpx.Client(base_url=f"{server.base_url}", headers=auth_v1,
                      timeout=httpx.Timeout(10.0)) as c:
        yield c


@pytest.fixture
def auth_v1(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {get_token(server, V1_SCOPE)}"}


def follow(http: httpx.Client, first: str, name: str) -> tuple[list[dict], list[dict]]:
    """Every object of a paged list, following ``next``; also returns each page's envelope."""
    items, pages, url = [], [], first
    while url:
        r = http.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append({k: v for k, v in body.items() if k != name})
        items += body[name]
        url = body.get("next")
        assert len(pages) < 100
    return items, pages


# --- single reads ------------------------------------------------------------------------------------
def test_a_patient_read_is_a_one_element_array_shaped_like_athena(http, dv_world, pid):
    row = dv(dv_world, """SELECT PATIENTID, FIRSTNAME, LASTNAME, DOB, SEX, ZIP, CURRENTDEPARTMENTID,
                                 PRIMARYPROVIDERID, LASTUPDATED
                          FROM ATHENAONE.PATIENT WHERE DELETEDDATETIME IS NULL AND PATIENTSTATUS = 'a'
                          ORDER BY PATIENTID DESC LIMIT 1""")[0]
    r = http.get(f"/v1/{pid}/patients/{row[0]}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body, list) and len(body) == 1
    p = body[0]
    assert p["patientid"] == str(row[0])
    assert (p["firstname"], p["lastname"], p["sex"], p["zip"]) == (row[1], row[2], row[4], row[5])
    assert p["dob"] == row[3].strftime("%m/%d/%Y")
    assert p["departmentid"] == str(row[6]) and p["primaryproviderid"] == str(row[7])
    assert p["status"] == "active"
    assert p["lastupdated"] == row[8].strftime("%m/%d/%Y %H:%M:%S")
    assert all(k == k.lower() and "_" not in k for k in p)  # run-together lowercase keys
    assert None not in p.values()  # absent values are left out, as athena does


@pytest.mark.parametrize("patient", ["999999999", "not-a-number"])
def test_an_unknown_patient_is_not_available(http, pid, patient):
    r = http.get(f"/v1/{pid}/patients/{patient}")
    assert r.status_code == 404
    assert r.json() == {"error": "The patient is not available."}


def test_an_appointment_read_has_athena_dates_times_and_status_codes(http, dv_world, pid):
    rows = dv(dv_world, """
        SELECT APPOINTMENTID, PATIENTID, PROVIDERID, DEPARTMENTID, APPOINTMENTDATE, APPOINTMENTSTARTTIME,
               APPOINTMENTDURATION, APPOINTMENTSTATUS, APPOINTMENTCANCELLEDDATETIME,
               APPOINTMENTCHECKINDATETIME, LASTUPDATED
        FROM ATHENAONE.APPOINTMENT WHERE DELETEDDATETIME IS NULL
          AND APPOINTMENTSTATUS IN ('x', '4')
        QUALIFY row_number() OVER (PARTITION BY APPOINTMENTSTATUS ORDER BY APPOINTMENTID) = 1""")
    assert {r[7] for r in rows} == {"x", "4"}
    for row in rows:
        r = http.get(f"/v1/{pid}/appointments/{row[0]}")
        assert r.status_code == 200, r.text
        (a,) = r.json()
        assert a["appointmentid"] == str(row[0]) and a["patientid"] == str(row[1])
        assert a["providerid"] == str(row[2]) and a["departmentid"] == str(row[3])
        assert a["date"] == row[4].strftime("%m/%d/%Y")
        assert a["starttime"] == row[5].strftime("%H:%M")
        assert a["duration"] == row[6]
        assert a["appointmentstatus"] == row[7]
        assert a["lastmodified"] == row[10].strftime("%m/%d/%Y %H:%M:%S")
        assert a["appointmenttype"]
        if row[7] == "x":
            assert a["cancelleddatetime"] == row[8].strftime("%m/%d/%Y %H:%M:%S")
            assert "checkindatetime" not in a
        else:
            assert "cancelleddatetime" not in a
            assert DATETIME_RE.match(a["checkindatetime"])
    r = http.get(f"/v1/{pid}/appointments/123456789012")
    assert r.status_code == 404 and r.json() == {"error": "The appointment is not available."}


def test_deletes_and_replaced_world_files_are_seen_without_a_restart(start_emulator, dv_world, tmp_path):
    """``sandbox advance`` swaps dataview.duckdb with os.replace: the running emulator must
    answer from the new file (here: a patient and an appointment soft-deleted)."""
    world = tmp_path / "world"
    world.mkdir()
    shutil.copy2(dv_world / "world.json", world / "world.json")
    shutil.copy2(dv_world / "dataview.duckdb", world / "dataview.duckdb")
    patient, appointment = dv(world, """SELECT min(p.PATIENTID), min(a.APPOINTMENTID)
        FROM ATHENAONE.PATIENT p, ATHENAONE.APPOINTMENT a
        WHERE p.DELETEDDATETIME IS NULL AND a.DELETEDDATETIME IS NULL""")[0]
    server = start_emulator(world=world)
    pid = World.load(world).practice_id
    headers = {"Authorization": f"Bearer {get_token(server)}"}
    base = f"{server.base_url}/v1/{pid}"
    total = httpx.get(f"{base}/patients", params={"limit": 1}, headers=headers).json()["totalcount"]
    assert httpx.get(f"{base}/patients/{patient}", headers=headers).status_code == 200
    assert httpx.get(f"{base}/appointments/{appointment}", headers=headers).status_code == 200

    tmp = world / "dataview.duckdb.next"
    shutil.copy2(world / "dataview.duckdb", tmp)
    with duckdb.connect(str(tmp)) as con:
        con.execute("UPDATE ATHENAONE.PATIENT SET DELETEDDATETIME = LASTUPDATED, DELETEDBY = 'SYSTEM' "
                    "WHERE PATIENTID = ?", [patient])
        con.execute("UPDATE ATHENAONE.APPOINTMENT SET DELETEDDATETIME = LASTUPDATED WHERE APPOINTMENTID = ?",
                    [appointment])
    os.replace(tmp, world / "dataview.duckdb")

    r = httpx.get(f"{base}/patients/{patient}", headers=headers)
    assert r.status_code == 404 and r.json()["error"] == "The patient is not available."
    assert httpx.get(f"{base}/appointments/{appointment}", headers=headers).status_code == 404
    after = httpx.get(f"{base}/patients", params={"limit": 1}, headers=headers).json()["totalcount"]
    assert after == total - 1


# --- lists and paging -----------------------------------------------------------------------------------
def test_patient_list_pages_follow_next_until_it_disappears(http, dv_world, pid):
    expected = [str(r[0]) for r in dv(dv_world, "SELECT PATIENTID FROM ATHENAONE.PATIENT "
                                                "WHERE DELETEDDATETIME IS NULL ORDER BY PATIENTID")]
    items, pages = follow(http, f"/v1/{pid}/patients?limit=70", "patients")
    assert [p["patientid"] for p in items] == expected
    assert len(pages) == -(-len(expected) // 70)
    assert all(p["totalcount"] == len(expected) for p in pages)
    assert "previous" not in pages[0] and "next" not in pages[-1]
    for i, page in enumerate(pages[1:], start=1):
        prev = parse_qs(urlsplit(page["previous"]).query)
        assert prev["offset"] == [str((i - 1) * 70)] and prev["limit"] == ["70"]
    assert pages[0]["next"].startswith(f"/v1/{pid}/patients?")  # relative, as athena sends it


def test_patient_list_filters_by_department(http, dv_world, pid):
    dept = dv(dv_world, "SELECT min(CURRENTDEPARTMENTID) FROM ATHENAONE.PATIENT")[0][0]
    n = dv(dv_world, "SELECT count(*) FROM ATHENAONE.PATIENT WHERE DELETEDDATETIME IS NULL "
                     "AND CURRENTDEPARTMENTID = ?", [dept])[0][0]
    body = http.get(f"/v1/{pid}/patients", params={"departmentid": dept}).json()
    assert body["totalcount"] == n and {p["departmentid"] for p in body["patients"]} == {str(dept)}
    assert http.get(f"/v1/{pid}/patients", params={"departmentid": 987654}).json()["totalcount"] == 0


def test_limit_defaults_to_1500_and_is_clamped_to_5000(http, dv_world, pid):
    params = {"departmentid": ",".join(str(r[0]) for r in dv(dv_world, "SELECT DEPARTMENTID FROM ATHENAONE.DEPARTMENT")),
              "startdate": "01/01/2000", "enddate": "12/31/2099", "showcancelled": "true"}
    total = dv(dv_world, "SELECT count(*) FROM ATHENAONE.APPOINTMENT WHERE DELETEDDATETIME IS NULL")[0][0]
    assert total > 1500, "the test world must have more than one default page of appointments"
    first = http.get(f"/v1/{pid}/appointments/booked", params=params).json()
    assert first["totalcount"] == total and len(first["appointments"]) == 1500
    nxt = parse_qs(urlsplit(first["next"]).query)
    assert nxt["limit"] == ["1500"] and nxt["offset"] == ["1500"]
    assert nxt["startdate"] == ["01/01/2000"] and nxt["showcancelled"] == ["true"]  # filters kept

    big = http.get(f"/v1/{pid}/appointments/booked", params={**params, "limit": 99999, "offset": 7}).json()
    assert len(big["appointments"]) == min(5000, total - 7)
    assert parse_qs(urlsplit(big["previous"]).query)["limit"] == ["5000"]  # the clamped limit


@pytest.mark.parametrize("bad", [{"limit": "ten"}, {"limit": "0"}, {"offset": "-1"}, {"departmentid": "x"}])
def test_bad_paging_or_filter_values_are_400_with_an_error(http, pid, bad):
    r = http.get(f"/v1/{pid}/patients", params=bad)
    assert r.status_code == 400
    assert r.json()["error"].startswith("Invalid value for ")


def test_booked_appointments_require_department_and_dates(http, pid):
    r = http.get(f"/v1/{pid}/appointments/booked")
    assert r.status_code == 400
    assert r.json() == {"error": "Additional fields are required.",
                        "missingfields": ["departmentid", "startdate", "enddate"]}
    r = http.get(f"/v1/{pid}/appointments/booked", params={"departmentid": 1, "startdate": "01/01/2025"})
    assert r.status_code == 400 and r.json()["missingfields"] == ["enddate"]
    r = http.get(f"/v1/{pid}/appointments/booked",
                 params={"departmentid": 1, "startdate": "2025-01-01", "enddate": "01/31/2025"})
    assert r.status_code == 400 and "startdate" in r.json()["error"]


def test_booked_appointments_filter_by_department_dates_and_hide_cancelled(http, dv_world, pid):
    dept, day = dv(dv_world, """SELECT DEPARTMENTID, APPOINTMENTDATE FROM ATHENAONE.APPOINTMENT
                                WHERE APPOINTMENTSTATUS = 'x' AND DELETEDDATETIME IS NULL
                                ORDER BY APPOINTMENTID LIMIT 1""")[0]
    start, end = day - dt.timedelta(days=20), day + dt.timedelta(days=20)
    sql = ("SELECT APPOINTMENTID FROM ATHENAONE.APPOINTMENT WHERE DELETEDDATETIME IS NULL AND DEPARTMENTID = ? "
           "AND APPOINTMENTDATE BETWEEN ? AND ? {} ORDER BY APPOINTMENTDATE, APPOINTMENTSTARTTIME, APPOINTMENTID")
    live = [str(r[0]) for r in dv(dv_world, sql.format("AND APPOINTMENTSTATUS <> 'x'"), [dept, start, end])]
    every = [str(r[0]) for r in dv(dv_world, sql.format(""), [dept, start, end])]
    assert len(every) > len(live) > 0
    params = {"departmentid": dept, "startdate": start.strftime("%m/%d/%Y"), "enddate": end.strftime("%m/%d/%Y"),
              "limit": 25}
    items, _ = follow(http, f"/v1/{pid}/appointments/booked?{httpx.QueryParams(params)}", "appointments")
    assert [a["appointmentid"] for a in items] == live
    assert all(start <= dt.datetime.strptime(a["date"], "%m/%d/%Y").date() <= end for a in items)
    items, _ = follow(http, f"/v1/{pid}/appointments/booked?"
                      + str(httpx.QueryParams({**params, "showcancelled": "true"})), "appointments")
    assert [a["appointmentid"] for a in items] == every


def test_booked_appointments_since_a_last_modified_time(http, dv_world, pid):
    """The near-real-time sync path: only appointments changed at or after a moment."""
    since = dv(dv_world, "SELECT quantile_disc(LASTUPDATED, 0.9) FROM ATHENAONE.APPOINTMENT")[0][0]
    expected = dv(dv_world, "SELECT count(*) FROM ATHENAONE.APPOINTMENT WHERE DELETEDDATETIME IS NULL "
                            "AND LASTUPDATED >= ?", [since])[0][0]
    departments = ",".join(str(r[0]) for r in dv(dv_world, "SELECT DEPARTMENTID FROM ATHENAONE.DEPARTMENT"))
    body = http.get(f"/v1/{pid}/appointments/booked", params={
        "departmentid": departments, "startdate": "01/01/2000", "enddate": "12/31/2099", "showcancelled": "true",
        "startlastmodified": since.strftime("%m/%d/%Y %H:%M:%S")}).json()
    assert body["totalcount"] == expected > 0
    assert all(dt.datetime.strptime(a["lastmodified"], "%m/%d/%Y %H:%M:%S") >= since
               for a in body["appointments"])


def test_providers_and_departments(http, dv_world, pid):
    providers = dv(dv_world, "SELECT PROVIDERID, PROVIDERNPINUMBER, PROVIDERLASTNAME FROM ATHENAONE.PROVIDER "
                             "WHERE DELETEDDATETIME IS NULL ORDER BY PROVIDERID")
    body = http.get(f"/v1/{pid}/providers").json()
    assert body["totalcount"] == len(providers) and "next" not in body
    assert [(p["providerid"], str(p["npi"]), p["lastname"]) for p in body["providers"]] == \
        [(r[0], r[1], r[2]) for r in providers]
    departments = dv(dv_world, "SELECT DEPARTMENTID, DEPARTMENTNAME, DEPARTMENTZIP FROM ATHENAONE.DEPARTMENT "
                               "WHERE DELETEDDATETIME IS NULL ORDER BY DEPARTMENTID")
    body = http.get(f"/v1/{pid}/departments").json()
    assert body["totalcount"] == len(departments)
    assert [(d["departmentid"], d["name"], d["zip"]) for d in body["departments"]] == \
        [(str(r[0]), r[1], r[2]) for r in departments]


# --- errors, auth, quotas, logs ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/{pid}/claims/1", "/v1/{pid}/patients/1/documents/labresult/2",
                                  "/v1/nothing-here", "/v1/"])
def test_unknown_v1_paths_get_the_gateways_plain_text_404(server, pid, path):
    r = httpx.get(server.base_url + path.format(pid=pid))  # no token: the gateway answers first
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "Service not registered with API gateway."
    assert "x-request-id" in r.headers and "x-ratelimit-remaining-day" in r.headers


def test_v1_needs_a_bearer_token_with_the_v1_scope_and_the_right_practice(server, pid):
    url = f"{server.base_url}/v1/{pid}/patients"
    r = httpx.get(url)
    assert r.status_code == 401
    assert r.json() == {"error": "Incorrect permissions.", "detailedmessage": "Bad auth."}
    fhir_only = {"Authorization": f"Bearer {get_token(server, 'system/*.read')}"}
    assert httpx.get(url, headers=fhir_only).status_code == 403
    v1 = {"Authorization": f"Bearer {get_token(server, V1_SCOPE)}"}
    r = httpx.get(f"{server.base_url}/v1/{pid + 1}/patients", headers=v1)
    assert r.status_code == 404
    assert r.json() == {"error": "Invalid practice.", "detailedmessage": "The practice ID does not exist."}


def test_v1_carries_quota_headers_request_ids_and_the_per_second_limit(start_emulator, dv_world, pid):
    server = start_emulator(world=dv_world, per_second_limit=2, wall_clock=lambda: 1_800_000_000.0)
    headers = {"Authorization": f"Bearer {get_token(server)}", "X-Request-Id": "req-42"}
    url = f"{server.base_url}/v1/{pid}/departments"
    responses = [httpx.get(url, headers=headers) for _ in range(3)]  # all in one (frozen) second
    assert [r.status_code for r in responses] == [200, 200, 429]
    for r in responses:
        assert r.headers["x-request-id"] == "req-42"
        assert "x-ratelimit-remaining-day" in r.headers
    assert responses[2].json()["error"] == "Too many requests."
    assert responses[2].headers["retry-after"] == "1"
    day_left = [int(r.headers["x-ratelimit-remaining-day"]) for r in responses[:2]]
    assert day_left[1] == day_left[0] - 1


def test_the_fhir_429_fault_hits_v1_too(start_emulator, dv_world, pid):
    server = start_emulator(world=dv_world, faults="fhir_429=1")
    headers = {"Authorization": f"Bearer {get_token(server)}"}
    url = f"{server.base_url}/v1/{pid}/providers"
    first, second = httpx.get(url, headers=headers), httpx.get(url, headers=headers)
    assert first.status_code == 429 and "retry-after" in first.headers and "error" in first.json()
    assert second.status_code == 200


def test_a_world_without_a_data_view_answers_503(start_emulator, fhir_world):
    server = start_emulator(world=fhir_world)  # the FHIR-only fixture world has no dataview.duckdb
    practice = World.load(fhir_world).practice_id
    r = httpx.get(f"{server.base_url}/v1/{practice}/providers",
                  headers={"Authorization": f"Bearer {get_token(server)}"})
    assert r.status_code == 503 and "error" in r.json()


def test_v1_requests_are_logged_by_route_template_without_ids(http, dv_world, pid, caplog):
    appointment = dv(dv_world, "SELECT max(APPOINTMENTID) FROM ATHENAONE.APPOINTMENT")[0][0]
    patient = dv(dv_world, "SELECT max(PATIENTID) FROM ATHENAONE.PATIENT")[0][0]
    with caplog.at_level(logging.INFO, logger="athena_pipeline.sandbox.athena"):
        http.get(f"/v1/{pid}/appointments/{appointment}")
        http.get(f"/v1/{pid}/patients/{patient}")
        http.get(f"/v1/{pid}/appointments/booked", params={"departmentid": 1, "startdate": "01/01/2025",
                                                           "enddate": "01/02/2025"})
        deadline = time.monotonic() + 5  # the server logs just after the response is sent
        while time.monotonic() < deadline:
            lines = [r.getMessage() for r in caplog.records if r.name == "athena_pipeline.sandbox.athena"]
            if len(lines) >= 3:
                break
            time.sleep(0.02)
    assert any(line.startswith("GET /v1/{practiceid}/appointments/{id} 200 ") for line in lines)
    assert any(line.startswith("GET /v1/{practiceid}/patients/{id} 200 ") for line in lines)
    assert any(line.startswith("GET /v1/{practiceid}/appointments/booked 200 ") for line in lines)
    for line in lines:
        assert str(appointment) not in line and str(patient) not in line and "01/01/2025" not in line


def test_a_known_v1_path_with_the_wrong_method_is_still_405(server, pid):
    for path in (f"/v1/{pid}/ping", f"/v1/{pid}/patients/1", f"/v1/{pid}/appointments/booked"):
        r = httpx.post(server.base_url + path)
        assert r.status_code == 405, path
        assert "GET" in r.headers["allow"]
    assert httpx.post(f"{server.base_url}/v1/{pid}/claims").text == "Service not registered with API gateway."
