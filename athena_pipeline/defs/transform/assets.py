"""The dbt project as Dagster assets: one ``@dbt_assets`` over the whole manifest, and ``transform_job``.

One definition, not one per layer: dbt orders the models itself, runs them on its own threads in one
process, and a single ``dbt build`` writes the DuckDB file once, in pool ``warehouse`` (DuckDB allows
one writer per file across processes, so every warehouse writer shares that pool). Selecting a
subset of the assets (a few models, a layer) runs ``dbt build --select`` of just those.

What a run does: ``dbt build`` (seeds, models, snapshots and their data tests, in DAG order; dbt unit
tests only when configured) with the project's vars from the run config (:class:`TransformConfig`),
then row counts and column schemas attached to every materialisation, read in one go after dbt exits
and releases DuckDB's lock (``metadata.py`` says why not dagster-dbt's ``fetch_row_counts()``). dbt
data tests are the assets' checks; a failing model or test fails the step after the materialisations
of everything that did build are recorded. The large FHIR staging tables are dbt incremental models
(``dbt_project/macros/staging/incremental.sql``): a nightly run re-stages only what the last load
changed; ``full_refresh: true`` rebuilds them from scratch, and so does a run after their SQL or a
macro they use changed (``incremental.py``).

Run config of ``transform_job`` (all optional), e.g. for a sandbox world whose clock is not today::

    ops:
      dbt_models:
        config: {as_of_date: "2026-11-24", full_refresh: false}

:func:`transform_run_config` builds that dict.
"""

# No `from __future__ import annotations`: Dagster reads the asset function's annotations at
# definition time to find its config class and resources.
import contextlib
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
from dagster_dbt import DbtCliResource, dbt_assets
from pydantic import Field, field_validator

from athena_pipeline.defs.resources import WarehouseResource
from athena_pipeline.defs.transform.incremental import (
    FINGERPRINT_KEY,
    incremental_nodes,
    logic_fingerprint,
    recorded_fingerprint,
    stale_models,
)
from athena_pipeline.defs.transform.metadata import table_metadata
from athena_pipeline.defs.transform.project import dbt_project
from athena_pipeline.defs.transform.translator import AthenaDbtTranslator
from athena_pipeline.settings import Settings
from athena_pipeline.warehouse.connection import connect

DBT_OP_NAME = "dbt_models"
#: Invocation folders (``dbt_project/target/dbt_models-<run>-<id>``, one per run) kept after a run.
KEEP_INVOCATIONS = 10
#: How long reading row counts after the build waits for a warehouse lock held by another process.
METADATA_WAIT_SECONDS = 10.0


class TransformConfig(dg.Config):
    """Run config of the dbt assets: the project's vars (``dbt_project.yml``) and a full refresh."""

    as_of_date: str | None = Field(
        default=None,
        description="ISO date the as-of figures (A/R age, open gaps) are computed for; "
                    "empty = today in PIPELINE_TIMEZONE.")
    measurement_period_start: str | None = Field(
        default=None, description="Quality-measure period start (ISO date); empty = Jan 1 of as_of_date's year.")
    measurement_period_end: str | None = Field(
        default=None, description="Quality-measure period end (ISO date); empty = Dec 31 of as_of_date's year.")
    context_ids: list[int] = Field(
        default_factory=list, description="Data View practices (CONTEXTID) to stage; empty = all in the warehouse.")
    full_refresh: bool = Field(
        default=False,
        description="Rebuild incremental models from scratch. Not needed after a change to their SQL: "
                    "a run notices that by itself (logic fingerprint) and rebuilds what changed.")
    unit_tests: bool = Field(
        default=False,
        description="Also run dbt unit tests. They check SQL logic on fixed inputs, so they belong in CI "
                    "(make test), not in every nightly build, where they would cost ~30 s and test nothing new.")

    @field_validator("as_of_date", "measurement_period_start", "measurement_period_end")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            raise ValueError(f"must be an ISO date (YYYY-MM-DD), got {value!r}") from None


def today_in(timezone: str) -> dt.date:
    """Today's date in the practice's time zone (not the server's: a run at 21:00 New York on a UTC
    server is still "today" for the practice)."""
    return dt.datetime.now(ZoneInfo(timezone)).date()


def dbt_vars(config: TransformConfig, today: dt.date) -> dict[str, Any]:
    """The ``--vars`` of a run: ``as_of_date`` always explicit (``today`` unless configured), the rest
    only when configured, so dbt's defaults (``dbt_project.yml``) apply otherwise."""
    out: dict[str, Any] = {"as_of_date": config.as_of_date or today.isoformat()}
    if config.measurement_period_start:
        out["measurement_period_start"] = config.measurement_period_start
    if config.measurement_period_end:
        out["measurement_period_end"] = config.measurement_period_end
    if config.context_ids:
        out["context_ids"] = list(config.context_ids)
    return out


