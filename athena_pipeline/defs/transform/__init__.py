"""Transformation assets: the dbt project in ``dbt_project/`` as Dagster assets.

What will live here: the ``DbtProject`` handle and ``@dbt_assets`` for the staging,
intermediate and mart models (pool ``warehouse``, since dbt writes the DuckDB file), with a
translator that maps dbt sources onto the raw extraction assets; dbt tests become asset checks.
"""
