"""Revenue-cycle marts on a generated sandbox practice: the numbers the generator planted come back.

Loads a world's Data View rendering into a temp ``warehouse.duckdb`` with the project's loader, runs
the real ``dbt build --select +denials_by_payer_month +ar_aging`` (models, seeds, data and singular
tests) at the world's clock, and compares the marts with the world's ``ground_truth.json``: the
initial denial rate per payer and A/R per aging bucket to the cent, with credits kept apart.
"""

from __future__ import annotations

import json
from decimal import Decimal

import duckdb
import pytest

from athena_pipeline.athena.dataview import DuckDBDataViewSource
from athena_pipeline.athena.dataview_catalog import CATALOG
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.world import World, WorldOptions
from athena_pipeline.warehouse.connection import connect
from athena_pipeline.warehouse.dataview_loader import load_dataview_batches
from tests.dbt.test_staging import run_dbt


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return generate_world(tmp_path_factory.mktemp("rcm-world") / "world", WorldOptions(providers=1, patients=600))


@pytest.fixture(scope="module")
def marts(world: World, tmp_path_factory: pytest.TempPathFactory):
    warehouse = tmp_path_factory.mktemp("rcm-marts") / "warehouse.duckdb"
    with connect(warehouse) as con, DuckDBDataViewSource(world.dataview_path) as source:
        for entry in CATALOG:
            load_dataview_batches(con, entry.name, source.fetch(entry.name), window=(None, None), run_id="test")
    # cautious: a staging test that also needs a model outside this selection (claims -> patients
    # relationships) is left out; on a fresh warehouse it would fail for want of that view.
    result = run_dbt(warehouse, "build", "--select", "+denials_by_payer_month", "+ar_aging",
                     "--indirect-selection", "cautious", "--vars", json.dumps({"as_of_date": world.current_date.isoformat()}))
    assert result.returncode == 0, f"dbt build failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    # the singular tests ran (and passed) as part of the build
    for test in ("assert_ar_aging_buckets_sum_to_open_balance", "assert_denial_rates_between_0_and_1",
                 "assert_denied_claims_have_one_primary_reason"):
        assert test in result.stdout, test
    return warehouse, json.loads(world.ground_truth_path.read_text())


def test_initial_denial_rate_per_payer_matches_the_planted_truth(marts):
    warehouse, truth = marts
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("""
            SELECT payer_name, sum(claims_first_remitted), sum(claims_denied_initial),
                   sum(claims_submitted), sum(avoidable_denials)
            FROM marts.denials_by_payer_month GROUP BY 1 ORDER BY 1""").fetchall()
    expected = truth["initial_denial_rate_by_payer"]
    assert {name for name, *_ in rows} == set(expected)
    for name, remitted, denied, submitted, avoidable in rows:
        assert (remitted, denied) == (expected[name]["claims_with_first_remit"], expected[name]["initially_denied"]), name
        assert round(denied / remitted, 6) == expected[name]["initial_denial_rate"], name
        assert submitted >= remitted and avoidable <= denied
    assert sum(d for _, _, d, _, _ in rows) > 100, "the sandbox plants denials for every payer"


def test_ar_by_bucket_matches_the_planted_truth_to_the_cent(marts):
    warehouse, truth = marts
    with duckdb.connect(str(warehouse), read_only=True) as con:
        buckets = dict(con.execute("""
            SELECT aging_bucket, sum(open_balance) FROM marts.ar_aging
            WHERE balance_type = 'open_balance' GROUP BY 1""").fetchall())
        credit_amount, credit_claims, credit_in_buckets = con.execute("""
            SELECT sum(open_balance) FILTER (WHERE balance_type = 'credit_balance'),
                   sum(claim_count) FILTER (WHERE balance_type = 'credit_balance'),
                   count(*) FILTER (WHERE balance_type = 'open_balance' AND open_balance <= 0)
            FROM marts.ar_aging""").fetchone()
        parties = {p for (p,) in con.execute("SELECT DISTINCT responsible_party FROM marts.ar_aging").fetchall()}
    expected = truth["ar_by_bucket"]
    assert set(buckets) == set(expected)
    for bucket, amount in buckets.items():
        assert amount == Decimal(str(expected[bucket]["open_balance"])).quantize(Decimal("0.01")), bucket
    assert sum(buckets.values()) == Decimal(str(truth["ar_total"])).quantize(Decimal("0.01"))
    # credits are reported on their own rows, never netted into a bucket
    assert credit_in_buckets == 0
    assert credit_amount == Decimal(str(truth["credit_balances"]["amount"])).quantize(Decimal("0.01"))
    assert credit_claims == truth["credit_balances"]["claim_count"]
    assert {"primary", "patient"} <= parties
