"""Event Subscriptions of the athenahealth emulator: the FHIR API, subscriptions as code, and
webhook delivery (advance, retries, dead letters, replay, duplicates, batching, reordering,
handshake, heartbeat, trickle), all against real servers on loopback."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from athena_pipeline.cli import main
from athena_pipeline.events.inbox import Inbox
from athena_pipeline.events.receiver import ReceiverConfig, create_receiver_app
from athena_pipeline.events.signature import verify
from athena_pipeline.events.subscriptions import (
    SUBSCRIPTION_SCOPES,
    ensure_subscriptions,
    list_subscriptions,
    subscription_resource,
)
from athena_pipeline.events.topics import ALL_TOPICS, DEFAULT_FAMILIES, expand_topics
from athena_pipeline.sandbox.advance import advance_world
from athena_pipeline.sandbox.emulator.config import DEFAULT_ALLOWED_SCOPES, ClientConfig, EmulatorConfig
from athena_pipeline.sandbox.emulator.delivery import derive_world_events
from athena_pipeline.sandbox.emulator.subscriptions import SUBSCRIPTION_SCOPES as GRANTS
from athena_pipeline.sandbox.emulator.subscriptions import grant_subscription_scopes
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.server import RunningServer
from athena_pipeline.sandbox.world import World, WorldOptions
from athena_pipeline.settings import Settings
from tests.events.support import PRACTICE, SECRET, Recorder, serve_in_thread, wait_for
from tests.sandbox.conftest import get_token, query

TOPIC_BASE = "https://api.platform.athenahealth.com/fhir/r4"
#: The sandbox client after athena's operations team granted it the subscription scopes.
GRANTED = grant_subscription_scopes(EmulatorConfig()).clients


# --- helpers --------------------------------------------------------------------------------------
@pytest.fixture
def server(start_emulator, own_world: Path) -> RunningServer:
    """An emulator on a private copy of the fixture world (subscriptions persist in the world)."""
    return start_emulator(world=own_world, clients=GRANTED)


@pytest.fixture
def token(server: RunningServer) -> str:
    return get_token(server, SUBSCRIPTION_SCOPES + " athena/service/Athenanet.MDP.*")


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    served = serve_in_thread(rec.app(), lifespan="off")
    yield rec, f"{served.base_url}/hook"
    served.stop()


def subscribe(server: RunningServer, token: str, endpoint: str, topic: str = "Appointment.update",
              *, secret: str | None = SECRET, practice: str = PRACTICE, **changes) -> httpx.Response:
    body = subscription_resource(topic, endpoint, practice, topic_base=TOPIC_BASE)
    for key, value in changes.items():
        body[key] = value
    headers = {"Authorization": f"Bearer {token}"}
    if secret:
        headers["X-Hub-Secret"] = secret
    return httpx.post(f"{server.fhir_base}/Subscription", json=body, headers=headers, timeout=10)


def settings_for(server: RunningServer, endpoint: str, **extra) -> Settings:
    return Settings(athena_fhir_base_url=server.fhir_base, athena_token_url=server.token_url,
                    athena_practice_id=int(PRACTICE), webhook_url=endpoint, webhook_secret=SECRET,
                    athena_requests_per_second=200, **extra)


def fast(server: RunningServer, **knobs) -> None:
    server.emulator.events.store.configure(**{"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2,
                                              **knobs})


# --- topics -----------------------------------------------------------------------------------------
def test_topic_catalogue_is_the_spec_list(server: RunningServer, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{server.fhir_base}/SubscriptionTopic", headers=auth)
    assert r.status_code == 200
    bundle = r.json()
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert bundle["type"] == "searchset" and bundle["total"] == len(ids) == len(ALL_TOPICS)
    for topic in ("Appointment.check-in", "Appointment.reschedule", "Patient.merge", "Encounter.signoff",
                  "LabResult.close", "Claim.update", "Prescription.refill-create", "Provider.undelete"):
        assert topic in ids
    assert not any(t.startswith("Document.") for t in ids)  # athena has no generic Document topic
    one = httpx.get(f"{server.fhir_base}/SubscriptionTopic/Claim.create", headers=auth).json()
    assert one["status"] == "active" and "/v1/{practiceid}/claims/{id}" in one["description"]
    assert httpx.get(f"{server.fhir_base}/SubscriptionTopic/Nope.x", headers=auth).status_code == 404


# --- the Subscription API ------------------------------------------------------------------------------
def test_create_read_list_status_delete(server: RunningServer, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    body = subscription_resource("Patient.update", "http://127.0.0.1:9/hook", PRACTICE, topic_base=TOPIC_BASE)
    body["channel"]["header"] = ["X-Hub-Secret: via-channel-header", "X-Custom: kept"]
    r = httpx.post(f"{server.fhir_base}/Subscription", json=body, headers={**auth, "X-Hub-Secret": "s3cr3t"})
    assert r.status_code == 201
    created = r.json()
    sub_id = created["id"]
    assert uuid.UUID(sub_id).version == 4
    assert r.headers["location"].endswith(f"/fhir/r4/Subscription/{sub_id}")
    assert created["status"] == "active"
    assert created["channel"]["header"] == ["X-Custom: kept"]
    assert "s3cr3t" not in r.text and "via-channel-header" not in r.text
    assert server.emulator.events.store.get_subscription(sub_id).secret == "s3cr3t"  # the header wins

    listed = httpx.get(f"{server.fhir_base}/Subscription", headers=auth).json()
    assert listed["type"] == "searchset" and listed["total"] == 1
    assert listed["entry"][0]["resource"]["id"] == sub_id and "s3cr3t" not in json.dumps(listed)
    read = httpx.get(f"{server.fhir_base}/Subscription/{sub_id}", headers=auth)
    assert read.status_code == 200 and read.json()["criteria"].endswith("/SubscriptionTopic/Patient.update")
    status = httpx.get(f"{server.fhir_base}/Subscription/{sub_id}/$status", headers=auth).json()
    resource = status["entry"][0]["resource"]
    assert (resource["resourceType"], resource["type"], resource["status"]) == (
        "SubscriptionStatus", "query-status", "active")

    assert httpx.delete(f"{server.fhir_base}/Subscription/{sub_id}", headers=auth).status_code == 204
    assert httpx.get(f"{server.fhir_base}/Subscription/{sub_id}", headers=auth).status_code == 404
    assert httpx.delete(f"{server.fhir_base}/Subscription/{sub_id}", headers=auth).status_code == 404
    assert httpx.get(f"{server.fhir_base}/Subscription", headers=auth).json()["total"] == 0


def test_subscription_scopes_must_be_granted_to_the_client(start_emulator, own_world: Path) -> None:
    plain = start_emulator(world=own_world)  # EmulatorConfig() grants no subscription scopes
    r = httpx.post(plain.token_url, auth=("sandbox-client", "sandbox-secret"),
                   data={"grant_type": "client_credentials", "scope": SUBSCRIPTION_SCOPES})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_scope")
    granted = grant_subscription_scopes(EmulatorConfig(), ["sandbox-client"])
    assert set(GRANTS) <= set(granted.clients[0].allowed_scopes)


def test_scopes_are_enforced(server: RunningServer) -> None:
    read_only = get_token(server, "system/*.read")
    r = subscribe(server, read_only, "http://127.0.0.1:9/hook")
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    assert httpx.get(f"{server.fhir_base}/Subscription",
                     headers={"Authorization": f"Bearer {read_only}"}).status_code == 200
    assert httpx.get(f"{server.fhir_base}/Subscription").status_code == 401


@pytest.mark.parametrize("change, why", [
    ({"channel": {"type": "websocket", "endpoint": "http://127.0.0.1:9/hook"}}, "rest-hook"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "_payload": {"extension": [
        {"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
         "valueCode": "full-resource"}]}}}, "id-only"),
    ({"channel": {"type": "rest-hook", "endpoint": "ftp://x"}}, "endpoint"),
    ({"criteria": f"{TOPIC_BASE}/SubscriptionTopic/Document.create"}, "SubscriptionTopic"),
    ({"criteria": "Patient?name=x"}, "SubscriptionTopic"),
    ({"_criteria": {}}, "ah-practice"),
    ({"end": "2001-01-01T00:00:00Z"}, "past"),
    ({"resourceType": "Patient"}, "Subscription"),
])
def test_invalid_subscriptions_are_400(server: RunningServer, token: str, change: dict, why: str) -> None:
    r = subscribe(server, token, "http://127.0.0.1:9/hook", **change)
    assert r.status_code == 400
    assert why in r.json()["issue"][0]["diagnostics"]


def test_another_practice_is_400(server: RunningServer, token: str) -> None:
    r = subscribe(server, token, "http://127.0.0.1:9/hook", practice="1")
    assert r.status_code == 400 and "practice" in r.text


def test_subscriptions_belong_to_their_client_and_survive_a_restart(start_emulator, own_world: Path) -> None:
    scopes = (*DEFAULT_ALLOWED_SCOPES, *GRANTS)
    clients = (ClientConfig("sandbox-client", secret="sandbox-secret", allowed_scopes=scopes),
               ClientConfig("other", secret="o", allowed_scopes=scopes))
    first = start_emulator(world=own_world, clients=clients)
    mine = get_token(first, SUBSCRIPTION_SCOPES)
    other = get_token(first, SUBSCRIPTION_SCOPES, client_id="other", secret="o")
    sub_id = subscribe(first, mine, "http://127.0.0.1:9/hook").json()["id"]
    assert httpx.get(f"{first.fhir_base}/Subscription", headers={"Authorization": f"Bearer {other}"}
                     ).json()["total"] == 0
    assert httpx.delete(f"{first.fhir_base}/Subscription/{sub_id}",
                        headers={"Authorization": f"Bearer {other}"}).status_code == 404
    first.stop()
    second = start_emulator(world=own_world, clients=GRANTED)
    listed = httpx.get(f"{second.fhir_base}/Subscription",
                       headers={"Authorization": f"Bearer {get_token(second, SUBSCRIPTION_SCOPES)}"}).json()
    assert [e["resource"]["id"] for e in listed["entry"]] == [sub_id]


# --- subscriptions as code ---------------------------------------------------------------------------------
def test_ensure_is_idempotent_and_replaces_a_changed_endpoint(server: RunningServer) -> None:
    settings = settings_for(server, "http://127.0.0.1:9/hook", athena_event_topics=("Appointment", "Claim.update"))
    wanted = expand_topics(["Appointment", "Claim.update"])
    first = ensure_subscriptions(settings)
    assert first.summary() == {"created": 9, "kept": 0, "replaced": 0, "deleted": 0}
    assert sorted(s.topic for s in first.created) == sorted(wanted)
    again = ensure_subscriptions(settings)
    assert again.summary() == {"created": 0, "kept": 9, "replaced": 0, "deleted": 0} and not again.changed

    moved = settings_for(server, "http://127.0.0.1:10/new-hook", athena_event_topics=settings.athena_event_topics)
    result = ensure_subscriptions(moved)
    assert result.summary() == {"created": 9, "kept": 0, "replaced": 9, "deleted": 0}
    now = list_subscriptions(moved)
    assert len(now) == 9 and {s.endpoint for s in now} == {"http://127.0.0.1:10/new-hook"}
    assert {s.id for s in now}.isdisjoint({s.id for s in first.created})

    # a stray duplicate is removed; a topic dropped from the configuration is deleted
    token = get_token(server, SUBSCRIPTION_SCOPES)
    assert subscribe(server, token, "http://127.0.0.1:10/new-hook", "Claim.update").status_code == 201
    narrowed = settings_for(server, "http://127.0.0.1:10/new-hook", athena_event_topics=("Claim.update",))
    result = ensure_subscriptions(narrowed)
    assert result.summary() == {"created": 0, "kept": 1, "replaced": 1, "deleted": 8}
    assert [s.topic for s in list_subscriptions(narrowed)] == ["Claim.update"]


def test_subscriptions_cli(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"ATHENA_FHIR_BASE_URL": server.fhir_base, "ATHENA_TOKEN_URL": server.token_url,
           "WEBHOOK_URL": "http://127.0.0.1:9/hook", "ATHENA_EVENT_TOPICS": "Patient",
           "WEBHOOK_SECRET": SECRET}
    runner = CliRunner()
    out = runner.invoke(main, ["subscriptions", "ensure"], env=env)
    assert out.exit_code == 0, out.output
    assert "4 created, 0 kept" in out.output and SECRET not in out.output
    out = runner.invoke(main, ["subscriptions", "ensure"], env=env)
    assert "0 created, 4 kept, 0 replaced, 0 deleted (nothing to do)" in out.output
    out = runner.invoke(main, ["subscriptions", "list", "--json"], env=env)
    assert sorted(s["topic"] for s in json.loads(out.stdout)) == sorted(expand_topics(["Patient"]))
    out = runner.invoke(main, ["subscriptions", "delete", "--all"], env=env)
    assert out.exit_code == 0 and "deleted 4" in out.output
    out = runner.invoke(main, ["subscriptions", "ensure", "--topics", "Nope"], env=env)
    assert out.exit_code == 1 and "unknown athenahealth event topic 'Nope'" in out.output


# --- delivery ---------------------------------------------------------------------------------------------------
def test_notifications_are_signed_id_only_bundles_with_duplicates_and_batches(
        server: RunningServer, token: str, recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    fast(server, duplicate_rate=1.0, batch_size=5)
    sub_id = subscribe(server, token, url).json()["id"]
    ids = server.emulator.events.inject("Appointment.update", 10)
    wait_for(lambda: len(rec.of_kind("event-notification")) >= 4, what="4 notifications")
    hits = rec.of_kind("event-notification")
    assert len(hits) == 4  # 2 bundles of 5, each sent twice
    for hit in hits:
        assert hit.headers["content-type"] == "application/fhir+json"
        assert verify([SECRET], hit.body, hit.headers["x-hub-signature"])
        doc = hit.doc
        assert doc["type"] == "history" and doc["meta"]["profile"][0].endswith("backport-subscription-notification")
        status = doc["entry"][0]["resource"]
        assert status["subscription"]["reference"] == f"Subscription/{sub_id}"
        assert status["eventsInNotification"] == 5 and status["eventsSinceSubscriptionStart"] == "5"
        assert [e["eventNumber"] for e in status["notificationEvent"]] == ["1", "2", "3", "4", "5"]
        focus = status["notificationEvent"][0]["focus"]
        assert focus["reference"].startswith(f"Appointment/a-{PRACTICE}.Appointment-")
        assert focus["identifier"]["system"] == f"urn:athenahealth:athenanet:appointment:{PRACTICE}"
        audits = [e["resource"] for e in doc["entry"][1:]]
        assert [a["id"] for a in audits] == hit.event_ids and all(a["resourceType"] == "AuditEvent" for a in audits)
        assert "resource" not in json.dumps(status["notificationEvent"])  # id-only
    assert sorted(i for h in hits for i in h.event_ids) == sorted(ids * 2)


def test_failures_retry_with_backoff_then_dead_letter_then_replay(
        server: RunningServer, token: str, recorder: tuple[Recorder, str], own_world: Path) -> None:
    rec, url = recorder
    rec.status = 503
    fast(server, retry_window_seconds=0.6)
    subscribe(server, token, url)
    ids = set(server.emulator.events.inject("Appointment.update", 2))
    store = server.emulator.events.store
    dead = wait_for(lambda: len(store.deliveries("dead")) == 2 and store.deliveries("dead"), what="dead letters")
    assert all(d.attempts >= 3 and d.last_outcome == "HTTP 503" for d in dead)
    attempts = len(rec.hits)
    assert attempts >= 6

    rec.status = 200
    out = CliRunner().invoke(main, ["sandbox", "events", "replay", "--world", str(own_world)])
    assert out.exit_code == 0 and "replaying 2" in out.output
    wait_for(lambda: len(store.deliveries("delivered")) == 2, what="replayed deliveries")
    assert store.delivered_event_ids() == ids
    assert {i for h in rec.hits[attempts:] for i in h.event_ids} == ids


def test_an_answer_after_the_ack_timeout_counts_as_failed(server: RunningServer, token: str,
                                                         recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    rec.delay = 0.6
    fast(server, ack_timeout_seconds=0.2, backoff_initial_seconds=0.3)
    subscribe(server, token, url)
    server.emulator.events.inject("Appointment.update", 1)
    store = server.emulator.events.store
    (pending,) = wait_for(lambda: [d for d in store.deliveries("pending") if d.attempts >= 1],
                          what="a timed-out attempt")
    assert pending.last_outcome == "no answer within 0.2s"
    rec.delay = 0.0
    wait_for(lambda: store.deliveries("delivered"), what="delivery after the endpoint got fast")


def test_reorder_knob_delivers_out_of_order(server: RunningServer, token: str,
                                            recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    fast(server, reorder=True, reorder_jitter_seconds=0.5, max_in_flight=1, seed=7)
    subscribe(server, token, url)
    ids = server.emulator.events.inject("Appointment.update", 15)
    wait_for(lambda: len(rec.of_kind("event-notification")) == 15, what="15 notifications")
    arrived = [h.event_ids[0] for h in rec.of_kind("event-notification")]
    assert sorted(arrived) == sorted(ids) and arrived != ids


def test_handshake_activates_and_heartbeats_follow(server: RunningServer, token: str,
                                                   recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    fast(server, handshake=True, heartbeat_seconds=0.2)
    created = subscribe(server, token, url).json()
    assert created["status"] == "requested"
    store = server.emulator.events.store
    wait_for(lambda: store.get_subscription(created["id"]).status == "active", what="handshake")
    (handshake,) = rec.of_kind("handshake")
    assert verify([SECRET], handshake.body, handshake.headers["x-hub-signature"])
    assert handshake.event_ids == []
    wait_for(lambda: len(rec.of_kind("heartbeat")) >= 2, what="heartbeats")

    rec.status = 500
    failed = subscribe(server, token, url, "Patient.update").json()
    wait_for(lambda: store.get_subscription(failed["id"]).status == "error", what="a failed handshake")
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server.fhir_base}/Subscription/{failed['id']}", headers=auth).json()["status"] == "error"


def test_trickle_emits_appointment_changes_on_real_appointments(server: RunningServer, token: str,
                                                                recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    subscribe(server, token, url)
    out = CliRunner().invoke(main, ["sandbox", "events", "config", "--world", str(server.emulator.world_dir),
                                    "--trickle", "600"])
    assert out.exit_code == 0 and '"trickle_per_minute": 600.0' in out.output
    wait_for(lambda: len(rec.of_kind("event-notification")) >= 3, what="trickled events")
    values = {h.doc["entry"][0]["resource"]["notificationEvent"][0]["focus"]["identifier"]["value"]
              for h in rec.of_kind("event-notification")}
    world_ids = {i for (i,) in query(server.emulator.world_dir,
                                     "SELECT id FROM fhir.resources WHERE resource_type = 'Appointment'")}
    assert all(any(w.endswith(f"-{v}") for w in world_ids) for v in values)  # real appointments
    server.emulator.events.store.configure(trickle_per_minute=0)


def test_control_endpoints(server: RunningServer) -> None:
    base = f"{server.base_url}/_emulator/events"
    assert httpx.post(base, json={"batch_size": 0}).status_code == 400
    assert httpx.post(base, json={"nonsense": 1}).status_code == 400
    assert httpx.post(base, json={"batch_size": 3}).json()["knobs"]["batch_size"] == 3
    injected = httpx.post(f"{base}/inject", json={"topic": "Claim.update", "count": 2}).json()["event_ids"]
    assert len(injected) == 2
    state = httpx.get(base).json()
    assert state["knobs"]["batch_size"] == 3 and state["events"] >= 2 and state["worker_running"]
    assert httpx.post(f"{base}/inject", json={"topic": "Bogus.x"}).status_code == 400
    assert httpx.get(f"{base}/dead-letters").json() == {"total": 0, "deliveries": []}
    assert httpx.post(f"{base}/replay", json={}).json() == {"replayed": 0}


# --- advance => events --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("events_world") / "world"
    generate_world(root, WorldOptions(providers=1, patients=300))
    return root


def test_sandbox_advance_delivers_every_change_to_the_receiver(start_emulator, generated_world: Path,
                                                             tmp_path: Path) -> None:
    world = tmp_path / "world"
    shutil.copytree(generated_world, world)
    inbox_path = tmp_path / "events.sqlite"
    receiver = serve_in_thread(create_receiver_app(inbox_path, ReceiverConfig(secrets=(SECRET,))))
    try:
        server = start_emulator(world=world, clients=GRANTED)
        fast(server, batch_size=10)
        result = ensure_subscriptions(settings_for(server, f"{receiver.base_url}/webhook"))
        assert len(result.created) == len(expand_topics(DEFAULT_FAMILIES))
        before = World.load(world).clock
        advance_world(world, 1)
        after = World.load(world).clock
        expected = derive_world_events(world, before, after, PRACTICE)
        assert {e.topic.split(".")[0] for e in expected} >= {"Appointment", "Claim", "Encounter"}

        with Inbox(inbox_path) as inbox:
            wait_for(lambda: inbox.stats().total >= len(expected), timeout=30, what="advance events")
            got = {e.event_id: e for e in inbox.fetch_unprocessed(0, limit=10_000)}
        assert set(got) == {e.event_id for e in expected}
        for e in expected:
            assert (got[e.event_id].topic, got[e.event_id].resource_id) == (e.topic, e.athena_id)

        appointment = next(e for e in expected if e.topic == "Appointment.schedule")
        auth = {"Authorization": f"Bearer {get_token(server)}"}
        r = httpx.get(f"{server.base_url}/v1/{PRACTICE}/appointments/{appointment.athena_id}", headers=auth)
        assert r.status_code == 200 and r.json()[0]["appointmentid"] == appointment.athena_id
        fhir = httpx.get(f"{server.fhir_base}/{got[appointment.event_id].focus_reference}", headers=auth)
        assert fhir.status_code == 200
        assert dt.datetime.fromisoformat(appointment.occurred_at.replace("Z", "")) > before
    finally:
        receiver.stop()
