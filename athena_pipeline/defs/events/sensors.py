"""``athena_events_sensor``: drains the webhook inbox into appointment syncs and debounced refreshes.

Each tick (every :data:`MINIMUM_INTERVAL_SECONDS`):

1. **New events** after the cursor (the inbox ``seq``, a monotonic commit order) are read, at most
   :data:`MAX_EVENTS_PER_TICK` of them.
2. **Appointment events** of the configured practice become ``appointment_sync_job`` run requests:
   their distinct appointment ids in the run config (at most :data:`MAX_IDS_PER_RUN` per run), and
   a ``run_key`` made of the batch's seq range, ``appointments:<first>-<last>``. The events are
   marked processed in the inbox once their request is built; the daemon never launches a run key
   twice, so a re-evaluated tick is harmless. Appointment events of another practice are marked
   processed without a run (the sync reads one practice) and counted in the log.
3. **Every other event** (Patient, Encounter, LabResult, Claim, ...) marks the data it touches
   stale: an ``AssetObservation`` on the raw tables concerned (``pending_events``), and stays
   unprocessed until an ``events_refresh_job`` run (the ``_since`` FHIR export and everything
   downstream) is requested for it. That happens **at most once every**
   ``EVENTS_REFRESH_DEBOUNCE_MINUTES`` (default 15), and not while an earlier refresh is still queued
   or running: a burst of a thousand patient updates is one refresh, never a run per event. Its
   ``run_key`` is ``events-refresh:<first>-<last>`` over the seq range it covers.
4. **Staleness**: events unprocessed for longer than ``EVENTS_STALE_MINUTES`` are logged as a
   warning on every tick, and the ``inbox_events_not_stale`` check of ``caspio/appointments`` is
   reported whenever its answer changes.

The cursor is JSON: ``{"seq": <last seq read>, "last_refresh_at": <epoch or null>, "stale": <bool
or null>}``. Why ``seq`` and not "processed" alone: the scan after the cursor stays an index range,
however many events are waiting out a debounce. Pending (debounced) events sit behind the cursor
and are found again through the inbox's unprocessed index when the refresh fires.

Default status: the project's rule (``AUTOMATION_DEFAULT_RUNNING``; unset = RUNNING in the sandbox,
whose athenahealth endpoints are on loopback, else STOPPED); in production switch it on in the UI,
with ``dagster sensor start athena_events_sensor`` or ``AUTOMATION_DEFAULT_RUNNING=true``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from athena_pipeline.defs.events.assets import (
    EVENTS_REFRESH_JOB,
    appointment_run_config,
    appointment_sync_job,
    events_refresh_job,
    stale_check_evaluation,
    stale_report,
)
from athena_pipeline.defs.events.resources import EventInboxResource
from athena_pipeline.defs.extract.dataview import DATAVIEW_KEYS
from athena_pipeline.defs.extract.fhir import RAW_FHIR_KEYS
from athena_pipeline.events.inbox import Inbox, InboxEvent
from athena_pipeline.settings import Settings

log = logging.getLogger("athena_pipeline.defs.events.sensors")

SENSOR_NAME = "athena_events_sensor"
MINIMUM_INTERVAL_SECONDS = 15
MAX_EVENTS_PER_TICK = 5000
MAX_IDS_PER_RUN = 500
#: Page size when collecting the pending events a refresh covers.
_PENDING_PAGE = 5000
APPOINTMENT_FAMILY = "Appointment"

_IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]

#: Raw tables an event family makes stale (only keys the extract stage defines are used).
_STALE_TABLES: dict[str, tuple[str, ...]] = {
    "Patient": ("raw_fhir/patient", "raw_dataview/patient"),
    "Encounter": ("raw_fhir/encounter", "raw_dataview/clinicalencounter"),
    "LabResult": ("raw_fhir/observation", "raw_fhir/diagnosticreport", "raw_dataview/clinicalresult",
                  "raw_dataview/clinicalresultobservation"),
    "Claim": ("raw_dataview/claim", "raw_dataview/transaction"),
    "ClinicalEncounterDiagnosis": ("raw_fhir/condition", "raw_dataview/clinicalencounterdiagnosis"),
    "PatientProblem": ("raw_fhir/condition", "raw_dataview/patientproblem"),
    "Provider": ("raw_fhir/practitioner", "raw_dataview/provider"),
    "HistoricalVaccine": ("raw_fhir/immunization",),
    "Prescription": ("raw_fhir/medicationrequest",),
    "ImagingResult": ("raw_fhir/diagnosticreport",),
}
_KNOWN_KEYS = {k.to_user_string(): k for k in (*RAW_FHIR_KEYS.values(), *DATAVIEW_KEYS)}
STALE_KEYS: dict[str, tuple[dg.AssetKey, ...]] = {
    family: tuple(_KNOWN_KEYS[name] for name in names if name in _KNOWN_KEYS)
    for family, names in _STALE_TABLES.items()}


# --- cursor ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventsCursor:
    """The sensor's cursor (see the module docstring)."""

    seq: int = 0
    last_refresh_at: float | None = None
    stale: bool | None = None

    @classmethod
    def parse(cls, raw: str | None) -> EventsCursor:
        """The cursor from its JSON; a bare integer (a hand-set cursor) is read as ``seq``."""
        if not raw:
            return cls()
        text = raw.strip()
        if text.isdigit():
            return cls(seq=int(text))
        doc = json.loads(text)
        return cls(seq=int(doc.get("seq") or 0),
                   last_refresh_at=float(doc["last_refresh_at"]) if doc.get("last_refresh_at") else None,
                   stale=doc.get("stale"))

    def dump(self) -> str:
        return json.dumps({"seq": self.seq, "last_refresh_at": self.last_refresh_at, "stale": self.stale},
                          sort_keys=True)


