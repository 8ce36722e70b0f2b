"""The automation stage's Dagster objects: three schedules and two sensors (see ``__init__``)."""

from __future__ import annotations

import dagster as dg

from athena_pipeline.defs.automation.alerts import build_run_failure_sensor
from athena_pipeline.defs.automation.schedules import build_schedules
from athena_pipeline.defs.automation.sensors import build_automation_sensor
from athena_pipeline.settings import Settings


def build_automation_defs(settings: Settings) -> dg.Definitions:
    """Schedules and sensors for ``settings`` (tests pass their own)."""
    return dg.Definitions(schedules=build_schedules(settings),
                          sensors=[build_automation_sensor(settings), build_run_failure_sensor(settings)])


@dg.definitions
def automation_defs() -> dg.Definitions:
    """``dataview_nightly_schedule``, ``fhir_nightly_schedule``, ``fhir_monthly_full_schedule``,
    ``automation_condition_sensor`` and ``run_failure_alert_sensor``."""
    return build_automation_defs(Settings.from_env())
