"""The dbt project in Dagster: keys, groups, lineage and pool as the UI shows them, and real runs.

What a user of the Dagster UI notices: every dbt model is an asset ``<layer>/<model>`` in its layer's
group, seeds are ``seeds/<seed>``; the graph is one piece from the extraction assets to the marts;
dbt tests show up as asset checks; the dbt step waits for the ``warehouse`` pool. A real
``dg.materialize`` of a few staging models against a warehouse loaded from a small generated world
reports the row count and column schema of each table and passes its checks; after a second FHIR load
(one resource updated, one new, one deleted) the next run restages only that and ends up with exactly
what a full rebuild gives. dbt writes its target and logs to a tmp dir, never to ``dbt_project/target``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_dbt import DbtCliResource, DbtProject

from athena_pipeline.athena.dataview import DuckDBDataViewSource
from athena_pipeline.athena.dataview_catalog import CATALOG
from athena_pipeline.definitions import defs
from athena_pipeline.defs.extract.dataview import DATAVIEW_KEYS
from athena_pipeline.defs.extract.fhir import RAW_FHIR_KEYS
from athena_pipeline.defs.resources import WarehouseResource
from athena_pipeline.defs.transform.assets import (
    DBT_OP_NAME,
    TransformConfig,
    dbt_build_args,
    dbt_env,
    dbt_models,
    dbt_vars,
    prune_invocation_dirs,
    transform_run_config,
)
from athena_pipeline.defs.transform.incremental import FINGERPRINT_KEY, logic_fingerprint, stale_models
from athena_pipeline.defs.transform.project import (
    dbt_executable,
    dbt_project,
    ensure_manifest,
    manifest_is_current,
    newest_input_mtime,
)
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.world import WorldOptions
from athena_pipeline.warehouse.connection import connect
from athena_pipeline.warehouse.dataview_loader import load_dataview_batches
from athena_pipeline.warehouse.fhir_loader import load_fhir_directory
from tests.dbt.test_staging import export_fhir_ndjson, run_dbt

AS_OF = "2026-11-20"
SELECTED = [
    dg.AssetKey(["seeds", "aging_buckets"]),
    dg.AssetKey(["staging", "stg_fhir__patients"]),
    dg.AssetKey(["staging", "stg_fhir__observations"]),
    dg.AssetKey(["staging", "stg_fhir__observation_codings"]),
    dg.AssetKey(["staging", "stg_dataview__patients"]),
]
OBSERVATION_MODELS = ["stg_fhir__observations", "stg_fhir__observation_codings"]


def manifest() -> dict:
    return json.loads(dbt_project.manifest_path.read_text())


# --- the definitions --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return defs()


@pytest.fixture(scope="module")
def graph(definitions: dg.Definitions) -> dg.AssetGraph:
    return definitions.resolve_asset_graph()


def test_every_dbt_node_is_an_asset_keyed_and_grouped_by_layer(graph):
    nodes = manifest()["nodes"].values()
    models = [n for n in nodes if n["resource_type"] == "model"]
    seeds = [n for n in nodes if n["resource_type"] == "seed"]
    assert models and seeds
    for node in models:
        layer = node["fqn"][1]
        assert layer in ("staging", "intermediate", "marts"), node["original_file_path"]
        key = dg.AssetKey([layer, node["name"]])
        assert graph.has(key), key
        assert graph.get(key).group_name == layer
        assert graph.get(key).kinds >= {"dbt", "duckdb"}
        assert graph.get(key).owners, key
    for node in seeds:
        key = dg.AssetKey(["seeds", node["name"]])
        assert graph.has(key) and graph.get(key).group_name == "staging"
    # the keys other stages build on (publish depends on marts/<model>)
    assert graph.has(dg.AssetKey(["marts", "denials_by_payer_month"]))
    assert graph.has(dg.AssetKey(["staging", "stg_fhir__observations"]))
    # patient-level tables are tagged so (publishing and freshness policies go by it)
    phi = [n for n in models if (n.get("config", {}).get("meta") or n.get("meta") or {}).get("contains_phi")]
    for node in phi:
        assert graph.get(dg.AssetKey([node["fqn"][1], node["name"]])).tags.get("phi") == "true", node["name"]
    assert not graph.get(dg.AssetKey(["marts", "denials_by_payer_month"])).tags.get("phi")
    # descriptions come from the YAML
    observations = next(n for n in models if n["name"] == "stg_fhir__observations")
    assert graph.get(dg.AssetKey(["staging", "stg_fhir__observations"])).description.startswith(
        observations["description"][:40])


def test_sources_are_the_extraction_assets_and_marts_reach_them(graph):
    raw_keys = set(RAW_FHIR_KEYS.values()) | set(DATAVIEW_KEYS)
    for source in manifest()["sources"].values():
        key = dg.AssetKey(source["meta"]["dagster"]["asset_key"])
        assert key in raw_keys, f"source {source['source_name']}.{source['name']} is not an extraction asset"
        assert graph.get(key).is_materializable, key  # the real asset, not an external stub
    marts = [k for k in graph.get_all_asset_keys() if k.path[0] == "marts"]
    assert marts
    for mart in marts:
        upstream = dg.AssetSelection.assets(mart).upstream().resolve(graph)
        assert upstream & set(DATAVIEW_KEYS) or upstream & set(RAW_FHIR_KEYS.values()), mart
    # e.g. the denial mart goes back to the Data View CLAIM table and through it to the export
    chain = dg.AssetSelection.assets(dg.AssetKey(["marts", "denials_by_payer_month"])).upstream().resolve(graph)
    assert dg.AssetKey(["raw_dataview", "claim"]) in chain
    assert dg.AssetKey(["staging", "stg_dataview__claims"]) in chain


def test_dbt_step_runs_in_the_warehouse_pool_with_tests_as_checks_and_a_job(definitions, graph):
    assert dbt_models.op.pool == "warehouse"
    checks = {(c.asset_key, c.name) for c in dbt_models.check_specs}
    assert (dg.AssetKey(["staging", "stg_fhir__observations"]), "unique_stg_fhir__observations_observation_id") in checks
    assert len(checks) > 50
    job = definitions.resolve_job_def("transform_job")
    job_keys = job.asset_layer.selected_asset_keys
    assert {k for k in graph.get_all_asset_keys() if k.path[0] in ("staging", "intermediate", "marts", "seeds")} \
        <= set(job_keys)
    assert not any(k.path[0] in ("raw_fhir", "raw_dataview") for k in job_keys)
    assert job.asset_layer.asset_graph.asset_check_keys, "the job runs the dbt tests too"


def test_incremental_models_are_declared_as_such(graph):
    spec = graph.get(dg.AssetKey(["staging", "stg_fhir__observations"]))
    assert spec.metadata["dbt/materialized"] == "incremental"
    assert spec.metadata["dbt/unique_key"] == "observation_id"
    assert graph.get(dg.AssetKey(["staging", "stg_dataview__claims"])).metadata["dbt/materialized"] == "view"


# --- the manifest -------------------------------------------------------------------------------------
def clean_clone(tmp_path: Path) -> DbtProject:
    """The dbt project as a fresh clone has it: no target/, no logs/."""
    shutil.copytree(dbt_project.project_dir, tmp_path / "dbt_project",
                    ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    return DbtProject(project_dir=tmp_path / "dbt_project", profiles_dir=tmp_path / "dbt_project")


def test_a_manifest_older_than_any_project_file_is_stale(tmp_path):
    project = clean_clone(tmp_path)
    assert not manifest_is_current(project)  # none at all
    project.manifest_path.parent.mkdir()
    project.manifest_path.write_text("{}")
    newest = newest_input_mtime(project.project_dir)
    os.utime(project.manifest_path, (newest + 0.01, newest + 0.01))
    assert manifest_is_current(project)
    model = next((project.project_dir / "models" / "staging").rglob("*.sql"))
    os.utime(model, (newest + 0.02, newest + 0.02))
    assert not manifest_is_current(project)  # a model edited since the parse
    os.utime(project.manifest_path, (newest + 0.03, newest + 0.03))
    assert manifest_is_current(project)
    model.unlink()  # a model removed: its folder changed
    assert not manifest_is_current(project)


@pytest.mark.slow
def test_a_clean_clone_parses_its_manifest_when_definitions_load(tmp_path, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_PATH", str(tmp_path / "warehouse.duckdb"))
    project = clean_clone(tmp_path)
    ensure_manifest(project)
    manifest_ = json.loads(project.manifest_path.read_text())
    assert "model.athena_pipeline.stg_fhir__observations" in manifest_["nodes"]
    assert [p.name for p in project.manifest_path.parent.iterdir() if p.name.startswith(".parse-")] == []


# --- run config -> dbt arguments (no dbt) -------------------------------------------------------------
def test_vars_default_to_today_in_the_practice_time_zone_and_pass_only_what_is_set():
    today = dt.date(2026, 11, 24)
    assert dbt_vars(TransformConfig(), today) == {"as_of_date": "2026-11-24"}
    config = TransformConfig(as_of_date="2026-06-30", measurement_period_start="2026-01-01", context_ids=[195900])
    assert dbt_vars(config, today) == {"as_of_date": "2026-06-30", "measurement_period_start": "2026-01-01",
                                        "context_ids": [195900]}
    args = dbt_build_args(TransformConfig(full_refresh=True), today)
    assert args[0] == "build" and args[-1] == "--full-refresh"
    assert json.loads(args[args.index("--vars") + 1]) == {"as_of_date": "2026-11-24"}
    # unit tests are for CI; a run includes them only when asked
    assert args[args.index("--exclude-resource-type") + 1] == "unit_test"
    assert "--exclude-resource-type" not in dbt_build_args(TransformConfig(unit_tests=True), today)
    with pytest.raises(ValueError, match="ISO date"):
        TransformConfig(as_of_date="24/11/2026")
    assert transform_run_config(as_of_date=dt.date(2026, 11, 24)) == {
        "ops": {DBT_OP_NAME: {"config": {"full_refresh": False, "as_of_date": "2026-11-24"}}}}


def test_dbt_env_points_dbt_at_the_resource_warehouse_and_is_restored_after(tmp_path, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_PATH", "elsewhere/warehouse.duckdb")
    monkeypatch.delenv("DBT_INDIRECT_SELECTION", raising=False)
    monkeypatch.chdir(tmp_path)
    with dbt_env("data/warehouse.duckdb") as path:
        assert os.environ["WAREHOUSE_PATH"] == str(tmp_path / "data" / "warehouse.duckdb") == str(path)
        assert os.environ["DBT_INDIRECT_SELECTION"] == "buildable"
    assert os.environ["WAREHOUSE_PATH"] == "elsewhere/warehouse.duckdb"
    assert "DBT_INDIRECT_SELECTION" not in os.environ


def test_old_invocation_folders_are_pruned(tmp_path):
    for i in range(14):
        folder = tmp_path / f"{DBT_OP_NAME}-run{i:02d}-abc"
        folder.mkdir()
        os.utime(folder, (time.time() - 1000 + i, time.time() - 1000 + i))
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "other_op-run-1").mkdir()
    assert prune_invocation_dirs(tmp_path, DBT_OP_NAME, keep=10) == 4
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[:10] == [f"{DBT_OP_NAME}-run{i:02d}-abc" for i in range(4, 14)]
    assert {"manifest.json", "other_op-run-1"} <= set(left)


def test_logic_fingerprint_follows_the_model_and_the_macros_it_uses():
    manifest_ = manifest()
    uid = "model.athena_pipeline.stg_fhir__observations"
    before = logic_fingerprint(manifest_, uid)
    assert logic_fingerprint(manifest_, uid) == before
    changed = copy.deepcopy(manifest_)
    changed["macros"]["macro.athena_pipeline.fhir_timestamp"]["macro_sql"] += "\n{# a fix #}"
    assert logic_fingerprint(changed, uid) != before  # used (through the model), so it counts
    unrelated = copy.deepcopy(manifest_)
    unrelated["macros"]["macro.athena_pipeline.dataview_staging"]["macro_sql"] += "\n{# a fix #}"
    assert logic_fingerprint(unrelated, uid) == before
    edited = copy.deepcopy(manifest_)
    edited["nodes"][uid]["checksum"]["checksum"] = "0" * 64
    assert logic_fingerprint(edited, uid) != before

    key = dg.AssetKey(["staging", "stg_fhir__observations"])
    assert stale_models({key: before}, lambda k: before) == {}
    assert "changed" in stale_models({key: before}, lambda k: "0123")[key]
    assert "no materialisation" in stale_models({key: before}, lambda k: None)[key]


# --- real runs -----------------------------------------------------------------------------------------
@dataclass
class Warehouse:
    path: Path
    world_fhir: Path


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    """A small practice loaded with the project's loaders; dbt's target and logs in the tmp dir."""
    work = tmp_path_factory.mktemp("transform_assets")
    world = generate_world(work / "world", WorldOptions(providers=1, patients=300))
    export_fhir_ndjson(world, work / "export")
    path = work / "warehouse.duckdb"
    with connect(path) as con:
        load_fhir_directory(con, work / "export")
        with DuckDBDataViewSource(world.dataview_path) as source:
            for entry in CATALOG:
                load_dataview_batches(con, entry.name, source.fetch(entry.name), window=(None, None), run_id="t")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DBT_TARGET_PATH", str(work / "dbt_target"))
        yield Warehouse(path, world.fhir_path)


def materialize(warehouse: Warehouse, instance: dg.DagsterInstance, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [dbt_models],
        instance=instance,
        selection=dg.AssetSelection.assets(*SELECTED),
        resources={"dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable()),
                   "warehouse": WarehouseResource(path=str(warehouse.path))},
        run_config={"ops": {DBT_OP_NAME: {"config": {"as_of_date": AS_OF, **config}}}},
    )


def materializations(result: dg.ExecuteInProcessResult) -> dict[dg.AssetKey, dict]:
    return {e.asset_key: e.event_specific_data.materialization.metadata
            for e in result.get_asset_materialization_events()}


def count(path: Path, sql: str) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchone()[0]


def follow_up_export(warehouse: Warehouse, folder: Path) -> dict[str, str]:
    """A later export: one Observation with a new value, one new Observation, one deleted."""
    with duckdb.connect(str(warehouse.path), read_only=True) as con:
        rows = con.execute("""SELECT id, resource::VARCHAR FROM raw_fhir.observation
                              WHERE resource->>'$.valueQuantity.value' IS NOT NULL ORDER BY id LIMIT 3""").fetchall()
    (updated, updated_doc), (_, new_doc), (deleted, _) = rows
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    changed = json.loads(updated_doc)
    changed["valueQuantity"]["value"] = 12.3
    changed.setdefault("meta", {})["lastUpdated"] = stamp
    added = json.loads(new_doc)
    added["id"] = "added-by-the-follow-up-export"
    added.setdefault("meta", {})["lastUpdated"] = stamp
    (folder / "deleted").mkdir(parents=True)
    (folder / "Observation.000.ndjson").write_text(json.dumps(changed) + "\n" + json.dumps(added) + "\n")
    bundle = {"resourceType": "Bundle", "type": "transaction", "meta": {"lastUpdated": stamp},
              "entry": [{"request": {"method": "DELETE", "url": f"Observation/{deleted}"}}]}
    (folder / "deleted" / "Observation.000.ndjson").write_text(json.dumps(bundle) + "\n")
    return {"updated": updated, "added": added["id"], "deleted": deleted}


@dataclass
class Runs:
    """The two runs of the module: a first build, then one after a follow-up FHIR load."""

    first: dg.ExecuteInProcessResult
    second: dg.ExecuteInProcessResult
    raw_observations: int
    first_loaded: dt.datetime
    changes: dict[str, str]


@pytest.fixture(scope="module")
def runs(warehouse: Warehouse, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    instance = dg.DagsterInstance.ephemeral()  # one instance: the second run sees the first's fingerprints
    first = materialize(warehouse, instance)
    assert first.success
    raw_observations = count(warehouse.path, "SELECT count(*) FROM raw_fhir.observation")
    first_loaded = count(warehouse.path, "SELECT max(loaded_at) FROM main.stg_fhir__observations")
    folder = tmp_path_factory.mktemp("export2")
    changes = follow_up_export(warehouse, folder)
    with connect(warehouse.path) as con:
        load = load_fhir_directory(con, folder)
    assert (load.inserted, load.updated, load.deleted) == (1, 1, 1)
    second = materialize(warehouse, instance)
    assert second.success
    yield Runs(first, second, raw_observations, first_loaded, changes)
    instance.dispose()


def test_a_run_reports_row_counts_schemas_and_passing_checks(warehouse, runs):
    meta = materializations(runs.first)
    assert set(meta) == set(SELECTED)
    assert meta[dg.AssetKey(["staging", "stg_fhir__observations"])]["dagster/row_count"].value == runs.raw_observations
    codings = count(warehouse.path, "SELECT count(*) FROM main.stg_fhir__observation_codings")
    assert codings > runs.raw_observations
    assert meta[dg.AssetKey(["staging", "stg_fhir__observation_codings"])]["dagster/row_count"].value == codings
    buckets = len((dbt_project.project_dir / "seeds" / "aging_buckets.csv").read_text().strip().splitlines()) - 1
    assert meta[dg.AssetKey(["seeds", "aging_buckets"])]["dagster/row_count"].value == buckets
    schema = meta[dg.AssetKey(["staging", "stg_fhir__observations"])]["dagster/column_schema"].value
    columns = {c.name: c.type.upper() for c in schema.columns}
    assert "CHAR" in columns["observation_id"] and "TIMESTAMP" in columns["effective_at"]
    assert "DOUBLE" in columns["value_numeric"] and "loaded_at" in columns
    assert "dagster/row_count" not in meta[dg.AssetKey(["staging", "stg_dataview__patients"])]  # a view
    assert {m["as_of_date"].value for m in meta.values()} == {AS_OF}
    checks = {(e.asset_key, e.check_name): e.passed for e in runs.first.get_asset_check_evaluations()}
    assert checks[(dg.AssetKey(["staging", "stg_fhir__observations"]), "unique_stg_fhir__observations_observation_id")]
    assert checks[(dg.AssetKey(["staging", "stg_dataview__patients"]),
                   "unique_combination_of_columns_stg_dataview__patients_context_id__patient_id")]
    # only the selected models' tests ran (dbt's eager selection would also run the relationships
    # tests of every model pointing at stg_fhir__patients, against tables this warehouse lacks)
    assert {key for key, _ in checks} == set(SELECTED)
    assert len(checks) >= 10 and all(checks.values()), [k for k, ok in checks.items() if not ok]
    # dbt wrote its artifacts under DBT_TARGET_PATH (here the tmp dir), not into dbt_project/target
    assert list(Path(os.environ["DBT_TARGET_PATH"]).glob(f"{DBT_OP_NAME}-*/run_results.json"))


def test_the_next_run_restages_only_what_the_load_changed(warehouse, runs):
    meta = materializations(runs.second)
    assert meta[dg.AssetKey(["staging", "stg_fhir__observations"])]["dagster/row_count"].value == runs.raw_observations
    assert all(e.passed for e in runs.second.get_asset_check_evaluations())
    changes = runs.changes
    with duckdb.connect(str(warehouse.path), read_only=True) as con:
        staged = dict(con.execute("SELECT observation_id, value_numeric FROM main.stg_fhir__observations "
                                  "WHERE observation_id IN (?, ?, ?)", list(changes.values())).fetchall())
        assert set(staged) == {changes["updated"], changes["added"]} and staged[changes["updated"]] == 12.3
        assert con.execute("SELECT count(*) FROM main.stg_fhir__observation_codings WHERE observation_id = ?",
                           [changes["deleted"]]).fetchone()[0] == 0
        assert con.execute("SELECT count(DISTINCT observation_id) FROM main.stg_fhir__observation_codings "
                           "WHERE observation_id IN (?, ?)", [changes["updated"], changes["added"]]).fetchone()[0] == 2
        # only the two re-loaded resources carry the second load's stamp
        for model in OBSERVATION_MODELS:
            assert con.execute(f"SELECT count(DISTINCT observation_id) FROM main.{model} WHERE loaded_at > ?",
                               [runs.first_loaded]).fetchone()[0] == 2, model
    # the first run had nothing to go by (full refresh); the second, same logic, ran incrementally
    key = dg.AssetKey(["staging", "stg_fhir__observations"])
    first = materializations(runs.first)[key]
    assert first["dbt/full_refresh"].value is True and meta[key]["dbt/full_refresh"].value is False
    assert first[FINGERPRINT_KEY].value == meta[key][FINGERPRINT_KEY].value
    invocation = max(Path(os.environ["DBT_TARGET_PATH"]).glob(f"{DBT_OP_NAME}-*"), key=lambda p: p.stat().st_mtime)
    compiled = next(invocation.glob("compiled/**/stg_fhir__observations.sql")).read_text()
    executed = next(invocation.glob("run/**/stg_fhir__observations.sql")).read_text()
    assert "max(loaded_at)" in compiled and "delete from" in executed  # the new batch, delete+insert


@pytest.mark.slow
def test_the_incremental_result_equals_a_full_rebuild(warehouse, runs, tmp_path):
    rebuilt = tmp_path / "warehouse.duckdb"
    shutil.copy(warehouse.path, rebuilt)
    # the runs left their parse for the next run with the same vars; reuse it here too
    (tmp_path / "dbt_target").mkdir()
    shutil.copy(Path(os.environ["DBT_TARGET_PATH"]) / "partial_parse.msgpack", tmp_path / "dbt_target")
    out = run_dbt(rebuilt, "run", "--full-refresh", "--select", *OBSERVATION_MODELS, "--vars",
                  json.dumps({"as_of_date": AS_OF}))
    assert out.returncode == 0, out.stdout[-3000:]
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{warehouse.path}' AS incremental_build (READ_ONLY)")
        con.execute(f"ATTACH '{rebuilt}' AS full_build (READ_ONLY)")
        for model in OBSERVATION_MODELS:
            for a, b in (("incremental_build", "full_build"), ("full_build", "incremental_build")):
                diff = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a}.main.{model} "
                                   f"EXCEPT ALL SELECT * FROM {b}.main.{model})").fetchone()[0]
                assert diff == 0, f"{model}: {diff} rows in {a} but not in {b}"
