"""Publishing marts into Caspio, against the Caspio emulator on a real loopback socket.

What a user relies on: the first publish fills Caspio with exactly the mart; an unchanged mart costs
no call at all; a few changed rows cost about a call each; deletes reach Caspio; rows edited, deleted
or added by hand in Caspio are repaired by reconciliation; 429/5xx storms and a SIGKILL mid-publish
end with Caspio equal to the mart and no duplicate row; a plan over budget stops (with the numbers)
unless forced; patient-level marts stay out unless enabled; a dry run writes nothing.

The marts are small DuckDB tables with the real marts' column shapes (dates, money, rates with NULLs,
booleans, quotes in names) in a temp ``warehouse.duckdb``; their dbt YAML is a fixture folder, so the
tests do not move when the real marts gain columns. Calls are counted by the emulator
(``/_emulator/stats``), not by the client under test.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest
from click.testing import CliRunner

from athena_pipeline.caspio import state as state_mod
from athena_pipeline.caspio.publish import (
    PublishBudgetExceeded,
    client_for,
    mart_catalog,
    publish,
    verify,
    warehouse_factory,
)
from athena_pipeline.cli import main
from athena_pipeline.http import RetryPolicy
from athena_pipeline.sandbox.caspio.server import RunningCaspio, run_caspio_in_thread
from athena_pipeline.settings import Settings

REST = "/integrations/rest/v3/tables/{table}/records"
POST, PUT, DELETE, GET = (f"{m} {REST}" for m in ("POST", "PUT", "DELETE", "GET"))
CLI = Path(sys.executable).with_name("athena-pipeline")

MARTS_YAML = """
version: 2
models:
  - name: ar_aging
    description: A/R on the as-of date by payer, responsible party and aging bucket.
    meta:
      grain: [as_of_date, context_id, insurance_package_id, responsible_party, balance_type, aging_bucket]
    columns:
      - name: open_balance
        description: Sum of the balances.
  - name: denials_by_payer_month
    description: Initial denials by primary payer and submission month.
    meta:
      grain: [context_id, month, insurance_package_id]
  - name: quality_care_gaps
    description: One row per patient in a measure's denominator.
    meta:
      contains_phi: true
      grain: [measure_id, period_start, period_end, patient_id]
"""

AR_AGING = """CREATE OR REPLACE TABLE marts.ar_aging AS
SELECT DATE '2026-11-23' AS as_of_date, 195900 AS context_id, CAST(p AS BIGINT) AS insurance_package_id,
       'Payer ' || p AS payer_name, r AS responsible_party, 'open_balance' AS balance_type, b AS aging_bucket,
       bo AS bucket_order, bo >= 4 AS is_over_90,
       CAST(round(p * 13.37 + bo * 101.1, 2) AS DECIMAL(18,2)) AS open_balance,
       CAST(p + bo AS BIGINT) AS claim_count
FROM range(1, {payers}) t(p), (VALUES ('primary'), ('secondary')) r(r),
     (VALUES ('0-30', 1), ('31-60', 2), ('61-90', 3), ('91-120', 4), ('120+', 5)) b(b, bo)"""

DENIALS = """CREATE OR REPLACE TABLE marts.denials_by_payer_month AS
SELECT DATE '2026-11-23' AS as_of_date, 195900 AS context_id, CAST(m AS DATE) AS month,
       CAST(p AS BIGINT) AS insurance_package_id,
       CASE p WHEN 2 THEN 'Bürger – Krankenkasse ✓' WHEN 4 THEN '' ELSE 'O''Brien Payer ' || p END AS payer_name,
       TIMESTAMPTZ '2026-11-23 08:30:15+00' + p * INTERVAL 1 MINUTE AS loaded_at,
       CAST(p * 3 AS BIGINT) AS claims_submitted, CAST(p * 301.25 AS DECIMAL(18,2)) AS charges_submitted,
       CAST(p % 5 AS BIGINT) AS claims_denied_initial,
       CAST((p % 5) * 55.5 AS DECIMAL(18,2)) AS denied_amount_initial,
       (p % 5) / (p * 3.0) AS initial_denial_rate,
       CASE WHEN p % 7 = 0 THEN NULL ELSE (p % 5) / (p * 2.0) END AS initial_denial_rate_adjudicated,
       CAST(p * 1.5 AS DECIMAL(18,2)) AS denial_write_offs
