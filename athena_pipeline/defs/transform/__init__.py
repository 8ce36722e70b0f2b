"""Transformation assets: the dbt project in ``dbt_project/`` as Dagster assets.

``project.py``: the ``DbtProject`` and its manifest. ``translator.py``: asset keys ``[<layer>, <model>]``
and ``["seeds", <seed>]``, groups ``staging`` / ``intermediate`` / ``marts``, dbt sources mapped onto
the extraction assets. ``assets.py``: one ``@dbt_assets`` (``dbt build``, pool ``warehouse``, dbt tests
as asset checks, row counts and column schemas as metadata) and ``transform_job``. ``resources.py``:
the ``dbt`` resource.
"""
