"""The durable inbox: WAL file, dedupe by event id, cursor-based draining, stats."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from athena_pipeline.events.inbox import Inbox
from athena_pipeline.events.notification import ParsedEvent


def ev(n: int, family: str = "Appointment", action: str = "update") -> ParsedEvent:
    return ParsedEvent(event_id=f"evt-{n}", topic=f"{family}.{action}", resource_type=family,
                       resource_id=str(1000 + n), focus_reference=f"{family}/a-195900.{family}-{1000 + n}",
                       practice_id="195900", event_timestamp="2026-11-24T10:00:00Z",
                       metadata={"subscription": "Subscription/s1", "event_number": str(n)})


@pytest.fixture
def inbox(tmp_path: Path):
    with Inbox(tmp_path / "data" / "events.sqlite") as box:
        yield box


def test_file_is_sqlite_in_wal_mode_and_created_with_its_folder(inbox: Inbox) -> None:
    assert inbox.path.exists()
    con = sqlite3.connect(inbox.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_events_are_deduplicated_by_event_id(inbox: Inbox) -> None:
    assert inbox.add([ev(1), ev(2)]) == 2
    assert inbox.add([ev(2), ev(3)]) == 1  # evt-2 is a redelivery
    assert inbox.add_batches([[ev(1)], [ev(4), ev(4)]]) == [0, 1]
    stats = inbox.stats()
    assert stats.total == 4
    assert stats.duplicates_ignored == 3
    assert inbox.event_ids() == {"evt-1", "evt-2", "evt-3", "evt-4"}


def test_stored_columns_and_metadata(inbox: Inbox) -> None:
    inbox.add([ev(7, "LabResult", "create")])
    got = inbox.get("evt-7")
    assert got is not None
    assert (got.topic, got.resource_type, got.resource_id, got.practice_id) == (
        "LabResult.create", "LabResult", "1007", "195900")
    assert got.focus_reference == "LabResult/a-195900.LabResult-1007"
    assert got.metadata == {"subscription": "Subscription/s1", "event_number": "7"}
    assert got.processed_at is None and got.received_at <= time.time()


def test_fetch_unprocessed_follows_the_cursor_and_skips_processed(inbox: Inbox) -> None:
    inbox.add([ev(n) for n in range(1, 6)] + [ev(6, "Claim", "create")])
    first = inbox.fetch_unprocessed(0, limit=2)
    assert [e.event_id for e in first] == ["evt-1", "evt-2"]
    rest = inbox.fetch_unprocessed(first[-1].seq, limit=100)
    assert [e.event_id for e in rest] == ["evt-3", "evt-4", "evt-5", "evt-6"]
    assert [e.event_id for e in inbox.fetch_unprocessed(0, resource_types=["Claim"])] == ["evt-6"]

    assert inbox.mark_processed(["evt-1", "evt-3", "evt-3", "unknown"]) == 2
    assert inbox.mark_processed(["evt-1"]) == 0  # already processed
    assert [e.event_id for e in inbox.fetch_unprocessed(0)] == ["evt-2", "evt-4", "evt-5", "evt-6"]
    stats = inbox.stats()
    assert (stats.total, stats.processed, stats.unprocessed) == (6, 2, 4)
    assert stats.unprocessed_by_type == {"Appointment": 3, "Claim": 1}
    assert stats.last_cursor == 6
    with pytest.raises(ValueError):
        inbox.fetch_unprocessed(0, limit=0)


def test_staleness_check_counts_old_unprocessed_events(inbox: Inbox) -> None:
    inbox.add_batches([[ev(1), ev(2)]], received_at=time.time() - 3600)
    inbox.add([ev(3)])
    inbox.mark_processed(["evt-1"])
    assert inbox.count_unprocessed_older_than(600) == 1
    assert inbox.stats().oldest_unprocessed_received_at < time.time() - 3000


def test_handshake_and_heartbeat_only_record_a_time(inbox: Inbox) -> None:
    inbox.record_signal("heartbeat", at=1000.0)
    inbox.record_signal("handshake", at=2000.0)
    inbox.record_signal("heartbeat", at=3000.0)
    stats = inbox.stats()
    assert stats.total == 0
    assert (stats.last_heartbeat_at, stats.last_handshake_at) == (3000.0, 2000.0)
    assert stats.to_dict()["last_heartbeat_at"] == "1970-01-01T00:50:00.000Z"
    with pytest.raises(ValueError):
        inbox.record_signal("event-notification")


def test_a_reader_sees_commits_of_another_process_while_it_writes(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    reader = Inbox(path)
    script = (
        "import sys; from athena_pipeline.events.inbox import Inbox; "
        "from athena_pipeline.events.notification import ParsedEvent as P; "
        "box = Inbox(sys.argv[1]); "
        "[box.add([P(f'e{i}', 'Patient.update', 'Patient', str(i), None, '1', None)]) for i in range(50)]; "
        "print('done', flush=True); import os; os._exit(0)"  # no clean close: like a crash after commit
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.stdout.strip() == "done", out.stderr
    assert reader.stats().total == 50
    assert len(reader.fetch_unprocessed(0, limit=1000)) == 50
    reader.close()


def test_bad_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Inbox(tmp_path / "x.sqlite", synchronous="OFF")