def default_status() -> dg.DefaultSensorStatus:
    """The project's rule for every schedule and sensor (``Settings.automation_running_by_default``):
    ``AUTOMATION_DEFAULT_RUNNING`` when set, else RUNNING in the sandbox and STOPPED in production."""
    try:
        running = Settings.from_env().automation_running_by_default
    except ValueError:
        running = False
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


# --- the pieces of a tick -------------------------------------------------------------------------
def appointment_requests(events: Sequence[InboxEvent], max_ids: int = MAX_IDS_PER_RUN) -> list[dg.RunRequest]:
    """``appointment_sync_job`` requests for appointment ``events`` (seq order), ``max_ids`` ids each."""
    requests: list[dg.RunRequest] = []
    batch: list[InboxEvent] = []
    ids: dict[str, None] = {}

    def flush() -> None:
        if not batch:
            return
        first, last = batch[0].seq, batch[-1].seq
        requests.append(dg.RunRequest(
            run_key=f"appointments:{first}-{last}",
            job_name=appointment_sync_job.name,
            run_config=appointment_run_config(list(ids), event_count=len(batch), first_seq=first,
                                              last_seq=last),
            tags={"athena_pipeline/trigger": "events", "athena_pipeline/events": str(len(batch)),
                  "athena_pipeline/inbox_seq": f"{first}-{last}"}))

    for event in events:
        if event.resource_id not in ids and len(ids) >= max_ids:
            flush()
            batch, ids = [], {}
        batch.append(event)
        ids[event.resource_id] = None
    flush()
    return requests


def _pending(inbox: Inbox, up_to_seq: int) -> Iterable[list[InboxEvent]]:
    """Pages of the unprocessed non-appointment events with ``seq <= up_to_seq`` (the debounced
    ones), oldest first. Appointment events are never swept into a refresh: they need a sync."""
    after = 0
    while True:
        raw = inbox.fetch_unprocessed(after, _PENDING_PAGE)
        page = [e for e in raw if e.seq <= up_to_seq and e.resource_type != APPOINTMENT_FAMILY]
        if page:
            yield page
        if not raw or raw[-1].seq >= up_to_seq:
            return
        after = raw[-1].seq


def stale_observations(events: Sequence[InboxEvent], pending_by_type: dict[str, int]) -> list[dg.AssetObservation]:
    """One observation per raw table made stale by ``events`` (new this tick), with the pending count."""
    families: dict[dg.AssetKey, list[str]] = {}
    for family in sorted({e.resource_type for e in events}):
        for key in STALE_KEYS.get(family, ()):
            families.setdefault(key, []).append(family)
    return [dg.AssetObservation(asset_key=key, metadata={
        "pending_events": sum(pending_by_type.get(f, 0) for f in names),
        "event_types": ", ".join(names),
        "refresh_job": EVENTS_REFRESH_JOB}) for key, names in families.items()]


def _refresh_in_progress(context: dg.SensorEvaluationContext) -> bool:
    try:
        instance = context.instance
    except Exception:  # noqa: BLE001 - a bare test context has no instance: nothing can be running
        return False
    runs = instance.get_run_records(filters=dg.RunsFilter(job_name=EVENTS_REFRESH_JOB, statuses=_IN_PROGRESS),
                                    limit=1)
    return bool(runs)


