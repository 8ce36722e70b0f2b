"""Parse a Subscriptions notification bundle (id-only) into the events the inbox keeps.

Two shapes are accepted (spec ``fhir-notes.md`` §2):

- **STU 1.0.0**, what athenahealth sends: a ``history`` Bundle whose entry 0 is an R4B-style
  ``SubscriptionStatus`` with ``notificationEvent[]`` (each with athena's ``id`` = the AuditEvent
  id, a UUID, and a ``focus``), followed by one ``AuditEvent`` per event;
- **IG 1.1.0 R4**: entry 0 is a ``Parameters`` resource with ``notification-event`` parts. That
  form has no event id, so one is derived from the subscription, event number, timestamp and
  focus (a UUIDv5): a redelivery of the same notification gets the same id and is deduplicated.

What an event becomes (:class:`ParsedEvent`): the topic id (``Appointment.update``), its family
as ``resource_type`` (``Appointment``, ``LabResult``, ``Claim``: the unit work is partitioned
by, and what §3.4 says to fetch), the **athenaOne id** of the focus as ``resource_id`` (from the
focus identifier, or from a FHIR id shaped ``a-{practice}.{Kind}-{id}``), the FHIR focus
reference when there is one, the practice, and a small metadata dict (ids and timestamps only:
no names, no usernames, nothing clinical).

:class:`MalformedNotification` means "answer 400": not JSON, not a Bundle, no status entry, an
event without an id or a focus, an event notification without events.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from athena_pipeline.events.topics import FAMILIES, family_of, topic_from_url

#: Notification types that carry events; the others (handshake, heartbeat, query-status) do not.
EVENT_TYPES = frozenset({"event-notification", "query-event"})
KNOWN_TYPES = frozenset({"handshake", "heartbeat", "event-notification", "query-status",
                         "query-event"})

_NAMESPACE = uuid.UUID("6f1c3f0e-5a7e-4f54-9a53-3d1b7c1f0b6e")
_ATHENA_FHIR_ID = re.compile(r"^a-(\d+)\.([A-Za-z]+)-(.+)$")
_PRACTICE_ORG = re.compile(r"Practice-(\d+)$")
_IDENTIFIER_SYSTEM = re.compile(r"^urn:athenahealth:athenanet:([a-z]+):(\d+)$")
_MAX_ID = 200
_FAMILY_BY_FHIR_TYPE = {f.fhir_type: f.name for f in FAMILIES.values() if f.fhir_type}


class MalformedNotification(ValueError):
    """The body is not a notification bundle we can store; the message is safe to return."""


@dataclass(frozen=True)
class ParsedEvent:
    event_id: str
    topic: str
    resource_type: str
    resource_id: str
    focus_reference: str | None
    practice_id: str | None
    event_timestamp: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    """A parsed bundle: its type, subscription reference and events (empty for heartbeats)."""

    type: str
    subscription: str | None
    bundle_id: str | None
    events: tuple[ParsedEvent, ...]


def _str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _ref_parts(reference: str) -> tuple[str | None, str]:
    """(resource type, logical id) of a relative or absolute FHIR reference."""
    parts = [p for p in reference.split("/") if p]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        # an absolute URL may carry _history: Type/id/_history/n
        return parts[-2], parts[-1]
    if len(parts) >= 4 and parts[-2] == "_history":
        return parts[-4], parts[-3]
    return None, parts[-1] if parts else reference


def _focus(focus: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """(reference, fhir type, athena id, practice id) of a notification event's focus."""
    if not isinstance(focus, dict):
        return None, None, None, None
    reference = _str(focus.get("reference"))
    identifier = focus.get("identifier") if isinstance(focus.get("identifier"), dict) else {}
    ident_value = _str(identifier.get("value"))
    practice = None
    system = _str(identifier.get("system"))
    if system and (m := _IDENTIFIER_SYSTEM.match(system)):
        practice = m.group(2)
    rtype, athena_id = None, ident_value
    if reference:
        rtype, logical = _ref_parts(reference)
        m = _ATHENA_FHIR_ID.match(logical)
        if m:
            practice = practice or m.group(1)
            athena_id = athena_id or m.group(3)
        else:
            athena_id = athena_id or logical
    return reference, rtype, athena_id, practice


def _check_id(value: Any, what: str) -> str:
    text = _str(value)
    if text is None:
        raise MalformedNotification(f"a notification event has no {what}")
    if len(text) > _MAX_ID:
        raise MalformedNotification(f"a notification event {what} is too long")
    return text


def _audit_events(entries: list) -> dict[str, dict]:
    """AuditEvent entries by id (athena's per-event detail: topic code, practice, patient)."""
    out: dict[str, dict] = {}
    for entry in entries[1:]:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "AuditEvent":
            rid = _str(resource.get("id"))
            if rid:
                out[rid] = resource
    return out


