"""Caspio's outgoing webhooks: ``/outgoingWebhooks`` and their events, and delivery on REST writes.

What the spec says (``caspio-api.md`` §11) and how the emulator does it:

- A webhook is ``{Name (unique), Description, OutgoingUrls, CallThrottling}``; creating one
  returns its ``Id`` and ``Secret`` at the top level (as Caspio's own n8n node reads them);
  an ``OutgoingUrl`` already used by another webhook, or a duplicate name, is 400. Whether the
  list repeats ``Secret`` is disputed: ``webhook_secret_in_list`` (default on, as n8n reads it).
- An event is ``{EventType, ObjectName, ObjectFields (update only), EventSources,
  CustomPayloadTemplate, Enabled}``. Per table and webhook: one insert event, one delete event,
  and either one all-fields update event or per-column ones (disjoint columns).
- REST inserts, updates and deletes (single, set-based and v4 bulk) fire events whose
  ``EventSources`` include ``RESTAPIs`` (all sources when omitted). An update fires only for
  rows that really changed, and with ``ObjectFields`` only when one of those changed.
- One message per write call and event, ``data[]`` holding the affected rows (PK_ID included,
  passwords never); with a ``CustomPayloadTemplate`` one message per row, the template's
  ``[@out-hook:…]`` and ``[@field:…]`` tokens filled in. Single-quoted templates (as n8n writes
  them) are accepted, as a lenient JSON parser would. Messages over 10 MB are dropped.
- Delivery is asynchronous and unordered, at most ``CallThrottling`` requests a second per
  webhook; a non-2xx answer or a transport error is retried ``webhook_max_attempts`` times in
  all, with doubling delays (Caspio's real policy is unpublished). Every attempt is logged
  (``/_emulator/webhooks``), and every message delivered counts once on the monthly meter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from athena_pipeline.sandbox.caspio.config import CaspioConfig
from athena_pipeline.sandbox.caspio.errors import CaspioApiError, bad_body
from athena_pipeline.sandbox.caspio.meter import CallMeter
from athena_pipeline.sandbox.caspio.store import CaspioStore

log = logging.getLogger("athena_pipeline.sandbox.caspio")

EVENT_TYPES = ("table.recordInsert", "table.recordUpdate", "table.recordDelete")
EVENT_SOURCES = ("Datasheet", "DataPages", "DataParts", "Extensions", "RESTAPIs",
                 "TriggeredActions", "Tasks")
OUT_HOOK_TOKENS = ("secret", "webhookId", "messageId", "eventId", "callId", "accountId",
                   "eventDate", "eventType", "objectName")
MAX_MESSAGE_BYTES = 10 * 1024 * 1024

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS caspio_webhooks (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, description TEXT NOT NULL,
        urls TEXT NOT NULL, throttling INTEGER NOT NULL, secret TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS caspio_webhook_events (
        id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL, event_type TEXT NOT NULL,
        object_name TEXT NOT NULL COLLATE NOCASE, object_fields TEXT, sources TEXT,
        template TEXT, enabled INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS caspio_webhook_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, webhook_id TEXT NOT NULL,
        event_id TEXT NOT NULL, message_id TEXT NOT NULL, url TEXT NOT NULL,
        attempt INTEGER NOT NULL, status INTEGER, error TEXT, delivered INTEGER NOT NULL)""",
)
_TOKEN_RE = re.compile(r"\[@(out-hook|field):([A-Za-z0-9_]+)(/?)\]")


