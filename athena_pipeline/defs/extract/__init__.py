"""Extraction assets: athenahealth into the DuckDB warehouse's raw schemas.

What will live here: the FHIR R4 Bulk Data export (kick-off, poll, download NDJSON into
``LANDING_DIR``, pool ``athena_api``) and its loader into ``raw_fhir`` (pool ``warehouse``), the
Data View table copies into ``raw_dataview``, and the asset checks on those raw tables.
"""
