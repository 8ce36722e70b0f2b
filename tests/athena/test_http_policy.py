"""The shared HTTP policy: Retry-After, backoff, time budget, rate limiting, errors, call records.

Everything that talks HTTP runs against the athenahealth emulator on loopback with faults
switched on per test; the scripted server covers what the emulator does not serve (v1 lists,
plain-text gateway errors).
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
import uuid

import httpx
import pytest

from athena_pipeline.http import (
    ApiError,
    AuthError,
    CallRecord,
    HttpPolicy,
    RateLimiter,
    RetryExhausted,
    RetryPolicy,
    clamp,
    parse_retry_after,
    redact_url,
    template_path,
)
from tests.athena import FAST_RETRY, ScriptedServer, athena_client, json_response
from tests.sandbox import conftest as sandbox
from tests.sandbox.conftest import query

# the emulator fixtures of tests/sandbox, registered in this module by name
fhir_world = sandbox.fhir_world
resources_per_file = sandbox.resources_per_file
test_config = sandbox.test_config
start_emulator = sandbox.start_emulator

NOW = 1_800_000_000.0  # a fixed wall clock for the parsing tests


# --- Retry-After ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [
    ("0", 0.0), ("7", 7.0), (" 12 ", 12.0), ("1.5", 1.5),
    (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),      # HTTP-date
    ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),                        # a date in the past
    (str(int(NOW + 45)), 45.0),                                      # epoch seconds
    (str(int(NOW - 100)), 0.0),                                      # epoch in the past
])
def test_retry_after_parses_all_three_forms(value, expected):
    assert parse_retry_after(value, now=NOW) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "nan", "inf", "Mon, 99 Foo"])
def test_retry_after_rejects_garbage(value):
    assert parse_retry_after(value, now=NOW) is None


def test_retry_after_is_clamped_by_the_policy():
    policy = RetryPolicy(retry_after_min=0.5, retry_after_max=10.0)
    week = httpx.Response(429, headers={"Retry-After": str(7 * 86400)})
    zero = httpx.Response(503, headers={"Retry-After": "0"})
    far = httpx.Response(429, headers={"Retry-After": email.utils.formatdate(time.time() + 9999,
                                                                             usegmt=True)})
    assert policy.wait_for(week, 0) == 10.0
    assert policy.wait_for(zero, 0) == 0.5
    assert policy.wait_for(far, 0) == 10.0
    assert clamp(5, 1, 3) == 3 and clamp(-1, 0, 3) == 0


def test_backoff_grows_exponentially_with_bounded_jitter():
    policy = RetryPolicy(backoff_base=0.5, backoff_max=8.0)
    rng = random.Random(7)
    for n in range(12):
        ceiling = min(8.0, 0.5 * 2 ** n)
        samples = [policy.backoff(n, rng) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len({round(s, 6) for s in samples}) > 100  # really jittered
    no_hint = httpx.Response(503)
    assert 2.0 <= policy.wait_for(no_hint, 3, rng) <= 4.0


# --- the retry budget, against the emulator ---------------------------------------------------------------
def test_total_retry_time_is_bounded(start_emulator):
    server = start_emulator(faults="fhir_429=p1")  # every FHIR call is a 429 with Retry-After: 1
    records: list[CallRecord] = []
    retry = RetryPolicy(max_attempts=50, max_total_seconds=2.5, retry_after_max=5)
    with athena_client(server, retry=retry, on_call=records.append) as client:
        t0 = time.monotonic()
        with pytest.raises(RetryExhausted) as info:
            client.fhir_get("Patient", {"_count": "1"})
        elapsed = time.monotonic() - t0
    exc = info.value
    assert exc.transient is True and exc.status == 429
    assert 1.9 <= elapsed < 3.5  # waited 1 s twice; a third wait would break the 2.5 s budget
    fhir_calls = [r for r in records if r.path_template == "/fhir/r4/Patient"]
    assert [r.status for r in fhir_calls] == [429, 429, 429]
    assert "GET" in str(exc) and "/fhir/r4/Patient" in str(exc) and "429" in str(exc)


def test_max_attempts_bound_with_backoff(start_emulator):
    server = start_emulator(faults="fhir_429=p1,retry_after_seconds=0")
    records: list[CallRecord] = []
    retry = RetryPolicy(max_attempts=4, backoff_base=0.01, max_total_seconds=30)
    with athena_client(server, retry=retry, on_call=records.append) as client, \
            pytest.raises(RetryExhausted):
        client.fhir_get("Patient")
    assert sum(r.path_template == "/fhir/r4/Patient" for r in records) == 4


@pytest.mark.parametrize("form", ["seconds", "http-date", "epoch"])
def test_retry_after_forms_from_the_server_are_honoured(start_emulator, form):
    server = start_emulator(faults=f"fhir_429=1,retry_after={form}")
    records: list[CallRecord] = []
    with athena_client(server, on_call=records.append) as client:
        client.fhir_get("metadata")  # warm up: connection + nothing else (metadata is not gated)
        t0 = time.monotonic()
        bundle = client.fhir_get("Patient", {"_count": "2"})
        elapsed = time.monotonic() - t0
    assert bundle["resourceType"] == "Bundle"
    assert server.faults.fired("fhir_429") == 1
    assert elapsed >= 0.9, "the client came back before Retry-After"
    assert elapsed < 4.0
    assert [r.status for r in records if r.path_template == "/fhir/r4/Patient"] == [429, 200]


def test_transient_5xx_and_slow_responses_are_retried(start_emulator):
    server = start_emulator(faults="slow_fhir=1:2.0")
    records: list[CallRecord] = []
    with athena_client(server, timeout=httpx.Timeout(0.5), on_call=records.append) as client:
        bundle = client.fhir_get("Patient", {"_count": "3"})
    assert len(bundle["entry"]) == 3
    statuses = [r.status for r in records if r.path_template == "/fhir/r4/Patient"]
    assert statuses == [None, 200]  # the timed-out attempt has no status, then success


def test_gateway_errors_without_json_are_retried_then_reported():
    calls = {"n": 0}

    def flaky(req):
        calls["n"] += 1
        if calls["n"] <= 2:
            return 502, {"Content-Type": "text/plain"}, b"Service not registered with API gateway."
        return json_response(200, {"ok": True})

    def broken(req):
        return 503, {"Content-Type": "text/html"}, b"<html>down for maintenance</html>"

    with ScriptedServer({("GET", "/flaky"): flaky, ("GET", "/broken"): broken}) as srv, \
            HttpPolicy("test", retry=RetryPolicy(backoff_base=0.01, max_attempts=3),
                       timeout=5) as policy:
        assert policy.request("GET", f"{srv.base_url}/flaky").json() == {"ok": True}
        with pytest.raises(RetryExhausted) as info:
            policy.request("GET", f"{srv.base_url}/broken?token=abc123")
    text = str(info.value)
    assert "503" in text and "/broken" in text
    assert "abc123" not in text and "<html>" not in text
    assert info.value.url.endswith("/broken?token=…")


# --- rate limiter -----------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_requests_and_allows_bursts():
    clock = FakeClock()
    even = RateLimiter(10, clock=clock, sleep=clock.sleep)
    waits = [even.reserve() for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])
    clock.now += 10
    burst = RateLimiter(5, burst=3, clock=clock, sleep=clock.sleep)
    waits = [burst.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.2, 0.4])
    clock.now += 1.0  # the bucket refills at 5/s, up to the burst
    assert burst.reserve() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_rate_limiter_is_thread_safe():
    limiter = RateLimiter(200)
    t0 = time.monotonic()
    threads = [threading.Thread(target=limiter.acquire) for _ in range(41)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 >= 0.19  # 40 slots after the first, 5 ms apart


def test_client_side_rate_limit_keeps_the_server_happy(start_emulator):
    server = start_emulator(per_second_limit=3)
    paced: list[CallRecord] = []
    with athena_client(server, requests_per_second=2.0, on_call=paced.append) as client:
        client.auth.token()
        t0 = time.monotonic()
        for _ in range(5):
            client.fhir_get("Patient", {"_count": "1"})
        elapsed = time.monotonic() - t0
    assert elapsed >= 2.0  # 5 calls at 2 per second
    assert all(r.status == 200 for r in paced)

    server.emulator.meter.reset()
    unpaced: list[CallRecord] = []
    with athena_client(server, requests_per_second=None, on_call=unpaced.append) as client:
        for _ in range(8):
            client.fhir_get("Patient", {"_count": "1"})  # still succeeds: the 429s are retried
    assert any(r.status == 429 for r in unpaced)


# --- errors, request ids, records ------------------------------------------------------------------------
def test_errors_name_the_call_without_ids_or_query_values(start_emulator):
    server = start_emulator()
    with athena_client(server) as client:
        with pytest.raises(ApiError) as info:
            client.fhir_read("Patient", "a-195900.E-99999999")
        exc = info.value
        assert type(exc) is ApiError and exc.transient is False and exc.status == 404
        text = str(exc)
        assert "GET" in text and "/fhir/r4/Patient/{id}" in text and "404" in text
        assert "No resource with that id" in text  # the OperationOutcome's diagnostics
        assert "99999999" not in text
        assert re.search(r"X-Request-Id [0-9a-f-]{36}", text)

        with pytest.raises(ApiError) as info:
            client.fhir_get("Patient", {"_count": "not-a-number", "name": "Osei"})
        exc = info.value
        assert exc.status == 400 and "_count must be" in str(exc)
        assert "Osei" not in str(exc) and "not-a-number" not in str(exc)
        assert "Osei" not in exc.url and exc.url.endswith("/fhir/r4/Patient?_count=…&name=…")


def test_every_attempt_has_its_own_request_id_and_a_clean_record(start_emulator):
    server = start_emulator(faults="fhir_429=1")
    records: list[CallRecord] = []
    with athena_client(server, on_call=records.append) as client:
        response = client.request("GET", client.fhir_url("Patient"), params={"_count": "2"},
                                  path_template="/fhir/r4/Patient",
                                  count_resources=lambda r: len(r.json()["entry"]))
        client.fhir_read("Patient", response.json()["entry"][0]["resource"]["id"])
    # the emulator echoes the X-Request-Id it received
    assert response.headers["x-request-id"] == response.request.headers["x-request-id"]
    ids = [r.request_id for r in records]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert [r.path_template for r in records] == [
        "/oauth2/v1/token", "/fhir/r4/Patient", "/fhir/r4/Patient", "/fhir/r4/Patient/{id}"]
    assert [r.status for r in records] == [200, 429, 200, 200]
    assert records[2].resource_count == 2 and records[2].bytes > 0
    assert set(records[0].to_dict()) == {"ts", "system", "method", "path_template", "status",
                                         "duration_ms", "bytes", "request_id", "resource_count"}
    assert all(r.system == "athena" and r.ts.endswith("Z") for r in records)


def test_a_401_triggers_exactly_one_reauthentication(start_emulator):
    server = start_emulator(faults="bearer_expired=1")
    records: list[CallRecord] = []
    with athena_client(server, on_call=records.append) as client:
        assert client.fhir_get("Patient", {"_count": "1"})["resourceType"] == "Bundle"
        assert client.auth.fetches == 2
        server.faults.set("bearer_expired", 2)  # the re-authenticated retry fails too
        with pytest.raises(AuthError) as info:
            client.fhir_get("Patient", {"_count": "1"})
        assert client.auth.fetches == 3
    assert info.value.status == 401 and info.value.transient is False
    assert [r.status for r in records if r.path_template == "/fhir/r4/Patient"] == [401, 200, 401, 401]


def test_template_and_redaction_helpers():
    assert template_path("/fhir/r4/Patient/a-1.E-123") == "/fhir/r4/Patient/{id}"
    assert template_path("/v1/195900/patients/42/documents") == "/v1/{id}/patients/{id}/documents"
    assert template_path("/oauth2/v1/token") == "/oauth2/v1/token"
    assert template_path("/x/abc", keep={"abc"}, placeholder="{p}") == "/x/abc"
    assert redact_url("https://u:pw@h.example:8443/a/b?x=1&y=secret#f") == \
        "https://h.example:8443/a/b?x=…&y=…"


# --- paging helpers of the athena client -----------------------------------------------------------------
def test_fhir_search_follows_next_links(start_emulator, fhir_world):
    server = start_emulator()
    records: list[CallRecord] = []
    with athena_client(server, on_call=records.append) as client:
        patients = list(client.fhir_search("Patient", {"_count": "7"}))
    expected = query(fhir_world, "SELECT count(*) FROM fhir.resources WHERE resource_type='Patient'")
    assert len(patients) == expected[0][0]
    assert len({p["id"] for p in patients}) == len(patients)
    pages = [r for r in records if r.path_template == "/fhir/r4/Patient"]
    assert len(pages) == -(-len(patients) // 7)
    assert sum(r.resource_count for r in pages) == len(patients)


def test_v1_list_follows_next_with_limit_and_offset():
    people = [{"patientid": str(i)} for i in range(23)]
    seen: list[dict] = []

    def patients(req):
        seen.append(req.query)
        limit, offset = int(req.query["limit"]), int(req.query["offset"])
        page = people[offset:offset + limit]
        body = {"totalcount": len(people), "patients": page}
        if offset + limit < len(people):
            body["next"] = f"/v1/195900/patients?limit={limit}&offset={offset + limit}"
        return json_response(200, body)

    def ping(req):
        return json_response(200, {"pong": "true"})

    with ScriptedServer({("GET", "/v1/195900/patients"): patients,
                         ("GET", "/v1/195900/ping"): ping}) as srv:
        records: list[CallRecord] = []
        with athena_client_for(srv, records) as client:
            got = list(client.v1_list("patients", "patients", {"departmentid": "1"}, limit=10))
            assert client.v1_get("ping") == {"pong": "true"}
    assert got == people
    assert [q["offset"] for q in seen] == ["0", "10", "20"]
    assert seen[0]["departmentid"] == "1"
    assert [r.path_template for r in records] == ["/v1/{practiceid}/patients"] * 3 + \
        ["/v1/{practiceid}/ping"]
    assert [r.resource_count for r in records[:3]] == [10, 10, 3]


def athena_client_for(srv: ScriptedServer, records: list):
    from athena_pipeline.athena.client import AthenaClient
    return AthenaClient.create(f"{srv.base_url}/fhir/r4", auth_mode="none", practice_id=195900,
                               requests_per_second=None, retry=FAST_RETRY, timeout=5,
                               on_call=records.append)
