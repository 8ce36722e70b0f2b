"""The dbt project (``dbt_project/``) as Dagster sees it, and the manifest its assets are built from.

Why the manifest is prepared here and never committed: Dagster builds the dbt assets from
``dbt_project/target/manifest.json`` when definitions load, so a committed manifest would go stale the
moment a model changes. ``make test`` / ``make dev`` / ``make demo`` run ``dbt parse`` into
``dbt_project/target`` first; ``dagster dev`` (and every ``dg`` command) re-parses on each load through
``prepare_if_dev()``. Anything else that loads the definitions with no manifest, or with one older than
a file of the project (a fresh clone, or a model edited since, running ``pytest`` or ``dagster
definitions validate`` directly) gets one ``dbt parse`` here instead of a
``DagsterDbtManifestNotFoundError`` or assets that no longer match the models. A deployment that
ships a prepared manifest on a read-only disk keeps it (with a warning if it looks stale).

The manifest must be parsed with the same warehouse file NAME as runs use (dbt-duckdb's database is
the file stem; see ``profiles.yml``), which ``WAREHOUSE_PATH``'s default guarantees.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

log = logging.getLogger(__name__)

#: ``dbt_project/`` beside the package (the repository root is three levels up from here).
DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"
#: What ``dbt parse`` reads: a change to any of these (or a file added or removed) makes a new manifest.
PROJECT_INPUTS = ("dbt_project.yml", "profiles.yml", "packages.yml", "models", "macros", "seeds", "tests",
                  "snapshots", "analyses")


def dbt_executable() -> str:
    """The ``dbt`` installed beside this Python (the venv's), else the one on PATH. Why: Dagster, cron
    or an IDE often run ``.venv/bin/python`` without the venv's ``bin/`` on PATH."""
    beside = Path(sys.executable).with_name("dbt")
    return str(beside) if beside.is_file() else (shutil.which("dbt") or "dbt")


def newest_input_mtime(project_dir: Path = DBT_PROJECT_DIR) -> float:
    """The newest modification time among the project's inputs (files and folders: removing a file
    changes its folder's time)."""
    newest = 0.0
    for name in PROJECT_INPUTS:
        root = project_dir / name
        if not root.exists():
            continue
        newest = max(newest, root.stat().st_mtime)
        if root.is_dir():
            for path in root.rglob("*"):
                newest = max(newest, path.stat().st_mtime)
    return newest


def manifest_is_current(project: DbtProject) -> bool:
    """True when the manifest exists and is newer than every input of the project."""
    manifest = Path(project.manifest_path)
    return manifest.exists() and manifest.stat().st_mtime >= newest_input_mtime(Path(project.project_dir))


def parse_manifest(project: DbtProject) -> Path:
    """``dbt parse`` into a private folder, then move ``manifest.json`` (and dbt's partial-parse cache)
    into the project's target folder with an atomic rename: two processes loading the definitions
    at once each write a whole manifest, never a half-written one."""
    target = Path(project.project_dir) / project.target_path
    scratch = target / f".parse-{uuid.uuid4().hex[:8]}"
    try:
        DbtCliResource(project_dir=project, dbt_executable=dbt_executable()).cli(
            ["parse", "--quiet"], target_path=scratch).wait()
        for name in ("partial_parse.msgpack", "manifest.json"):  # the manifest last: it is what loads
            if (scratch / name).exists():
                os.replace(scratch / name, target / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Path(project.manifest_path)


def ensure_manifest(project: DbtProject) -> None:
    """``dbt parse`` when the manifest is missing or older than the project (see the module docstring)."""
    if manifest_is_current(project):
        return
    missing = not Path(project.manifest_path).exists()
    log.warning("dbt manifest %s %s: running `dbt parse` (make test/dev/demo do this for you)",
                project.manifest_path, "is missing" if missing else "is older than the dbt project")
    try:
        parse_manifest(project)
    except Exception:
        if missing:
            raise
        log.warning("`dbt parse` failed: keeping the existing (possibly stale) manifest", exc_info=True)


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
dbt_project.prepare_if_dev()
ensure_manifest(dbt_project)