def dbt_build_args(config: TransformConfig, today: dt.date, *, full_refresh: bool = False) -> list[str]:
    """``dbt build`` arguments for a run (dagster-dbt appends ``--select`` for the selected assets);
    ``full_refresh`` forces ``--full-refresh`` whatever the config says."""
    args = ["build", "--vars", json.dumps(dbt_vars(config, today), sort_keys=True)]
    if not config.unit_tests:
        args += ["--exclude-resource-type", "unit_test"]
    if config.full_refresh or full_refresh:
        args.append("--full-refresh")
    return args


def transform_run_config(*, as_of_date: dt.date | str | None = None, full_refresh: bool = False,
                         measurement_period_start: dt.date | str | None = None,
                         measurement_period_end: dt.date | str | None = None,
                         context_ids: list[int] | None = None, unit_tests: bool = False) -> dict[str, Any]:
    """Run config for ``transform_job`` (or any job with the dbt assets), e.g. for a schedule or the CLI."""

    def iso(value: dt.date | str | None) -> str | None:
        return value.isoformat() if isinstance(value, dt.date) else value

    config: dict[str, Any] = {"full_refresh": full_refresh}
    if unit_tests:
        config["unit_tests"] = True
    for name, value in (("as_of_date", as_of_date), ("measurement_period_start", measurement_period_start),
                        ("measurement_period_end", measurement_period_end)):
        if value is not None:
            config[name] = iso(value)
    if context_ids:
        config["context_ids"] = list(context_ids)
    return {"ops": {DBT_OP_NAME: {"config": config}}}


#: dbt's indirect selection for runs of a subset of the assets: a test runs when each model it reads
#: is selected or upstream of the selection. dbt's default (eager) also runs the tests of models
#: *downstream* of a selected one (e.g. every relationships test pointing at stg_fhir__patients when
#: only that model is selected), against tables this run did not build and that may not exist yet.
#: ``dbt_project.yml`` sets the same flag for dbt run by hand; the environment wins over it.
INDIRECT_SELECTION = "buildable"