FROM range(DATE '2025-01-01', DATE '2026-11-01', INTERVAL 1 MONTH) t(m), range(1, {payers}) s(p)"""

CARE_GAPS = """CREATE OR REPLACE TABLE marts.quality_care_gaps AS
SELECT 'CMS122v12' AS measure_id, DATE '2026-01-01' AS period_start, DATE '2026-12-31' AS period_end,
       'p-' || i AS patient_id, 7 AS provider_id, true AS in_denominator, false AS is_excluded,
       CAST(NULL AS VARCHAR) AS exclusion_reason, i % 3 = 0 AS in_numerator, i % 3 = 0 AS is_gap,
       DATE '2026-06-01' AS last_evidence_date, CAST(7.5 + i / 10 AS VARCHAR) AS last_evidence_value
FROM range({patients}) t(i)"""


def build_marts(warehouse: Path, *, ar_payers: int = 12, denial_payers: int = 6, patients: int = 12) -> None:
    """A warehouse with the three marts (110 + 110 + ``patients`` rows by default)."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS marts")
        con.execute(AR_AGING.format(payers=ar_payers))
        con.execute(DENIALS.format(payers=denial_payers))
        con.execute(CARE_GAPS.format(patients=patients))


def build_generic_mart(warehouse: Path, mart: str, grain: tuple[str, ...], rows: int) -> None:
    """``marts.<mart>`` with the real mart's grain columns (so its real dbt YAML fits) and a few
    value columns of every Caspio type: for tests that go through the CLI and Dagster, which read
    the repository's own YAML."""
    keys = [f"'k' || r AS {grain[0]}"] + [f"'{g}' AS {g}" for g in grain[1:]]
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS marts")
        con.execute(f"""CREATE OR REPLACE TABLE marts.{mart} AS
            SELECT {', '.join(keys)}, CAST(r * 1.25 AS DECIMAL(18,2)) AS test_balance, r AS test_count,
                   r % 2 = 0 AS test_flag, DATE '2026-01-01' + CAST(r AS INTEGER) AS test_day,
                   r / 7.0 AS test_rate
            FROM range({rows}) t(r)""")


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def caspio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCaspio]:
    with run_caspio_in_thread(tmp_path_factory.mktemp("caspio")) as running:
        yield running


@pytest.fixture(scope="module")
def marts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("marts")
    (folder / "_marts.yml").write_text(MARTS_YAML)
    for name in ("ar_aging", "denials_by_payer_month", "quality_care_gaps"):
        (folder / f"{name}.sql").write_text("select 1")
    return folder


@pytest.fixture(autouse=True)
def _calm(caspio: RunningCaspio) -> Iterator[None]:
    """Every test starts and ends with no faults and no latency."""
    knobs = {"latency_seconds": 0.0, "retry_after_header": True}
    httpx.post(f"{caspio.base_url}/_emulator/config", json=knobs)
    httpx.post(f"{caspio.base_url}/_emulator/faults", json={"clear": True})
    yield
    httpx.post(f"{caspio.base_url}/_emulator/config", json=knobs)
    httpx.post(f"{caspio.base_url}/_emulator/faults", json={"clear": True})


