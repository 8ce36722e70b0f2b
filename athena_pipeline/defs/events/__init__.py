"""Event Subscriptions in Dagster: the sensor that drains the webhook inbox, and what it triggers.

- ``resources.py``: ``event_inbox`` (the inbox file, the practice, the debounce and staleness
  thresholds);
- ``assets.py``: ``caspio/appointments`` (near-real-time appointment sync), its
  ``inbox_events_not_stale`` check, ``appointment_sync_job`` and ``events_refresh_job`` (the
  incremental ``_since`` FHIR export and everything downstream of it);
- ``sensors.py``: ``athena_events_sensor``.

The work itself is plain Python in ``athena_pipeline.events`` (inbox, appointment sync).
"""
