"""Whether schedules and sensors start RUNNING or STOPPED: one rule for all of them.

``Settings.automation_running_by_default``: ``AUTOMATION_DEFAULT_RUNNING`` when set, else RUNNING
when the athenahealth endpoints are the sandbox's loopback ones (the sandbox switches everything
on) and STOPPED otherwise (a production deploy never starts calling athenahealth or Caspio before
someone decides it should). Dagster applies a default status only until someone toggles the
schedule or sensor in the UI or with ``dagster schedule|sensor start|stop``; the instance
remembers that choice.
"""

from __future__ import annotations

import dagster as dg

from athena_pipeline.settings import Settings


def schedule_status(settings: Settings) -> dg.DefaultScheduleStatus:
    """The default status of every schedule for ``settings``."""
    if settings.automation_running_by_default:
        return dg.DefaultScheduleStatus.RUNNING
    return dg.DefaultScheduleStatus.STOPPED


def sensor_status(settings: Settings) -> dg.DefaultSensorStatus:
    """The default status of every sensor for ``settings``."""
    if settings.automation_running_by_default:
        return dg.DefaultSensorStatus.RUNNING
    return dg.DefaultSensorStatus.STOPPED
