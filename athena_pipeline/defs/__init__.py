"""Dagster definitions only: thin glue that wires the plain-Python packages into Dagster.

Split by stage (``extract``, ``transform``, ``publish``, ``automation``) plus ``resources.py``.
Logic that does real work lives in ``athena_pipeline.athena``, ``.warehouse``, ``.caspio`` and
``.events`` (which import nothing from Dagster), so it can be used from the CLI and tests too.
"""
