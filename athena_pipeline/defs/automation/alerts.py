"""Run-failure alerting: ``run_failure_alert_sensor`` logs every failed run and, when
``ALERT_WEBHOOK_URL`` is set, POSTs a small JSON report to it (a chat channel's incoming webhook).

What the report holds: the job, the run id, the partition, the failed steps, the assets those steps
did not materialise, and the error class and message (clipped). Never a stack trace, never the
run config. Error messages in this project are PHI-free by design (every failure is written to
name counts, ids of exports and tables, never a patient's data), and the clip bounds the rest.

The JSON has a ``text`` field, which Slack, Mattermost, Rocket.Chat and Google Chat incoming
webhooks display as the message, and the structured fields beside it for anything else.

Delivering the alert must never fail the sensor (it would stop reporting the *next* failures too):
:func:`post_alert` has explicit timeouts and logs, rather than raises, every delivery failure,
without the URL (it is a secret: a webhook URL is its own credential).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import httpx

from athena_pipeline.defs.automation.status import sensor_status
from athena_pipeline.settings import Settings

log = logging.getLogger("athena_pipeline.alerts")

SENSOR_NAME = "run_failure_alert_sensor"
#: Connect quickly or not at all; a chat webhook answers in well under a second.
ALERT_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
MAX_MESSAGE_CHARS = 500
MAX_KEYS = 25
#: Errors Dagster wraps the user's exception in; the report names the user's one.
_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError",
             "DagsterExecutionInterruptedError"}
#: Run tags worth repeating in a report (what launched the run).
_LAUNCH_TAGS = ("dagster/schedule_name", "dagster/sensor_name", "dagster/backfill", "athena_pipeline/trigger",
                "athena_pipeline/fhir_export")


def clip(text: str | None, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line (whitespace collapsed), at most ``limit`` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class FailureReport:
    """What a failed run alert says (see the module docstring)."""

    job: str
    run_id: str
    partition: str | None = None
    failed_steps: tuple[str, ...] = ()
    failed_assets: tuple[str, ...] = ()
    error_class: str | None = None
    error_message: str | None = None
    launched_by: Mapping[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """One readable line for a chat channel."""
        where = f" in {', '.join(self.failed_steps[:3])}" if self.failed_steps else ""
        more = f" (+{len(self.failed_steps) - 3} more)" if len(self.failed_steps) > 3 else ""
        part = f" [partition {self.partition}]" if self.partition else ""
        error = f": {self.error_class}: {self.error_message}" if self.error_class else ""
        return clip(f"athena-pipeline: run {self.run_id[:8]} of {self.job}{part} failed{where}{more}{error}",
                    MAX_MESSAGE_CHARS + 200)

    def payload(self) -> dict[str, Any]:
        """The JSON body POSTed to ``ALERT_WEBHOOK_URL``."""
        return {
            "text": self.text,
            "source": "athena-pipeline",
            "event": "run_failure",
            "job": self.job,
            "run_id": self.run_id,
            "partition": self.partition,
            "failed_steps": list(self.failed_steps[:MAX_KEYS]),
            "failed_assets": list(self.failed_assets[:MAX_KEYS]),
            "failed_assets_total": len(self.failed_assets),
            "error": {"class": self.error_class, "message": self.error_message},
            "launched_by": dict(self.launched_by),
        }


def post_alert(url: str, payload: Mapping[str, Any], *, timeout: httpx.Timeout = ALERT_TIMEOUT,
               logger: Any = log) -> bool:
    """POST ``payload`` as JSON to ``url``; True when the webhook answered 2xx. Never raises: a
    delivery failure is logged (without the URL, a secret) and reported as False."""
    try:
        response = httpx.post(url, json=dict(payload), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - alerting must not break the sensor that reports failures
        logger.warning(f"run-failure alert not delivered to ALERT_WEBHOOK_URL: {type(exc).__name__}")
        return False
    if response.is_success:
        return True
    logger.warning(f"run-failure alert not delivered: ALERT_WEBHOOK_URL answered HTTP {response.status_code}")
    return False


# --- building the report from Dagster's records ----------------------------------------------------
def user_error(error: Any) -> Any:
    """The user's exception inside Dagster's wrappers (``SerializableErrorInfo`` chain)."""
    seen = 0
    while error is not None and error.cls_name in _WRAPPERS and error.cause is not None and seen < 10:
        error, seen = error.cause, seen + 1
    return error


def error_message(error: Any) -> str:
    """The exception's message without the ``ClassName:`` prefix Dagster keeps in it, clipped."""
    message = (error.message or "").strip()
    prefix = f"{error.cls_name}:"
    if error.cls_name and prefix in message.split("\n", 1)[0]:
        message = message.split(prefix, 1)[1]
    return clip(message)


