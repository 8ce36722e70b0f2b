"""Webhook delivery of the athenahealth emulator: changes in the world become signed notifications.

A background thread (:class:`DeliveryWorker`, started by ``server.py`` next to uvicorn, never in a
request) loops every ``poll_seconds``:

1. **World changes** — when ``world.json``'s clock moved (``sandbox advance``, from any process),
   the changes between the last clock it saw and the new one are derived from ``facts.duckdb``
   (one SQL query over the facts' ``created_at``/``updated_at``/``deleted_at`` and status
   timestamps) and recorded in ``<world>/subscriptions.sqlite``, together with the new clock, in
   one transaction. A world the emulator has never seen starts from its generation date, so
   advances made while no emulator ran are not lost. Topics derived (§3.4 names):
   Appointment schedule/reschedule/cancel/check-in/check-out/update, Patient create/update/delete,
   Encounter check-in/signoff, LabResult create/update (laboratory observations) and Claim
   create/update/delete.
2. **Trickle** — with ``trickle_per_minute`` > 0, that many ``Appointment.update`` events a minute
   on real appointments of the world (live mode for demos; the data itself does not change).
3. **Fan-out** — new events become deliveries for every *active* Subscription of their topic and
   practice: ``batch_size`` events per bundle, ``duplicate_rate`` extra copies, ``reorder``
   (shuffled events and jittered send times).
4. **Handshakes and heartbeats** — when switched on (off by default: athena documents neither).
5. **Dispatch** — due deliveries are POSTed by a small thread pool: ``application/fhir+json``,
   ``X-Hub-Signature: sha256=<HMAC of the raw body>`` when the Subscription has a secret. Only a
   2xx within ``ack_timeout_seconds`` (2 s) counts; anything else is retried with jittered
   exponential backoff until ``retry_window_seconds`` (1 h) after the first attempt, then the
   delivery is dead-lettered and kept ``dead_letter_retention_seconds`` (7 days) for replay.

Bundles follow athena's STU1 shape (§3.3): a ``history`` Bundle, a SubscriptionStatus first with
bundle-relative counters, then one AuditEvent per event; focus as a FHIR reference (where athena
has a FHIR form) plus the athenaOne identifier.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import httpx

from athena_pipeline.events.signature import HEADER, sign
from athena_pipeline.events.topics import FAMILIES, family_of
from athena_pipeline.sandbox.emulator.subscriptions import (
    Delivery,
    DeliveryKnobs,
    EventRow,
    EventStore,
    NewDelivery,
    StoredSubscription,
    synthetic_events,
)
from athena_pipeline.sandbox.world import World

log = logging.getLogger("athena_pipeline.sandbox.athena.events")

FHIR_JSON = "application/fhir+json"
NOTIFICATION_PROFILE = ("http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                        "backport-subscription-notification")
TOPIC_SYSTEM = "https://fhir.athena.io/CodeSystem/SubscriptionTopic"
PATIENT_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-AuditEvent.patient"
DEPARTMENT_EXT = "https://fhir.athena.io/StructureDefinition/ah-department"
_EVENT_NS = uuid.UUID("0b8f3c52-4a5e-4c1e-9d7a-6a8f0f2b1c3d")

# One row per change in (lo, hi]: topic, athena id, patient, department, when. The facts tables
# carry every timestamp needed; rules follow the §3.4 actions.
_DERIVE_SQL = """
WITH a AS (SELECT * FROM f.appointments), p AS (SELECT * FROM f.patients),
     e AS (SELECT * FROM f.encounters),
     o AS (SELECT * FROM f.observations WHERE category = 'laboratory'),
     c AS (SELECT * FROM f.claims)
