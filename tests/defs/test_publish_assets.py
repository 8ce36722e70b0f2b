"""The Dagster publishing assets: one ``caspio/<mart>`` per mart, wired to the dbt marts, really materialized.

Definitions load as ``dagster dev`` loads them; the materialization runs the real asset and check
against the Caspio emulator on loopback and a temp warehouse whose mart fits the repository's YAML.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from athena_pipeline.caspio.publish import mart_catalog
from athena_pipeline.definitions import defs
from athena_pipeline.defs.publish.assets import CHECK_NAME, PUBLISH_ASSETS, PUBLISH_CHECKS, caspio_key
from athena_pipeline.defs.publish.resources import CaspioResource
from athena_pipeline.defs.resources import WarehouseResource
from athena_pipeline.sandbox.caspio.server import RunningCaspio, run_caspio_in_thread
from tests.caspio.test_publish import build_generic_mart, stats


@pytest.fixture
def definitions(default_env: None) -> dg.Definitions:
    return defs()


def test_one_publish_asset_per_mart_depending_on_its_dbt_mart(definitions: dg.Definitions):
    graph = definitions.resolve_asset_graph()
    marts = mart_catalog()
    keys = {k for k in graph.get_all_asset_keys() if graph.get(k).group_name == "caspio"}
    assert keys == {dg.AssetKey(["caspio", m]) for m in marts}
    assert {"ar_aging", "quality_care_gaps"} <= set(marts)
    assert marts["mart_status"].publish_last
    for mart in marts:
        node = graph.get(caspio_key(mart))
        if mart == "mart_status":  # "data as of" is published after the tables it describes
            others = {caspio_key(m) for m, info in marts.items() if m != mart and not info.contains_phi}
            assert node.parent_keys == {dg.AssetKey(["marts", mart]), *others}
            assert caspio_key("ar_aging") in node.parent_keys
            assert caspio_key("quality_care_gaps") not in node.parent_keys  # materializes nothing by default
        else:
            assert node.parent_keys == {dg.AssetKey(["marts", mart])}
        assert node.group_name == "caspio"
        assert "caspio" in node.kinds
        assert dg.AssetCheckKey(caspio_key(mart), CHECK_NAME) in node.check_keys
    # network-bound: no asset of the group holds the warehouse pool while it calls Caspio
    for asset in PUBLISH_ASSETS:
        assert asset.op.pool is None
    job = definitions.resolve_job_def("publish_job")
    assert {dg.AssetKey(["caspio", m]) for m in marts} <= set(job.asset_layer.selected_asset_keys)


@pytest.fixture(scope="module")
def caspio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCaspio]:
    with run_caspio_in_thread(tmp_path_factory.mktemp("caspio")) as running:
        yield running


def _resources(caspio: RunningCaspio, warehouse: Path, **overrides) -> dict:
    values = {"base_url": caspio.base_url, "client_id": "sandbox-caspio-client",
              "client_secret": "sandbox-caspio-secret", "table_prefix": "dg_", "reconcile_every": 0, **overrides}
    return {"caspio": CaspioResource(**values), "warehouse": WarehouseResource(path=str(warehouse))}


def _by_key(items, key: dg.AssetKey):
    return next(d for d in items if d.asset_key == key)


def test_materializing_publishes_and_the_check_compares_with_the_mart(default_env: None, caspio: RunningCaspio,
                                                                     tmp_path: Path):
    warehouse = tmp_path / "warehouse.duckdb"
    build_generic_mart(warehouse, "ar_aging", mart_catalog()["ar_aging"].grain, 120)
    key = caspio_key("ar_aging")
    selection = [a for a in PUBLISH_ASSETS if key in a.keys] + \
        [c for c in PUBLISH_CHECKS if key in {k.asset_key for k in c.check_keys}]
    resources = _resources(caspio, warehouse)

    result = dg.materialize(selection, resources=resources)
    assert result.success
    meta = _by_key(result.get_asset_materialization_events(), key).materialization.metadata
    assert meta["rows_inserted"].value == 120 and meta["dagster/row_count"].value == 120
    assert meta["calls_used"].value >= 120 and meta["budget_left"].value == 5000 - meta["calls_used"].value
    assert meta["duration_s"].value > 0 and meta["rows_unchanged"].value == 0
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.metadata["caspio_rows"].value == 120

    before = stats(caspio)
    again = dg.materialize(selection[:1], resources=resources)
    meta = _by_key(again.get_asset_materialization_events(), key).materialization.metadata
    assert (meta["rows_unchanged"].value, meta["calls_used"].value, meta["status"].value) == (120, 0, "unchanged")
    assert stats(caspio) == before, "an unchanged mart costs no Caspio call"

    # a row changed in Caspio by hand: the check fails and says how to repair it
    token = httpx.post(caspio.token_url, data={"grant_type": "client_credentials",
                                               "client_id": "sandbox-caspio-client",
                                               "client_secret": "sandbox-caspio-secret"}).json()["access_token"]
    httpx.delete(f"{caspio.v3}/tables/dg_ar_aging/records", params={"q.where": "test_count < 3"},
                 headers={"Authorization": f"Bearer {token}"})
    only_check = dg.AssetSelection.checks(dg.AssetCheckKey(key, CHECK_NAME))
    failed = dg.materialize(selection, resources=resources, selection=only_check, raise_on_error=False)
    assert not failed.get_asset_materialization_events(), "the check runs alone: Caspio is not written"
    evaluation = failed.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.metadata["caspio_rows"].value == 117
    repaired = dg.materialize(selection, resources=resources,
                              run_config={"ops": {selection[0].op.name: {"config": {"reconcile": True}}}})
    meta = _by_key(repaired.get_asset_materialization_events(), key).materialization.metadata
    assert meta["reconciled"].value is True and meta["rows_inserted"].value == 3
    assert repaired.get_asset_check_evaluations()[0].passed


def test_patient_level_mart_materializes_nothing_unless_enabled(default_env: None, caspio: RunningCaspio,
                                                                tmp_path: Path):
    warehouse = tmp_path / "warehouse.duckdb"
    info = mart_catalog()["quality_care_gaps"]
    assert info.contains_phi
    build_generic_mart(warehouse, "quality_care_gaps", info.grain, 15)
    key = caspio_key("quality_care_gaps")
    selection = [a for a in PUBLISH_ASSETS if key in a.keys] + \
        [c for c in PUBLISH_CHECKS if key in {k.asset_key for k in c.check_keys}]
    before = stats(caspio)
    result = dg.materialize(selection, resources=_resources(caspio, warehouse))
    assert result.success and not result.get_asset_materialization_events()
    assert not result.get_asset_check_evaluations()
    assert stats(caspio) == before, "nothing sent to Caspio"
    enabled = dg.materialize(selection, resources=_resources(caspio, warehouse, publish_patient_level=True))
    meta = _by_key(enabled.get_asset_materialization_events(), key).materialization.metadata
    assert meta["rows_inserted"].value == 15 and enabled.get_asset_check_evaluations()[0].passed