@contextmanager
def dbt_env(warehouse_path: str | os.PathLike[str]) -> Iterator[Path]:
    """The environment of a dbt invocation, restored afterwards.

    ``WAREHOUSE_PATH`` = the warehouse resource's file, absolute: ``profiles.yml`` reads it (in the dbt
    subprocess, and in the dbt adapter dagster-dbt sets up in this process), so dbt writes the file
    every other step of the run reads, whatever the environment says; absolute, because dbt runs in
    ``dbt_project/`` and the resource's relative path is relative to this process.
    ``DBT_INDIRECT_SELECTION`` = :data:`INDIRECT_SELECTION` unless already set.
    """
    absolute = Path(warehouse_path).expanduser().resolve()
    wanted = {"WAREHOUSE_PATH": str(absolute),
              "DBT_INDIRECT_SELECTION": os.environ.get("DBT_INDIRECT_SELECTION") or INDIRECT_SELECTION}
    previous = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield absolute
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def prune_invocation_dirs(target_dir: Path, prefix: str, keep: int = KEEP_INVOCATIONS) -> int:
    """Delete all but the newest ``keep`` ``<prefix>-*`` invocation folders dagster-dbt left in the
    dbt target folder (each holds a manifest and compiled SQL: a nightly pipeline would otherwise
    grow it by a few MB a day). Returns how many were removed."""
    folders = sorted((p for p in target_dir.glob(f"{prefix}-*") if p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return max(len(folders) - keep, 0)


def keep_partial_parse(invocation_dir: Path) -> bool:
    """Make this run's parse the starting point of the next one (dagster-dbt copies
    ``<target>/partial_parse.msgpack`` into each new invocation folder).

    Why: ``--vars`` that differ from the last parse make dbt re-parse the whole project (seconds of
    CPU). Runs of the same day pass the same vars, so after the first they parse only what changed.
    dbt checks the file against the project, vars and profile, and parses fully when it does not
    match, so a stale file costs nothing but the parse it would have cost anyway. Atomic replace:
    a concurrent reader sees the old file or the new one.
    """
    source = invocation_dir / "partial_parse.msgpack"
    if not source.is_file():
        return False
    scratch = invocation_dir.parent / f".partial_parse.{invocation_dir.name}.tmp"
    shutil.copyfile(source, scratch)
    os.replace(scratch, invocation_dir.parent / "partial_parse.msgpack")
    return True


def release_dbt_duckdb(adapter: Any | None) -> None:
    """Close any DuckDB connection the in-process dbt adapter dagster-dbt creates has opened (its own
    metadata helpers, or a macro run through it, would open one).

    Why: dbt-duckdb keeps one DuckDB instance per process (a class attribute), open read-write until
    the process ends. In a multi-process run that is this step's own process, but when the run is in
    process (``dg.materialize``, ``execute_in_process``, a CLI running a job) the next step, or the
    caller, could not open the warehouse again ("different configuration than existing connections").
    """
    if adapter is not None:
        with contextlib.suppress(Exception):  # best effort: closing is all that is left to do
            adapter.cleanup_connections()
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:
        return
    with DuckDBConnectionManager._LOCK:  # dbt-duckdb 1.11 (pinned): the process-wide instance
        env, DuckDBConnectionManager._ENV = DuckDBConnectionManager._ENV, None
    if env is not None:
        env.close()


def _manifest_database(manifest: Mapping[str, Any]) -> str | None:
    for node in manifest.get("nodes", {}).values():
        if node.get("resource_type") == "model" and node.get("database"):
            return str(node["database"])
    return None


def _node_of(event: Any, manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    unique_id = event.metadata.get("unique_id")
    text = getattr(unique_id, "text", unique_id)
    return manifest.get("nodes", {}).get(text) if text else None


def built_table_metadata(path: Path, events: list[Any], manifest: Mapping[str, Any],
                         log: Any) -> dict[str, dict[str, Any]]:
    """Row counts and schemas of the relations the run materialised (see ``metadata.py``); empty,
    with a warning, if the warehouse cannot be read (the build itself succeeded: do not fail it)."""
    nodes = [node for event in events if isinstance(event, (dg.Output, dg.AssetMaterialization))
             if (node := _node_of(event, manifest)) is not None]
    if not nodes:
        return {}
    try:
        with connect(path, read_only=True, wait_seconds=METADATA_WAIT_SECONDS) as con:
            return table_metadata(con, nodes)
    except Exception as exc:  # noqa: BLE001 - metadata is a nicety; the tables are built
        log.warning(f"row counts and column schemas not recorded: {type(exc).__name__}: {exc}")
        return {}


#: The incremental models, and their asset keys (whose logic fingerprints decide on a full refresh).
INCREMENTAL_NODES = incremental_nodes(json.loads(dbt_project.manifest_path.read_text()))
INCREMENTAL_KEYS: dict[dg.AssetKey, str] = {
    AthenaDbtTranslator().get_asset_key(node): uid for uid, node in INCREMENTAL_NODES.items()}


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    name=DBT_OP_NAME,
    dagster_dbt_translator=AthenaDbtTranslator(),
    pool="warehouse",
)
def dbt_models(context: dg.AssetExecutionContext, config: TransformConfig, dbt: DbtCliResource,
               warehouse: WarehouseResource):
    """``dbt build`` of the selected models, seeds and tests against the warehouse (see the module docstring)."""
    settings = Settings.from_env()
    today = today_in(settings.pipeline_timezone)
    manifest = json.loads(dbt_project.manifest_path.read_text())
    fingerprints = {key: logic_fingerprint(manifest, uid) for key, uid in INCREMENTAL_KEYS.items()
                    if key in context.selected_asset_keys}
    stale = {} if config.full_refresh else stale_models(fingerprints, recorded_fingerprint(context.instance))
    for key, reason in stale.items():
        context.log.info(f"{key.to_user_string()}: full refresh, {reason}")
    args = dbt_build_args(config, today, full_refresh=bool(stale))
    full_refresh = "--full-refresh" in args
    as_of = dbt_vars(config, today)["as_of_date"]
    context.log.info(f"dbt {' '.join(args)}")
    started = time.perf_counter()
    with dbt_env(warehouse.path) as path:
        database = _manifest_database(manifest)
        if database and database != path.stem:
            context.log.warning(
                f"the manifest was parsed for a warehouse named {database}.duckdb but this run writes "
                f"{path.name}: dbt-duckdb names the database after the file, which breaks references "
                "across runs. Keep the file name warehouse.duckdb, or re-run `dbt parse`.")
        invocation = dbt.cli(args, context=context, raise_on_error=False)
        # Test results go to Dagster as dbt reports them, so recording them (a few ms each in the
        # event log, ~600 of them) overlaps with dbt's work; the materialisations wait for the row
        # counts, which can only be read once dbt has released the file.
        materialized: list[Any] = []
        try:
            for event in invocation.stream():  # blocking reads of dbt's log: no busy wait
                if isinstance(event, (dg.Output, dg.AssetMaterialization)):
                    materialized.append(event)
                else:
                    yield event
        finally:
            release_dbt_duckdb(invocation.adapter)
    context.log.info(f"dbt build finished in {time.perf_counter() - started:.1f} s")
    tables = built_table_metadata(path, materialized, invocation.manifest, context.log)
    for event in materialized:
        node = _node_of(event, invocation.manifest)
        extra = dict(tables.get(node["unique_id"], {})) if node else {}
        if node and node["unique_id"] in INCREMENTAL_NODES:
            extra[FINGERPRINT_KEY] = logic_fingerprint(manifest, node["unique_id"])
            extra["dbt/full_refresh"] = full_refresh
        yield event.with_metadata({**event.metadata, **extra, "as_of_date": as_of})
    error = invocation.get_error()
    if error is not None:
        raise error
    keep_partial_parse(invocation.target_path)
    prune_invocation_dirs(invocation.target_path.parent, DBT_OP_NAME)


transform_job = dg.define_asset_job(
    "transform_job",
    selection=dg.AssetSelection.assets(dbt_models),
    description="dbt build of every model, seed and test (staging -> intermediate -> marts) against the "
                "warehouse. Run config: ops.dbt_models.config (as_of_date, full_refresh, ...).",
)