def _new_id(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def _single_to_double_quotes(text: str) -> str:
    """Turn a JSON text with single-quoted strings (a lenient parser's input) into strict JSON."""
    out, i, quote = [], 0, None
    while i < len(text):
        c = text[i]
        if quote is None:
            if c in "'\"":
                quote = c
                out.append('"')
            else:
                out.append(c)
        elif c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append("'" if nxt == "'" else c + nxt)
            i += 1
        elif c == quote:
            quote = None
            out.append('"')
        elif c == '"':
            out.append('\\"')
        else:
            out.append(c)
        i += 1
    return "".join(out)


def render_template(template: str, hook: dict[str, str], row: dict[str, Any]) -> tuple[bytes, str]:
    """A custom payload for one row: (body, content type).

    Tokens become placeholders first, the template is parsed (single quotes allowed), then each
    string holding placeholders gets the real values, so a value can never break the JSON.
    """
    found: dict[str, str] = {}

    def mark(m: re.Match[str]) -> str:
        key = f"@@caspio-token-{len(found)}@@"
        kind, name, slash = m.groups()
        if kind == "out-hook":
            found[key] = str(hook.get(name, ""))
        elif slash:
            found[key] = ""  # attachment URLs: no files in the emulator
        else:
            value = row.get(name)
            found[key] = "" if value is None else (
                json.dumps(value) if isinstance(value, bool) else str(value))
        return key

    marked = _TOKEN_RE.sub(mark, template)

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            for key, value in found.items():
                node = node.replace(key, value)
            return node
        if isinstance(node, list):
            return [fill(n) for n in node]
        if isinstance(node, dict):
            return {fill(k): fill(v) for k, v in node.items()}
        return node

    for candidate in (marked, _single_to_double_quotes(marked)):
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        return json.dumps(fill(parsed)).encode(), "application/json"
    return fill(marked).encode(), "text/plain"


class _Pacer:
    """At most ``rate`` starts per second for one webhook (the excess waits its turn)."""

    def __init__(self) -> None:
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self, rate: int) -> None:
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + 1.0 / max(1, rate)
        if start > now:
            await asyncio.sleep(start - now)


