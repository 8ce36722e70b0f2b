"""The durable event inbox: a SQLite file in WAL mode, separate from the DuckDB warehouse.

Why SQLite and not the warehouse: the webhook receiver must commit every event to disk *before*
it answers athenahealth (2-second limit), at any time, while Dagster steps hold the warehouse's
single DuckDB writer lock for minutes. SQLite in WAL mode gives many readers alongside one writer,
cheap small transactions and crash safety; the sensor that drains the inbox reads while the
receiver writes.

Durability: ``synchronous=FULL`` (the default) fsyncs the WAL on every commit, so an answered
event survives power loss; ``NORMAL`` survives a killed process (SIGKILL, OOM) but not a power
cut, and commits faster. The receiver batches concurrent requests into one transaction (group
commit), so one fsync covers many requests under load.

Table ``events``: one row per athenahealth event id (``INSERT OR IGNORE``: redeliveries are
ignored and counted). ``seq`` is a monotonically increasing cursor for consumers. Nothing here
holds PHI beyond ids: topic, family, athenaOne id, FHIR focus reference, practice, timestamps and
a small metadata JSON (subscription, bundle id, event number, patient/department references).

Consumer API (the Dagster sensor): :meth:`Inbox.fetch_unprocessed` with the last cursor it saw,
then :meth:`Inbox.mark_processed`; :meth:`Inbox.stats` for health and reconciliation checks.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from athena_pipeline.events.notification import ParsedEvent
from athena_pipeline.events.walfile import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    topic           TEXT    NOT NULL,
    resource_type   TEXT    NOT NULL,
    resource_id     TEXT    NOT NULL,
    focus_reference TEXT,
    practice_id     TEXT,
    event_timestamp TEXT,
    received_at     REAL    NOT NULL,
    processed_at    REAL,
    metadata        TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_unprocessed ON events (seq) WHERE processed_at IS NULL;
CREATE TABLE IF NOT EXISTS inbox_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_INSERT = """INSERT OR IGNORE INTO events (event_id, topic, resource_type, resource_id,
    focus_reference, practice_id, event_timestamp, received_at, metadata)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_BUMP = """INSERT INTO inbox_meta (key, value) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)"""
_SET = """INSERT INTO inbox_meta (key, value) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value"""
_COLUMNS = ("seq, event_id, topic, resource_type, resource_id, focus_reference, practice_id, "
            "event_timestamp, received_at, processed_at, metadata")


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class InboxEvent:
    """One stored event. ``seq`` is the consumer cursor; times are epoch seconds (UTC)."""

    seq: int
    event_id: str
    topic: str
    resource_type: str
    resource_id: str
    focus_reference: str | None
    practice_id: str | None
    event_timestamp: str | None
    received_at: float
    processed_at: float | None
    metadata: dict[str, Any]

    @classmethod
    def from_row(cls, row: tuple) -> InboxEvent:
        *head, metadata = row
        return cls(*head, metadata=json.loads(metadata or "{}"))