def _planned_assets_by_step(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, list[dg.AssetKey]]:
    """Asset keys each step of ``run`` was to materialise, from the run's execution plan snapshot."""
    out: dict[str, list[dg.AssetKey]] = {}
    if not run.execution_plan_snapshot_id:
        return out
    snapshot = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    for step in snapshot.steps:
        for output in step.outputs:
            key = output.properties.asset_key if output.properties else None
            if key is not None:
                out.setdefault(step.key, []).append(key)
    return out


def _materialized(instance: dg.DagsterInstance, run_id: str) -> set[dg.AssetKey]:
    records = instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                                           limit=10_000).records
    return {r.event_log_entry.dagster_event.asset_key for r in records
            if r.event_log_entry.dagster_event is not None and r.event_log_entry.dagster_event.asset_key}


def failure_report(instance: dg.DagsterInstance, run: dg.DagsterRun, step_failures: Iterable[dg.DagsterEvent],
                   run_failure: dg.DagsterEvent | None = None) -> FailureReport:
    """The report of a failed ``run``: its failed steps, the assets they did not materialise (a dbt
    step that failed half-way did materialise the models before the failure), and the first error."""
    failures: Sequence[dg.DagsterEvent] = list(step_failures)
    steps = tuple(dict.fromkeys(e.step_key for e in failures if e.step_key))
    errors = [user_error(e.step_failure_data.error) for e in failures
              if e.step_failure_data is not None and e.step_failure_data.error is not None]
    if not errors and run_failure is not None:
        data = run_failure.event_specific_data
        if getattr(data, "error", None) is not None:
            errors = [user_error(data.error)]
    if not errors and run_failure is not None:
        message = clip(run_failure.message)
        error_class, message_text = ("RunFailure", message) if message else (None, None)
    else:
        error_class = errors[0].cls_name if errors else None
        message_text = error_message(errors[0]) if errors else None

    failed_assets: list[str] = []
    try:
        planned = _planned_assets_by_step(instance, run)
        done = _materialized(instance, run.run_id)
        keys = [key for step in steps for key in planned.get(step, []) if key not in done]
        failed_assets = list(dict.fromkeys(key.to_user_string() for key in keys))
    except Exception as exc:  # noqa: BLE001 - the report goes out without asset keys rather than not at all
        log.warning(f"could not list the failed assets of run {run.run_id}: {type(exc).__name__}")
    return FailureReport(
        job=run.job_name,
        run_id=run.run_id,
        partition=run.tags.get("dagster/partition"),
        failed_steps=steps,
        failed_assets=tuple(failed_assets),
        error_class=error_class,
        error_message=message_text,
        launched_by={k: clip(v, 200) for k, v in run.tags.items() if k in _LAUNCH_TAGS},
    )


def build_run_failure_sensor(settings: Settings) -> dg.SensorDefinition:
    """``run_failure_alert_sensor`` for ``settings`` (the webhook URL is read from them once, here)."""
    url = settings.alert_webhook_url

    @dg.run_failure_sensor(
        name=SENSOR_NAME,
        default_status=sensor_status(settings),
        minimum_interval_seconds=30,
        description="Reports every failed run of this code location: the job, run id, failed steps and "
                    "assets, error class and message. Logged always; POSTed as JSON to ALERT_WEBHOOK_URL "
                    "when it is set" + (" (set)." if url else " (not set: log only)."),
    )
    def run_failure_alert_sensor(context: dg.RunFailureSensorContext) -> None:
        report = failure_report(context.instance, context.dagster_run, context.get_step_failure_events(),
                                context.failure_event)
        context.log.error(report.text)
        if url:
            delivered = post_alert(url, report.payload(), logger=context.log)
            if delivered:
                context.log.info(f"run-failure alert for run {report.run_id} delivered")

    return run_failure_alert_sensor
