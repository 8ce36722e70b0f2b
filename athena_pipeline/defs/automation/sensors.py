"""The sensor that evaluates the automation conditions, with the default status of this deployment.

Dagster creates a ``default_automation_condition_sensor`` by itself when no sensor targets the
assets that have conditions, but always STOPPED. Declaring one here, over every asset, replaces it
and lets it start RUNNING in the sandbox (``AUTOMATION_DEFAULT_RUNNING``).
"""

from __future__ import annotations

import dagster as dg

from athena_pipeline.defs.automation.status import sensor_status
from athena_pipeline.settings import Settings

AUTOMATION_SENSOR = "automation_condition_sensor"


def build_automation_sensor(settings: Settings) -> dg.AutomationConditionSensorDefinition:
    """The automation condition sensor over every asset of the code location."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(),
        default_status=sensor_status(settings),
        minimum_interval_seconds=30,
        description="Evaluates every asset's automation condition: after the nightly extracts, the dbt "
                    "models and then the Caspio tables are requested once each (see defs/automation).",
    )
