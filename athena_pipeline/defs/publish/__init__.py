"""Publishing assets: marts into Caspio tables that leadership dashboards read.

What will live here: one keyed diff sync per published mart (read the mart, diff against the
Caspio table, write only what changed, read back to verify), refusing a plan that exceeds
``CASPIO_CALL_BUDGET``; patient-level tables only when ``CASPIO_PUBLISH_PATIENT_LEVEL`` is set.
"""
