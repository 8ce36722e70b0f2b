"""``athena_events_sensor`` against a real inbox file, evaluated with ``dg.build_sensor_context``.

Events enter the inbox the way the receiver stores them: a signed-shape athena notification
bundle parsed by ``parse_notification`` and committed with ``Inbox.add``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from athena_pipeline.defs.events.assets import (
    APPOINTMENT_SYNC_JOB,
    APPOINTMENTS_KEY,
    APPOINTMENTS_OP,
    EVENTS_REFRESH_JOB,
    STALE_CHECK,
    appointments,
    inbox_events_not_stale,
)
from athena_pipeline.defs.events.resources import EventInboxResource, build_events_resources
from athena_pipeline.defs.events.sensors import EventsCursor, athena_events_sensor
from athena_pipeline.events.inbox import Inbox
from athena_pipeline.events.notification import parse_notification
from athena_pipeline.settings import Settings
from tests.events.support import PRACTICE, notification

HOUR = 3600.0


def events(topic: str, ids: list[str], practice: str = PRACTICE) -> list:
    """Parsed events of one notification bundle: one event per athena id, fresh event ids."""
    doc = notification([(str(uuid.uuid4()), topic, rid) for rid in ids], practice=practice)
    return list(parse_notification(json.dumps(doc).encode()).events)


@pytest.fixture
def inbox_path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite"


@pytest.fixture
def inbox(inbox_path: Path) -> Iterator[Inbox]:
    with Inbox(inbox_path, synchronous="NORMAL") as box:
        yield box


@pytest.fixture
def resource(inbox_path: Path) -> EventInboxResource:
    return EventInboxResource(path=str(inbox_path), practice_id=int(PRACTICE), refresh_debounce_minutes=15,
                              stale_minutes=60)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def tick(instance: dg.DagsterInstance, resource: EventInboxResource, cursor: str | None = None) -> dg.SensorResult:
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"event_inbox": resource})
    result = athena_events_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def ids_of(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"][APPOINTMENTS_OP]["config"]["appointment_ids"]


def check_evaluations(result: dg.SensorResult) -> list[dg.AssetCheckEvaluation]:
    return [e for e in result.asset_events or [] if isinstance(e, dg.AssetCheckEvaluation)]


# --- appointments ----------------------------------------------------------------------------------
def test_appointment_events_become_one_sync_request_with_their_ids(inbox, resource, instance) -> None:
    inbox.add(events("Appointment.update", ["1001", "1002"]))
    inbox.add(events("Appointment.cancel", ["1001", "1003"]))

    result = tick(instance, resource)

    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.job_name == APPOINTMENT_SYNC_JOB
    assert request.run_key == "appointments:1-4"
    assert ids_of(request) == ["1001", "1002", "1003"]
    assert EventsCursor.parse(result.cursor).seq == 4
    assert inbox.stats().unprocessed == 0


def test_run_request_config_is_valid_for_the_job(inbox, resource, instance) -> None:
    inbox.add(events("Appointment.schedule", ["2001"]))
    request = tick(instance, resource).run_requests[0]
    from athena_pipeline.defs.events.assets import appointment_sync_job
    from athena_pipeline.defs.publish.resources import build_publish_resources
    from athena_pipeline.defs.resources import build_resources

    settings = Settings()
    defs = dg.Definitions(assets=[appointments], jobs=[appointment_sync_job],
                          asset_checks=[inbox_events_not_stale],
                          resources={**build_resources(settings), **build_publish_resources(settings),
                                     **build_events_resources(settings)})
    job = defs.resolve_job_def(APPOINTMENT_SYNC_JOB)
    assert dg.validate_run_config(job, request.run_config)
    assert APPOINTMENTS_KEY in job.asset_layer.selected_asset_keys


def test_the_run_key_is_stable_for_the_same_events(tmp_path, instance) -> None:
    keys = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.sqlite"
        with Inbox(path) as box:
            box.add(events("Appointment.update", ["7", "8", "9"]))
        res = EventInboxResource(path=str(path), practice_id=int(PRACTICE))
        keys.append([r.run_key for r in tick(instance, res).run_requests])
    assert keys[0] == keys[1] == ["appointments:1-3"]


def test_redelivered_events_and_a_replayed_tick_request_nothing_new(inbox, resource, instance) -> None:
    batch = events("Appointment.check-in", ["3001", "3002"])
    inbox.add(batch)
    first = tick(instance, resource)
    assert len(first.run_requests) == 1

    assert inbox.add(batch) == 0  # athena redelivers the same notification: deduplicated by event id
    assert tick(instance, resource, first.cursor).run_requests == []
    # a tick whose cursor was lost (the daemon died before saving it) re-reads from the start
    assert tick(instance, resource, None).run_requests == []


def test_the_cursor_advances_and_only_new_events_are_requested(inbox, resource, instance) -> None:
    inbox.add(events("Appointment.update", ["4001"]))
    first = tick(instance, resource)
    inbox.add(events("Appointment.update", ["4002", "4003"]))

    second = tick(instance, resource, first.cursor)

    assert [ids_of(r) for r in second.run_requests] == [["4002", "4003"]]
    assert second.run_requests[0].run_key == "appointments:2-3"
    assert EventsCursor.parse(second.cursor).seq == 3
    assert tick(instance, resource, second.cursor).run_requests == []


def test_many_appointment_ids_are_split_into_bounded_runs(inbox, resource, instance) -> None:
    inbox.add(events("Appointment.update", [str(10_000 + i) for i in range(1200)]))
    requests = tick(instance, resource).run_requests
    assert [len(ids_of(r)) for r in requests] == [500, 500, 200]
    assert [r.run_key for r in requests] == ["appointments:1-500", "appointments:501-1000",
                                             "appointments:1001-1200"]


def test_appointment_events_of_another_practice_are_skipped(inbox, resource, instance) -> None:
    inbox.add(events("Appointment.update", ["5001"], practice="1234"))
    result = tick(instance, resource)
    assert result.run_requests == []
    assert inbox.stats().unprocessed == 0


# --- other topics: debounced refresh ----------------------------------------------------------------
def test_other_topics_trigger_one_debounced_refresh_never_a_run_per_event(inbox, resource, instance) -> None:
    inbox.add(events("Patient.update", [str(i) for i in range(40)]))
    inbox.add(events("Claim.update", ["900", "901"]))
    inbox.add(events("Appointment.update", ["6001"]))

    first = tick(instance, resource)

    by_job = {}
    for r in first.run_requests:
        by_job.setdefault(r.job_name, []).append(r)
    assert len(by_job[EVENTS_REFRESH_JOB]) == 1
    assert by_job[EVENTS_REFRESH_JOB][0].run_key == "events-refresh:1-42"
    assert len(by_job[APPOINTMENT_SYNC_JOB]) == 1
    assert inbox.stats().unprocessed == 0
    observed = {e.asset_key.to_user_string() for e in first.asset_events if isinstance(e, dg.AssetObservation)}
    assert {"raw_fhir/patient", "raw_dataview/claim"} <= observed

    # more changes within the debounce window: marked stale, no second refresh, events kept
    inbox.add(events("Encounter.signoff", ["77", "78"]))
    inbox.add(events("LabResult.create", ["88"]))
    second = tick(instance, resource, first.cursor)
    assert second.run_requests == []
    assert inbox.stats().unprocessed == 3
    assert "next refresh in" in str(second.skip_reason)
    observed = {e.asset_key.to_user_string(): e for e in second.asset_events if isinstance(e, dg.AssetObservation)}
    assert observed["raw_fhir/encounter"].metadata["pending_events"].value == 2
    assert "raw_fhir/observation" in observed
    third = tick(instance, resource, second.cursor)
    assert third.run_requests == []

    # once the window has passed: one refresh covering exactly the pending events
    cursor = EventsCursor.parse(third.cursor)
    later = EventsCursor(seq=cursor.seq, last_refresh_at=cursor.last_refresh_at - 16 * 60, stale=cursor.stale)
    fourth = tick(instance, resource, later.dump())
    assert [(r.job_name, r.run_key) for r in fourth.run_requests] == [(EVENTS_REFRESH_JOB, "events-refresh:44-46")]
    assert inbox.stats().unprocessed == 0
    assert EventsCursor.parse(fourth.cursor).last_refresh_at > later.last_refresh_at


def test_no_refresh_is_requested_while_one_is_still_running(inbox, resource, instance) -> None:
    instance.add_run(DagsterRun(job_name=EVENTS_REFRESH_JOB, run_id=str(uuid.uuid4()),
                                status=dg.DagsterRunStatus.STARTED))
    inbox.add(events("Patient.create", ["1", "2"]))

    result = tick(instance, resource)

    assert result.run_requests == []
    assert inbox.stats().unprocessed == 2
    assert "still in progress" in str(result.skip_reason)


def test_a_zero_debounce_refreshes_on_every_tick_with_events(inbox, inbox_path, instance) -> None:
    res = EventInboxResource(path=str(inbox_path), practice_id=int(PRACTICE), refresh_debounce_minutes=0)
    inbox.add(events("Patient.update", ["1"]))
    first = tick(instance, res)
    inbox.add(events("Patient.update", ["2"]))
    second = tick(instance, res, first.cursor)
    assert [r.run_key for r in first.run_requests + second.run_requests] == ["events-refresh:1-1",
                                                                             "events-refresh:2-2"]


# --- staleness ------------------------------------------------------------------------------------------
def test_events_waiting_past_the_threshold_are_reported_once_per_change(inbox, resource, instance) -> None:
    now = time.time()
    inbox.add_batches([events("Patient.update", ["1", "2"])], received_at=now - 2 * HOUR)
    recent_refresh = EventsCursor(last_refresh_at=now - 60).dump()  # the debounce holds them back

    first = tick(instance, resource, recent_refresh)
    [evaluation] = check_evaluations(first)
    assert (evaluation.asset_key, evaluation.check_name, evaluation.passed) == (APPOINTMENTS_KEY, STALE_CHECK, False)
    assert evaluation.metadata["stale_events"].value == 2
    assert EventsCursor.parse(first.cursor).stale is True

    assert check_evaluations(tick(instance, resource, first.cursor)) == []  # unchanged: not re-reported

    inbox.mark_processed(inbox.event_ids())
    healed = tick(instance, resource, first.cursor)
    [evaluation] = check_evaluations(healed)
    assert evaluation.passed
    assert EventsCursor.parse(healed.cursor).stale is False


def test_the_staleness_check_reads_the_inbox(inbox, resource) -> None:
    inbox.add_batches([events("Claim.update", ["1"])], received_at=time.time() - 2 * HOUR)
    failing = inbox_events_not_stale(event_inbox=resource)
    assert not failing.passed
    assert failing.severity == dg.AssetCheckSeverity.WARN
    inbox.mark_processed(inbox.event_ids())
    assert inbox_events_not_stale(event_inbox=resource).passed


def test_the_sensor_and_its_jobs_are_in_the_project_definitions() -> None:
    from athena_pipeline.definitions import defs

    d = defs()
    sensor = d.resolve_sensor_def("athena_events_sensor")
    assert {j.name for j in sensor.jobs} == {APPOINTMENT_SYNC_JOB, EVENTS_REFRESH_JOB}
    refresh = d.resolve_job_def(EVENTS_REFRESH_JOB).asset_layer.selected_asset_keys
    assert dg.AssetKey(["fhir_bulk_export"]) in refresh
    assert any(k.path[0] == "marts" for k in refresh)
    assert APPOINTMENTS_KEY not in refresh
    assert d.resolve_job_def(APPOINTMENT_SYNC_JOB).asset_layer.selected_asset_keys == {APPOINTMENTS_KEY}


def test_running_by_default_in_the_sandbox_only(default_env, monkeypatch) -> None:
    from athena_pipeline.defs.events.sensors import default_status

    assert default_status() == dg.DefaultSensorStatus.RUNNING
    monkeypatch.setenv("ATHENA_FHIR_BASE_URL", "https://api.platform.athenahealth.com/fhir/r4")
    monkeypatch.setenv("ATHENA_TOKEN_URL", "https://api.platform.athenahealth.com/oauth2/v1/token")
    assert default_status() == dg.DefaultSensorStatus.STOPPED
    monkeypatch.setenv("AUTOMATION_DEFAULT_RUNNING", "true")
    assert default_status() == dg.DefaultSensorStatus.RUNNING
