"""``caspio/appointments``: appointments kept in sync from Event Subscriptions; and the jobs the sensor runs.

Thin glue over :func:`athena_pipeline.events.appointments.sync_appointments`.

- **``caspio/appointments``** (group ``events``): one materialisation per sync run. Its run config
  carries the appointment ids of a batch of inbox events (the sensor fills it); the asset reads
  each appointment from athenahealth's v1 API and upserts or deletes its row in
  ``{CASPIO_TABLE_PREFIX}appointments``. It runs in pool ``caspio_appointments`` (the instance's
  default pool limit is 1), so two syncs never interleave their writes and a later sync always
  writes the later state. It never opens the warehouse, so a nightly load or dbt build holding
  DuckDB's lock cannot delay it. An empty id list materialises nothing.
- **``inbox_events_not_stale``**, its check: fails (WARN) when events have waited in the inbox
  longer than ``EVENTS_STALE_MINUTES``, i.e. the sensor is stopped or failing. The nightly
  ``_since`` export reconciles what they describe; the check says the near-real-time path is not
  working. The sensor reports the same check whenever the answer changes.
- **``appointment_sync_job``**: the asset and its check.
- **``events_refresh_job``**: the incremental refresh other events trigger: ``fhir_bulk_export``
  (its default config is the ``_since`` export from the last load's watermark) and everything
  downstream of it (raw FHIR load, the dbt models that read it, the Caspio tables of the marts).
"""

# No `from __future__ import annotations`: Dagster reads the asset function's annotations.
import dataclasses
import time
from typing import Any

import dagster as dg
from pydantic import Field

from athena_pipeline.caspio.publish import client_for
from athena_pipeline.defs.events.resources import EventInboxResource
from athena_pipeline.defs.extract.fhir import EXPORT_KEY
from athena_pipeline.defs.extract.resources import settings_for
from athena_pipeline.defs.publish.resources import CaspioResource
from athena_pipeline.defs.resources import AthenaResource
from athena_pipeline.events.appointments import (
    AppointmentSyncError,
    athena_client_for_sync,
    sync_appointments,
)
from athena_pipeline.events.inbox import Inbox
from athena_pipeline.http import ApiError
from athena_pipeline.settings import Settings

APPOINTMENTS_KEY = dg.AssetKey(["caspio", "appointments"])
APPOINTMENTS_OP = "caspio__appointments"
GROUP = "events"
STALE_CHECK = "inbox_events_not_stale"
POOL = "caspio_appointments"
OWNERS = ["team:data-engineering"]
APPOINTMENT_SYNC_JOB = "appointment_sync_job"
EVENTS_REFRESH_JOB = "events_refresh_job"
#: Two more tries, 10 s then about 20 s later: a 429 or a dropped connection passes quickly, and a
#: near-real-time sync should not wait minutes (the next events bring the next chance anyway).
SYNC_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL,
                            jitter=dg.Jitter.PLUS_MINUS)


class AppointmentSyncConfig(dg.Config):
    """Run config of ``caspio/appointments`` (filled by ``athena_events_sensor``)."""

    appointment_ids: list[str] = Field(default_factory=list,
                                       description="athenaOne appointment ids to sync; empty = nothing to do.")
    event_count: int = Field(default=0, description="Inbox events behind this sync (informational).")
    first_seq: int = Field(default=0, description="Lowest inbox cursor of those events (informational).")
    last_seq: int = Field(default=0, description="Highest inbox cursor of those events (informational).")


def appointment_run_config(ids: list[str], *, event_count: int = 0, first_seq: int = 0,
                           last_seq: int = 0) -> dict[str, Any]:
    """Run config of ``appointment_sync_job`` for ``ids`` (what the sensor puts in a RunRequest)."""
    return {"ops": {APPOINTMENTS_OP: {"config": {
        "appointment_ids": list(ids), "event_count": event_count, "first_seq": first_seq,
        "last_seq": last_seq}}}}


def sync_settings(athena: AthenaResource, caspio: CaspioResource) -> Settings:
    """One :class:`Settings` with the athena resource's and the caspio resource's values laid over
    the environment (the plain-Python sync takes Settings, as the CLI does)."""
    caspio_values = {f.name: getattr(caspio.settings(), f.name)
                     for f in dataclasses.fields(Settings) if f.name.startswith("caspio_")}
    return dataclasses.replace(settings_for(athena=athena), **caspio_values)


def _failure(exc: Exception) -> dg.Failure:
    first = (str(exc).strip().splitlines() or [""])[0]
    return dg.Failure(description=f"The appointment sync failed, and retrying will not help: "
                                  f"{type(exc).__name__}: {first}",
                      metadata={"error_type": type(exc).__name__}, allow_retries=False)