class WebhookService:
    """Webhook and event design (persisted in the store) plus asynchronous delivery."""

    def __init__(self, store: CaspioStore, config: Callable[[], CaspioConfig],
                 meter: CallMeter) -> None:
        self.store = store
        self._config = config
        self.meter = meter
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._pacers: dict[str, _Pacer] = {}
        #: (table lower, event type) -> subscriber rows; every design change clears it, so
        #: a write to a table nobody watches costs no query
        self._subscriptions: dict[tuple[str, str], list[tuple]] = {}
        for statement in _SCHEMA:
            store.execute(statement)

    @property
    def config(self) -> CaspioConfig:
        return self._config()

    # --- webhooks -------------------------------------------------------------------------------
    def _hook_row(self, webhook_id: str) -> tuple:
        rows = self.store.execute("SELECT id, name, description, urls, throttling, secret "
                                  "FROM caspio_webhooks WHERE id = ?", (webhook_id,))
        if not rows:
            raise CaspioApiError(404, "ObjectNotFound", f"Outgoing webhook '{webhook_id}' does not exist.")
        return rows[0]

    @staticmethod
    def _hook_json(row: tuple, secret: bool) -> dict[str, Any]:
        wid, name, description, urls, throttling, key = row
        out = {"Id": wid, "Name": name, "Description": description,
               "OutgoingUrls": json.loads(urls), "CallThrottling": throttling}
        if secret:
            out["Secret"] = key
        return out

    def list_webhooks(self) -> list[dict[str, Any]]:
        rows = self.store.execute("SELECT id, name, description, urls, throttling, secret "
                                  "FROM caspio_webhooks ORDER BY name")
        return [self._hook_json(r, self.config.webhook_secret_in_list) for r in rows]

    def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        return self._hook_json(self._hook_row(webhook_id), self.config.webhook_secret_in_list)

    def _check_hook(self, body: dict[str, Any], current: tuple | None) -> tuple[str, str, list[str], int]:
        name = body.get("Name", current[1] if current else None)
        if not isinstance(name, str) or not name.strip():
            raise bad_body("'Name' is required.")
        if len(name) > 255:
            raise bad_body("'Name' is longer than 255 characters.")
        description = body.get("Description", current[2] if current else "") or ""
        if not isinstance(description, str):
            raise bad_body("'Description' must be a string.")
        urls = body.get("OutgoingUrls", json.loads(current[3]) if current else None)
        schemes = ("https://", "http://") if self.config.webhook_allow_http else ("https://",)
        if (not isinstance(urls, list) or not urls
                or not all(isinstance(u, str) and u.lower().startswith(schemes) for u in urls)):
            raise bad_body("'OutgoingUrls' must be a non-empty array of "
                           + (" or ".join(s.rstrip("/:") for s in schemes)) + " URLs.")
        if len(set(urls)) != len(urls):
            raise bad_body("'OutgoingUrls' lists a URL twice.")
        throttling = body.get("CallThrottling",
                              current[4] if current else self.config.webhook_max_throttling)
        if isinstance(throttling, bool) or not isinstance(throttling, int) \
                or not 1 <= throttling <= self.config.webhook_max_throttling:
            raise bad_body(f"'CallThrottling' must be between 1 and {self.config.webhook_max_throttling}.")
        me = current[0] if current else None
        for wid, other, other_urls in self.store.execute(
                "SELECT id, name, urls FROM caspio_webhooks"):
            if wid == me:
                continue
            if other.lower() == name.lower():
                raise bad_body(f"An outgoing webhook named '{name}' already exists.")
            if set(json.loads(other_urls)) & set(urls):
                raise bad_body("An outgoing webhook with this URL already exists.")
        return name, description, urls, throttling

    def create_webhook(self, body: dict[str, Any]) -> dict[str, Any]:
        name, description, urls, throttling = self._check_hook(body, None)
        with self._lock:
            taken = {r[0] for r in self.store.execute("SELECT id FROM caspio_webhooks")}
            wid = _new_id(self._rng)
            while wid in taken:
                wid = _new_id(self._rng)
            secret = secrets.token_urlsafe(24)
            self.store.execute("INSERT INTO caspio_webhooks VALUES (?, ?, ?, ?, ?, ?)",
                               (wid, name, description, json.dumps(urls), throttling, secret))
        self._changed()
        return self._hook_json(self._hook_row(wid), True)

    def update_webhook(self, webhook_id: str, body: dict[str, Any]) -> None:
        current = self._hook_row(webhook_id)
        name, description, urls, throttling = self._check_hook(body, current)
        self.store.execute("UPDATE caspio_webhooks SET name = ?, description = ?, urls = ?, "
                           "throttling = ? WHERE id = ?",
                           (name, description, json.dumps(urls), throttling, webhook_id))
        self._changed()

    def delete_webhook(self, webhook_id: str) -> None:
        self._hook_row(webhook_id)
        self.store.execute("DELETE FROM caspio_webhook_events WHERE webhook_id = ?", (webhook_id,))
        self.store.execute("DELETE FROM caspio_webhooks WHERE id = ?", (webhook_id,))
        self._changed()

    # --- events ---------------------------------------------------------------------------------
    _EVENT_COLUMNS = "id, webhook_id, event_type, object_name, object_fields, sources, template, enabled"

    def _event_row(self, webhook_id: str, event_id: str) -> tuple:
        self._hook_row(webhook_id)
        rows = self.store.execute(f"SELECT {self._EVENT_COLUMNS} FROM caspio_webhook_events "
                                  "WHERE webhook_id = ? AND id = ?", (webhook_id, event_id))
        if not rows:
            raise CaspioApiError(404, "ObjectNotFound", f"Event '{event_id}' does not exist.")
        return rows[0]

    @staticmethod
    def _event_json(row: tuple) -> dict[str, Any]:
        eid, _, etype, obj, fields, sources, template, enabled = row
        return {"Id": eid, "EventType": etype, "ObjectName": obj,
                "ObjectFields": json.loads(fields) if fields else None,
                "EventSources": json.loads(sources) if sources else list(EVENT_SOURCES),
                "CustomPayloadTemplate": template, "Enabled": bool(enabled)}

    def list_events(self, webhook_id: str) -> list[dict[str, Any]]:
        self._hook_row(webhook_id)
        return [self._event_json(r) for r in self.store.execute(
            f"SELECT {self._EVENT_COLUMNS} FROM caspio_webhook_events WHERE webhook_id = ? "
            "ORDER BY rowid", (webhook_id,))]

    def get_event(self, webhook_id: str, event_id: str) -> dict[str, Any]:
        """The event, with its delivery counters over the last 30 days."""
        out = self._event_json(self._event_row(webhook_id, event_id))
        since = time.time() - 30 * 86400
        (delivered, failed), = self.store.execute(
            "SELECT coalesce(sum(delivered), 0), coalesce(sum(1 - delivered), 0) "
            "FROM caspio_webhook_log WHERE event_id = ? AND at >= ?", (event_id, since))
        out["Statistics"] = {"Days": 30, "Delivered": int(delivered), "FailedAttempts": int(failed)}
        return out

    def _check_event(self, webhook_id: str, body: dict[str, Any], current: tuple | None) -> tuple:
        cur = self._event_json(current) if current else {}
        etype = body.get("EventType", cur.get("EventType"))
        if etype not in EVENT_TYPES:
            raise bad_body(f"'EventType' must be one of {', '.join(EVENT_TYPES)}.")
        obj = body.get("ObjectName", cur.get("ObjectName"))
        if not isinstance(obj, str):
            raise bad_body("'ObjectName' is required.")
        info = self.store.table(obj)
        fields = body.get("ObjectFields", cur.get("ObjectFields"))
        if fields is not None:
            if etype != "table.recordUpdate":
                raise bad_body("'ObjectFields' applies to table.recordUpdate events only.")
            if not isinstance(fields, list) or not fields:
                raise bad_body("'ObjectFields' must be a non-empty array of field names.")
            resolved = []
            for name in fields:
                f = info.field(str(name))
                if f is None:
                    raise CaspioApiError(404, "FieldNotFound",
                                         f"Field '{name}' does not exist in table '{info.name}'.")
                resolved.append(f.name)
            fields = resolved
        sources = body.get("EventSources", cur.get("EventSources"))
        if sources is not None and (not isinstance(sources, list)
                                    or not all(s in EVENT_SOURCES for s in sources)):
            raise bad_body(f"'EventSources' must be an array of: {', '.join(EVENT_SOURCES)}.")
        template = body.get("CustomPayloadTemplate", cur.get("CustomPayloadTemplate"))
        if template is not None and not isinstance(template, str):
            raise bad_body("'CustomPayloadTemplate' must be a string.")
        enabled = body.get("Enabled", cur.get("Enabled", True))
        if not isinstance(enabled, bool):
            raise bad_body("'Enabled' must be true or false.")
        me = current[0] if current else None
        for other in self.list_events(webhook_id):
            if other["Id"] == me or other["ObjectName"].lower() != info.name.lower() \
                    or other["EventType"] != etype:
                continue
            theirs = other["ObjectFields"]
            if etype != "table.recordUpdate" or theirs is None or fields is None \
                    or {f.lower() for f in theirs} & {f.lower() for f in fields}:
                raise bad_body(f"This webhook already has a {etype} event for table "
                               f"'{info.name}' that overlaps this one.")
        return (etype, info.name, json.dumps(fields) if fields else None,
                json.dumps(sources) if sources is not None else None, template, int(enabled))

    def create_event(self, webhook_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self._hook_row(webhook_id)
        values = self._check_event(webhook_id, body, None)
        with self._lock:
            taken = {r[0] for r in self.store.execute("SELECT id FROM caspio_webhook_events")}
            eid = _new_id(self._rng)
            while eid in taken:
                eid = _new_id(self._rng)
            self.store.execute("INSERT INTO caspio_webhook_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (eid, webhook_id, *values))
        self._changed()
        return self._event_json(self._event_row(webhook_id, eid))

    def update_event(self, webhook_id: str, event_id: str, body: dict[str, Any]) -> None:
        current = self._event_row(webhook_id, event_id)
        values = self._check_event(webhook_id, body, current)
        self.store.execute("UPDATE caspio_webhook_events SET event_type = ?, object_name = ?, "
                           "object_fields = ?, sources = ?, template = ?, enabled = ? WHERE id = ?",
                           (*values, event_id))
        self._changed()

    def delete_event(self, webhook_id: str, event_id: str) -> None:
        self._event_row(webhook_id, event_id)
        self.store.execute("DELETE FROM caspio_webhook_events WHERE id = ?", (event_id,))
        self._changed()

    # --- firing ---------------------------------------------------------------------------------
    def _subscribers(self, table: str, event_type: str, source: str) -> list[tuple]:
        key = (table.lower(), event_type)
        rows = self._subscriptions.get(key)
        if rows is None:
            rows = self.store.execute(
                "SELECT e.id, e.object_fields, e.sources, e.template, w.id, w.urls, w.throttling, "
                "w.secret FROM caspio_webhook_events e JOIN caspio_webhooks w ON w.id = e.webhook_id "
                "WHERE e.object_name = ? AND e.event_type = ? AND e.enabled = 1", (table, event_type))
            self._subscriptions[key] = rows
        return [r for r in rows if r[2] is None or source in json.loads(r[2])]

    def _changed(self) -> None:
        self._subscriptions.clear()

    def wants(self, table: str, event_type: str, source: str = "RESTAPIs") -> bool:
        """Whether any enabled event would fire (so callers capture rows only when needed)."""
        return bool(self._subscribers(table, event_type, source))

    def fire(self, table: str, event_type: str, rows: list[dict[str, Any]],
             changed: list[set[str]] | None = None, source: str = "RESTAPIs") -> int:
        """Queue the messages for a committed write; returns how many were queued.

        ``changed[i]`` holds the lower-cased names of the fields that really changed in
        ``rows[i]`` (updates only); rows without a change never fire.
        """
        queued = 0
        for eid, fields, _, template, wid, urls, throttling, secret in self._subscribers(
                table, event_type, source):
            selected = rows
            if changed is not None:
                watch = {f.lower() for f in json.loads(fields)} if fields else None
                selected = [r for r, c in zip(rows, changed) if c and (watch is None or c & watch)]
            if not selected:
                continue
            hook = {"secret": secret, "webhookId": wid, "eventId": eid,
                    "accountId": self.config.webhook_account_id, "eventType": event_type,
                    "objectName": table,
                    "eventDate": dt.datetime.fromtimestamp(self.config.wall_clock(), dt.UTC)
                    .strftime("%Y-%m-%dT%H:%M:%S")}
            batches = [[r] for r in selected] if template else [selected]
            for batch in batches:
                hook = {**hook, "messageId": str(uuid.uuid4()), "callId": str(uuid.uuid4())}
                if template:
                    body, ctype = render_template(template, hook, batch[0])
                else:
                    body = json.dumps({k: hook[k] for k in (
                        "eventId", "messageId", "webhookId", "accountId", "secret", "eventDate",
                        "eventType", "objectName")} | {"data": batch}).encode()
                    ctype = "application/json"
                if len(body) > MAX_MESSAGE_BYTES:
                    log.warning("Caspio webhook %s: message over 10 MB dropped", wid)
                    continue
                for url in json.loads(urls):
                    self._spawn(self._deliver(wid, eid, hook["messageId"], url, body, ctype,
                                              throttling, secret))
                    queued += 1
        return queued

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, wid: str, eid: str, message_id: str, url: str, body: bytes,
                       ctype: str, throttling: int, secret: str) -> None:
        cfg = self.config
        headers = {"Content-Type": ctype}
        if cfg.webhook_signature_header:
            headers[cfg.webhook_signature_header] = hmac.new(
                secret.encode(), body, hashlib.sha256).hexdigest()
        pacer = self._pacers.setdefault(wid, _Pacer())
        delay = cfg.webhook_retry_delay_seconds
        self.meter.count(1)
        async with httpx.AsyncClient(timeout=cfg.webhook_timeout_seconds) as client:
            for attempt in range(1, cfg.webhook_max_attempts + 1):
                await pacer.wait(throttling)
                status, error = None, None
                try:
                    response = await client.post(url, content=body, headers=headers)
                    status = response.status_code
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                ok = status is not None and 200 <= status < 300
                self.store.execute(
                    "INSERT INTO caspio_webhook_log (at, webhook_id, event_id, message_id, url, "
                    "attempt, status, error, delivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (time.time(), wid, eid, message_id, url, attempt, status, error, int(ok)))
                if ok:
                    return
                if attempt < cfg.webhook_max_attempts:
                    await asyncio.sleep(delay)
                    delay *= 2

    def delivery_log(self) -> list[dict[str, Any]]:
        rows = self.store.execute("SELECT seq, at, webhook_id, event_id, message_id, url, attempt, "
                                  "status, error, delivered FROM caspio_webhook_log ORDER BY seq")
        keys = ("seq", "at", "webhookId", "eventId", "messageId", "url", "attempt", "status",
                "error", "delivered")
        return [dict(zip(keys, r)) | {"delivered": bool(r[-1])} for r in rows]

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def reset_log(self) -> None:
        self.store.execute("DELETE FROM caspio_webhook_log")

    def reset_all(self) -> None:
        """Forget every webhook, event and logged attempt (an emulator data reset)."""
        for table in ("caspio_webhook_events", "caspio_webhooks", "caspio_webhook_log"):
            self.store.execute(f"DELETE FROM {table}")
        self._changed()
