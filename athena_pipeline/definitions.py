"""The Dagster code location: everything under ``athena_pipeline/defs/`` is loaded automatically.

``dagster dev``, ``dagster definitions validate`` and ``dg`` find this module through
``[tool.dg.project] code_location_target_module`` in pyproject.toml (``workspace.yaml``
names it too, for ``-w workspace.yaml``). Adding a definition means adding a module under
``defs/``; nothing here needs to change.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    """Every asset, check, job, schedule, sensor and resource declared under ``defs/``."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
