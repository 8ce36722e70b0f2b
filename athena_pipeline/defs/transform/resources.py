"""The ``dbt`` resource: the dbt CLI over ``dbt_project/`` (profiles in the project folder).

The warehouse file dbt writes is not configured here: the dbt assets set ``WAREHOUSE_PATH`` from the
``warehouse`` resource for the length of each dbt invocation (see ``assets.dbt_env``), so dbt
and the Python steps always open the same file.
"""

from __future__ import annotations

import dagster as dg
from dagster_dbt import DbtCliResource

from athena_pipeline.defs.transform.project import dbt_executable, dbt_project


@dg.definitions
def dbt_resources() -> dg.Definitions:
    """Resource ``dbt``."""
    return dg.Definitions(resources={"dbt": DbtCliResource(project_dir=dbt_project,
                                                           dbt_executable=dbt_executable())})