SELECT * FROM (
    SELECT CASE WHEN rescheduled_from_appointment_id IS NULL THEN 'Appointment.schedule'
                ELSE 'Appointment.reschedule' END AS topic,
           appointment_id AS id, patient_id, department_id, created_at AS changed_at
    FROM a WHERE created_at > $lo AND created_at <= $hi
    UNION ALL SELECT 'Appointment.cancel', appointment_id, patient_id, department_id, cancelled_at
    FROM a WHERE cancelled_at > $lo AND cancelled_at <= $hi
    UNION ALL SELECT 'Appointment.check-in', appointment_id, patient_id, department_id, checkin_at
    FROM a WHERE checkin_at > $lo AND checkin_at <= $hi
    UNION ALL SELECT 'Appointment.check-out', appointment_id, patient_id, department_id, checkout_at
    FROM a WHERE checkout_at > $lo AND checkout_at <= $hi
    UNION ALL SELECT 'Appointment.update', appointment_id, patient_id, department_id,
           greatest(updated_at, coalesce(deleted_at, updated_at))
    FROM a WHERE ((updated_at > $lo AND updated_at <= $hi) OR (deleted_at > $lo AND deleted_at <= $hi))
      AND NOT coalesce(created_at > $lo, FALSE) AND NOT coalesce(cancelled_at > $lo AND cancelled_at <= $hi, FALSE)
      AND NOT coalesce(checkin_at > $lo AND checkin_at <= $hi, FALSE)
      AND NOT coalesce(checkout_at > $lo AND checkout_at <= $hi, FALSE)
    UNION ALL SELECT 'Patient.create', patient_id, patient_id, department_id, created_at
    FROM p WHERE created_at > $lo AND created_at <= $hi
    UNION ALL SELECT 'Patient.delete', patient_id, patient_id, department_id, deleted_at
    FROM p WHERE deleted_at > $lo AND deleted_at <= $hi
    UNION ALL SELECT 'Patient.update', patient_id, patient_id, department_id, updated_at
    FROM p WHERE updated_at > $lo AND updated_at <= $hi AND created_at <= $lo
      AND NOT coalesce(deleted_at > $lo AND deleted_at <= $hi, FALSE)
    UNION ALL SELECT 'Encounter.check-in', encounter_id, patient_id, department_id, created_at
    FROM e WHERE created_at > $lo AND created_at <= $hi
    UNION ALL SELECT 'Encounter.signoff', encounter_id, patient_id, department_id, closed_at
    FROM e WHERE closed_at > $lo AND closed_at <= $hi
    UNION ALL SELECT 'LabResult.create', observation_id, patient_id, NULL, created_at
    FROM o WHERE created_at > $lo AND created_at <= $hi
    UNION ALL SELECT 'LabResult.update', observation_id, patient_id, NULL, updated_at
    FROM o WHERE updated_at > $lo AND updated_at <= $hi AND created_at <= $lo
    UNION ALL SELECT 'Claim.create', claim_id, patient_id, department_id, created_at
    FROM c WHERE created_at > $lo AND created_at <= $hi
    UNION ALL SELECT 'Claim.delete', claim_id, patient_id, department_id, deleted_at
    FROM c WHERE deleted_at > $lo AND deleted_at <= $hi
    UNION ALL SELECT 'Claim.update', claim_id, patient_id, department_id, updated_at
    FROM c WHERE updated_at > $lo AND updated_at <= $hi AND created_at <= $lo
      AND NOT coalesce(deleted_at > $lo AND deleted_at <= $hi, FALSE)
) ORDER BY changed_at, topic, id
"""


def _instant(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_instant() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def derive_world_events(world_dir: Path | str, since: dt.datetime, until: dt.datetime,
                        practice_id: str | int) -> list[EventRow]:
    """The changes of the world between two clocks (naive UTC), oldest first.

    Event ids are UUIDv5 of (practice, topic, id, time), so deriving the same window twice gives
    the same ids. Raises ``duckdb.IOException`` when ``facts.duckdb`` is locked by a running
    ``sandbox advance`` (the caller retries); a world without facts yields no events.
    """
    facts = Path(world_dir) / "facts.duckdb"
    if not facts.exists() or until <= since:
        return []
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET threads = 1")
        con.execute("ATTACH ? AS f (READ_ONLY)", [str(facts)])
        rows = con.execute(_DERIVE_SQL, {"lo": since, "hi": until}).fetchall()
    finally:
        con.close()
    pid = str(practice_id)
    out = []
    for topic, rid, patient, dept, at in rows:
        when = _instant(at)
        out.append(EventRow(
            event_id=str(uuid.uuid5(_EVENT_NS, f"{pid}|{topic}|{rid}|{when}")), topic=topic,
            practice_id=pid, athena_id=str(rid), patient_id=None if patient is None else str(patient),
            department_id=None if dept is None else str(dept), occurred_at=when, source="advance"))
    return out


# --- bundles ------------------------------------------------------------------------------------------
def _focus(event: EventRow) -> dict:
    family = FAMILIES[family_of(event.topic)]
    pid = event.practice_id
    focus: dict = {}
    if family.fhir_type and family.fhir_kind:
        focus["reference"] = f"{family.fhir_type}/a-{pid}.{family.fhir_kind}-{event.athena_id}"
    if family.identifier:
        focus["identifier"] = {"system": f"urn:athenahealth:athenanet:{family.identifier}:{pid}",
                               "value": event.athena_id}
    return focus


def notification_bundle(sub: StoredSubscription, events: Sequence[EventRow], kind: str) -> bytes:
    """The raw body of one notification (STU1 shape, §3.3), serialised once for signing."""
    sub_ref = f"Subscription/{sub.id}"
    topic = sub.resource.get("criteria") or sub.topic
    status: dict = {"resourceType": "SubscriptionStatus", "status": sub.status, "type": kind,
                    "eventsSinceSubscriptionStart": str(len(events)),
                    "eventsInNotification": len(events),
                    "subscription": {"reference": sub_ref}, "topic": topic}
    request = {"method": "GET", "url": f"{sub_ref}/$status"}
    entries: list[dict] = []
    if events:
        status["notificationEvent"] = [
            {"eventNumber": str(i), "id": e.event_id, "timestamp": e.occurred_at, "focus": _focus(e)}
            for i, e in enumerate(events, start=1)]
    entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status, "request": request,
                    "response": {"status": "200"}})
    for e in events:
        focus = _focus(e)
        extensions = []
        if e.patient_id:
            extensions.append({"url": PATIENT_EXT, "valueReference": {
                "reference": f"Patient/a-{e.practice_id}.E-{e.patient_id}"}})
        if e.department_id:
            extensions.append({"url": DEPARTMENT_EXT, "valueReference": {
                "reference": f"Organization/a-{e.practice_id}.Department-{e.department_id}"}})
        audit = {"resourceType": "AuditEvent", "id": e.event_id,
                 "type": {"system": TOPIC_SYSTEM, "code": e.topic}, "recorded": e.occurred_at,
                 "agent": [{"who": {"identifier": {"value": "athena-emulator"}}, "requestor": True}],
                 "source": {"observer": {"reference": f"Organization/a-1.Practice-{e.practice_id}"}},
                 "entity": [{"what": {"reference": focus["reference"]} if "reference" in focus
                             else {"identifier": focus["identifier"]}}]}
        if extensions:
            audit["extension"] = extensions
        entries.append({"fullUrl": f"urn:uuid:{e.event_id}", "resource": audit, "request": request,
                        "response": {"status": "200"}})
    bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
              "meta": {"profile": [NOTIFICATION_PROFILE]}, "type": "history",
              "timestamp": _now_instant(), "entry": entries}
    return json.dumps(bundle, separators=(",", ":")).encode()


# --- the worker -----------------------------------------------------------------------------------------
class DeliveryWorker:
    """Derives, fans out and delivers events for one world (see module docstring)."""

    def __init__(self, world_dir: Path | str, fhir_store=None, *, poll_seconds: float = 0.1,
                 purge_every_seconds: float = 60.0) -> None:
        self.world_dir = Path(world_dir)
        self.store = EventStore(self.world_dir)
        self.fhir_store = fhir_store
        self.poll_seconds = poll_seconds
        self.purge_every = purge_every_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()
        self._handshaking: set[str] = set()
        self._heartbeat_at: dict[str, float] = {}
        self._world_key: tuple | None = None
        self._trickle_credit = 0.0
        self._last_tick = time.monotonic()
        self._last_purge = 0.0
        self._candidates: list[tuple[str, str | None]] | None = None
        self._rng = random.Random()
        self._seed: int | None = None
        self._logged: dict[str, float] = {}

    # --- lifecycle --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> DeliveryWorker:
        if self.running:
            return self
        self._stop.clear()
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="athena-delivery")
        self._http = httpx.Client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
                                  follow_redirects=False)
        self._thread = threading.Thread(target=self._run, name="athena-delivery-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._http is not None:
            self._http.close()
            self._http = None
        self.store.close()

    def wake(self) -> None:
        """Run the next loop now (after a create, a replay, a knob change)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _guard(self, step: str, fn, *args) -> None:
        """Run one step of the loop; a failing step is logged (once a minute) and skipped."""
        try:
            fn(*args)
        except Exception as exc:
            now = time.monotonic()
            key = f"{step}:{type(exc).__name__}"
            if now - self._logged.get(key, -1e9) >= 60:
                self._logged[key] = now
                log.exception("event delivery step %r failed; retrying every loop", step)

    def tick(self) -> None:
        """One loop: world changes, trickle, fan-out, handshakes/heartbeats, dispatch, purge."""
        try:
            knobs = self.store.knobs()
        except Exception:
            log.debug("delivery knobs not readable; skipping a loop", exc_info=True)
            return
        if knobs.seed != self._seed:
            self._seed = knobs.seed
            self._rng = random.Random(knobs.seed)
        now = time.time()
        self._guard("world", self._watch_world)
        self._guard("trickle", self._trickle, knobs)
        self._guard("fan-out", self.store.fan_out, lambda events, subs: self._plan(events, subs, knobs))
        self._guard("handshake", self._handshakes, knobs)
        self._guard("heartbeat", self._heartbeats, knobs, now)
        self._guard("dispatch", self._dispatch, knobs)
        if now - self._last_purge >= self.purge_every:
            self._last_purge = now
            self._guard("purge", self.store.purge, now, knobs.dead_letter_retention_seconds,
                        knobs.retry_window_seconds)

    # --- 1. world changes ---------------------------------------------------------------------------
    def _watch_world(self) -> None:
        meta = self.world_dir / "world.json"
        try:
            st = os.stat(meta)
        except FileNotFoundError:
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._world_key:
            return
        world = World.load(self.world_dir)
        clock = world.clock
        saved = self.store.get_state("events_clock")
        if saved is None or dt.datetime.fromisoformat(saved) > clock:
            # first sight of this world (or a regenerated one): start at its generation clock
            saved = dt.datetime.combine(world.options.end, dt.time(23, 59, 59)).isoformat()
            if dt.datetime.fromisoformat(saved) > clock:
                saved = clock.isoformat()
        since = dt.datetime.fromisoformat(saved)
        if clock > since:
            try:
                rows = derive_world_events(self.world_dir, since, clock, world.practice_id)
            except duckdb.IOException as exc:  # an advance holds the facts file: try again next loop
                log.debug("world changes not readable yet: %s", type(exc).__name__)
                return
            added = self.store.record_events(rows, state={"events_clock": clock.isoformat()})
            log.info("world moved %s -> %s: %d change event(s) recorded", since.date(),
                     clock.date(), added)
            self._candidates = None
        elif self.store.get_state("events_clock") is None:
            self.store.record_events([], state={"events_clock": clock.isoformat()})
        self._world_key = key

    # --- 2. trickle -------------------------------------------------------------------------------------
    def appointment_candidates(self) -> list[tuple[str, str | None]]:
        """(athena appointment id, athena patient id) of the world's FHIR appointments."""
        if self._candidates is not None:
            return self._candidates
        out: list[tuple[str, str | None]] = []
        if self.fhir_store is not None:
            try:
                cur = self.fhir_store.snapshot().cursor()
                try:
                    rows = cur.execute(
                        "SELECT regexp_extract(id, '-([^-]+)$', 1), "
                        "regexp_extract(patient_id, '-([^-]+)$', 1) FROM fhir.resources "
                        "WHERE resource_type = 'Appointment' ORDER BY last_updated DESC LIMIT 5000"
                    ).fetchall()
                finally:
                    cur.close()
                out = [(str(a), str(p) if p else None) for a, p in rows if a]
            except Exception:  # noqa: BLE001 - no FHIR rendering: synthetic ids will do
                out = []
        self._candidates = out
        return out

    def _practice_id(self) -> str:
        return str(World.load(self.world_dir).practice_id)

    def inject(self, topic: str, count: int = 1, *, source: str = "inject") -> list[str]:
        """Record ``count`` synthetic ``topic`` events now; returns their ids."""
        candidates = self.appointment_candidates() if family_of(topic) == "Appointment" else []
        rows = synthetic_events(topic, self._practice_id(), count, source=source,
                                candidates=candidates, rng=self._rng)
        self.store.record_events(rows)
        self.wake()
        return [r.event_id for r in rows]

    def _trickle(self, knobs: DeliveryKnobs) -> None:
        tick = time.monotonic()
        elapsed, self._last_tick = tick - self._last_tick, tick
        if knobs.trickle_per_minute <= 0:
            self._trickle_credit = 0.0
            return
        self._trickle_credit += elapsed * knobs.trickle_per_minute / 60.0
        n = int(self._trickle_credit)
        if n >= 1:
            self._trickle_credit -= n
            self.inject("Appointment.update", n, source="trickle")

    # --- 3. fan-out ----------------------------------------------------------------------------------------
    def _plan(self, events: list[EventRow], subs: list[StoredSubscription],
              knobs: DeliveryKnobs) -> list[NewDelivery]:
        now = time.time()
        rng = self._rng
        planned: list[NewDelivery] = []
        for sub in subs:
            mine = [e for e in events if e.topic == sub.topic and e.practice_id == sub.practice_id]
            if knobs.reorder:
                rng.shuffle(mine)
            for start in range(0, len(mine), knobs.batch_size):
                seqs = tuple(int(e.seq) for e in mine[start:start + knobs.batch_size])
                at = now + (rng.uniform(0, knobs.reorder_jitter_seconds) if knobs.reorder else 0.0)
                planned.append(NewDelivery(sub.id, seqs, at))
                if knobs.duplicate_rate and rng.random() < knobs.duplicate_rate:
                    planned.append(NewDelivery(sub.id, seqs, at + rng.uniform(0.05, 0.5), duplicate=True))
        if knobs.reorder:
            rng.shuffle(planned)
        return planned

    # --- 4. handshakes and heartbeats ------------------------------------------------------------------
    def _handshakes(self, knobs: DeliveryKnobs) -> None:
        for sub in self.store.list_subscriptions(status="requested"):
            if not knobs.handshake:
                self.store.set_subscription_status(sub.id, "active")
                continue
            with self._lock:
                if sub.id in self._handshaking:
                    continue
                self._handshaking.add(sub.id)
            assert self._pool is not None
            self._pool.submit(self._handshake, sub, knobs)

    def _handshake(self, sub: StoredSubscription, knobs: DeliveryKnobs) -> None:
        try:
            ok, outcome = self._post(sub, notification_bundle(sub, [], "handshake"), knobs)
            if ok:
                self.store.set_subscription_status(sub.id, "active")
                self._heartbeat_at[sub.id] = time.time()
            else:
                self.store.set_subscription_status(sub.id, "error", f"handshake failed: {outcome}")
            log.info("handshake %s: %s", "succeeded" if ok else "failed", outcome)
        finally:
            with self._lock:
                self._handshaking.discard(sub.id)

    def _heartbeats(self, knobs: DeliveryKnobs, now: float) -> None:
        if knobs.heartbeat_seconds <= 0:
            return
        assert self._pool is not None
        for sub in self.store.list_subscriptions(status="active"):
            last = self._heartbeat_at.setdefault(sub.id, now)
            if now - last >= knobs.heartbeat_seconds:
                self._heartbeat_at[sub.id] = now
                self._pool.submit(self._post, sub, notification_bundle(sub, [], "heartbeat"), knobs)

    # --- 5. dispatch ------------------------------------------------------------------------------------------
    def _dispatch(self, knobs: DeliveryKnobs) -> None:
        with self._lock:
            free = knobs.max_in_flight - len(self._in_flight)
            busy = set(self._in_flight)
        if free <= 0:
            return
        due = self.store.due_deliveries(time.time(), busy, free)
        assert self._pool is not None
        for delivery in due:
            with self._lock:
                self._in_flight.add(delivery.id)
            self._pool.submit(self._deliver, delivery, knobs)

    def _post(self, sub: StoredSubscription, body: bytes, knobs: DeliveryKnobs) -> tuple[bool, str]:
        """POST one notification; (acknowledged in time, outcome text without ids)."""
        headers = {"Content-Type": FHIR_JSON, "Accept": "application/json"}
        if sub.secret:
            headers[HEADER] = sign(sub.secret, body)
        limit = knobs.ack_timeout_seconds
        started = time.monotonic()
        assert self._http is not None
        try:
            response = self._http.post(sub.endpoint, content=body, headers=headers,
                                       timeout=httpx.Timeout(limit))
        except httpx.TimeoutException:
            return False, f"no answer within {limit:g}s"
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        elapsed = time.monotonic() - started
        if elapsed > limit:
            return False, f"HTTP {response.status_code} after {elapsed:.2f}s (over {limit:g}s)"
        return response.is_success, f"HTTP {response.status_code}"

    def _deliver(self, delivery: Delivery, knobs: DeliveryKnobs) -> None:
        try:
            sub = self.store.get_subscription(delivery.subscription_id)
            if sub is None or sub.status == "off":
                self.store.cancel_delivery(delivery.id)
                return
            events = self.store.events_by_seq(delivery.event_seqs)
            ok, outcome = self._post(sub, notification_bundle(sub, events, "event-notification"), knobs)
            now = time.time()
            next_at: float | None = None
            if not ok:
                first = delivery.first_attempt_at or now
                ceiling = min(knobs.backoff_max_seconds,
                              knobs.backoff_initial_seconds * 2 ** min(delivery.attempts, 30))
                wait = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
                if now + wait <= first + knobs.retry_window_seconds:
                    next_at = now + wait
                else:
                    log.warning("delivery dead-lettered after %d attempt(s): %s",
                                delivery.attempts + 1, outcome)
            self.store.record_attempt(delivery.id, ok=ok, outcome=outcome, now=now,
                                      next_attempt_at=next_at)
        except Exception:
            log.exception("delivery attempt failed unexpectedly")
        finally:
            with self._lock:
                self._in_flight.discard(delivery.id)
            self._wake.set()