@pytest.fixture
def settings(caspio: RunningCaspio, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """A fresh warehouse with the marts, and a table prefix of this test's own in the shared emulator."""
    warehouse = tmp_path / "warehouse.duckdb"
    build_marts(warehouse)
    prefix = "t" + format(abs(hash(request.node.name)) % 10**6, "06d") + "_"
    return dataclasses.replace(Settings.from_env({}), warehouse_path=warehouse, caspio_base_url=caspio.base_url,
                               caspio_requests_per_second=0, caspio_table_prefix=prefix, caspio_reconcile_every=0)


# --- helpers -----------------------------------------------------------------------------------------
def stats(caspio: RunningCaspio) -> dict[str, int]:
    return httpx.get(f"{caspio.base_url}/_emulator/stats").json()["by_route"]


def calls_since(caspio: RunningCaspio, before: dict[str, int]) -> dict[str, int]:
    after = stats(caspio)
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def run(settings: Settings, marts_dir: Path, marts: list[str] | None = None, *, force: bool = False,
        retry: RetryPolicy | None = None, **kwargs):
    extra = {"retry": retry} if retry else {}
    with client_for(settings, force=force, **extra) as client:
        return publish(warehouse_factory(settings), client, marts, settings=settings, force=force,
                       marts_dir=marts_dir, **kwargs)


def by_table(results) -> dict:
    return {r.mart: r for r in results}


def token(caspio: RunningCaspio) -> dict[str, str]:
    body = httpx.post(caspio.token_url, data={"grant_type": "client_credentials", "client_id": "sandbox-caspio-client",
                                              "client_secret": "sandbox-caspio-secret"}).json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def caspio_rows(caspio: RunningCaspio, table: str) -> list[dict]:
    """Every row of a Caspio table, read with plain httpx (independent of the client under test)."""
    headers, rows, page = token(caspio), [], 1
    while True:
        r = httpx.get(f"{caspio.v3}/tables/{table}/records", headers=headers,
                      params={"q.orderBy": "PK_ID", "q.pageSize": 1000, "q.pageNumber": page})
        r.raise_for_status()
        batch = r.json()["Result"]
        rows += batch
        if len(batch) < 1000:
            return rows
        page += 1


def assert_caspio_equals_mart(caspio: RunningCaspio, settings: Settings, marts_dir: Path | None, mart: str) -> None:
    with client_for(settings, force=True) as client:
        v = verify(warehouse_factory(settings), client, mart, settings, marts_dir=marts_dir)
    keys = [row["row_key"] for row in caspio_rows(caspio, v.table)]
    assert len(keys) == len(set(keys)) == v.mart_rows, "no duplicate rows, one per mart row"
    assert v.matches, v


def state_rows(settings: Settings, table: str) -> int:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute("SELECT count(*) FROM publish.caspio_state WHERE table_name = ?", [table]).fetchall()[0][0]


# --- the tests ---------------------------------------------------------------------------------------
def test_initial_publish_fills_caspio_with_exactly_the_marts(caspio, settings, marts_dir):
    before = stats(caspio)
    results = by_table(run(settings, marts_dir))
    calls = calls_since(caspio, before)

    ar, den = results["ar_aging"], results["denials_by_payer_month"]
    assert (ar.status, ar.inserted, den.status, den.inserted) == ("published", 110, "published", 110)
    assert results["quality_care_gaps"].status == "skipped"
    assert calls[POST] == 110 + 110, "one POST per row on v3, nothing else written"
    assert calls["POST /integrations/rest/v3/tables"] == 2 and PUT not in calls and DELETE not in calls
    for mart in ("ar_aging", "denials_by_payer_month"):
        assert_caspio_equals_mart(caspio, settings, marts_dir, mart)
    assert state_rows(settings, ar.table) == 110
    # values arrive as Caspio shows them: dates without a zone, money as numbers, quotes intact
    row = next(r for r in caspio_rows(caspio, den.table) if r["insurance_package_id"] == 3)
    assert row["month"].startswith("2025-") and row["month"].endswith("T00:00:00")
    assert row["payer_name"] == "O'Brien Payer 3" and row["charges_submitted"] == pytest.approx(903.75)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        audited = con.execute("SELECT count(*) FROM audit.api_calls WHERE system = 'caspio'").fetchall()[0][0]
    assert audited == ar.calls + den.calls == sum(calls.values()), "every call, the token's too, is audited"


def test_unchanged_republish_makes_zero_calls(caspio, settings, marts_dir):
    run(settings, marts_dir)
    before = stats(caspio)
    results = run(settings, marts_dir)
    assert calls_since(caspio, before) == {}, "not a write, not a read, not even a token"
    assert {r.status for r in results} == {"unchanged", "skipped"}
    assert by_table(results)["ar_aging"].unchanged == 110


def test_two_percent_changed_costs_about_one_call_per_changed_row(caspio, settings, marts_dir):
    run(settings, marts_dir)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        changed = con.execute("""UPDATE marts.denials_by_payer_month SET claims_submitted = claims_submitted + 1,
                                 initial_denial_rate = NULL
                                 WHERE (insurance_package_id * 31 + month(month)) % 50 = 0""").fetchall()[0][0]
    assert changed == 2  # ~2 % of 110
    before = stats(caspio)
    result = by_table(run(settings, marts_dir))["denials_by_payer_month"]
    calls = calls_since(caspio, before)
    assert (result.updated, result.inserted, result.deleted) == (changed, 0, 0)
    assert calls.get(PUT) == changed and POST not in calls and DELETE not in calls
    assert sum(calls.values()) == changed + 1, "the changed rows and one token call"
    assert_caspio_equals_mart(caspio, settings, marts_dir, "denials_by_payer_month")


MART_STATUS = """CREATE OR REPLACE TABLE marts.mart_status AS
SELECT 'ar_aging' AS mart, 'revenue_cycle' AS subject_area, max(as_of_date) AS as_of_date,
       CAST(NULL AS DATE) AS measurement_period_start, CAST(NULL AS DATE) AS measurement_period_end,
       count(*) AS row_count FROM marts.ar_aging
UNION ALL
SELECT 'denials_by_payer_month', 'denials', max(as_of_date), NULL, NULL, count(*) FROM marts.denials_by_payer_month"""


def test_a_new_day_with_the_same_numbers_rewrites_only_the_status_rows(caspio, settings):
    """With the repository's own mart YAML: as_of_date is the same on every row and new every day, so
    it is published once per table (mart_status, last) and never per row: a nightly run whose
    numbers did not move costs the two status rows, not a rewrite of every table."""
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute(MART_STATUS)
    first = run(settings, None)
    published = [r.mart for r in first if r.status == "published"]
    assert published == ["ar_aging", "denials_by_payer_month", "mart_status"], "status last, after the data"
    fields = {f["Name"] for f in httpx.get(
        f"{caspio.base_url}/integrations/rest/v3/tables/{by_table(first)['ar_aging'].table}/fields",
        headers=token(caspio)).json()["Result"]}
    assert "as_of_date" not in fields and "open_balance" in fields
    status = {r["mart"]: r for r in caspio_rows(caspio, by_table(first)["mart_status"].table)}
    assert status["ar_aging"]["as_of_date"].startswith("2026-11-23") and status["ar_aging"]["row_count"] == 110

    with duckdb.connect(str(settings.warehouse_path)) as con:  # the next night: a new as_of_date, same numbers
        for mart in ("ar_aging", "denials_by_payer_month"):
            con.execute(f"UPDATE marts.{mart} SET as_of_date = as_of_date + 1")
        con.execute(MART_STATUS)
    before = stats(caspio)
    second = by_table(run(settings, None))
    calls = calls_since(caspio, before)
    assert (second["ar_aging"].status, second["denials_by_payer_month"].status) == ("unchanged", "unchanged")
    assert second["mart_status"].updated == 2
    assert calls == {PUT: 2, "POST /oauth/token": 1}, "two status rows and a token, nothing else"
    status = {r["mart"]: r for r in caspio_rows(caspio, second["mart_status"].table)}
    assert status["denials_by_payer_month"]["as_of_date"].startswith("2026-11-24")


def test_rows_gone_from_the_mart_are_deleted_in_caspio(caspio, settings, marts_dir):
    run(settings, marts_dir)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("DELETE FROM marts.ar_aging WHERE insurance_package_id IN (3, 4)")
        con.execute("INSERT INTO marts.ar_aging SELECT * REPLACE (CAST(99 AS BIGINT) AS insurance_package_id) "
                    "FROM marts.ar_aging WHERE insurance_package_id = 5")
    before = stats(caspio)
    result = by_table(run(settings, marts_dir))["ar_aging"]
    calls = calls_since(caspio, before)
    assert (result.deleted, result.inserted, result.updated) == (20, 10, 0)
    assert calls[DELETE] == 1, "20 keys fit in one IN-list"
    assert calls[POST] == 10
    assert_caspio_equals_mart(caspio, settings, marts_dir, "ar_aging")
    assert state_rows(settings, result.table) == 100


def test_reconcile_repairs_rows_edited_deleted_and_added_by_hand(caspio, settings, marts_dir):
    table = by_table(run(settings, marts_dir))["ar_aging"].table
    headers, url = token(caspio), f"{caspio.v3}/tables/{table}/records"
    rows = caspio_rows(caspio, table)
    assert httpx.put(url, params={"q.where": f"PK_ID={rows[0]['PK_ID']}"}, headers=headers,
                     json={"open_balance": 1.0, "payer_name": "typo"}).json()["RecordsAffected"] == 1
    assert httpx.delete(url, params={"q.where": f"PK_ID={rows[1]['PK_ID']}"}, headers=headers).status_code == 200
    assert httpx.post(url, headers=headers, json={"row_key": "added-by-hand", "payer_name": "x"}).status_code == 201
    assert httpx.post(url, headers=headers, json={"payer_name": "no key"}).status_code == 201
    with client_for(settings, force=True) as client:
        assert not verify(warehouse_factory(settings), client, "ar_aging", settings, marts_dir=marts_dir).matches

    # the keyed diff alone does not see hand edits: the state says all is well
    before = stats(caspio)
    assert by_table(run(settings, marts_dir))["ar_aging"].status == "unchanged"
    assert calls_since(caspio, before) == {}

    result = by_table(run(settings, marts_dir, ["ar_aging"], reconcile=True))["ar_aging"]
    assert result.reconciled and result.caspio_rows == 111
    assert result.drift == {"missing": 1, "edited": 1, "stray": 2}
    assert (result.inserted, result.updated, result.deleted) == (1, 1, 2)
    assert_caspio_equals_mart(caspio, settings, marts_dir, "ar_aging")
    before = stats(caspio)
    run(settings, marts_dir)
    assert calls_since(caspio, before) == {}


def test_reconciliation_also_runs_every_n_publishes(caspio, settings, marts_dir):
    settings = dataclasses.replace(settings, caspio_reconcile_every=2)
    table = by_table(run(settings, marts_dir, ["ar_aging"]))["ar_aging"].table
    headers = token(caspio)
    httpx.delete(f"{caspio.v3}/tables/{table}/records", params={"q.where": "bucket_order = 5"}, headers=headers)
    first = by_table(run(settings, marts_dir, ["ar_aging"]))["ar_aging"]
    assert not first.reconciled and first.status == "unchanged"
    second = by_table(run(settings, marts_dir, ["ar_aging"]))["ar_aging"]
    assert second.reconciled and second.reconcile_reason.startswith("every 2 publishes")
    assert second.drift["missing"] == 22 and second.inserted == 22
    assert_caspio_equals_mart(caspio, settings, marts_dir, "ar_aging")


def test_publish_survives_429_and_5xx_storms(caspio, settings, marts_dir):
    httpx.post(f"{caspio.base_url}/_emulator/config", json={"retry_after_header": False})
    httpx.post(f"{caspio.base_url}/_emulator/faults", json={
        "seed": 7, "spec": "throttle=p0.25,server_error=p0.15:503,error_after_write=p0.05"})
    fast = RetryPolicy(max_attempts=12, backoff_base=0.01, backoff_max=0.05, retry_after_max=0.05)
    results = by_table(run(settings, marts_dir, ["ar_aging", "denials_by_payer_month"], retry=fast))
    fired = httpx.get(f"{caspio.base_url}/_emulator/stats").json()["faults"]
    assert sum(fired.values()) > 50, fired
    httpx.post(f"{caspio.base_url}/_emulator/faults", json={"clear": True})
    assert {r.status for r in results.values()} == {"published"}
    # a POST answered 500 after it landed is retried, meets its own row (Unique) and is resolved
    for mart in ("ar_aging", "denials_by_payer_month"):
        assert_caspio_equals_mart(caspio, settings, marts_dir, mart)
        assert state_rows(settings, results[mart].table) == results[mart].rows


def test_a_lost_confirmation_is_resolved_by_the_unique_row_key(caspio, settings, marts_dir):
    """The state lost what a killed run had confirmed: every insert meets its row; none is duplicated."""
    table = by_table(run(settings, marts_dir, ["ar_aging"]))["ar_aging"].table
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("DELETE FROM publish.caspio_state WHERE table_name = ? AND row_key < '8'", [table])
        lost = 110 - con.execute("SELECT count(*) FROM publish.caspio_state WHERE table_name = ?",
                                 [table]).fetchall()[0][0]
    before = stats(caspio)
    result = by_table(run(settings, marts_dir, ["ar_aging"]))["ar_aging"]
    calls = calls_since(caspio, before)
    assert calls[POST] == lost and calls[PUT] == lost, "refused as duplicates, then verified by a keyed PUT"
    assert result.status == "published" and result.unresolved == 0
    assert_caspio_equals_mart(caspio, settings, marts_dir, "ar_aging")
    assert state_rows(settings, table) == 110


def test_budget_refusal_names_the_numbers_and_force_publishes(caspio, settings, marts_dir):
    settings = dataclasses.replace(settings, caspio_call_budget=100)
    before = stats(caspio)
    with pytest.raises(PublishBudgetExceeded) as refused:
        run(settings, marts_dir)
    message = str(refused.value)
    assert "227" in message and "100" in message and "CASPIO_CALL_BUDGET" in message and "--force" in message
    assert message.count("110 insert") == 2
    assert calls_since(caspio, before) == {}, "refused before any call"
    results = by_table(run(settings, marts_dir, force=True))
    assert results["ar_aging"].status == results["denials_by_payer_month"].status == "published"
    assert_caspio_equals_mart(caspio, settings, marts_dir, "denials_by_payer_month")
    # within budget, no force needed
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("UPDATE marts.ar_aging SET claim_count = claim_count + 1 WHERE insurance_package_id = 2")
    assert by_table(run(settings, marts_dir))["ar_aging"].updated == 10


def test_patient_level_marts_only_when_enabled(caspio, settings, marts_dir):
    results = by_table(run(settings, marts_dir))
    gaps = results["quality_care_gaps"]
    assert gaps.status == "skipped" and "CASPIO_PUBLISH_PATIENT_LEVEL" in gaps.message
    with client_for(settings) as client:
        assert gaps.table.lower() not in {t.lower() for t in client.list_tables()}
    # asking for it by name does not bypass the setting
    assert by_table(run(settings, marts_dir, ["quality_care_gaps"]))["quality_care_gaps"].status == "skipped"
    enabled = dataclasses.replace(settings, caspio_publish_patient_level=True)
    assert by_table(run(enabled, marts_dir, ["quality_care_gaps"]))["quality_care_gaps"].inserted == 12
    assert_caspio_equals_mart(caspio, enabled, marts_dir, "quality_care_gaps")
    assert mart_catalog(marts_dir)["quality_care_gaps"].contains_phi


def test_a_new_mart_column_adds_a_field_and_fills_it(caspio, settings, marts_dir):
    table = by_table(run(settings, marts_dir, ["ar_aging"]))["ar_aging"].table
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("ALTER TABLE marts.ar_aging ADD COLUMN is_collectible BOOLEAN DEFAULT true")
    before = stats(caspio)
    result = by_table(run(settings, marts_dir, ["ar_aging"]))["ar_aging"]
    calls = calls_since(caspio, before)
    assert result.fields_added == ("is_collectible",) and calls["POST /integrations/rest/v3/tables/{table}/fields"] == 1
    assert result.updated == 110, "every row gets the new field's value"
    assert all(row["is_collectible"] is True for row in caspio_rows(caspio, table))
    assert_caspio_equals_mart(caspio, settings, marts_dir, "ar_aging")


def test_v4_bulk_insert_needs_one_call_per_thousand_rows(caspio, settings, marts_dir):
    settings = dataclasses.replace(settings, caspio_api_version="v4")
    before = stats(caspio)
    result = by_table(run(settings, marts_dir, ["denials_by_payer_month"]))["denials_by_payer_month"]
    calls = calls_since(caspio, before)
    assert result.inserted == 110
    assert calls["POST /integrations/rest/v4/tables/{table_id}/records/bulk"] == 1 and POST not in calls
    assert_caspio_equals_mart(caspio, settings, marts_dir, "denials_by_payer_month")


# --- through the command line, with the repository's own mart YAML ------------------------------------------
def _cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {"WAREHOUSE_PATH": str(settings.warehouse_path), "CASPIO_BASE_URL": settings.caspio_base_url,
            "CASPIO_TABLE_PREFIX": settings.caspio_table_prefix, "CASPIO_REQUESTS_PER_SECOND": "0",
            "CASPIO_RECONCILE_EVERY": "0", **extra}


@pytest.fixture
def cli_settings(default_env: None, settings: Settings, tmp_path: Path) -> Settings:
    """A warehouse whose ``ar_aging`` fits the repository's real YAML (its real grain)."""
    warehouse = tmp_path / "cli" / "warehouse.duckdb"
    build_generic_mart(warehouse, "ar_aging", mart_catalog()["ar_aging"].grain, 60)
    return dataclasses.replace(settings, warehouse_path=warehouse)


def test_dry_run_prints_the_plan_and_writes_nothing(caspio, cli_settings):
    before = stats(caspio)
    result = CliRunner().invoke(main, ["publish", "--tables", "ar_aging", "--dry-run"], env=_cli_env(cli_settings))
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "ar_aging" in x)
    assert line.split()[1:6] == ["60", "60", "0", "0", "0"], line
    assert "nothing written" in result.output and "64 Caspio call(s) planned" in result.output
    assert calls_since(caspio, before) == {}
    with duckdb.connect(str(cli_settings.warehouse_path), read_only=True) as con:
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
    assert "publish" not in schemas and "audit" not in schemas


