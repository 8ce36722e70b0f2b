"""Event Subscriptions in the athenahealth emulator: the FHIR API and the world's event store.

FHIR endpoints (spec ``athenahealth-api.md`` §3.1; bearer token + scope unless in open mode):

- ``GET /fhir/r4/SubscriptionTopic[/{id}]``     the §3.4 catalogue (``SubscriptionTopic.read``)
- ``POST /fhir/r4/Subscription``                 201 + UUID; ``X-Hub-Secret`` request header (or a
  ``channel.header`` entry ``X-Hub-Secret: ...``) enables signing (``Subscription.write``)
- ``GET /fhir/r4/Subscription[/{id}]``           searchset with ``total`` / one (``Subscription.read``)
- ``DELETE /fhir/r4/Subscription/{id}``          204 (pending deliveries are dropped)
- ``GET /fhir/r4/Subscription/{id}/$status``     a ``query-status`` SubscriptionStatus

Rules copied from athena: only ``rest-hook`` and ``id-only``; one topic per Subscription (the
criteria is a topic canonical, ``.../SubscriptionTopic/Appointment.update``); the practice comes
from the backport filter-criteria ``ah-practice=Organization/a-1.Practice-{id}``. Secrets are
never returned. Subscriptions are visible only to the OAuth client that created them (every
caller sees all in open mode). The endpoint may be plain http on loopback (athena demands
public HTTPS on 443).

Control endpoints (sandbox only, with the other ``/_emulator`` routes):

- ``GET|POST /_emulator/events``              delivery knobs and counters / change knobs
- ``POST /_emulator/events/inject``           ``{"topic", "count"}``: synthetic events now
- ``GET /_emulator/events/dead-letters``      dead-lettered deliveries
- ``POST /_emulator/events/replay``           ``{"ids": [...]}`` or ``{"subscription": id}`` or ``{}``

State lives in ``<world>/subscriptions.sqlite`` (WAL), so it survives restarts and the CLI
(``athena-pipeline sandbox events ...``) can change knobs, inject events or replay dead letters
while an emulator runs: its delivery worker (``delivery.py``) polls the same file.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from athena_pipeline.events.signature import SECRET_HEADER
from athena_pipeline.events.topics import ALL_TOPICS, FAMILIES, family_of, topic_from_url, topic_url
from athena_pipeline.events.walfile import connect
from athena_pipeline.sandbox.emulator.config import EmulatorConfig

if TYPE_CHECKING:
    from athena_pipeline.sandbox.emulator.app import Emulator

STATE_FILE = "subscriptions.sqlite"
FHIR_JSON = "application/fhir+json"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
STATUSES = ("requested", "active", "error", "off")
#: Event Subscription scopes (spec §1.2); on athenahealth only its operations team grants them.
SUBSCRIPTION_SCOPES: tuple[str, ...] = (
    "system/SubscriptionTopic.read", "system/Subscription.read", "system/Subscription.write")

_PRACTICE_FILTER = re.compile(r"^\s*ah-practice\s*=\s*(?:Organization/)?a-1\.Practice-(\d+)\s*$")
_WRITE_SCOPE = re.compile(r"system/(\*|Subscription)\.(\*|write|[cruds]*[cud][cruds]*)")
_READ_SCOPE = re.compile(r"system/(\*|{type})\.(\*|read|[cruds]*r[cruds]*)")

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    id          TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    topic       TEXT NOT NULL,
    practice_id TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    secret      TEXT,
    status      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    created_at  REAL NOT NULL,
    end_at      REAL,
    error       TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    topic         TEXT NOT NULL,
    practice_id   TEXT NOT NULL,
    athena_id     TEXT NOT NULL,
    patient_id    TEXT,
    department_id TEXT,
    occurred_at   TEXT NOT NULL,
    source        TEXT NOT NULL,
    recorded_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id  TEXT NOT NULL,
    event_seqs       TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    first_attempt_at REAL,
    last_attempt_at  REAL,
    last_outcome     TEXT,
    created_at       REAL NOT NULL,
    delivered_at     REAL,
    dead_at          REAL,
    duplicate_of     INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def grant_subscription_scopes(config: EmulatorConfig, client_ids: Iterable[str] | None = None
                              ) -> EmulatorConfig:
    """``config`` with :data:`SUBSCRIPTION_SCOPES` grantable to ``client_ids`` (default: every client).

    What athena's operations team does for an app that may use Event Subscriptions. The plain
    :class:`EmulatorConfig` does not grant them (a client must be given them explicitly);
    ``sandbox serve`` grants them to every client so ``subscriptions ensure`` works out of the box.
    """
    wanted = None if client_ids is None else set(client_ids)
    clients = tuple(
        replace(c, allowed_scopes=tuple(dict.fromkeys((*c.allowed_scopes, *SUBSCRIPTION_SCOPES))))
        if wanted is None or c.client_id in wanted else c
        for c in config.clients)
    return replace(config, clients=clients)


# --- knobs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryKnobs:
    """How the emulator delivers notifications. Persisted in the world; change them at runtime."""

    #: A delivery counts as failed unless a 2xx arrives within this (athena: 2 s).
    ack_timeout_seconds: float = 2.0
    #: Failed deliveries are retried for this long after the first attempt (athena: 1 h) ...
    retry_window_seconds: float = 3600.0
    #: ... with exponential backoff (jittered) from this wait ...
    backoff_initial_seconds: float = 5.0
    #: ... up to this wait; then they are dead-lettered ...
    backoff_max_seconds: float = 300.0
    #: ... and kept for replay this long (athena: 7 days).
    dead_letter_retention_seconds: float = 7 * 86400.0
    #: Probability that a notification is sent twice (at-least-once delivery).
    duplicate_rate: float = 0.0
    #: Deliver out of order: shuffle events and delay each notification by up to the jitter.
    reorder: bool = False
    reorder_jitter_seconds: float = 1.0
    #: Most events per notification bundle (1 = one event per POST).
    batch_size: int = 1
    #: Live mode: this many synthetic appointment changes per minute (0 = off).
    trickle_per_minute: float = 0.0
    #: Send a handshake after create (2xx -> active, else error); athena does not document one.
    handshake: bool = False
    #: Send a heartbeat to every active Subscription this often (0 = off).
    heartbeat_seconds: float = 0.0
    #: Concurrent notification POSTs.
    max_in_flight: int = 8
    #: Seed of the random choices (duplicates, reordering, trickle); None = not reproducible.
    seed: int | None = None

    def __post_init__(self) -> None:
        positive = ("ack_timeout_seconds", "backoff_initial_seconds", "backoff_max_seconds")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("retry_window_seconds", "dead_letter_retention_seconds",
                     "reorder_jitter_seconds", "trickle_per_minute", "heartbeat_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.duplicate_rate <= 1:
            raise ValueError("duplicate_rate must be within 0..1")
        if not 1 <= self.batch_size <= 1000:
            raise ValueError("batch_size must be within 1..1000")
        if not 1 <= self.max_in_flight <= 64:
            raise ValueError("max_in_flight must be within 1..64")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_changes(self, changes: dict[str, Any]) -> DeliveryKnobs:
        """A copy with ``changes`` applied and type-checked; ValueError names a bad knob."""
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown delivery knob {name!r}")
            current = getattr(self, name)
            try:
                if name == "seed":
                    clean[name] = None if value is None else int(value)
                elif isinstance(current, bool):
                    if isinstance(value, str):
                        value = value.strip().lower() in ("1", "true", "yes", "on")
                    clean[name] = bool(value)
                elif isinstance(current, int):
                    clean[name] = int(value)
                else:
                    clean[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"delivery knob {name!r} has a bad value") from None
        return replace(self, **clean)


# --- records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredSubscription:
    id: str
    client_id: str
    topic: str
    practice_id: str
    endpoint: str
    secret: str | None
    status: str
    resource: dict
    created_at: float
    end_at: float | None
    error: str | None

    def public_resource(self) -> dict:
        """The FHIR Subscription as served: current status, never the secret."""
        res = dict(self.resource)
        res["id"] = self.id
        res["status"] = self.status
        if self.error:
            res["error"] = [{"text": self.error}]
        return res


@dataclass(frozen=True)
class EventRow:
    """A change in the practice, as the emulator will notify it."""

    event_id: str
    topic: str
    practice_id: str
    athena_id: str
    patient_id: str | None
    department_id: str | None
    occurred_at: str  # ISO instant, Z
    source: str  # advance | trickle | inject
    seq: int | None = None


@dataclass(frozen=True)
class NewDelivery:
    subscription_id: str
    event_seqs: tuple[int, ...]
    next_attempt_at: float
    duplicate: bool = False


@dataclass(frozen=True)
class Delivery:
    id: int
    subscription_id: str
    event_seqs: tuple[int, ...]
    status: str
    attempts: int
    next_attempt_at: float
    first_attempt_at: float | None
    last_attempt_at: float | None
    last_outcome: str | None
    created_at: float
    delivered_at: float | None
    dead_at: float | None
    duplicate_of: int | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["event_seqs"] = list(self.event_seqs)
        return d


_SUB_COLS = ("id, client_id, topic, practice_id, endpoint, secret, status, resource, created_at, "
             "end_at, error")
_EVENT_COLS = ("event_id, topic, practice_id, athena_id, patient_id, department_id, occurred_at, "
               "source, seq")
_DELIVERY_COLS = ("id, subscription_id, event_seqs, status, attempts, next_attempt_at, "
                  "first_attempt_at, last_attempt_at, last_outcome, created_at, delivered_at, "
                  "dead_at, duplicate_of")


def _sub(row: tuple) -> StoredSubscription:
    values = list(row)
    values[7] = json.loads(values[7])
    return StoredSubscription(*values)


def _delivery(row: tuple) -> Delivery:
    values = list(row)
    values[2] = tuple(json.loads(values[2]))
    return Delivery(*values)


def _equal_to(**filters: Any) -> tuple[str, list[Any]]:
    """``" AND column = ?"`` per filter that is not None, and its parameters: the optional
    filters of the list and replay queries, in the order given."""
    given = {column: value for column, value in filters.items() if value is not None}
    return "".join(f" AND {column} = ?" for column in given), list(given.values())


#: What :meth:`EventStore._select` reads per table: columns, row parser, list order.
_READS: dict[str, tuple[str, Callable[[tuple], Any], str]] = {
    "subscriptions": (_SUB_COLS, _sub, "created_at, id"),
    "deliveries": (_DELIVERY_COLS, _delivery, "id"),
}


# --- the store ------------------------------------------------------------------------------------
class EventStore:
    """``<world>/subscriptions.sqlite``: subscriptions, recorded events, deliveries, knobs.

    Thread-safe (a connection per thread). The file is created on first use, so an emulator that
    never sees a Subscription request leaves the world directory untouched.
    """

    def __init__(self, world_dir: Path | str) -> None:
        self.path = Path(world_dir) / STATE_FILE
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cons: list[sqlite3.Connection] = []
        self._ready = False

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = connect(self.path, synchronous="NORMAL")
            with self._lock:
                if not self._ready:
                    con.executescript(SCHEMA)
                    self._ready = True
                self._cons.append(con)
            self._local.con = con
        return con

    def close(self) -> None:
        with self._lock:
            cons, self._cons = self._cons, []
        for con in cons:
            try:
                con.close()
            except sqlite3.ProgrammingError:
                pass
        self._local = threading.local()

    def _tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            out = fn(con)
            con.execute("COMMIT")
            return out
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # --- state and knobs ------------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self._con().execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str, con: sqlite3.Connection | None = None) -> None:
        (con or self._con()).execute(
            "INSERT INTO state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", [key, value])

    def knobs(self) -> DeliveryKnobs:
        raw = self.get_state("knobs")
        if not raw:
            return DeliveryKnobs()
        saved = {k: v for k, v in json.loads(raw).items() if k in DeliveryKnobs.names()}
        return DeliveryKnobs().with_changes(saved)

    def configure(self, **changes: Any) -> DeliveryKnobs:
        """Change delivery knobs (validated); a running worker picks them up within a poll."""
        def tx(con: sqlite3.Connection) -> DeliveryKnobs:
            raw = self.get_state("knobs")
            current = json.loads(raw) if raw else {}
            knobs = DeliveryKnobs().with_changes({**current, **changes})
            overrides = {k: v for k, v in asdict(knobs).items()
                         if v != getattr(DeliveryKnobs(), k)}
            self.set_state("knobs", json.dumps(overrides, sort_keys=True), con)
            return knobs
        return self._tx(tx)

    def reset_knobs(self) -> DeliveryKnobs:
        self._tx(lambda con: con.execute("DELETE FROM state WHERE key = 'knobs'"))
        return DeliveryKnobs()

    # --- subscriptions --------------------------------------------------------------------------
    def add_subscription(self, sub: StoredSubscription) -> None:
        self._tx(lambda con: con.execute(
            f"INSERT INTO subscriptions ({_SUB_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [sub.id, sub.client_id, sub.topic, sub.practice_id, sub.endpoint, sub.secret,
             sub.status, json.dumps(sub.resource, separators=(",", ":")), sub.created_at,
             sub.end_at, sub.error]))

    def _select(self, table: str, where: str, params: Sequence[Any]) -> list[Any]:
        """Rows of ``table`` matching ``where`` (``" AND ..."`` clauses), parsed, in list order."""
        columns, parse, order = _READS[table]
        return [parse(r) for r in self._con().execute(
            f"SELECT {columns} FROM {table} WHERE 1=1{where} ORDER BY {order}", params)]

    def get_subscription(self, sub_id: str) -> StoredSubscription | None:
        return next(iter(self._select("subscriptions", " AND id = ?", [sub_id])), None)

    def list_subscriptions(self, client_id: str | None = None, status: str | None = None
                           ) -> list[StoredSubscription]:
        return self._select("subscriptions", *_equal_to(client_id=client_id, status=status))

    def delete_subscription(self, sub_id: str) -> bool:
        def tx(con: sqlite3.Connection) -> bool:
            cur = con.execute("DELETE FROM subscriptions WHERE id = ?", [sub_id])
            con.execute("UPDATE deliveries SET status = 'cancelled' WHERE subscription_id = ? "
                        "AND status = 'pending'", [sub_id])
            return cur.rowcount > 0
        return self._tx(tx)

    def set_subscription_status(self, sub_id: str, status: str, error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        self._tx(lambda con: con.execute(
            "UPDATE subscriptions SET status = ?, error = ? WHERE id = ?", [status, error, sub_id]))

    # --- events ------------------------------------------------------------------------------------
    def record_events(self, rows: Sequence[EventRow], *, state: dict[str, str] | None = None
                      ) -> int:
        """Insert events (ignoring known ids) and update ``state`` keys in one transaction."""
        now = time.time()

        def tx(con: sqlite3.Connection) -> int:
            before = con.total_changes
            con.executemany(
                "INSERT OR IGNORE INTO events (event_id, topic, practice_id, athena_id, patient_id, "
                "department_id, occurred_at, source, recorded_at) VALUES (?,?,?,?,?,?,?,?,?)",
                [(r.event_id, r.topic, r.practice_id, r.athena_id, r.patient_id, r.department_id,
                  r.occurred_at, r.source, now) for r in rows])
            added = con.total_changes - before
            for key, value in (state or {}).items():
                self.set_state(key, value, con)
            return added
        return self._tx(tx)

    def events_by_seq(self, seqs: Iterable[int]) -> list[EventRow]:
        wanted = list(seqs)
        if not wanted:
            return []
        rows = self._con().execute(
            f"SELECT {_EVENT_COLS} FROM events WHERE seq IN ({','.join('?' * len(wanted))})",
            wanted).fetchall()
        by_seq = {r[-1]: EventRow(*r) for r in rows}
        return [by_seq[s] for s in wanted if s in by_seq]

    def event_count(self) -> int:
        return int(self._con().execute("SELECT count(*) FROM events").fetchone()[0])

    # --- fan-out and deliveries ----------------------------------------------------------------------
    def fan_out(self, plan: Callable[[list[EventRow], list[StoredSubscription]], list[NewDelivery]],
                *, limit: int = 5000) -> int:
        """Turn events recorded since the last fan-out into deliveries, in one transaction.

        ``plan(events, active_subscriptions)`` decides batching, duplicates and timing; events
        go only to Subscriptions active *now*. Returns the number of deliveries created.
        """
        newest = self._con().execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        if newest <= int(self.get_state("fanout_cursor") or 0):
            return 0  # the idle case stays read-only: no write transaction every poll

        def tx(con: sqlite3.Connection) -> int:
            cursor = int(self.get_state("fanout_cursor") or 0)
            rows = con.execute(f"SELECT {_EVENT_COLS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                               [cursor, limit]).fetchall()
            if not rows:
                return 0
            events = [EventRow(*r) for r in rows]
            now = time.time()
            subs = [s for s in (_sub(r) for r in con.execute(
                f"SELECT {_SUB_COLS} FROM subscriptions WHERE status = 'active'"))
                if s.end_at is None or s.end_at > now]
            planned = plan(events, subs) if subs else []
            made = 0
            originals: dict[tuple[str, tuple[int, ...]], int] = {}
            for d in planned:
                key = (d.subscription_id, d.event_seqs)
                cur = con.execute(
                    "INSERT INTO deliveries (subscription_id, event_seqs, status, next_attempt_at, "
                    "created_at, duplicate_of) VALUES (?, ?, 'pending', ?, ?, ?)",
                    [d.subscription_id, json.dumps(list(d.event_seqs)), d.next_attempt_at, now,
                     originals.get(key) if d.duplicate else None])
                originals.setdefault(key, int(cur.lastrowid))
                made += 1
            self.set_state("fanout_cursor", str(events[-1].seq), con)
            return made
        return self._tx(tx)

    def due_deliveries(self, now: float, exclude: Iterable[int], limit: int) -> list[Delivery]:
        skip = set(exclude)
        rows = self._con().execute(
            f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, id LIMIT ?", [now, limit + len(skip)]).fetchall()
        return [d for d in map(_delivery, rows) if d.id not in skip][:limit]

    def get_delivery(self, delivery_id: int) -> Delivery | None:
        return next(iter(self._select("deliveries", " AND id = ?", [delivery_id])), None)

    def deliveries(self, status: str | None = None, subscription_id: str | None = None
                   ) -> list[Delivery]:
        return self._select("deliveries", *_equal_to(status=status, subscription_id=subscription_id))

    def record_attempt(self, delivery_id: int, *, ok: bool, outcome: str, now: float,
                       next_attempt_at: float | None) -> None:
        """Record one attempt: delivered, retry at ``next_attempt_at``, or dead (None)."""
        if ok:
            new_status, column, value = "status = 'delivered', ", "delivered_at", now
        elif next_attempt_at is None:
            new_status, column, value = "status = 'dead', ", "dead_at", now
        else:
            new_status, column, value = "", "next_attempt_at", next_attempt_at
        self._tx(lambda con: con.execute(
            f"UPDATE deliveries SET {new_status}attempts = attempts + 1, "
            "first_attempt_at = coalesce(first_attempt_at, ?), last_attempt_at = ?, "
            f"last_outcome = ?, {column} = ? WHERE id = ? AND status = 'pending'",
            [now, now, outcome, value, delivery_id]))

    def cancel_delivery(self, delivery_id: int) -> None:
        self._tx(lambda con: con.execute(
            "UPDATE deliveries SET status = 'cancelled' WHERE id = ? AND status = 'pending'",
            [delivery_id]))

    def replay(self, ids: Sequence[int] | None = None, subscription_id: str | None = None) -> int:
        """Move dead letters back to pending (fresh retry window); returns how many."""
        now = time.time()
        sql = ("UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL, "
               "next_attempt_at = ?, dead_at = NULL WHERE status = 'dead' "
               "AND subscription_id IN (SELECT id FROM subscriptions)")
        params: list[Any] = [now]
        if ids is not None:
            id_list = [int(i) for i in ids]
            if not id_list:
                return 0
            sql += f" AND id IN ({','.join('?' * len(id_list))})"
            params += id_list
        where, more = _equal_to(subscription_id=subscription_id)
        return int(self._tx(lambda con: con.execute(sql + where, params + more).rowcount))

    def purge(self, now: float, retention: float, retry_window: float) -> int:
        """Forget dead letters and finished deliveries past retention, and events nobody can need."""
        cutoff = now - retention

        def tx(con: sqlite3.Connection) -> int:
            n = con.execute("DELETE FROM deliveries WHERE (status = 'dead' AND dead_at < ?) OR "
                            "(status IN ('delivered', 'cancelled') AND created_at < ?)",
                            [cutoff, cutoff]).rowcount
            n += con.execute("DELETE FROM events WHERE recorded_at < ? AND seq <= ?",
                             [cutoff - retry_window - 86400,
                              int(self.get_state("fanout_cursor") or 0)]).rowcount
            return n
        return int(self._tx(tx))

    def counts(self) -> dict[str, Any]:
        con = self._con()
        by_status = dict(con.execute("SELECT status, count(*) FROM deliveries GROUP BY status"))
        subs = dict(con.execute("SELECT status, count(*) FROM subscriptions GROUP BY status"))
        return {"events": self.event_count(), "deliveries": by_status, "subscriptions": subs,
                "events_clock": self.get_state("events_clock"),
                "fanout_cursor": int(self.get_state("fanout_cursor") or 0)}

    def delivered_event_ids(self, subscription_id: str | None = None) -> set[str]:
        """Event ids of every delivery that was acknowledged (tests and status counters)."""
        seqs: set[int] = set()
        for d in self.deliveries("delivered", subscription_id):
            seqs.update(d.event_seqs)
        return {e.event_id for e in self.events_by_seq(sorted(seqs))}


# --- synthetic events ------------------------------------------------------------------------------
def synthetic_events(topic: str, practice_id: str, count: int, *, source: str,
                     candidates: Sequence[tuple[str, str | None]] = (),
                     rng: random.Random | None = None) -> list[EventRow]:
    """``count`` events of ``topic`` now, on real (athena id, patient id) pairs when given."""
    if topic not in ALL_TOPICS:
        raise ValueError(f"unknown topic {topic!r}")
    if not 1 <= count <= 100_000:
        raise ValueError("count must be within 1..100000")
    rng = rng or random.Random()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out = []
    for _ in range(count):
        if candidates:
            athena_id, patient = candidates[rng.randrange(len(candidates))]
        else:
            athena_id, patient = str(rng.randrange(1, 10_000_000)), None
        out.append(EventRow(event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                            topic=topic, practice_id=str(practice_id), athena_id=str(athena_id),
                            patient_id=patient, department_id=None, occurred_at=now,
                            source=source))
    return out


# --- the FHIR API ----------------------------------------------------------------------------------
def may_write(scopes: Iterable[str]) -> bool:
    return any(_WRITE_SCOPE.fullmatch(s) for s in scopes)


def may_read(scopes: Iterable[str], rtype: str) -> bool:
    pattern = re.compile(_READ_SCOPE.pattern.replace("{type}", rtype))
    return any(pattern.fullmatch(s) for s in scopes)


def _outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"resourceType": "OperationOutcome",
                         "issue": [{"severity": "error", "code": code, "diagnostics": text}]},
                        status_code=status, media_type=FHIR_JSON, headers=headers)


def _ext_value(holder: Any, url: str, key: str) -> Any:
    if not isinstance(holder, dict):
        return None
    for ext in holder.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext.get(key)
    return None


def _parse_end(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("end must be an instant")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _secret_from(request: Request, channel: dict) -> tuple[str | None, list]:
    """The X-Hub-Secret (request header first) and channel.header without secret entries."""
    kept, secret = [], request.headers.get(SECRET_HEADER)
    for entry in channel.get("header") or []:
        if isinstance(entry, str) and entry.lower().startswith(SECRET_HEADER.lower() + ":"):
            secret = secret or entry.split(":", 1)[1].strip()
        else:
            kept.append(entry)
    return (secret.strip() if secret and secret.strip() else None), kept


class SubscriptionApi:
    """Request handlers; ``emu.events`` is the delivery worker that owns the store."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    @property
    def store(self) -> EventStore:
        return self.emu.events.store

    def _base(self, request: Request) -> str:
        return f"{self.emu.base_url(request)}/fhir/r4"

    async def _auth(self, request: Request, *, write: bool, rtype: str = "Subscription"):
        if (resp := await self.emu.gate(request, "fhir")) is not None:
            return None, resp
        token, resp = self.emu.authorize(request)
        if resp is not None:
            return None, resp
        if self.emu.config.auth_required:
            allowed = may_write(token.scopes) if write else may_read(token.scopes, rtype)
            if not allowed:
                what = "write Subscription" if write else f"read {rtype}"
                return None, _outcome(403, "forbidden", f"The access token lacks a scope to {what}.")
        return token, None

    def _owner(self, token) -> str | None:
        """Whose Subscriptions a caller sees: its own; everyone's in open mode."""
        return token.client_id if self.emu.config.auth_required else None

    # --- topics ----------------------------------------------------------------------------------
    def _topic_resource(self, base: str, topic: str) -> dict:
        family = FAMILIES[family_of(topic)]
        action = topic.split(".", 1)[1]
        return {"resourceType": "SubscriptionTopic", "id": topic, "url": topic_url(topic, base),
                "title": topic, "status": "active",
                "description": f"{family.name} {action} (athenahealth alpha topic); fetch the focus "
                               f"with {family.fetch}"}

    async def topics(self, request: Request) -> Response:
        _, resp = await self._auth(request, write=False, rtype="SubscriptionTopic")
        if resp is not None:
            return resp
        base = self._base(request)
        entries = [{"fullUrl": f"{base}/SubscriptionTopic/{t}", "resource": self._topic_resource(base, t),
                    "search": {"mode": "match"}} for t in ALL_TOPICS]
        return JSONResponse({"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                             "entry": entries}, media_type=FHIR_JSON)

    async def topic(self, request: Request) -> Response:
        _, resp = await self._auth(request, write=False, rtype="SubscriptionTopic")
        if resp is not None:
            return resp
        topic = request.path_params["id"]
        if topic not in ALL_TOPICS:
            return _outcome(404, "not-found", "No such SubscriptionTopic.")
        return JSONResponse(self._topic_resource(self._base(request), topic), media_type=FHIR_JSON)

    # --- subscriptions -------------------------------------------------------------------------------
    def _validate(self, doc: Any, request: Request) -> tuple[dict, str | None] | Response:
        """(checked fields, secret) or a 400 OperationOutcome."""
        def bad(text: str) -> Response:
            return _outcome(400, "invalid", text)

        if not isinstance(doc, dict) or doc.get("resourceType") != "Subscription":
            return bad("The body must be a FHIR Subscription resource.")
        channel = doc.get("channel")
        if not isinstance(channel, dict):
            return bad("Subscription.channel is required.")
        if channel.get("type") != "rest-hook":
            return bad("Only rest-hook channels are supported.")
        endpoint = channel.get("endpoint")
        if not isinstance(endpoint, str) or not re.match(r"^https?://[^\s/]+", endpoint):
            return bad("Subscription.channel.endpoint must be an http(s) URL.")
        content = _ext_value(channel.get("_payload"), PAYLOAD_CONTENT, "valueCode")
        if content not in (None, "id-only"):
            return bad("Only id-only payloads are supported.")
        payload = channel.get("payload")
        if payload not in (None, FHIR_JSON, "application/json"):
            return bad("Subscription.channel.payload must be application/fhir+json.")
        criteria = doc.get("criteria")
        topic = topic_from_url(criteria) if isinstance(criteria, str) else None
        if topic is None or topic not in ALL_TOPICS:
            return bad("Subscription.criteria must be the canonical URL of one known SubscriptionTopic.")
        flt = _ext_value(doc.get("_criteria"), FILTER_CRITERIA, "valueString")
        match = _PRACTICE_FILTER.match(flt) if isinstance(flt, str) else None
        if match is None:
            return bad("The filter criteria ah-practice=Organization/a-1.Practice-{id} is required.")
        if match.group(1) != str(self.emu.practice_id()):
            return bad("Unknown practice in the ah-practice filter.")
        try:
            end_at = _parse_end(doc.get("end"))
        except (TypeError, ValueError):
            return bad("Subscription.end must be a FHIR instant.")
        if end_at is not None and end_at <= time.time():
            return bad("Subscription.end is in the past.")
        secret, headers = _secret_from(request, channel)
        return {"topic": topic, "endpoint": endpoint, "practice_id": match.group(1),
                "end_at": end_at, "headers": headers}, secret

    async def create(self, request: Request) -> Response:
        token, resp = await self._auth(request, write=True)
        if resp is not None:
            return resp
        try:
            doc = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _outcome(400, "invalid", "The body is not JSON.")
        checked = self._validate(doc, request)
        if isinstance(checked, Response):
            return checked
        fields_, secret = checked
        knobs = await run_in_threadpool(self.store.knobs)
        sub_id = str(uuid.uuid4())
        resource = json.loads(json.dumps(doc))
        resource["channel"] = {k: v for k, v in resource["channel"].items() if k != "header"}
        if fields_["headers"]:
            resource["channel"]["header"] = fields_["headers"]
        resource["meta"] = {**(resource.get("meta") or {}),
                            "lastUpdated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                            .replace("+00:00", "Z")}
        sub = StoredSubscription(
            id=sub_id, client_id=token.client_id, topic=fields_["topic"],
            practice_id=fields_["practice_id"], endpoint=fields_["endpoint"], secret=secret,
            status="requested" if knobs.handshake else "active", resource=resource,
            created_at=time.time(), end_at=fields_["end_at"], error=None)
        await run_in_threadpool(self.store.add_subscription, sub)
        self.emu.events.wake()
        location = f"{self._base(request)}/Subscription/{sub_id}"
        return JSONResponse(sub.public_resource(), status_code=201, media_type=FHIR_JSON,
                            headers={"Location": location})

    async def search(self, request: Request) -> Response:
        token, resp = await self._auth(request, write=False)
        if resp is not None:
            return resp
        status = request.query_params.get("status")
        subs = await run_in_threadpool(self.store.list_subscriptions, self._owner(token), status)
        base = self._base(request)
        entries = [{"fullUrl": f"{base}/Subscription/{s.id}", "resource": s.public_resource(),
                    "search": {"mode": "match"}} for s in subs]
        return JSONResponse({"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                             "link": [{"relation": "self", "url": str(request.url)}],
                             "entry": entries}, media_type=FHIR_JSON)

    async def _owned(self, request: Request, *, write: bool) -> StoredSubscription | Response:
        """The caller's Subscription named in the path, or the answer that refuses it: an auth
        error, or 404 when there is none or another client owns it (no hint that it exists)."""
        token, resp = await self._auth(request, write=write)
        if resp is not None:
            return resp
        sub = await run_in_threadpool(self.store.get_subscription, request.path_params["id"])
        owner = self._owner(token)
        if sub is None or (owner is not None and sub.client_id != owner):
            return _outcome(404, "not-found", "No Subscription with that id.")
        return sub

    async def read(self, request: Request) -> Response:
        sub = await self._owned(request, write=False)
        if isinstance(sub, Response):
            return sub
        return JSONResponse(sub.public_resource(), media_type=FHIR_JSON)

    async def delete(self, request: Request) -> Response:
        sub = await self._owned(request, write=True)
        if isinstance(sub, Response):
            return sub
        await run_in_threadpool(self.store.delete_subscription, sub.id)
        return Response(status_code=204)

    async def status(self, request: Request) -> Response:
        sub = await self._owned(request, write=False)
        if isinstance(sub, Response):
            return sub
        delivered = await run_in_threadpool(self.store.delivered_event_ids, sub.id)
        base = self._base(request)
        status = {"resourceType": "SubscriptionStatus", "status": sub.status, "type": "query-status",
                  "eventsSinceSubscriptionStart": str(len(delivered)),
                  "subscription": {"reference": f"Subscription/{sub.id}"},
                  "topic": sub.resource.get("criteria")}
        if sub.error:
            status["error"] = [{"text": sub.error}]
        return JSONResponse({"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
            {"fullUrl": f"{base}/Subscription/{sub.id}/$status", "resource": status,
             "search": {"mode": "match"}}]}, media_type=FHIR_JSON)

    # --- control (sandbox) -----------------------------------------------------------------------------
    async def control_get(self, request: Request) -> Response:
        knobs = await run_in_threadpool(self.store.knobs)
        counts = await run_in_threadpool(self.store.counts)
        return JSONResponse({"knobs": asdict(knobs), **counts,
                             "worker_running": self.emu.events.running})

    async def _json_body(self, request: Request) -> dict | Response:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(doc, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        return doc

    async def control_post(self, request: Request) -> Response:
        doc = await self._json_body(request)
        if isinstance(doc, Response):
            return doc
        try:
            knobs = await run_in_threadpool(lambda: self.store.configure(**doc))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        self.emu.events.wake()
        return JSONResponse({"knobs": asdict(knobs)})

    async def inject(self, request: Request) -> Response:
        doc = await self._json_body(request)
        if isinstance(doc, Response):
            return doc
        try:
            ids = await run_in_threadpool(self.emu.events.inject, str(doc.get("topic", "")),
                                          int(doc.get("count", 1)))
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"event_ids": ids})

    async def dead_letters(self, request: Request) -> Response:
        dead = await run_in_threadpool(self.store.deliveries, "dead",
                                       request.query_params.get("subscription"))
        return JSONResponse({"total": len(dead), "deliveries": [d.to_dict() for d in dead]})

    async def replay(self, request: Request) -> Response:
        doc = await self._json_body(request)
        if isinstance(doc, Response):
            return doc
        ids = doc.get("ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, int) for i in ids)):
            return JSONResponse({"error": "ids must be a list of delivery ids"}, status_code=400)
        n = await run_in_threadpool(self.store.replay, ids, doc.get("subscription"))
        self.emu.events.wake()
        return JSONResponse({"replayed": n})


def subscription_routes(emu: Emulator) -> list[BaseRoute]:
    """FHIR routes; mount them before the generic ``/fhir/r4/{type}`` routes."""
    api = SubscriptionApi(emu)
    return [
        Route("/fhir/r4/SubscriptionTopic", api.topics, methods=["GET"]),
        Route("/fhir/r4/SubscriptionTopic/{id}", api.topic, methods=["GET"]),
        Route("/fhir/r4/Subscription", api.create, methods=["POST"]),
        Route("/fhir/r4/Subscription", api.search, methods=["GET"]),
        Route("/fhir/r4/Subscription/{id}/$status", api.status, methods=["GET"]),
        Route("/fhir/r4/Subscription/{id}", api.read, methods=["GET"]),
        Route("/fhir/r4/Subscription/{id}", api.delete, methods=["DELETE"]),
    ]


def control_routes(emu: Emulator) -> list[BaseRoute]:
    """Sandbox-only routes (mounted with ``/_emulator/faults``)."""
    api = SubscriptionApi(emu)
    return [
        Route("/_emulator/events", api.control_get, methods=["GET"]),
        Route("/_emulator/events", api.control_post, methods=["POST"]),
        Route("/_emulator/events/inject", api.inject, methods=["POST"]),
        Route("/_emulator/events/dead-letters", api.dead_letters, methods=["GET"]),
        Route("/_emulator/events/replay", api.replay, methods=["POST"]),
    ]