@dataclass(frozen=True)
class InboxStats:
    total: int
    unprocessed: int
    processed: int
    duplicates_ignored: int
    last_cursor: int
    oldest_unprocessed_received_at: float | None
    last_received_at: float | None
    last_heartbeat_at: float | None
    last_handshake_at: float | None
    unprocessed_by_type: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, with ISO timestamps next to the epoch ones."""
        out: dict[str, Any] = dict(self.__dict__)
        for key in ("oldest_unprocessed_received_at", "last_received_at", "last_heartbeat_at",
                    "last_handshake_at"):
            out[key] = _iso(out[key])
        return out


class Inbox:
    """The inbox file. Thread-safe: each thread gets its own SQLite connection."""

    def __init__(self, path: Path | str, *, synchronous: str = "FULL",
                 busy_timeout_seconds: float = 30.0, autocheckpoint: bool = True) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout_seconds
        #: False: commits never checkpoint the WAL; call :meth:`checkpoint` from elsewhere.
        self.autocheckpoint = autocheckpoint
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        con = self._con()
        con.executescript(SCHEMA)

    # --- connections ------------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = connect(self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout)
            if not self.autocheckpoint:
                con.execute("PRAGMA wal_autocheckpoint=0")
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy committed WAL frames into the database file without blocking writers (PASSIVE).

        The receiver runs this in a background thread, so no acknowledgement ever waits for a
        checkpoint (SQLite's automatic one runs inside the commit that crosses the threshold).
        Returns SQLite's (busy, WAL frames, frames checkpointed).
        """
        row = self._con().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def close(self) -> None:
        """Close every connection this object opened (from any thread)."""
        with self._lock:
            cons, self._all = self._all, []
        for con in cons:
            try:
                con.close()
            except sqlite3.ProgrammingError:
                pass
        self._local = threading.local()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes -----------------------------------------------------------------------------------
    def add_batches(self, batches: Sequence[Sequence[ParsedEvent]], *,
                    received_at: float | None = None) -> list[int]:
        """Store several requests' events in ONE committed transaction; new rows per request.

        When this returns, every event is on disk (per ``synchronous``). Duplicates (an event id
        already stored) are ignored and counted in ``stats().duplicates_ignored``.
        """
        now = time.time() if received_at is None else received_at
        con = self._con()
        counts: list[int] = []
        con.execute("BEGIN IMMEDIATE")
        try:
            dupes = 0
            for events in batches:
                before = con.total_changes
                con.executemany(_INSERT, [
                    (e.event_id, e.topic, e.resource_type, e.resource_id, e.focus_reference,
                     e.practice_id, e.event_timestamp, now,
                     json.dumps(e.metadata, separators=(",", ":"), sort_keys=True))
                    for e in events])
                new = con.total_changes - before
                counts.append(new)
                dupes += len(events) - new
            if dupes:
                con.execute(_BUMP, ("duplicates_ignored", str(dupes)))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return counts

    def add(self, events: Sequence[ParsedEvent]) -> int:
        """Store one request's events (one transaction); returns how many were new."""
        return self.add_batches([events])[0]

    def record_signal(self, kind: str, at: float | None = None) -> None:
        """Remember the time of the last ``handshake`` or ``heartbeat`` (nothing else is stored)."""
        if kind not in ("handshake", "heartbeat"):
            raise ValueError("kind must be handshake or heartbeat")
        self.record_signals([kind], at)

    def record_signals(self, kinds: Iterable[str], at: float | None = None) -> None:
        con = self._con()
        stamp = repr(time.time() if at is None else at)
        con.execute("BEGIN IMMEDIATE")
        try:
            for kind in set(kinds):
                con.execute(_SET, (f"last_{kind}_at", stamp))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def mark_processed(self, ids: Iterable[str], at: float | None = None) -> int:
        """Mark events (by athenahealth event id) processed; returns how many changed."""
        id_list = list(dict.fromkeys(ids))
        if not id_list:
            return 0
        now = time.time() if at is None else at
        con = self._con()
        changed = 0
        con.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(id_list), 500):
                chunk = id_list[start:start + 500]
                marks = ",".join("?" * len(chunk))
                cur = con.execute(f"UPDATE events SET processed_at = ? WHERE processed_at IS NULL "
                                  f"AND event_id IN ({marks})", [now, *chunk])
                changed += cur.rowcount
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return changed

    # --- reads ------------------------------------------------------------------------------------
    def fetch_unprocessed(self, after_cursor: int = 0, limit: int = 1000, *,
                          resource_types: Sequence[str] | None = None) -> list[InboxEvent]:
        """Unprocessed events with ``seq > after_cursor``, oldest first, at most ``limit``.

        ``resource_types`` (topic families such as ``Appointment``) narrows the result.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        sql = f"SELECT {_COLUMNS} FROM events WHERE processed_at IS NULL AND seq > ?"
        params: list[Any] = [int(after_cursor)]
        if resource_types:
            sql += f" AND resource_type IN ({','.join('?' * len(resource_types))})"
            params += list(resource_types)
        sql += " ORDER BY seq LIMIT ?"
        params.append(int(limit))
        return [InboxEvent.from_row(r) for r in self._con().execute(sql, params).fetchall()]

    def get(self, event_id: str) -> InboxEvent | None:
        row = self._con().execute(f"SELECT {_COLUMNS} FROM events WHERE event_id = ?",
                                  [event_id]).fetchone()
        return InboxEvent.from_row(row) if row else None

    def event_ids(self) -> set[str]:
        """Every stored event id (tests and reconciliation)."""
        return {r[0] for r in self._con().execute("SELECT event_id FROM events").fetchall()}

    def count_unprocessed_older_than(self, seconds: float, now: float | None = None) -> int:
        """Unprocessed events received more than ``seconds`` ago (the staleness check)."""
        cutoff = (time.time() if now is None else now) - seconds
        return int(self._con().execute(
            "SELECT count(*) FROM events WHERE processed_at IS NULL AND received_at < ?",
            [cutoff]).fetchone()[0])

    def stats(self) -> InboxStats:
        con = self._con()
        total, unprocessed, oldest, last, last_seq = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE processed_at IS NULL), "
            "min(received_at) FILTER (WHERE processed_at IS NULL), max(received_at), "
            "coalesce(max(seq), 0) FROM events").fetchone()
        meta = dict(con.execute("SELECT key, value FROM inbox_meta").fetchall())
        by_type = dict(con.execute(
            "SELECT resource_type, count(*) FROM events WHERE processed_at IS NULL "
            "GROUP BY resource_type ORDER BY resource_type").fetchall())

        def stamp(key: str) -> float | None:
            return float(meta[key]) if key in meta else None

        return InboxStats(
            total=int(total), unprocessed=int(unprocessed), processed=int(total - unprocessed),
            duplicates_ignored=int(meta.get("duplicates_ignored", 0)), last_cursor=int(last_seq),
            oldest_unprocessed_received_at=oldest, last_received_at=last,
            last_heartbeat_at=stamp("last_heartbeat_at"),
            last_handshake_at=stamp("last_handshake_at"),
            unprocessed_by_type={str(k): int(v) for k, v in by_type.items()})