@dg.asset(
    key=APPOINTMENTS_KEY,
    group_name=GROUP,
    kinds={"caspio", "python"},
    owners=OWNERS,
    pool=POOL,
    output_required=False,
    retry_policy=SYNC_RETRY,
    description=(
        "athenaOne appointments in the Caspio table {CASPIO_TABLE_PREFIX}appointments, kept in sync within a "
        "minute of each change by Event Subscriptions (athena_events_sensor): each changed appointment is "
        "read from the v1 API and upserted (404 = deleted). Rows whose values did not change are not "
        "rewritten. No patient id unless CASPIO_PUBLISH_PATIENT_LEVEL=true."),
    metadata={"table_suffix": "appointments", "key": "appointment_id"},
)
def appointments(context: dg.AssetExecutionContext, config: AppointmentSyncConfig, athena: AthenaResource,
                 caspio: CaspioResource):
    if not config.appointment_ids:
        context.log.info("no appointment ids in the run config: nothing to sync")
        return
    settings = sync_settings(athena, caspio)
    try:
        with athena_client_for_sync(settings) as athena_client, client_for(settings) as caspio_client:
            result = sync_appointments(config.appointment_ids, athena_client, caspio_client,
                                       table_prefix=settings.caspio_table_prefix,
                                       patient_level=settings.caspio_publish_patient_level)
    except AppointmentSyncError as exc:
        raise _failure(exc) from exc
    except ApiError as exc:
        if exc.transient:
            raise
        raise _failure(exc) from exc
    if result.failed:
        raise dg.Failure(description=f"Caspio refused {result.failed} appointment row(s); the others were "
                                     "written. See the Caspio error in the run's logs.",
                         metadata=result.to_dict(), allow_retries=False)
    yield dg.MaterializeResult(metadata={
        "table": result.table,
        "appointments_requested": result.requested,
        "fetched": result.fetched,
        "not_found_deleted": result.not_found,
        "rows_inserted": result.inserted,
        "rows_updated": result.updated,
        "rows_deleted": result.deleted,
        "rows_unchanged": result.unchanged,
        "invalid_ids": result.invalid_ids,
        "athena_calls": result.athena_calls,
        "caspio_calls": result.caspio_calls,
        "schema_created": result.schema_created,
        "events": config.event_count,
        "inbox_seq_range": f"{config.first_seq}-{config.last_seq}",
        "duration_s": result.duration_s,
        "patient_level": settings.caspio_publish_patient_level,
    })


# --- staleness ---------------------------------------------------------------------------------
def stale_report(inbox: Inbox, stale_minutes: float, now: float | None = None) -> dict[str, Any]:
    """How many events waited longer than ``stale_minutes`` unprocessed, with the inbox's picture."""
    now = time.time() if now is None else now
    stale = inbox.count_unprocessed_older_than(stale_minutes * 60.0, now=now)
    stats = inbox.stats()
    oldest = stats.oldest_unprocessed_received_at
    return {
        "stale_events": stale,
        "threshold_minutes": stale_minutes,
        "unprocessed_events": stats.unprocessed,
        "oldest_unprocessed_age_minutes": round((now - oldest) / 60.0, 1) if oldest is not None else 0.0,
        "unprocessed_by_type": stats.unprocessed_by_type,
        "last_event_received": stats.to_dict()["last_received_at"] or "never",
    }


def stale_check_evaluation(report: dict[str, Any]) -> dg.AssetCheckEvaluation:
    """The ``inbox_events_not_stale`` result for ``report`` (also emitted by the sensor)."""
    passed = report["stale_events"] == 0
    return dg.AssetCheckEvaluation(
        asset_key=APPOINTMENTS_KEY, check_name=STALE_CHECK, passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if passed else (
            f"{report['stale_events']} event(s) waited more than {report['threshold_minutes']:g} min in the "
            "inbox: is athena_events_sensor running? The nightly _since export reconciles the data."),
        metadata={k: (dg.MetadataValue.json(v) if isinstance(v, dict) else v) for k, v in report.items()})


@dg.asset_check(asset=APPOINTMENTS_KEY, name=STALE_CHECK,
                description="No event waited in the webhook inbox longer than EVENTS_STALE_MINUTES "
                            "without being handled by athena_events_sensor.")
def inbox_events_not_stale(event_inbox: EventInboxResource) -> dg.AssetCheckResult:
    with event_inbox.open() as inbox:
        report = stale_report(inbox, event_inbox.stale_minutes)
    ev = stale_check_evaluation(report)
    return dg.AssetCheckResult(passed=ev.passed, severity=ev.severity, description=ev.description,
                               metadata=ev.metadata)


# --- jobs -----------------------------------------------------------------------------------------
appointment_sync_job = dg.define_asset_job(
    APPOINTMENT_SYNC_JOB,
    selection=dg.AssetSelection.assets(APPOINTMENTS_KEY),
    description="Sync the appointments named in the run config into Caspio (run by athena_events_sensor).",
)

events_refresh_job = dg.define_asset_job(
    EVENTS_REFRESH_JOB,
    selection=dg.AssetSelection.assets(EXPORT_KEY).downstream(),
    description="Incremental refresh after athenahealth events (patients, encounters, lab results, claims): "
                "the _since FHIR export, its load, the dbt models downstream and their Caspio tables. "
                "Run by athena_events_sensor at most once every EVENTS_REFRESH_DEBOUNCE_MINUTES.",
)
