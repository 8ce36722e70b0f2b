"""Daily partitions of the Data View assets, and how a partition window becomes a fetch window.

A partition is one day of ``LASTUPDATED`` in the practice's time zone (``PIPELINE_TIMEZONE``):
the rows athenaOne changed that day. Data View timestamps are naive UTC, so the window is converted
to UTC before it reaches SQL (``athena.dataview.naive_utc``).

The first partition (``DATAVIEW_PARTITION_START``) also takes every row changed before it: reference
tables (providers, departments, payers) and old patients were last updated years earlier, and
without this they would belong to no partition at all.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from athena_pipeline.settings import Settings


def dataview_partitions(settings: Settings | None = None) -> dg.DailyPartitionsDefinition:
    """Daily partitions from ``DATAVIEW_PARTITION_START`` in ``PIPELINE_TIMEZONE``."""
    settings = settings or Settings.from_env()
    return dg.DailyPartitionsDefinition(start_date=settings.dataview_partition_start.isoformat(),
                                        timezone=settings.pipeline_timezone)


#: The partitions of every Data View asset (read from the environment when definitions load).
DATAVIEW_DAILY = dataview_partitions()


def fetch_window(window: dg.TimeWindow, partitions: dg.DailyPartitionsDefinition = DATAVIEW_DAILY
                 ) -> tuple[dt.datetime | None, dt.datetime]:
    """(start, end) to fetch for a partition window; start is None for a window that begins at the
    first partition (see the module docstring). Both bounds are aware datetimes."""
    first = partitions.start
    start = None if window.start <= first else window.start
    return start, window.end
