"""The Dagster code location loads, its resources work, and the instance and dbt configs are valid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from athena_pipeline.definitions import defs
from athena_pipeline.defs.resources import AthenaResource, WarehouseResource, build_resources
from athena_pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def definitions(default_env: None) -> dg.Definitions:
    return defs()


def test_definitions_load_and_resolve(definitions: dg.Definitions) -> None:
    graph = definitions.resolve_asset_graph()
    assert graph is not None
    definitions.resolve_all_job_defs()
    assert set(definitions.resources or {}) >= {"athena", "warehouse"}
    # the keys the dbt sources point at (meta.dagster.asset_key); tests/defs/ checks all of them
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"fhir_bulk_export", "raw_fhir/patient", "raw_fhir/medicationrequest", "raw_dataview/claim"} <= keys


def test_resources_default_to_the_sandbox(definitions: dg.Definitions) -> None:
    athena = definitions.resources["athena"]
    assert isinstance(athena, AthenaResource)
    assert athena.fhir_base_url == "http://127.0.0.1:8765/fhir/r4"
    assert athena.token_url == "http://127.0.0.1:8765/oauth2/v1/token"
    assert (athena.client_id, athena.client_secret) == ("sandbox-client", "sandbox-secret")
    assert athena.group_id == "a-1.c-195900"
    warehouse = definitions.resources["warehouse"]
    assert isinstance(warehouse, WarehouseResource)
    assert warehouse.path == "data/warehouse.duckdb"


def test_secret_comes_from_envvar_at_run_time_and_warehouse_connects(
    default_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A set secret is passed as dg.EnvVar (resolved when the run starts, not at load time)."""
    monkeypatch.setenv("ATHENA_CLIENT_SECRET", "from-the-environment")
    monkeypatch.setenv("WAREHOUSE_PATH", str(tmp_path / "nested" / "warehouse.duckdb"))
    resources = build_resources(Settings.from_env())
    assert "from-the-environment" not in repr(resources["athena"])

    @dg.asset
    def probe(athena: AthenaResource, warehouse: WarehouseResource) -> str:
        with warehouse.connect() as con:
            con.execute("CREATE TABLE t AS SELECT 42 AS answer")
        return athena.client_secret or ""

    result = dg.materialize([probe], resources=resources)
    assert result.success
    assert result.output_for_node("probe") == "from-the-environment"
    # the parent directory was created, and a read-only reader sees the write
    with resources["warehouse"].connect(read_only=True) as con:
        assert con.execute("SELECT answer FROM t").fetchone() == (42,)
        with pytest.raises(duckdb.Error):
            con.execute("CREATE TABLE u (x INT)")


def test_dagster_yaml_is_a_valid_instance_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert config.pool_config.pool_granularity.value == "op"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_retries_enabled
        # the pool limits `make dev` sets are accepted by this instance
        instance.event_log_storage.set_concurrency_slots("athena_api", 2)
        assert instance.event_log_storage.get_concurrency_info("athena_api").slot_count == 2
    assert (tmp_path / "history").is_dir()  # SQLite storage lives under DAGSTER_HOME


def _dbt(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    dbt = Path(sys.executable).with_name("dbt")
    proc = subprocess.run(
        [str(dbt), *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_dbt_profile_opens_the_same_warehouse_from_dagster_and_from_the_repo_root(tmp_path: Path) -> None:
    """Dagster runs dbt inside dbt_project/, the Makefile from the root with an absolute path:
    both must write WAREHOUSE_PATH, and marts must land in schema `marts` of database `warehouse`."""
    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT / "dbt_project", repo / "dbt_project", ignore=shutil.ignore_patterns("target", "logs")
    )
    (repo / "dbt_project" / "models" / "marts" / "quality" / "probe.sql").write_text("select 1 as x")
    (repo / "data").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "WAREHOUSE_PATH"}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"

    # as Dagster's dbt resource runs it: cwd = dbt_project, default (relative) WAREHOUSE_PATH
    _dbt(["run", "--quiet", "--select", "probe", "--project-dir", ".", "--profiles-dir", "."], repo / "dbt_project", env)
    # as the Makefile runs it: from the root, absolute WAREHOUSE_PATH
    other = repo / "data" / "other" / "warehouse.duckdb"
    other.parent.mkdir()
    _dbt(
        ["run", "--quiet", "--select", "probe", "--project-dir", "dbt_project", "--profiles-dir", "dbt_project"],
        repo,
        {**env, "WAREHOUSE_PATH": str(other)},
    )
    for path in (repo / "data" / "warehouse.duckdb", other):
        with duckdb.connect(str(path), read_only=True) as con:
            rows = con.execute(
                "SELECT table_catalog, table_schema, table_name FROM information_schema.tables"
            ).fetchall()
        assert rows == [(path.stem, "marts", "probe")]
