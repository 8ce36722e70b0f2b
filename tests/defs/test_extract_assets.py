"""The extract assets in Dagster, materialised for real: the emulator on loopback (``run_in_thread``)
serving a small generated world, the project's resources pointed at it, DuckDB in a tmp dir.

What a user of the Dagster UI notices: the asset keys the dbt sources point at exist; a
materialisation carries the numbers (rows inserted/updated/deleted, watermark, export id, files,
bytes, duration, rows/s) and its checks; faults on the wire do not change the rows; an export the
server reported errors for is not loaded; a wrong secret fails at once instead of retrying; one Data
View partition copies exactly that day, a two-day backfill runs once for the whole window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from athena_pipeline.athena.dataview_catalog import CATALOG
from athena_pipeline.defs.extract.checks import export_errors_result
from athena_pipeline.defs.extract.dataview import DATAVIEW_KEYS, raw_dataview
from athena_pipeline.defs.extract.fhir import EXPORT_KEY, RAW_FHIR_KEYS, fhir_bulk_export, raw_fhir
from athena_pipeline.defs.extract.partitions import DATAVIEW_DAILY
from athena_pipeline.defs.extract.policy import fail_fast_unless_transient
from athena_pipeline.defs.extract.resources import build_extract_resources
from athena_pipeline.defs.resources import build_resources
from athena_pipeline.extract import FHIR_RESOURCE_TYPES, is_transient
from athena_pipeline.http import AuthError, RetryExhausted
from athena_pipeline.sandbox.server import RunningServer, run_in_thread
from athena_pipeline.settings import Settings
from tests.extract_support import (
    content_fingerprints,
    emulator_config,
    generate,
    pipeline_env,
    query,
    world_counts,
)

PRACTICE = 195900


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("extract_assets") / "world", patients=300)


@pytest.fixture(scope="module")
def server(world: Path) -> Iterator[RunningServer]:
    srv = run_in_thread(world, config=emulator_config())
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _no_faults(server: RunningServer) -> Iterator[None]:
    server.faults.reset()
    yield
    server.faults.reset()


def resources_for(env: dict[str, str], mp: pytest.MonkeyPatch) -> dict:
    """The project's real resources for ``env`` (also set in the process environment, which the
    extract steps read for the values no resource carries)."""
    from athena_pipeline.settings import ENV_VARS

    for name in ENV_VARS:
        mp.delenv(name, raising=False)
    for name, value in env.items():
        mp.setenv(name, value)
    settings = Settings.from_env(env)
    return {**build_resources(settings), **build_extract_resources(settings)}


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Asset key -> metadata values of every materialisation in the run."""
    out = {}
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        out[m.asset_key.to_user_string()] = {k: v.value for k, v in m.metadata.items()}
    return out


def checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], object]:
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def clean_fhir(world: Path, server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two fault-free runs of export + load: the first full, the second incremental."""
    state = tmp_path_factory.mktemp("dagster_clean")
    env = pipeline_env(server, world, state)
    with pytest.MonkeyPatch.context() as mp:
        resources = resources_for(env, mp)
        instance = dg.DagsterInstance.ephemeral()
        first = dg.materialize([fhir_bulk_export, raw_fhir], resources=resources, instance=instance)
        fingerprints = content_fingerprints(state / "warehouse.duckdb", schemas=("raw_fhir",))
        second = dg.materialize([fhir_bulk_export, raw_fhir], resources=resources, instance=instance)
    return {"first": first, "second": second, "fingerprints": fingerprints, "state": state}


# --- definitions ------------------------------------------------------------------------------------
def test_definitions_declare_every_extract_asset_check_and_job(default_env: None) -> None:
    from athena_pipeline.definitions import defs

    definitions = defs()
    graph = definitions.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert "fhir_bulk_export" in keys
    assert {f"raw_fhir/{t.lower()}" for t in FHIR_RESOURCE_TYPES} <= keys
    assert "raw_fhir/medicationrequest" in keys
    assert {f"raw_dataview/{t.name.lower()}" for t in CATALOG} <= keys
    assert "dataview" in (definitions.resources or {})
    jobs = {j.name: j for j in definitions.resolve_all_job_defs()}
    assert {"extract_fhir_job", "extract_dataview_job"} <= set(jobs)
    assert jobs["extract_dataview_job"].partitions_def == DATAVIEW_DAILY

    assert (fhir_bulk_export.op.pool, raw_fhir.op.pool, raw_dataview.op.pool) == ("athena_api", "warehouse", "warehouse")
    assert fhir_bulk_export.specs_by_key[EXPORT_KEY].group_name == "extract"
    assert fhir_bulk_export.specs_by_key[EXPORT_KEY].kinds == {"python", "fhir"}
    assert {s.group_name for s in raw_fhir.specs} == {"raw_fhir"}
    assert {s.group_name for s in raw_dataview.specs} == {"raw_dataview"}
    assert all(s.deps and s.deps[0].asset_key == EXPORT_KEY for s in raw_fhir.specs)
    assert not raw_fhir.can_subset and raw_dataview.can_subset
    assert raw_dataview.backfill_policy == dg.BackfillPolicy.single_run()
    assert raw_dataview.partitions_def == DATAVIEW_DAILY
    assert DATAVIEW_DAILY.start.date() == dt.date(2023, 11, 1) and DATAVIEW_DAILY.timezone == "America/New_York"
    policy = fhir_bulk_export.op.retry_policy
    assert policy.max_retries == 2 and policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter is not None
    check_keys = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("fhir_bulk_export", "export_errors") in check_keys
    assert ("raw_fhir/patient", "reconciles_with_manifest") in check_keys
    assert ("raw_dataview/claim", "soft_delete_ratio") in check_keys
    assert len([k for k in check_keys if k[0].startswith(("raw_fhir/", "raw_dataview/"))]) == \
        2 * (len(FHIR_RESOURCE_TYPES) + len(CATALOG))


def test_the_asset_types_match_what_the_emulator_serves() -> None:
    from athena_pipeline.sandbox.emulator.config import RESOURCE_TYPES

    assert set(FHIR_RESOURCE_TYPES) == set(RESOURCE_TYPES)


# --- FHIR -------------------------------------------------------------------------------------------
def test_export_and_load_materialise_with_their_numbers_and_checks(world: Path, clean_fhir: dict) -> None:
    first = clean_fhir["first"]
    assert first.success
    counts = world_counts(world)
    meta = materialized(first)
    export = meta["fhir_bulk_export"]
    assert export["dagster/row_count"] == sum(counts.values())
    assert export["resources_by_type"] == dict(sorted(counts.items()))
    assert export["kind"] == "full" and export["since"] == "(full export)"
    assert Path(export["export_dir"]).name == export["export_id"]
    assert export["files"] > len(counts) and export["bytes"] > 0 and export["rows_per_second"] > 0
    assert not export["resumed"] and export["api_calls"] >= export["files"]
    for rtype, key in RAW_FHIR_KEYS.items():
        m = meta[key.to_user_string()]
        assert m["dagster/row_count"] == m["inserted"] == counts[rtype], rtype
        assert (m["updated"], m["deleted"], m["quarantined"]) == (0, 0, 0)
        assert m["export_ids"] == [export["export_id"]]
        assert m["watermark"] == export["transaction_time"].replace("Z", "+00:00")
        assert m["files"] >= 1 and m["bytes"] > 0 and m["duration_s"] > 0 and m["rows_per_second"] > 0
    results = checks(first)
    assert len(results) == 1 + 2 * len(FHIR_RESOURCE_TYPES)
    assert all(e.passed for e in results.values()), [k for k, e in results.items() if not e.passed]
    assert results[("raw_fhir/observation", "reconciles_with_manifest")].metadata["manifest_count"].value == \
        counts["Observation"]

    second = materialized(clean_fhir["second"])
    assert second["fhir_bulk_export"]["kind"] == "since"
    assert second["fhir_bulk_export"]["since"] == export["transaction_time"]
    for rtype, key in RAW_FHIR_KEYS.items():
        m = second[key.to_user_string()]
        assert (m["dagster/row_count"], m["inserted"], m["updated"]) == (counts[rtype], 0, 0)


def test_a_dagster_run_survives_faults_and_loads_the_same_rows(world: Path, server: RunningServer,
                                                              clean_fhir: dict, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server.faults.configure("kickoff_429=1,poll_transient=1,poll_500=1,file_429=3,truncate=1,"
                            "bearer_expired=1,slow_poll=1:1.0,retry_after_seconds=0")
    resources = resources_for(pipeline_env(server, world, tmp_path), monkeypatch)
    result = dg.materialize([fhir_bulk_export, raw_fhir], resources=resources,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert all(server.faults.fired(f) for f in ("kickoff_429", "poll_transient", "file_429", "truncate",
                                                "bearer_expired"))
    assert content_fingerprints(tmp_path / "warehouse.duckdb", schemas=("raw_fhir",)) == clean_fhir["fingerprints"]


def test_an_export_with_error_issues_fails_its_check_and_is_not_loaded(world: Path, server: RunningServer,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    server.faults.set("error_lines", 1, arg=2)
    resources = resources_for(pipeline_env(server, world, tmp_path), monkeypatch)
    result = dg.materialize([fhir_bulk_export, raw_fhir], resources=resources, raise_on_error=False,
                            instance=dg.DagsterInstance.ephemeral(),
                            run_config={"ops": {"fhir_bulk_export": {"config": {"types": ["Patient"]}}}})
    export_check = checks(result)[("fhir_bulk_export", "export_errors")]
    assert not export_check.passed and export_check.severity == dg.AssetCheckSeverity.ERROR
    assert export_check.metadata["fatal_or_error"].value == 2
    assert set(materialized(result)) == {"fhir_bulk_export"}  # blocking: raw_fhir did not run
    assert not (tmp_path / "warehouse.duckdb").exists()


def test_export_error_severities_warn_or_fail() -> None:
    key = EXPORT_KEY
    assert export_errors_result(key, {}).passed
    warn = export_errors_result(key, {"warning": 2, "information": 1})
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN
    error = export_errors_result(key, {"warning": 1, "error": 1})
    assert not error.passed and error.severity == dg.AssetCheckSeverity.ERROR


def test_a_wrong_secret_fails_at_once_without_retries(world: Path, server: RunningServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    env = pipeline_env(server, world, tmp_path, ATHENA_CLIENT_SECRET="not-the-secret")
    resources = resources_for(env, monkeypatch)
    result = dg.materialize([fhir_bulk_export], resources=resources, raise_on_error=False,
                            instance=dg.DagsterInstance.ephemeral())
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = failure.step_failure_data.error.message
    assert "retrying will not help" in text and "AuthError" in text
    assert "not-the-secret" not in text


def test_transient_errors_are_left_to_the_retry_policy() -> None:
    assert is_transient(RetryExhausted("athena GET /bulkstatus/{job}: gave up after 8 attempts"))
    assert not is_transient(AuthError("athena POST /oauth2/v1/token -> 401"))
    with pytest.raises(RetryExhausted), fail_fast_unless_transient("x"):
        raise RetryExhausted("429 storm")
    with pytest.raises(dg.Failure) as info, fail_fast_unless_transient("The export"):
        raise ValueError("not a FHIR resource type name: 'Bogus1'")
    assert info.value.allow_retries is False
    assert info.value.description.startswith("The export failed, and retrying will not help: ValueError")


# --- Data View --------------------------------------------------------------------------------------
def upstream_counts(world: Path, start_utc: dt.datetime | None, end_utc: dt.datetime) -> dict[str, int]:
    out = {}
    for entry in CATALOG:
        where = "LASTUPDATED < ?" + (" AND LASTUPDATED >= ?" if start_utc else "")
        params = [end_utc.replace(tzinfo=None)] + ([start_utc.replace(tzinfo=None)] if start_utc else [])
        out[entry.name] = query(world / "dataview.duckdb",
                                f'SELECT count(*) FROM ATHENAONE."{entry.name}" WHERE CONTEXTID = {PRACTICE} '
                                f"AND {where}", params)[0][0]
    return out


def _ny(day: str) -> dt.datetime:
    from zoneinfo import ZoneInfo

    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tzinfo=ZoneInfo("America/New_York")
                               ).astimezone(dt.UTC)


def test_one_dataview_partition_copies_that_day_of_every_table(world: Path, server: RunningServer, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    resources = resources_for(pipeline_env(server, world, tmp_path), monkeypatch)
    result = dg.materialize([raw_dataview], resources=resources, partition_key="2026-05-14",
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    expected = upstream_counts(world, _ny("2026-05-14"), _ny("2026-05-15"))
    assert sum(expected.values()) > 20 and sum(v > 0 for v in expected.values()) >= 5  # not an empty day
    meta = materialized(result)
    assert set(meta) == {k.to_user_string() for k in DATAVIEW_KEYS}
    for key, entry in DATAVIEW_KEYS.items():
        m = meta[key.to_user_string()]
        assert m["received"] == m["inserted"] == m["dagster/row_count"] == expected[entry.name], entry.name
        assert m["window_start"] == "2026-05-14T04:00:00+00:00" and m["window_end"] == "2026-05-15T04:00:00+00:00"
    results = checks(result)
    assert len(results) == 2 * len(CATALOG) and all(e.passed for e in results.values())


def test_a_two_day_backfill_is_one_run_over_the_whole_window(world: Path, server: RunningServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    resources = resources_for(pipeline_env(server, world, tmp_path), monkeypatch)
    claim = dg.AssetKey(["raw_dataview", "claim"])
    transaction = dg.AssetKey(["raw_dataview", "transaction"])
    result = dg.materialize([raw_dataview], resources=resources, selection=[claim, transaction],
                            instance=dg.DagsterInstance.ephemeral(),
                            tags={"dagster/asset_partition_range_start": "2026-05-12",
                                  "dagster/asset_partition_range_end": "2026-05-13"})
    assert result.success
    starts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert len(starts) == 1  # single_run: one step for the whole range
    expected = upstream_counts(world, _ny("2026-05-12"), _ny("2026-05-14"))
    meta = materialized(result)
    assert set(meta) == {"raw_dataview/claim", "raw_dataview/transaction"}
    assert meta["raw_dataview/claim"]["received"] == expected["CLAIM"] > 0
    assert meta["raw_dataview/transaction"]["received"] == expected["TRANSACTION"] > 0
    assert meta["raw_dataview/claim"]["window_start"] == "2026-05-12T04:00:00+00:00"
    assert meta["raw_dataview/claim"]["window_end"] == "2026-05-14T04:00:00+00:00"
    assert set(checks(result)) == {(k, c) for k in meta for c in ("no_duplicate_keys", "soft_delete_ratio")}


def test_the_first_partition_takes_every_older_row_and_soft_deletes_are_checked(
        world: Path, server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_day = DATAVIEW_DAILY.get_first_partition_key()
    resources = resources_for(pipeline_env(server, world, tmp_path, DATAVIEW_SOFT_DELETE_MAX_RATIO="0"), monkeypatch)
    keys = [dg.AssetKey(["raw_dataview", t]) for t in ("provider", "appointment")]
    result = dg.materialize([raw_dataview], resources=resources, partition_key=first_day, selection=keys,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    end = DATAVIEW_DAILY.time_window_for_partition_key(first_day).end
    expected = upstream_counts(world, None, end)
    meta = materialized(result)
    assert meta["raw_dataview/provider"]["received"] == expected["PROVIDER"] > 0  # last updated years before
    assert meta["raw_dataview/provider"]["window_start"] == "(beginning)"

    # a later partition with soft-deleted appointments trips the (zero) threshold, as a warning
    later = dg.materialize([raw_dataview], resources=resources, partition_key="2026-05-14", selection=keys,
                           instance=dg.DagsterInstance.ephemeral(),
                           run_config={"ops": {"raw_dataview": {"config": {"full_refresh": True}}}})
    assert later.success
    deleted = query(world / "dataview.duckdb",
                    'SELECT count(*) FROM ATHENAONE."APPOINTMENT" WHERE DELETEDDATETIME IS NOT NULL')[0][0]
    assert deleted > 0
    ratio = checks(later)[("raw_dataview/appointment", "soft_delete_ratio")]
    assert not ratio.passed and ratio.severity == dg.AssetCheckSeverity.WARN
    assert ratio.metadata["soft_deleted"].value == deleted
    assert checks(later)[("raw_dataview/provider", "soft_delete_ratio")].passed
    assert materialized(later)["raw_dataview/appointment"]["window_start"] == "(beginning)"  # full refresh


def test_an_experimental_table_missing_upstream_is_skipped_not_failed(world: Path, server: RunningServer,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Guessed table names may not exist in a real share: that asset is skipped, the others load."""
    env = pipeline_env(server, world, tmp_path, DATAVIEW_TABLE_MAP='{"ERAKICK": "NO_SUCH_TABLE"}')
    resources = resources_for(env, monkeypatch)
    keys = [dg.AssetKey(["raw_dataview", t]) for t in ("erakick", "claim")]
    result = dg.materialize([raw_dataview], resources=resources, partition_key="2026-05-14", selection=keys,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert set(materialized(result)) == {"raw_dataview/claim"}
    assert {k for k, _ in checks(result)} == {"raw_dataview/claim"}

    # a documented table missing is an error, and not one a retry can fix
    monkeypatch.setenv("DATAVIEW_TABLE_MAP", '{"CLAIM": "NO_SUCH_TABLE"}')
    failed = dg.materialize([raw_dataview], resources=resources, partition_key="2026-05-14", selection=keys,
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not failed.success
    assert not [e for e in failed.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "DataViewTableMissing" in failure.step_failure_data.error.message