def _audit_detail(audit: dict | None) -> dict[str, str]:
    """Topic code, practice, patient and department references of an AuditEvent (ids only)."""
    if not audit:
        return {}
    out: dict[str, str] = {}
    code = _str((audit.get("type") or {}).get("code")) if isinstance(audit.get("type"), dict) else None
    if code:
        out["topic"] = code
    observer = ((audit.get("source") or {}).get("observer") or {}) if isinstance(audit.get("source"), dict) else {}
    ref = _str(observer.get("reference")) if isinstance(observer, dict) else None
    if ref and (m := _PRACTICE_ORG.search(ref)):
        out["practice_id"] = m.group(1)
    for ext in audit.get("extension") or []:
        if not isinstance(ext, dict):
            continue
        url = str(ext.get("url") or "")
        value = ext.get("valueReference") if isinstance(ext.get("valueReference"), dict) else {}
        vref = _str(value.get("reference"))
        if vref and url.endswith("extension-AuditEvent.patient"):
            out["patient"] = vref
        elif vref and url.endswith("ah-department"):
            out["department"] = vref
    return out


def _event(event_id: str, topic: str | None, focus: Any, timestamp: Any, *,
           audit: dict[str, str], base_meta: dict[str, Any], number: Any) -> ParsedEvent:
    reference, rtype, athena_id, practice = _focus(focus)
    if reference is None and athena_id is None:
        raise MalformedNotification("a notification event has no focus")
    topic = topic or audit.get("topic")
    if topic is None:
        family = _FAMILY_BY_FHIR_TYPE.get(rtype or "", rtype or "unknown")
        topic = family
    family = family_of(topic)
    meta = {**base_meta, "event_number": _str(number) if not isinstance(number, int) else str(number)}
    if reference:
        meta["focus"] = reference
    for key in ("patient", "department"):
        if key in audit:
            meta[key] = audit[key]
    return ParsedEvent(
        event_id=event_id, topic=topic, resource_type=family, resource_id=str(athena_id or ""),
        focus_reference=reference, practice_id=practice or audit.get("practice_id"),
        event_timestamp=_str(timestamp), metadata={k: v for k, v in meta.items() if v is not None})


def _parse_status(status: dict, entries: list, bundle_id: str | None) -> Notification:
    ntype = _str(status.get("type")) or "event-notification"
    subscription = status.get("subscription")
    sub_ref = _str(subscription.get("reference")) if isinstance(subscription, dict) else None
    topic = topic_from_url(_str(status.get("topic")) or "")
    if ntype not in EVENT_TYPES:
        return Notification(ntype, sub_ref, bundle_id, ())
    raw_events = status.get("notificationEvent")
    if not isinstance(raw_events, list) or not raw_events:
        raise MalformedNotification("an event notification without notificationEvent[]")
    audits = _audit_events(entries)
    base = {"subscription": sub_ref, "bundle_id": bundle_id, "notification_type": ntype}
    events = []
    for raw in raw_events:
        if not isinstance(raw, dict):
            raise MalformedNotification("a notificationEvent is not an object")
        event_id = _check_id(raw.get("id"), "id")
        detail = _audit_detail(audits.get(event_id))
        events.append(_event(event_id, topic, raw.get("focus"), raw.get("timestamp"),
                             audit=detail, base_meta=base, number=raw.get("eventNumber")))
    return Notification(ntype, sub_ref, bundle_id, tuple(events))


def _params(parts: Any) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in parts or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str):
            out.setdefault(p["name"], []).append(p)
    return out


def _value(param: dict) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            return value
    return None


def _parse_parameters(resource: dict, bundle_id: str | None) -> Notification:
    params = _params(resource.get("parameter"))
    ntype = _str(_value(params["type"][0])) if "type" in params else None
    ntype = ntype or "event-notification"
    sub = _value(params["subscription"][0]) if "subscription" in params else None
    sub_ref = _str(sub.get("reference")) if isinstance(sub, dict) else _str(sub)
    topic = topic_from_url(_str(_value(params["topic"][0])) or "") if "topic" in params else None
    if ntype not in EVENT_TYPES:
        return Notification(ntype, sub_ref, bundle_id, ())
    raw_events = params.get("notification-event") or []
    if not raw_events:
        raise MalformedNotification("an event notification without notification-event parts")
    base = {"subscription": sub_ref, "bundle_id": bundle_id, "notification_type": ntype}
    events = []
    for raw in raw_events:
        parts = _params(raw.get("part"))
        number = _value(parts["event-number"][0]) if "event-number" in parts else None
        timestamp = _value(parts["timestamp"][0]) if "timestamp" in parts else None
        focus = _value(parts["focus"][0]) if "focus" in parts else None
        given = _value(parts["id"][0]) if "id" in parts else None
        if given is not None:
            event_id = _check_id(given, "id")
        else:
            seed = json.dumps([sub_ref, number, timestamp, focus], sort_keys=True, default=str)
            event_id = str(uuid.uuid5(_NAMESPACE, seed))
        events.append(_event(event_id, topic, focus, timestamp, audit={}, base_meta=base,
                             number=number))
    return Notification(ntype, sub_ref, bundle_id, tuple(events))


def parse_notification(body: bytes) -> Notification:
    """Parse a raw notification body; raises :class:`MalformedNotification` (-> HTTP 400)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedNotification("the body is not JSON") from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise MalformedNotification("the body is not a FHIR Bundle")
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise MalformedNotification("the Bundle has no entries")
    status = entries[0].get("resource")
    bundle_id = _str(doc.get("id"))
    if isinstance(status, dict) and status.get("resourceType") == "SubscriptionStatus":
        return _parse_status(status, entries, bundle_id)
    if isinstance(status, dict) and status.get("resourceType") == "Parameters":
        return _parse_parameters(status, bundle_id)
    raise MalformedNotification("entry 0 is neither a SubscriptionStatus nor a Parameters resource")
