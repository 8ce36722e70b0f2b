"""The webhook receiver on a real socket: signatures, validation, limits, dedupe, durability."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from athena_pipeline.events.inbox import Inbox
from athena_pipeline.events.receiver import ReceiverConfig, create_receiver_app
from athena_pipeline.events.signature import sign, verify
from athena_pipeline.sandbox.emulator.config import EmulatorConfig
from athena_pipeline.sandbox.emulator.subscriptions import grant_subscription_scopes
from athena_pipeline.sandbox.server import run_in_thread
from tests.events.support import (
    PRACTICE,
    SECRET,
    ServedApp,
    notification,
    serve_in_thread,
    signed,
    tiny_world,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def inbox_path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite"


@pytest.fixture
def receiver(inbox_path: Path) -> Iterator[ServedApp]:
    app = create_receiver_app(inbox_path, ReceiverConfig(secrets=(SECRET, "old-secret"), max_bytes=64 * 1024))
    served = serve_in_thread(app)
    yield served
    served.stop()


@pytest.fixture
def client(receiver: ServedApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=receiver.base_url, timeout=10) as c:
        yield c


def stored(inbox_path: Path) -> set[str]:
    with Inbox(inbox_path) as box:
        return box.event_ids()


def new_id() -> str:
    return str(uuid.uuid4())


# --- signatures ----------------------------------------------------------------------------------
def test_signature_helpers_match_athenas_sample() -> None:
    body = b'{"resourceType":"Bundle"}'
    header = sign("secret", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64 and header[7:] == header[7:].lower()
    assert verify(["other", "secret"], body, header)
    assert verify(["secret"], body, header.upper().replace("SHA256=", "sha256="))  # hex case
    assert not verify(["secret"], body + b" ", header)
    assert not verify(["secret"], body, "sha1=" + header[7:])
    assert not verify(["secret"], body, None)
    assert not verify(["secret"], body, "sha256=zz\u00e9")


def test_a_signed_notification_is_stored_before_the_answer(client: httpx.Client, inbox_path: Path) -> None:
    eid = new_id()
    body, headers = signed(notification([(eid, "Appointment.check-in", "1005192")]))
    r = client.post("/webhook", content=body, headers=headers)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "type": "event-notification", "events": 1, "new": 1}
    with Inbox(inbox_path) as box:  # committed: another connection sees it right away
        got = box.get(eid)
    assert got is not None
    assert (got.topic, got.resource_type, got.resource_id, got.practice_id) == (
        "Appointment.check-in", "Appointment", "1005192", PRACTICE)
    assert got.focus_reference == f"Appointment/a-{PRACTICE}.Appointment-1005192"
    assert got.metadata["patient"] == f"Patient/a-{PRACTICE}.E-77"
    assert "jdoe" not in json.dumps(got.metadata)  # the agent's username is not kept


def test_a_rotated_out_secret_still_verifies(client: httpx.Client, inbox_path: Path) -> None:
    eid = new_id()
    body, headers = signed(notification([(eid, "Patient.update", "42")]), secret="old-secret")
    assert client.post("/webhook", content=body, headers=headers).status_code == 200
    assert eid in stored(inbox_path)


@pytest.mark.parametrize("header", [None, "sha256=" + "0" * 64, "sha1=abc", "garbage"])
def test_wrong_or_missing_signature_is_401_and_nothing_is_stored(client: httpx.Client, inbox_path: Path,
                                                                 header: str | None) -> None:
    body = json.dumps(notification([(new_id(), "Appointment.update", "1")])).encode()
    headers = {"Content-Type": "application/fhir+json"}
    if header is not None:
        headers["X-Hub-Signature"] = header
    r = client.post("/webhook", content=body, headers=headers)
    assert r.status_code == 401
    assert stored(inbox_path) == set()


def test_signature_by_another_secret_is_401(client: httpx.Client, inbox_path: Path) -> None:
    body, headers = signed(notification([(new_id(), "Appointment.update", "1")]), secret="attacker")
    assert client.post("/webhook", content=body, headers=headers).status_code == 401
    assert stored(inbox_path) == set()


# --- validation and limits ---------------------------------------------------------------------------
@pytest.mark.parametrize("doc", [
    b"not json at all",
    b"[1, 2, 3]",
    {"resourceType": "Patient", "id": "x"},
    {"resourceType": "Bundle", "type": "history", "entry": []},
    {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {"resourceType": "Basic"}}]},
    "no-event-ids",
    "no-focus",
    "no-events",
])
def test_malformed_bundles_are_400(client: httpx.Client, inbox_path: Path, doc) -> None:
    if doc == "no-event-ids":
        doc = notification([("x", "Appointment.update", "1")])
        del doc["entry"][0]["resource"]["notificationEvent"][0]["id"]
    elif doc == "no-focus":
        doc = notification([("x", "Appointment.update", "1")])
        del doc["entry"][0]["resource"]["notificationEvent"][0]["focus"]
    elif doc == "no-events":
        doc = notification([])
    body, headers = signed(doc)
    r = client.post("/webhook", content=body, headers=headers)
    assert r.status_code == 400
    assert "error" in r.json()
    assert stored(inbox_path) == set()


def test_oversized_bodies_are_413(client: httpx.Client, inbox_path: Path) -> None:
    doc = notification([(new_id(), "Appointment.update", str(i)) for i in range(400)])
    body, headers = signed(doc)
    assert len(body) > 64 * 1024
    assert client.post("/webhook", content=body, headers=headers).status_code == 413

    def chunks():  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    assert client.post("/webhook", content=chunks(), headers=headers).status_code == 413
    assert stored(inbox_path) == set()


# --- semantics ------------------------------------------------------------------------------------------
def test_redeliveries_are_acknowledged_and_deduplicated(client: httpx.Client, inbox_path: Path) -> None:
    a, b = new_id(), new_id()
    body, headers = signed(notification([(a, "Claim.update", "9"), (b, "Claim.update", "10")]))
    assert client.post("/webhook", content=body, headers=headers).json()["new"] == 2
    again = client.post("/webhook", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["new"] == 0
    body2, headers2 = signed(notification([(b, "Claim.update", "10")]))
    assert client.post("/webhook", content=body2, headers=headers2).json()["new"] == 0
    with Inbox(inbox_path) as box:
        stats = box.stats()
    assert (stats.total, stats.duplicates_ignored) == (2, 3)


@pytest.mark.parametrize("kind", ["handshake", "heartbeat"])
def test_handshake_and_heartbeat_are_acknowledged_and_store_no_event(client: httpx.Client, inbox_path: Path,
                                                                     kind: str) -> None:
    body, headers = signed(notification([], kind=kind))
    r = client.post("/webhook", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["type"] == kind
    with Inbox(inbox_path) as box:
        stats = box.stats()
    assert stats.total == 0
    assert getattr(stats, f"last_{kind}_at") is not None


def test_r4_parameters_form_is_accepted_with_a_stable_derived_id(client: httpx.Client, inbox_path: Path) -> None:
    doc = {"resourceType": "Bundle", "type": "history", "timestamp": "2026-11-23T10:15:02Z", "entry": [
        {"fullUrl": "urn:uuid:5b0c9e1e-2f7d-4a51-9d55-0f0f3c1a2b77", "resource": {
            "resourceType": "Parameters", "parameter": [
                {"name": "subscription", "valueReference": {"reference": "https://ehr.example/fhir/Subscription/enc-sub"}},
                {"name": "topic", "valueCanonical": "https://ehr.example/fhir/SubscriptionTopic/Encounter.signoff"},
                {"name": "status", "valueCode": "active"},
                {"name": "type", "valueCode": "event-notification"},
                {"name": "events-since-subscription-start", "valueString": "42"},
                {"name": "notification-event", "part": [
                    {"name": "event-number", "valueString": "42"},
                    {"name": "timestamp", "valueInstant": "2026-11-23T10:15:01Z"},
                    {"name": "focus", "valueReference": {"reference": "https://ehr.example/fhir/Encounter/e-981"}}]}]}},
        {"fullUrl": "https://ehr.example/fhir/Encounter/e-981", "request": {"method": "PUT", "url": "Encounter/e-981"}}]}
    body, headers = signed(doc)
    assert client.post("/webhook", content=body, headers=headers).json()["new"] == 1
    assert client.post("/webhook", content=body, headers=headers).json()["new"] == 0
    with Inbox(inbox_path) as box:
        (event,) = box.fetch_unprocessed(0)
    assert (event.topic, event.resource_type, event.resource_id) == ("Encounter.signoff", "Encounter", "e-981")


def test_health_reports_the_inbox(client: httpx.Client) -> None:
    body, headers = signed(notification([(new_id(), "Patient.create", "5")]))
    client.post("/webhook", content=body, headers=headers)
    client.post("/webhook", content=b"{}", headers={"X-Hub-Signature": "sha256=00"})
    health = client.get("/health")
    assert health.status_code == 200
    data = health.json()
    assert data["status"] == "ok"
    assert data["inbox"]["total"] == 1 and data["inbox"]["unprocessed_by_type"] == {"Patient": 1}
    assert data["responses"] == {"200": 1, "401": 1}


def test_concurrent_requests_are_all_committed(receiver: ServedApp, inbox_path: Path) -> None:
    ids = [new_id() for _ in range(120)]
    with httpx.Client(base_url=receiver.base_url, timeout=10) as shared:

        def post(eid: str) -> int:
            body, headers = signed(notification([(eid, "Appointment.update", "1")]))
            return shared.post("/webhook", content=body, headers=headers).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(post, ids))
    assert statuses == [200] * len(ids)
    assert stored(inbox_path) == set(ids)


def test_config_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        ReceiverConfig(secrets=())
    with pytest.raises(ValueError):
        ReceiverConfig(secrets=("",))


# --- durability: SIGKILL mid-burst ------------------------------------------------------------------------------
def _start_receiver(inbox: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "athena_pipeline.cli", "--log-level", "WARNING", "webhook", "serve",
         "--port", str(port), "--inbox", str(inbox)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    if not line.startswith("webhook receiver:"):
        proc.kill()
        raise AssertionError(f"receiver did not start: {line!r} {proc.stderr.read()[-2000:]}")
    url = line.split("url=", 1)[1].split()[0]
    return proc, url


def _inbox_ids(path: Path) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT event_id FROM events")}
    finally:
        con.close()


def test_sigkill_mid_burst_loses_no_acknowledged_event_and_retries_deliver_the_rest(tmp_path: Path) -> None:
    world = tiny_world(tmp_path / "world")
    inbox = tmp_path / "inbox" / "events.sqlite"
    proc, url = _start_receiver(inbox)
    port = int(url.split(":")[2].split("/")[0])
    emulator = run_in_thread(world, config=grant_subscription_scopes(EmulatorConfig(token_rate_limit_per_minute=1000)))
    try:
        store = emulator.emulator.events.store
        store.configure(backoff_initial_seconds=0.1, backoff_max_seconds=0.4, retry_window_seconds=120,
                        max_in_flight=8)
        token = httpx.post(emulator.token_url, auth=("sandbox-client", "sandbox-secret"), data={
            "grant_type": "client_credentials", "scope": "system/Subscription.write"}).json()["access_token"]
        from athena_pipeline.events.subscriptions import subscription_resource

        created = httpx.post(f"{emulator.fhir_base}/Subscription",
                             json=subscription_resource("Appointment.update", url, PRACTICE,
                                                        topic_base=emulator.fhir_base),
                             headers={"Authorization": f"Bearer {token}", "X-Hub-Secret": SECRET})
        assert created.status_code == 201
        injected = set(emulator.emulator.events.inject("Appointment.update", 400))

        wait_for(lambda: len(store.deliveries("delivered")) >= 60, what="part of the burst", interval=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        acknowledged = store.delivered_event_ids()
        assert 60 <= len(acknowledged) < len(injected), "the kill did not land mid-burst"
        on_disk = _inbox_ids(inbox)
        assert acknowledged <= on_disk  # every 2xx was preceded by a commit

        time.sleep(0.5)  # deliveries fail while nobody listens, and are scheduled for retry
        assert any(d.attempts > 0 for d in store.deliveries("pending"))
        proc, _ = _start_receiver(inbox, port)
        wait_for(lambda: not store.deliveries("pending"), timeout=40, what="retries to drain")
        assert store.deliveries("dead") == []
        assert store.delivered_event_ids() == injected
        assert _inbox_ids(inbox) == injected  # none lost, none doubled (dedupe by id)
    finally:
        emulator.stop()
        proc.kill()
        proc.wait(10)
