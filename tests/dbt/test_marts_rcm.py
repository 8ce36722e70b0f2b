"""Revenue-cycle, denial and appointment marts on a generated sandbox practice: the planted numbers come back.

Loads a world's Data View rendering into a temp ``warehouse.duckdb`` with the project's loader, runs
the real ``dbt build`` of the five marts and everything upstream (models, seeds, unit tests, data and
singular tests) at the world's clock, and compares the marts with the world's ``ground_truth.json``:
the initial denial rate per payer, A/R per aging bucket to the cent with credits kept apart, days in
A/R and the no-show rate at practice level. The dbt unit tests (every KPI formula on hand-made rows)
must all have run and passed in that same build.
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

MARTS = ("+denials_by_payer_month", "+ar_aging", "+denial_reasons", "+revenue_cycle_kpis",
         "+appointment_utilization")
SINGULAR_TESTS = ("assert_ar_aging_buckets_sum_to_open_balance", "assert_rates_between_0_and_1",
                  "assert_denied_claims_have_one_primary_reason", "assert_denial_reasons_sum_to_denials",
                  "assert_ledger_reconciles_with_claim_balances", "assert_kpi_ar_matches_ar_aging")
# unit tests (model, name) that pin the edge cases the issue lists; every other unit test must pass too
UNIT_TESTS = {
    ("int_remittances_first_primary", "int_remittances_first_primary_denied_then_paid_on_appeal"),
    ("int_claim_balances", "int_claim_balances_transfer_to_secondary_is_aged_by_date_of_service"),
    ("ar_aging", "ar_aging_credit_balances_apart_and_transfers_aged_by_date_of_service"),
    ("denials_by_payer_month", "denials_by_payer_month_hfma_rates_and_an_overturned_appeal"),
    ("denial_reasons", "denial_reasons_one_primary_reason_per_claim_and_shares"),
    ("revenue_cycle_kpis", "revenue_cycle_kpis_every_formula_on_one_provider"),
    ("revenue_cycle_kpis", "revenue_cycle_kpis_practice_rows_sum_the_providers"),
    ("appointment_utilization", "appointment_utilization_no_show_rate_leaves_cancellations_out"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return generate_world(tmp_path_factory.mktemp("rcm-world") / "world", WorldOptions(providers=1, patients=600))


@pytest.fixture(scope="module")
def marts(world: World, tmp_path_factory: pytest.TempPathFactory):
    warehouse = tmp_path_factory.mktemp("rcm-marts") / "warehouse.duckdb"
    with connect(warehouse) as con, DuckDBDataViewSource(world.dataview_path) as source:
        for entry in CATALOG:
            load_dataview_batches(con, entry.name, source.fetch(entry.name), window=(None, None), run_id="test")
    # cautious: a test that also needs a model outside this selection is left out (on a fresh
    # warehouse it would fail for want of that view); the staging models' own data tests are
    # tests/dbt/test_staging.py's business and are skipped here to keep this module fast.
    result = run_dbt(warehouse, "build", "--select", *MARTS, "--exclude", "staging,test_type:data",
                     "--indirect-selection", "cautious",
                     "--vars", json.dumps({"as_of_date": world.current_date.isoformat()}))
    assert result.returncode == 0, f"dbt build failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    results = json.loads((warehouse.parent / "dbt_target" / "run_results.json").read_text())["results"]
    statuses = {r["unique_id"]: r["status"] for r in results}
    # the singular tests ran (and passed) as part of the build
    for test in SINGULAR_TESTS:
        assert statuses.get(f"test.athena_pipeline.{test}") == "pass", test
    return warehouse, json.loads(world.ground_truth_path.read_text()), statuses


def test_initial_denial_rate_per_payer_matches_the_planted_truth(marts):
    warehouse, truth, _ = marts
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
    warehouse, truth, _ = marts
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


def test_every_kpi_unit_test_ran_and_passed(marts):
    _, _, statuses = marts
    unit = {uid: status for uid, status in statuses.items() if uid.startswith("unit_test.")}
    assert {f"unit_test.athena_pipeline.{model}.{name}" for model, name in UNIT_TESTS} <= set(unit)
    assert len(unit) >= 14
    assert {uid for uid, status in unit.items() if status != "pass"} == set()


def test_days_in_ar_at_practice_level_matches_the_planted_truth(marts):
    """Same definition as the ground truth: A/R (positive balances) / (charges of the last 90 days / 90)."""
    warehouse, truth, _ = marts
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("""
            SELECT ar_end_of_month, credit_balance_end_of_month, avg_daily_charges_90d, days_in_ar
            FROM marts.revenue_cycle_kpis
            WHERE grain_level = 'practice' AND month_end_date = as_of_date""").fetchall()
        provider_ar = con.execute("""
            SELECT sum(ar_end_of_month) FROM marts.revenue_cycle_kpis
            WHERE grain_level = 'provider_department' AND month_end_date = as_of_date""").fetchone()[0]
    assert len(rows) == 1, "one practice row for the as-of month"
    ar, credit, avg_daily, days = rows[0]
    assert ar == Decimal(str(truth["ar_total"])).quantize(Decimal("0.01"))
    assert credit == Decimal(str(truth["credit_balances"]["amount"])).quantize(Decimal("0.01"))
    assert round(avg_daily, 2) == truth["avg_daily_charges_90d"]
    assert round(days, 2) == truth["days_in_ar"]
    assert provider_ar == ar, "practice A/R is the sum of the provider rows"


def test_no_show_rate_matches_the_planted_truth(marts):
    """Practice no-show rate = no-shows / appointments whose outcome is known (cancellations excluded)."""
    warehouse, truth, _ = marts
    with duckdb.connect(str(warehouse), read_only=True) as con:
        no_shows, known, cancellations, late = con.execute("""
            SELECT sum(no_shows), sum(appointments_outcome_known), sum(cancellations), sum(late_cancellations)
            FROM marts.appointment_utilization""").fetchone()
    assert round(no_shows / known, 6) == truth["no_show_rate"]
    assert cancellations > late > 0, "the sandbox plants cancellations, some of them late"


def test_denial_reasons_count_each_planted_denial_once(marts):
    warehouse, truth, _ = marts
    with duckdb.connect(str(warehouse), read_only=True) as con:
        by_payer = dict(con.execute(
            "SELECT payer_name, sum(denied_claims) FROM marts.denial_reasons GROUP BY 1").fetchall())
        categories = {c for (c,) in con.execute(
            "SELECT DISTINCT denial_category FROM marts.denial_reasons").fetchall()}
    planted = truth["initial_denial_rate_by_payer"]
    assert by_payer == {name: v["initially_denied"] for name, v in planted.items()}
    assert "unmapped" not in categories and len(categories) >= 5
