"""Helpers for the Event Subscription tests: real servers on loopback, signed bundles, tiny worlds.

Importable from other test packages (``from tests.events.support import ...``), unlike a conftest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from athena_pipeline.events.receiver import bind
from athena_pipeline.events.signature import sign
from athena_pipeline.sandbox.world import World, WorldOptions

PRACTICE = "195900"
SECRET = "test-webhook-secret"


@dataclass
class ServedApp:
    """An ASGI app served by uvicorn in a daemon thread on an ephemeral loopback port."""

    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve_in_thread(app, *, lifespan: str = "on", port: int = 0) -> ServedApp:
    sock = bind("127.0.0.1", port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan,
                                           access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    return ServedApp(f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread)


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def doc(self) -> dict:
        return json.loads(self.body)

    @property
    def kind(self) -> str:
        return self.doc["entry"][0]["resource"]["type"]

    @property
    def event_ids(self) -> list[str]:
        status = self.doc["entry"][0]["resource"]
        return [e["id"] for e in status.get("notificationEvent", [])]


@dataclass
class Recorder:
    """A webhook endpoint under test control: records every POST, answers ``status`` after ``delay``."""

    status: int = 200
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                self.hits.append(Hit(dict(request.headers), body, time.time()))
            if self.delay:
                await asyncio.sleep(self.delay)
            return JSONResponse({"ok": self.status < 300}, status_code=self.status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def of_kind(self, kind: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.kind == kind]


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def tiny_world(root: Path, practice_id: int = int(PRACTICE)) -> Path:
    """A world directory with only world.json: enough for subscriptions and injected events."""
    World(root=root, options=WorldOptions(providers=1, patients=10, practice_id=practice_id),
          current_date=dt.date(2026, 11, 23)).save()
    return root


def notification(events: list[tuple[str, str, str]] | None = None, *, kind: str = "event-notification",
                 practice: str = PRACTICE, sub: str = "sub-1") -> dict:
    """An athena STU1 id-only bundle; ``events`` = [(event id, topic, athena id), ...]."""
    events = events or []
    status = {"resourceType": "SubscriptionStatus", "status": "active", "type": kind,
              "eventsSinceSubscriptionStart": str(len(events)), "eventsInNotification": len(events),
              "subscription": {"reference": f"Subscription/{sub}"},
              "topic": f"https://api.platform.athenahealth.com/fhir/r4/SubscriptionTopic/"
                       f"{events[0][1] if events else 'Appointment.update'}"}
    if events:
        status["notificationEvent"] = [
            {"eventNumber": str(i), "id": eid, "timestamp": "2026-11-24T10:00:00Z",
             "focus": {"reference": f"{topic.split('.')[0]}/a-{practice}.{topic.split('.')[0]}-{rid}",
                       "identifier": {"system": f"urn:athenahealth:athenanet:"
                                                f"{topic.split('.')[0].lower()}:{practice}",
                                      "value": rid}}}
            for i, (eid, topic, rid) in enumerate(events, start=1)]
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status}]
    for eid, topic, rid in events:
        entries.append({"fullUrl": f"urn:uuid:{eid}", "resource": {
            "resourceType": "AuditEvent", "id": eid,
            "type": {"system": "https://fhir.athena.io/CodeSystem/SubscriptionTopic", "code": topic},
            "agent": [{"who": {"identifier": {"value": "jdoe"}}, "requestor": True}],
            "extension": [{"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-AuditEvent.patient",
                           "valueReference": {"reference": f"Patient/a-{practice}.E-77"}}],
            "source": {"observer": {"reference": f"Organization/a-1.Practice-{practice}"}}}})
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "history",
            "timestamp": "2026-11-24T10:00:01Z", "entry": entries}


def signed(doc: dict | bytes, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """(raw body, headers) with a valid X-Hub-Signature."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return body, {"Content-Type": "application/fhir+json", "X-Hub-Signature": sign(secret, body)}
