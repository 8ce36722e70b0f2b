"""Fault injection in the athena emulator: every knob fires as armed and then stops, and a small
spec-following bulk client (written here, independent of the pipeline's) survives them all."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
from collections import Counter

import httpx
import pytest

from athena_pipeline.sandbox.emulator.faults import FAULTS, FaultInjector
from tests.sandbox.conftest import get_token, practice_of, query

KICKOFF_HEADERS = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def export_url(server) -> str:
    return f"{server.fhir_base}/Group/a-1.c-{practice_of(server)}/$export"


def bearer(server, scope: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {get_token(server, scope)}"}


def finished_export(server, auth, params=None) -> tuple[str, dict]:
    r = httpx.get(export_url(server), params=params or {"_type": "Patient"},
                  headers={**KICKOFF_HEADERS, **auth})
    assert r.status_code == 202, r.text
    status_url = r.headers["content-location"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        poll = httpx.get(status_url, headers=auth)
        if poll.status_code == 200:
            return status_url, poll.json()
        assert poll.status_code == 202, poll.text
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def some_patient(server) -> str:
    return query(server.emulator.world_dir,
                 "SELECT min(id) FROM fhir.resources WHERE resource_type = 'Patient'")[0][0]


# --- the injector itself -------------------------------------------------------------------------------
def test_spec_string_parsing():
    f = FaultInjector("kickoff_429=2, poll_transient=p0.5, slow_poll=1:3.0, error_lines=1:4,"
                      "files_expired, truncate=25%, retry_after=http-date, retry_after_seconds=3, seed=7")
    snap = f.snapshot()
    assert snap["faults"]["kickoff_429"]["remaining"] == 2
    assert snap["faults"]["poll_transient"]["probability"] == 0.5
    assert snap["faults"]["slow_poll"] == {"name": "slow_poll", "remaining": 1, "probability": None, "arg": 3.0}
    assert snap["faults"]["error_lines"]["arg"] == 4.0
    assert snap["faults"]["files_expired"]["remaining"] == 1
    assert snap["faults"]["truncate"]["probability"] == 0.25
    assert (snap["retry_after"], snap["retry_after_seconds"], snap["seed"]) == ("http-date", 3, 7)
    for bad in ("no_such_fault=1", "kickoff_429=p1.5", "kickoff_429=-1", "retry_after=tomorrow",
                "kickoff_429=two"):
        with pytest.raises(ValueError):
            FaultInjector(bad)


def test_count_mode_fires_exactly_n_times():
    f = FaultInjector("poll_500=2")
    assert [f.take("poll_500") is not None for _ in range(4)] == [True, True, False, False]
    assert f.fired("poll_500") == 2
    assert f.take("kickoff_429") is None


def test_probability_mode_is_reproducible_by_seed():
    a = FaultInjector("file_429=p0.4", seed=11)
    b = FaultInjector("file_429=p0.4", seed=11)
    seq_a = [a.take("file_429") is not None for _ in range(200)]
    seq_b = [b.take("file_429") is not None for _ in range(200)]
    assert seq_a == seq_b
    assert 40 < sum(seq_a) < 120
    never, always = FaultInjector("file_429=p0"), FaultInjector("file_429=p1")
    assert not any(never.take("file_429") for _ in range(50))
    assert all(always.take("file_429") for _ in range(50))


def test_retry_after_forms():
    f = FaultInjector()
    assert f.retry_after(2.2, now=1000.0) == "3"
    f.set_retry_after(form="epoch")
    assert f.retry_after(2.2, now=1000.5) == "1003"
    f.set_retry_after(form="http-date")
    value = f.retry_after(2.0, now=1_800_000_000.0)
    assert email.utils.parsedate_to_datetime(value).timestamp() == 1_800_000_002


def test_every_documented_fault_is_known():
    import athena_pipeline.sandbox.emulator.faults as module
    for name in FAULTS:
        assert f"``{name}" in module.__doc__ or name.startswith("slow_"), name


# --- each knob over HTTP ------------------------------------------------------------------------------------
def test_token_429(emulator):
    emulator.faults.set("token_429", 2)
    form = {"grant_type": "client_credentials"}
    codes = [httpx.post(emulator.token_url, data=form, auth=("sandbox-client", "sandbox-secret"))
             for _ in range(3)]
    assert [r.status_code for r in codes] == [429, 429, 200]
    assert codes[0].headers["retry-after"] == "1"
    assert codes[0].json()["error"]
    assert emulator.faults.fired("token_429") == 2


def test_kickoff_429(emulator, auth):
    emulator.faults.set("kickoff_429", 2)
    codes = []
    for _ in range(3):
        r = httpx.get(export_url(emulator), params={"_type": "Patient"}, headers={**KICKOFF_HEADERS, **auth})
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["resourceType"] == "OperationOutcome"
            assert "retry-after" in r.headers
    assert codes == [429, 429, 202]


def test_poll_429_500_and_transient(start_emulator):
    server = start_emulator(export_processing_delay_seconds=0)
    auth = bearer(server)
    status_url, _ = finished_export(server, auth)
    server.faults.set("poll_429", 1)
    server.faults.set("poll_500", 1)
    server.faults.set("poll_transient", 2)
    seen = [httpx.get(status_url, headers=auth) for _ in range(5)]
    assert [r.status_code for r in seen] == [429, 500, 500, 500, 200]
    assert "retry-after" in seen[0].headers
    fatal = seen[1].json()["issue"][0]
    assert (fatal["severity"], fatal["code"]) == ("fatal", "exception")
    assert [r.json()["issue"][0]["code"] for r in seen[2:4]] == ["transient", "transient"]
    assert seen[4].json()["output"]


def test_file_429_and_files_expired(emulator, auth):
    _, manifest = finished_export(emulator, auth)
    url = manifest["output"][0]["url"]
    emulator.faults.set("file_429", 1)
    emulator.faults.set("files_expired", 1)
    first, second, third = (httpx.get(url, headers=auth) for _ in range(3))
    assert first.status_code == 429 and "retry-after" in first.headers
    assert second.status_code == 404
    assert "expired" in second.json()["issue"][0]["diagnostics"]
    assert third.status_code == 200


def test_fhir_429(emulator, auth):
    emulator.faults.set("fhir_429", 2)
    read = httpx.get(f"{emulator.fhir_base}/Patient/{some_patient(emulator)}", headers=auth)
    assert read.status_code == 429 and read.json()["resourceType"] == "OperationOutcome"
    ping = httpx.get(f"{emulator.base_url}/v1/{practice_of(emulator)}/ping", headers=auth)
    assert ping.status_code == 429 and "error" in ping.json()
    assert httpx.get(f"{emulator.fhir_base}/Patient", headers=auth).status_code == 200


@pytest.mark.parametrize("cls", ["token", "kickoff", "poll", "file", "fhir", None])
def test_slow_responses(emulator, auth, cls):
    status_url, manifest = finished_export(emulator, auth)
    calls = {
        "token": lambda timeout: httpx.post(emulator.token_url, data={"grant_type": "client_credentials"},
                                            auth=("sandbox-client", "sandbox-secret"), timeout=timeout),
        "kickoff": lambda timeout: httpx.get(export_url(emulator), params={"_type": "Patient"},
                                             headers={**KICKOFF_HEADERS, **auth}, timeout=timeout),
        "poll": lambda timeout: httpx.get(status_url, headers=auth, timeout=timeout),
        "file": lambda timeout: httpx.get(manifest["output"][0]["url"], headers=auth, timeout=timeout),
        "fhir": lambda timeout: httpx.get(f"{emulator.fhir_base}/Patient", headers=auth, timeout=timeout),
    }
    call = calls[cls or "fhir"]
    name = f"slow_{cls}" if cls else "slow"
    emulator.faults.set(name, 1, arg=0.6)
    with pytest.raises(httpx.ReadTimeout):  # a client with a shorter timeout gives up
        call(0.2)
    assert emulator.faults.fired(name) == 1
    started = time.monotonic()
    r = call(5)
    assert time.monotonic() - started < 0.5  # only the armed request was slow
    assert r.status_code < 500


def test_truncate_drops_the_connection_mid_line(emulator, auth):
    _, manifest = finished_export(emulator, auth, {"_type": "Observation"})
    url = manifest["output"][0]["url"]
    full = httpx.get(url, headers=auth).content
    for encoding in ("identity", "gzip"):
        emulator.faults.set("truncate", 1)
        received = b""
        with (pytest.raises(httpx.RemoteProtocolError),
              httpx.stream("GET", url, headers={**auth, "Accept-Encoding": encoding}) as r):
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                received += chunk
        assert 0 < len(received) < len(full)
        assert full.startswith(received)
        assert not received.endswith(b"\n")  # cut inside a line
    assert emulator.faults.fired("truncate") == 2
    assert httpx.get(url, headers=auth).content == full


def test_truncate_clean_ends_early_without_an_error(emulator, auth):
    _, manifest = finished_export(emulator, auth, {"_type": "Observation"})
    entry = manifest["output"][0]
    emulator.faults.set("truncate_clean", 1)
    short = httpx.get(entry["url"], headers=auth)
    assert short.status_code == 200
    lines = short.text.split("\n")
    assert len([ln for ln in lines if ln]) <= entry["count"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[-1])
    full = httpx.get(entry["url"], headers=auth)
    assert len(full.text.splitlines()) == entry["count"]


def test_error_lines(emulator, auth):
    emulator.faults.set("error_lines", 1, arg=2)
    _, manifest = finished_export(emulator, auth)
    assert len(manifest["error"]) == 1
    entry = manifest["error"][0]
    assert (entry["type"], entry["count"]) == ("OperationOutcome", 2)
    lines = httpx.get(entry["url"], headers=auth).text.splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["resourceType"] == "OperationOutcome" for line in lines)
    _, clean = finished_export(emulator, auth)
    assert clean["error"] == []


def test_bearer_expired(emulator, auth):
    emulator.faults.set("bearer_expired", 1)
    url = f"{emulator.fhir_base}/Patient/{some_patient(emulator)}"
    first = httpx.get(url, headers=auth)
    assert first.status_code == 401
    assert "expired" in first.json()["issue"][0]["diagnostics"]
    assert httpx.get(url, headers=auth).status_code == 200


@pytest.mark.parametrize("form", ["http-date", "epoch"])
def test_retry_after_form_knob(start_emulator, form):
    server = start_emulator(faults=f"kickoff_429=1,retry_after={form},retry_after_seconds=2")
    auth = bearer(server)
    r = httpx.get(export_url(server), headers={**KICKOFF_HEADERS, **auth})
    assert r.status_code == 429
    now = time.time()
    value = r.headers["retry-after"]
    if form == "epoch":
        at = int(value)
    else:
        at = email.utils.parsedate_to_datetime(value).timestamp()
    assert now + 0.5 <= at <= now + 4


def test_faults_from_the_start_spec(start_emulator):
    server = start_emulator(faults="fhir_429=1")
    auth = bearer(server)
    codes = [httpx.get(f"{server.fhir_base}/Patient", headers=auth).status_code for _ in range(2)]
    assert codes == [429, 200]


def test_probability_faults_are_reproducible_over_http(start_emulator):
    def run() -> list[int]:
        server = start_emulator(faults="fhir_429=p0.5,seed=42")
        auth = bearer(server)
        return [httpx.get(f"{server.fhir_base}/Patient", params={"_count": 1}, headers=auth).status_code
                for _ in range(20)]
    first, second = run(), run()
    assert first == second
    assert set(first) == {200, 429}


def test_http_control_endpoints(emulator, auth):
    base = emulator.base_url
    r = httpx.post(f"{base}/_emulator/faults", json={"spec": "kickoff_429=1"})
    assert r.status_code == 200 and r.json()["faults"]["kickoff_429"]["remaining"] == 1
    r = httpx.post(f"{base}/_emulator/faults",
                   json={"faults": {"poll_transient": {"count": 2}, "slow": {"probability": 0.0, "arg": 1}},
                         "retry_after": "epoch", "retry_after_seconds": 3})
    snap = r.json()
    assert snap["faults"]["poll_transient"]["remaining"] == 2
    assert (snap["retry_after"], snap["retry_after_seconds"]) == ("epoch", 3)
    kick = httpx.get(export_url(emulator), headers={**KICKOFF_HEADERS, **auth})
    assert kick.status_code == 429
    assert int(kick.headers["retry-after"]) > time.time()
    snap = httpx.get(f"{base}/_emulator/faults").json()
    assert snap["fired"]["kickoff_429"] == 1 and snap["faults"]["kickoff_429"]["remaining"] == 0
    assert httpx.post(f"{base}/_emulator/faults", json={"spec": "bogus=1"}).status_code == 400
    assert httpx.post(f"{base}/_emulator/faults", json={"faults": {"poll_transient": None}}).json()[
        "faults"].get("poll_transient") is None
    reset = httpx.post(f"{base}/_emulator/reset").json()
    assert reset["faults"] == {} and reset["fired"] == {} and reset["retry_after"] == "seconds"
    assert emulator.faults.snapshot()["faults"] == {}


# --- an independent, spec-following bulk client ----------------------------------------------------------------
class BulkClientError(RuntimeError):
    pass


class MiniBulkClient:
    """A small Bulk Data 2.0 client written from the IG and field notes, not from the pipeline.

    Kick-off with ``Prefer: respond-async``; poll honouring Retry-After (seconds, HTTP-date or
    epoch) clamped to a short range; retry 408/429/5xx/transport errors and ``transient``
    OperationOutcomes; one free re-authentication per 401; download every file, checking the
    line count and each line's resourceType; re-export when a file has expired.
    """

    RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

    def __init__(self, server, *, clamp: tuple[float, float] = (0.02, 0.3), attempts: int = 8) -> None:
        self.server = server
        self.clamp = clamp
        self.attempts = attempts
        self.http = httpx.Client(timeout=httpx.Timeout(5.0))
        self.token: str | None = None
        self.log: Counter[str] = Counter()

    def wait(self, retry_after: str | None, attempt: int) -> None:
        seconds = 0.05 * 2 ** attempt
        if retry_after:
            value = retry_after.strip()
            if value.isdigit():
                n = int(value)
                seconds = n - time.time() if n > 1_000_000_000 else n
            else:
                try:
                    seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
                except (TypeError, ValueError):
                    pass
        time.sleep(min(max(seconds, self.clamp[0]), self.clamp[1]))

    def authenticate(self) -> None:
        for attempt in range(self.attempts):
            r = self.http.post(self.server.token_url, data={"grant_type": "client_credentials",
                                                             "scope": "system/*.read"},
                               auth=("sandbox-client", "sandbox-secret"))
            if r.status_code == 200:
                self.token = r.json()["access_token"]
                return
            self.log[f"token {r.status_code}"] += 1
            if r.status_code not in self.RETRY_STATUSES:
                raise BulkClientError(f"token request failed: {r.status_code}")
            self.wait(r.headers.get("retry-after"), attempt)
        raise BulkClientError("token endpoint kept failing")

    def request(self, method: str, url: str, **kw) -> httpx.Response:
        """One logical request: retries transient failures, re-authenticates once on 401."""
        if self.token is None:
            self.authenticate()
        reauthenticated = False
        for attempt in range(self.attempts):
            headers = {**kw.pop("headers", {}), "Authorization": f"Bearer {self.token}"}
            kw["headers"] = headers
            try:
                r = self.http.request(method, url, **kw)
            except httpx.TransportError as exc:
                self.log[f"transport {type(exc).__name__}"] += 1
                self.wait(None, attempt)
                continue
            if r.status_code == 401 and not reauthenticated:
                self.log["reauth"] += 1
                reauthenticated = True
                self.authenticate()
                continue
            if r.status_code in self.RETRY_STATUSES:
                self.log[f"{method} {r.status_code}"] += 1
                self.wait(r.headers.get("retry-after"), attempt)
                continue
            return r
        raise BulkClientError(f"{method} kept failing")

    def download(self, entry: dict) -> list[dict] | None:
        """The resources of one file, or None when it has expired (404/410)."""
        for attempt in range(self.attempts):
            r = self.request("GET", entry["url"], headers={"Accept-Encoding": "gzip"})
            if r.status_code in (404, 410):
                return None
            if r.status_code != 200:
                raise BulkClientError(f"download failed: {r.status_code}")
            lines = [ln for ln in r.text.split("\n") if ln.strip()]
            try:
                resources = [json.loads(ln) for ln in lines]
            except json.JSONDecodeError:
                self.log["bad line"] += 1
                continue
            if len(resources) != entry["count"]:
                self.log["count mismatch"] += 1
                continue
            if any(res.get("resourceType") != entry["type"] for res in resources):
                raise BulkClientError("a line has the wrong resourceType")
            return resources
        raise BulkClientError("file kept arriving damaged")

    def export(self, params: dict | None = None, exports: int = 3) -> tuple[dict, dict[str, list[dict]]]:
        url = f"{self.server.fhir_base}/Group/a-1.c-{practice_of(self.server)}/$export"
        for _ in range(exports):
            r = self.request("GET", url, params=params or {}, headers=dict(KICKOFF_HEADERS))
            if r.status_code != 202:
                raise BulkClientError(f"kick-off failed: {r.status_code} {r.text}")
            status_url = r.headers["content-location"]
            while True:
                poll = self.request("GET", status_url, headers={"Accept": "application/json"})
                if poll.status_code == 202:
                    self.log["progress"] += 1
                    self.wait(poll.headers.get("retry-after"), 0)
                    continue
                if poll.status_code != 200:
                    raise BulkClientError(f"status failed: {poll.status_code}")
                manifest = poll.json()
                break
            results: dict[str, list[dict]] = {}
            expired = False
            for entry in manifest["output"] + manifest.get("deleted", []) + manifest["error"]:
                resources = self.download(entry)
                if resources is None:
                    expired = True
                    break
                results.setdefault(entry["type"], []).extend(resources)
            self.request("DELETE", status_url)
            if not expired:
                return manifest, results
            self.log["re-export"] += 1
        raise BulkClientError("files kept expiring")


def expected_counts(server) -> dict[str, int]:
    return dict(query(server.emulator.world_dir, "SELECT resource_type, count(*) FROM fhir.resources GROUP BY 1"))


def test_mini_client_completes_without_faults(emulator):
    manifest, results = MiniBulkClient(emulator).export()
    assert {t: len(v) for t, v in results.items()} == expected_counts(emulator)
    assert manifest["error"] == []


def test_mini_client_survives_many_faults(start_emulator):
    spec = ("token_429=1,kickoff_429=2,poll_429=1,poll_transient=2,poll_500=1,file_429=2,"
            "truncate=1,truncate_clean=1,files_expired=1,bearer_expired=1,slow_poll=1:0.2,"
            "error_lines=1:2,retry_after=http-date")
    server = start_emulator(faults=spec, export_processing_delay_seconds=0.3)
    client = MiniBulkClient(server)
    manifest, results = client.export()
    counts = {t: len(v) for t, v in results.items() if t != "OperationOutcome"}
    assert counts == expected_counts(server)
    snap = server.faults.snapshot()
    armed = dict(item.split("=") for item in spec.split(",") if not item.startswith("retry_after"))
    for name, value in armed.items():
        assert snap["fired"].get(name) == int(value.split(":")[0]), (name, snap["fired"])
    assert client.log["re-export"] == 1  # the expired file forced a second export
    assert client.log["reauth"] == 1
    # error_lines hit the first export; the second (after re-export) is clean
    assert manifest["error"] == []


def test_mini_client_survives_random_faults(start_emulator):
    server = start_emulator(faults="poll_transient=p0.3,file_429=p0.3,fhir_429=p0.2,truncate=p0.1,seed=5",
                            export_processing_delay_seconds=0.3)
    _manifest, results = MiniBulkClient(server, attempts=12).export({"_since": "2024-06-01T00:00:00Z"})
    since = dt.datetime(2024, 6, 1)
    expected = dict(query(server.emulator.world_dir, "SELECT resource_type, count(*) FROM fhir.resources "
                                                      "WHERE last_updated > ? GROUP BY 1", [since]))
    deleted = query(server.emulator.world_dir, "SELECT count(*) FROM fhir.deletions WHERE deleted_at > ?",
                    [since])[0][0]
    counts = {t: len(v) for t, v in results.items()}
    assert counts.pop("Bundle", 0) == deleted
    assert counts == expected
    assert sum(server.faults.snapshot()["fired"].values()) > 0