# --- the sensor -----------------------------------------------------------------------------------
@dg.sensor(
    name=SENSOR_NAME,
    jobs=[appointment_sync_job, events_refresh_job],
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=default_status(),
    description=("Drains the athenahealth Event Subscriptions inbox: appointment events -> appointment_sync_job "
                 "(near-real-time Caspio sync); other events -> one debounced events_refresh_job "
                 "(_since FHIR export + downstream) at most every EVENTS_REFRESH_DEBOUNCE_MINUTES. "
                 "run_keys come from inbox seq ranges, so every request is idempotent."),
)
def athena_events_sensor(context: dg.SensorEvaluationContext, event_inbox: EventInboxResource) -> dg.SensorResult:
    cursor = EventsCursor.parse(context.cursor)
    now = time.time()
    practice = str(event_inbox.practice_id)
    requests: list[dg.RunRequest] = []
    asset_events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
    notes: list[str] = []
    with event_inbox.open() as inbox:
        # 1-2. new events: appointment syncs now
        events = inbox.fetch_unprocessed(cursor.seq, MAX_EVENTS_PER_TICK)
        seq = events[-1].seq if events else cursor.seq
        appointment = [e for e in events if e.resource_type == APPOINTMENT_FAMILY]
        ours = [e for e in appointment if e.practice_id in (None, practice)]
        foreign = len(appointment) - len(ours)
        if ours:
            requests += appointment_requests(ours)
        if appointment:
            inbox.mark_processed([e.event_id for e in appointment])
        if foreign:
            context.log.warning(f"{foreign} appointment event(s) of another practice skipped "
                                f"(this pipeline syncs practice {practice})")
        if ours:
            notes.append(f"{len(ours)} appointment event(s) -> {len(requests)} sync run(s)")

        # 3. everything else: stale now, one debounced refresh later
        others = [e for e in events if e.resource_type != APPOINTMENT_FAMILY]
        pending_by_type = {t: n for t, n in inbox.stats().unprocessed_by_type.items() if t != APPOINTMENT_FAMILY}
        if others:
            asset_events += stale_observations(others, pending_by_type)
        last_refresh = cursor.last_refresh_at
        pending_total = sum(pending_by_type.values())
        if pending_total:
            due = last_refresh is None or now - last_refresh >= event_inbox.refresh_debounce_minutes * 60.0
            if due and not _refresh_in_progress(context):
                covered: list[InboxEvent] = []
                for page in _pending(inbox, seq):
                    covered += page
                if covered:
                    first, last = covered[0].seq, covered[-1].seq
                    families = sorted({e.resource_type for e in covered})
                    requests.append(dg.RunRequest(
                        run_key=f"events-refresh:{first}-{last}", job_name=EVENTS_REFRESH_JOB,
                        tags={"athena_pipeline/trigger": "events", "athena_pipeline/events": str(len(covered)),
                              "athena_pipeline/event_types": ",".join(families)[:200],
                              "athena_pipeline/inbox_seq": f"{first}-{last}"}))
                    inbox.mark_processed([e.event_id for e in covered])
                    last_refresh = now
                    notes.append(f"{len(covered)} other event(s) ({', '.join(families)}) -> one refresh run")
            elif due:
                notes.append(f"{pending_total} other event(s) pending: a refresh run is still in progress")
            else:
                wait = event_inbox.refresh_debounce_minutes * 60.0 - (now - (last_refresh or now))
                notes.append(f"{pending_total} other event(s) pending: next refresh in {wait / 60.0:.1f} min")

        # 4. staleness
        report = stale_report(inbox, event_inbox.stale_minutes, now=now)
    stale = report["stale_events"] > 0
    if stale:
        context.log.warning(
            f"{report['stale_events']} event(s) unprocessed for more than {event_inbox.stale_minutes:g} min "
            f"(oldest {report['oldest_unprocessed_age_minutes']} min)")
    if stale != cursor.stale:
        asset_events.append(stale_check_evaluation(report))

    new_cursor = EventsCursor(seq=seq, last_refresh_at=last_refresh, stale=stale)
    if notes:
        context.log.info("; ".join(notes))
    return dg.SensorResult(
        run_requests=requests,
        cursor=new_cursor.dump(),
        asset_events=asset_events,
        skip_reason=None if requests else ("; ".join(notes) or "no new events"),
    )

