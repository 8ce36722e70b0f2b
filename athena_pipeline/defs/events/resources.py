"""The ``event_inbox`` resource: where the webhook receiver's inbox is and how the sensor treats it.

One resource for the sensor and the staleness check, so the UI shows the thresholds the sensor
runs with, and tests can point both at a temporary inbox file.
"""

from __future__ import annotations

import dagster as dg

from athena_pipeline.events.inbox import Inbox
from athena_pipeline.settings import Settings


class EventInboxResource(dg.ConfigurableResource):
    """The durable event inbox (SQLite, WAL) and the sensor's thresholds."""

    path: str
    #: The athenaOne practice the pipeline syncs; appointment events of another practice are skipped.
    practice_id: int
    #: Non-appointment events trigger at most one incremental refresh per this many minutes.
    refresh_debounce_minutes: float = 15.0
    #: Events unprocessed for longer than this fail ``inbox_events_not_stale``.
    stale_minutes: float = 60.0

    def open(self) -> Inbox:
        """The inbox (created empty when missing); close it when done."""
        return Inbox(self.path)


def build_events_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The events stage's resource for ``settings`` (tests pass their own Settings)."""
    return {
        "event_inbox": EventInboxResource(
            path=str(settings.events_inbox_path),
            practice_id=settings.athena_practice_id,
            refresh_debounce_minutes=settings.events_refresh_debounce_minutes,
            stale_minutes=settings.events_stale_minutes,
        ),
    }


@dg.definitions
def events_resources() -> dg.Definitions:
    """The ``event_inbox`` resource (``athena``, ``caspio`` come from the other stages)."""
    return dg.Definitions(resources=build_events_resources(Settings.from_env()))
