"""The nightly and monthly extract schedules, all at ``NIGHTLY_TIME`` in ``PIPELINE_TIMEZONE``.

* ``dataview_nightly_schedule``: ``extract_dataview_job`` for the **previous day's** partition
  (``build_schedule_from_partitioned_job``: the partition is the last complete day in the
  partitions' time zone, which is ``PIPELINE_TIMEZONE``; the partition key is the run key).
* ``fhir_nightly_schedule``: ``extract_fhir_job`` as a ``_since`` export from the watermark of the
  last load; skipped on ``FHIR_FULL_EXPORT_DAY``, when the monthly full export runs instead.
* ``fhir_monthly_full_schedule``: ``extract_fhir_job`` with ``full: true`` on ``FHIR_FULL_EXPORT_DAY``
  (athenahealth advises bulk exports of everything about monthly; the nightly ``_since`` exports
  catch up what changed in between, and the full one repairs anything they missed, e.g. deletes).

The dbt models and the Caspio tables are not scheduled: they follow these extracts through their
automation conditions (``conditions.py``). Why per-job schedules, not one nightly job: each extract
keeps its own run (a Data View failure does not hide a good FHIR load), and the automation
conditions wait for both wherever a model reads both.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from athena_pipeline.defs.automation.conditions import nightly_cron
from athena_pipeline.defs.automation.status import schedule_status
from athena_pipeline.defs.extract.dataview import extract_dataview_job
from athena_pipeline.defs.extract.fhir import EXPORT_KEY, extract_fhir_job
from athena_pipeline.settings import Settings

DATAVIEW_SCHEDULE = "dataview_nightly_schedule"
FHIR_NIGHTLY_SCHEDULE = "fhir_nightly_schedule"
FHIR_FULL_SCHEDULE = "fhir_monthly_full_schedule"
EXPORT_OP = EXPORT_KEY.to_python_identifier()
MODE_TAG = "athena_pipeline/fhir_export"
TRIGGER_TAG = "athena_pipeline/trigger"


def local_day(scheduled: dt.datetime, timezone: str) -> dt.date:
    """The practice's calendar day of a tick (a tick at 02:00 New York is that New York day)."""
    return scheduled.astimezone(ZoneInfo(timezone)).date()


def fhir_export_mode(day: dt.date, full_export_day: int) -> str:
    """``"full"`` on the monthly full-export day, ``"since"`` on every other day."""
    return "full" if day.day == full_export_day else "since"


def fhir_run_config(full: bool) -> dict:
    """Run config of ``extract_fhir_job``: a full export or a ``_since`` one (from the watermark)."""
    return {"ops": {EXPORT_OP: {"config": {"full": full}}}}


def fhir_request(day: dt.date, mode: str) -> dg.RunRequest:
    """The run request of the FHIR export of ``day`` (``mode`` = "full" or "since"); the run key makes
    a re-evaluated tick harmless."""
    return dg.RunRequest(run_key=f"fhir-{mode}:{day.isoformat()}", run_config=fhir_run_config(mode == "full"),
                         tags={MODE_TAG: mode, TRIGGER_TAG: "schedule"})


def build_schedules(settings: Settings) -> list:
    """The three schedules for ``settings`` (see the module docstring)."""
    hour, minute = settings.nightly_hour_minute
    tz = settings.pipeline_timezone
    status = schedule_status(settings)
    full_day = settings.fhir_full_export_day

    dataview = dg.build_schedule_from_partitioned_job(
        extract_dataview_job,
        name=DATAVIEW_SCHEDULE,
        hour_of_day=hour,
        minute_of_hour=minute,
        default_status=status,
        tags={TRIGGER_TAG: "schedule"},
        description=f"Every night at {settings.nightly_time} ({tz}): the Data View tables for the previous "
                    "day's partition (LASTUPDATED during that day).",
    )

    @dg.schedule(
        name=FHIR_NIGHTLY_SCHEDULE,
        job=extract_fhir_job,
        cron_schedule=nightly_cron(hour, minute),
        execution_timezone=tz,
        default_status=status,
        description=f"Every night at {settings.nightly_time} ({tz}): FHIR bulk export _since the last load, "
                    f"except on day {full_day} of the month (the monthly full export runs instead).",
    )
    def fhir_nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        day = local_day(context.scheduled_execution_time, tz)
        if fhir_export_mode(day, full_day) == "full":
            return dg.SkipReason(f"{day.isoformat()} is the monthly full-export day ({FHIR_FULL_SCHEDULE})")
        return fhir_request(day, "since")

    @dg.schedule(
        name=FHIR_FULL_SCHEDULE,
        job=extract_fhir_job,
        cron_schedule=f"{minute} {hour} {full_day} * *",
        execution_timezone=tz,
        default_status=status,
        description=f"Day {full_day} of every month at {settings.nightly_time} ({tz}): a full FHIR bulk export "
                    "(everything, not _since), as athenahealth advises for bulk use.",
    )
    def fhir_monthly_full(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        day = local_day(context.scheduled_execution_time, tz)
        if fhir_export_mode(day, full_day) != "full":
            return dg.SkipReason(f"the full export runs on day {full_day} of the month, not {day.isoformat()}")
        return fhir_request(day, "full")

    return [dataview, fhir_nightly, fhir_monthly_full]
