"""The Dagster code location: everything under ``athena_pipeline/defs/`` is loaded automatically.

``dagster dev``, ``dagster definitions validate`` and ``dg`` find this module through
``[tool.dg.project] code_location_target_module`` in pyproject.toml (``workspace.yaml``
names it too, for ``-w workspace.yaml``). Adding a definition means adding a module under
``defs/``; nothing here needs to change.

One thing is done here, over the loaded whole: the automation conditions of the dbt models and
Caspio tables, and the freshness policies of the marts and Caspio tables
(``defs/automation/policies.py``). They are chosen from the complete asset graph (which inputs
exist, which may never update), so they can only be applied once every stage is loaded.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from athena_pipeline.defs.automation.policies import with_automation
from athena_pipeline.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    """Every asset, check, job, schedule, sensor and resource declared under ``defs/``, with the
    nightly automation conditions and freshness policies applied."""
    loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return with_automation(loaded, Settings.from_env())