def test_cli_budget_refusal_then_force(caspio, cli_settings):
    env = _cli_env(cli_settings, CASPIO_CALL_BUDGET="40")
    refused = CliRunner().invoke(main, ["publish", "--tables", "ar_aging"], env=env)
    assert refused.exit_code == 1
    assert "64" in refused.output and "40" in refused.output and "--force" in refused.output
    forced = CliRunner().invoke(main, ["publish", "--tables", "ar_aging", "--force"], env=env)
    assert forced.exit_code == 0, forced.output
    assert "60" in forced.output
    assert_caspio_equals_mart(caspio, cli_settings, None, "ar_aging")


def test_sigkill_mid_publish_then_rerun_converges_without_duplicates(caspio, cli_settings):
    """A real ``athena-pipeline publish`` process is killed mid-flight; the next run finishes the job."""
    build_generic_mart(cli_settings.warehouse_path, "ar_aging", mart_catalog()["ar_aging"].grain, 300)
    httpx.post(f"{caspio.base_url}/_emulator/config", json={"latency_seconds": 0.02})
    env = {**os.environ, **_cli_env(cli_settings, CASPIO_CONCURRENCY="2")}
    before = stats(caspio)
    proc = subprocess.Popen([str(CLI), "publish", "--tables", "ar_aging"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while calls_since(caspio, before).get(POST, 0) < 100:
            assert proc.poll() is None, "the publish ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    table = f"{cli_settings.caspio_table_prefix}ar_aging"
    landed = len(caspio_rows(caspio, table))
    assert 100 <= landed < 300, "killed part-way"
    journal = state_mod.journal_path(state_mod.journal_dir_for(cli_settings.warehouse_path), table)
    assert journal.exists(), "confirmed writes survived the kill in the journal"

    httpx.post(f"{caspio.base_url}/_emulator/config", json={"latency_seconds": 0.0})
    rerun = subprocess.run([str(CLI), "publish", "--tables", "ar_aging"], env=env, capture_output=True, check=False,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_caspio_equals_mart(caspio, cli_settings, None, "ar_aging")
    assert state_rows(cli_settings, table) == 300 and not journal.exists()
    posts = calls_since(caspio, before)[POST]
    assert posts <= 300 + 2 * 50, "the re-run did not send the whole table again"


def test_cli_names_the_marts_when_asked_for_an_unknown_one(caspio, cli_settings):
    result = CliRunner().invoke(main, ["publish", "--tables", "ar_agin", "--dry-run"], env=_cli_env(cli_settings))
    assert result.exit_code == 1
    assert "no mart called 'ar_agin'" in result.output and "ar_aging" in result.output
    assert "Traceback" not in result.output
