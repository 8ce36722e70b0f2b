"""Automation: what makes the pipeline run by itself, every night, with nobody watching.

- ``schedules.py``: at ``NIGHTLY_TIME`` in ``PIPELINE_TIMEZONE``, the previous day's Data View
  partition and a ``_since`` FHIR export; a full FHIR export on ``FHIR_FULL_EXPORT_DAY`` instead.
- ``conditions.py``: the automation condition of the dbt models and Caspio tables: built once a
  night, as soon as everything they read has been refreshed since the nightly tick.
- ``policies.py``: lays those conditions, and freshness policies (``FRESHNESS_FAIL_HOURS``) on the
  marts and Caspio tables, over the other stages' assets (applied in ``athena_pipeline/definitions.py``).
- ``sensors.py``: the automation condition sensor; ``alerts.py``: the run-failure sensor (log, and
  a JSON POST to ``ALERT_WEBHOOK_URL``).
- ``definitions.py``: the schedules and sensors; ``status.py``: RUNNING by default in the sandbox,
  STOPPED in production unless ``AUTOMATION_DEFAULT_RUNNING=true``.

The event-driven path (webhook inbox -> appointment sync, debounced refresh) is ``defs/events``.
"""
