"""Extraction assets: athenahealth into the DuckDB warehouse's raw schemas.

``fhir.py``: ``fhir_bulk_export`` (the FHIR Bulk Data export into ``LANDING_DIR``, pool
``athena_api``) and ``raw_fhir/<type>`` (the load, pool ``warehouse``), job ``extract_fhir_job``.
``dataview.py``: ``raw_dataview/<table>``, daily partitions, job ``extract_dataview_job``.
``checks.py``: the asset checks, evaluated inline. ``partitions.py``, ``policy.py`` (retries) and
``resources.py`` (the ``dataview`` resource) support them. The work itself is done by
``athena_pipeline.extract``, which the CLI runs too.
"""
