"""Automation: schedules, default status, freshness policies, the run-failure alert, and the
automation conditions that make dbt and Caspio follow the nightly extracts once.

Schedules are evaluated with ``build_schedule_context`` at real tick times; the alert is POSTed to
a real HTTP server on loopback; the automation conditions are evaluated by Dagster's own evaluator
over a small graph shaped like ours, with materialisations recorded in a real (temporary) instance.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import httpx
import pytest
import uvicorn
from dagster._core.definitions.freshness import TimeWindowFreshnessPolicy
from dagster._core.test_utils import freeze_time  # Dagster's clock for automation tests (no server to run)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import athena_pipeline.definitions as code_location
from athena_pipeline.defs.automation.alerts import (
    MAX_MESSAGE_CHARS,
    SENSOR_NAME,
    build_run_failure_sensor,
    post_alert,
)
from athena_pipeline.defs.automation.conditions import nightly_cron
from athena_pipeline.defs.automation.definitions import build_automation_defs
from athena_pipeline.defs.automation.policies import with_automation
from athena_pipeline.defs.automation.schedules import (
    DATAVIEW_SCHEDULE,
    FHIR_FULL_SCHEDULE,
    FHIR_NIGHTLY_SCHEDULE,
    build_schedules,
)
from athena_pipeline.defs.extract.dataview import raw_dataview
from athena_pipeline.defs.extract.fhir import fhir_bulk_export, raw_fhir
from athena_pipeline.defs.extract.resources import build_extract_resources
from athena_pipeline.defs.resources import build_resources
from athena_pipeline.settings import ENV_VARS, Settings

NY = ZoneInfo("America/New_York")
PRODUCTION = {"ATHENA_FHIR_BASE_URL": "https://api.platform.athenahealth.com/fhir/r4",
              "ATHENA_TOKEN_URL": "https://api.platform.athenahealth.com/oauth2/v1/token"}


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded() -> Iterator[dg.Definitions]:
    """Everything under ``defs/`` as loaded from a clean environment, before automation is applied."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_VARS:
            mp.delenv(name, raising=False)
        yield dg.load_from_defs_folder(path_within_project=Path(code_location.__file__).parent)


@pytest.fixture(scope="module")
def location(loaded: dg.Definitions) -> dg.Definitions:
    """The code location as ``dagster dev`` serves it with no variable set (the sandbox)."""
    return with_automation(loaded, Settings.from_env({}))


def schedules_for(settings: Settings) -> dg.Definitions:
    """The extract assets and the automation schedules built for ``settings``, resolvable."""
    return dg.Definitions(assets=[fhir_bulk_export, raw_fhir, raw_dataview], schedules=build_schedules(settings),
                          resources={**build_resources(settings), **build_extract_resources(settings)})


def tick(defs: dg.Definitions, name: str, at: dt.datetime) -> dg.ScheduleExecutionData:
    """Evaluate schedule ``name`` as the daemon does at its tick ``at``."""
    schedule = defs.get_schedule_def(name)
    return schedule.evaluate_tick(dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral(),
                                                            scheduled_execution_time=at))


# --- settings ---------------------------------------------------------------------------------------
def test_automation_settings_defaults_and_validation() -> None:
    s = Settings.from_env({})
    assert (s.nightly_time, s.nightly_hour_minute, s.pipeline_timezone) == ("02:00", (2, 0), "America/New_York")
    assert (s.fhir_full_export_day, s.freshness_fail_hours, s.alert_webhook_url) == (1, 26.0, None)
    assert s.is_sandbox and s.automation_running_by_default
    assert not Settings.from_env(PRODUCTION).automation_running_by_default
    assert Settings.from_env({**PRODUCTION, "AUTOMATION_DEFAULT_RUNNING": "true"}).automation_running_by_default
    assert not Settings.from_env({"AUTOMATION_DEFAULT_RUNNING": "off"}).automation_running_by_default
    hooked = Settings.from_env({"ALERT_WEBHOOK_URL": "https://hooks.example.org/services/T0/B0/s3cr3t"})
    assert "s3cr3t" not in repr(hooked) and hooked.redacted()["alert_webhook_url"] == "***"
    for name, bad in [("NIGHTLY_TIME", "2am"), ("NIGHTLY_TIME", "24:00"), ("FHIR_FULL_EXPORT_DAY", "31"),
                      ("FHIR_FULL_EXPORT_DAY", "0"), ("FRESHNESS_FAIL_HOURS", "0"),
                      ("ALERT_WEBHOOK_URL", "hooks.example.org/x"), ("AUTOMATION_DEFAULT_RUNNING", "maybe")]:
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: bad})


# --- schedules --------------------------------------------------------------------------------------
def test_code_location_has_the_schedules_and_sensors(location: dg.Definitions) -> None:
    names = {s.name for s in location.schedules or []}
    assert {DATAVIEW_SCHEDULE, FHIR_NIGHTLY_SCHEDULE, FHIR_FULL_SCHEDULE} <= names
    sensors = {s.name for s in location.sensors or []}
    assert {"automation_condition_sensor", SENSOR_NAME} <= sensors
    dataview = location.get_schedule_def(DATAVIEW_SCHEDULE)
    assert (dataview.cron_schedule, dataview.execution_timezone) == ("0 2 * * *", "America/New_York")
    assert dataview.job_name == "extract_dataview_job"
    assert location.get_schedule_def(FHIR_FULL_SCHEDULE).cron_schedule == "0 2 1 * *"


def test_dataview_schedule_requests_the_previous_day_in_the_practice_timezone(location: dg.Definitions) -> None:
    data = tick(location, DATAVIEW_SCHEDULE, dt.datetime(2026, 3, 10, 2, 0, tzinfo=NY))
    [request] = data.run_requests
    assert request.partition_key == "2026-03-09"
    # a late nightly time: 21:30 in New York is already the next day in UTC (01:30Z on the 11th);
    # the previous *New York* day is still the 9th
    late = schedules_for(Settings.from_env({"NIGHTLY_TIME": "21:30"}))
    assert late.get_schedule_def(DATAVIEW_SCHEDULE).cron_schedule == "30 21 * * *"
    [request] = tick(late, DATAVIEW_SCHEDULE, dt.datetime(2026, 3, 11, 1, 30, tzinfo=dt.UTC)).run_requests
    assert request.partition_key == "2026-03-09"
    # the spring-forward night: 02:00 does not exist on 2026-03-08 in New York, Dagster ticks at 03:00
    [request] = tick(location, DATAVIEW_SCHEDULE, dt.datetime(2026, 3, 8, 3, 0, tzinfo=NY)).run_requests
    assert request.partition_key == "2026-03-07"


def test_fhir_export_is_since_nightly_and_full_on_the_configured_day_only() -> None:
    defs = schedules_for(Settings.from_env({"FHIR_FULL_EXPORT_DAY": "15", "NIGHTLY_TIME": "21:30"}))
    assert defs.get_schedule_def(FHIR_NIGHTLY_SCHEDULE).cron_schedule == "30 21 * * *"
    assert defs.get_schedule_def(FHIR_FULL_SCHEDULE).cron_schedule == "30 21 15 * *"

    def config(request: dg.RunRequest) -> bool:
        return request.run_config["ops"]["fhir_bulk_export"]["config"]["full"]

    # the 14th at 21:30 in New York is the 15th in UTC: still a _since night
    [since] = tick(defs, FHIR_NIGHTLY_SCHEDULE, dt.datetime(2026, 3, 14, 21, 30, tzinfo=NY)).run_requests
    assert config(since) is False and since.tags["athena_pipeline/fhir_export"] == "since"
    assert since.run_key == "fhir-since:2026-03-14"
    skipped = tick(defs, FHIR_NIGHTLY_SCHEDULE, dt.datetime(2026, 3, 15, 21, 30, tzinfo=NY))
    assert not skipped.run_requests and "full-export day" in skipped.skip_message
    [full] = tick(defs, FHIR_FULL_SCHEDULE, dt.datetime(2026, 3, 15, 21, 30, tzinfo=NY)).run_requests
    assert config(full) is True and full.run_key == "fhir-full:2026-03-15"
    not_today = tick(defs, FHIR_FULL_SCHEDULE, dt.datetime(2026, 3, 14, 21, 30, tzinfo=NY))
    assert not not_today.run_requests
    # both run configs are valid for the real job (raises DagsterInvalidConfigError otherwise)
    job = defs.resolve_job_def("extract_fhir_job")
    for request in (since, full):
        dg.validate_run_config(job, request.run_config)


def _statuses(settings: Settings) -> set[str]:
    defs = build_automation_defs(settings)
    return {s.default_status.value for s in [*defs.schedules, *defs.sensors]}


def test_everything_runs_by_default_in_the_sandbox_and_is_stopped_in_production() -> None:
    assert _statuses(Settings.from_env({})) == {"RUNNING"}
    assert _statuses(Settings.from_env(PRODUCTION)) == {"STOPPED"}
    assert _statuses(Settings.from_env({**PRODUCTION, "AUTOMATION_DEFAULT_RUNNING": "true"})) == {"RUNNING"}
    assert _statuses(Settings.from_env({"AUTOMATION_DEFAULT_RUNNING": "false"})) == {"STOPPED"}
    assert len(build_automation_defs(Settings.from_env({})).schedules) == 3


# --- freshness and conditions on the real graph --------------------------------------------------------
def test_freshness_policies_on_marts_and_caspio_tables(loaded: dg.Definitions, location: dg.Definitions) -> None:
    graph = location.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    marts = {k for k in keys if graph.get(k).group_name == "marts"}
    caspio = {k for k in keys if graph.get(k).group_name == "caspio"}
    if not marts and not caspio:
        pytest.skip("no marts or Caspio assets in this checkout yet")
    phi = {k for k in caspio if graph.get(k).metadata.get("contains_phi") in (True, "true")}
    for key in keys:
        policy = graph.get(key).freshness_policy
        if key in marts or key in caspio - phi:
            assert isinstance(policy, TimeWindowFreshnessPolicy), key
            assert policy.fail_window.to_timedelta() == dt.timedelta(hours=26)
        else:
            assert policy is None, key
    # a patient-level Caspio table is only watched when it is published
    if phi:
        published = with_automation(loaded, Settings.from_env({"CASPIO_PUBLISH_PATIENT_LEVEL": "true",
                                                               "FRESHNESS_FAIL_HOURS": "30"}))
        graph = published.resolve_asset_graph()
        for key in phi:
            assert graph.get(key).freshness_policy.fail_window.to_timedelta() == dt.timedelta(hours=30)


def test_dbt_and_caspio_assets_follow_the_nightly_extracts(location: dg.Definitions) -> None:
    graph = location.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.group_name in ("staging", "intermediate", "marts", "caspio"):
            assert node.automation_condition is not None, key
            assert node.automation_condition.get_label() == "nightly_after_extracts(0 2 * * *, America/New_York)"
        else:  # the extracts run on schedules; the event-driven appointment sync on its sensor
            assert node.automation_condition is None, key
    location.resolve_all_job_defs()


# --- automation conditions, evaluated --------------------------------------------------------------------
@dataclass
class Night:
    """A small graph shaped like ours, its automation applied exactly as the code location does it."""

    with_erakick: bool = False
    requested: list[set[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        daily = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="America/New_York")

        # raw_dataview/erakick is a Data View table the catalogue marks experimental (may be absent)
        @dg.multi_asset(specs=[dg.AssetSpec(["raw_dataview", "claim"], group_name="raw_dataview"),
                               dg.AssetSpec(["raw_dataview", "erakick"], group_name="raw_dataview", skippable=True)],
                        partitions_def=daily, can_subset=True, name="raw_dataview")
        def dataview(context):
            for key in context.selected_asset_keys:
                yield dg.MaterializeResult(asset_key=key)

        @dg.asset(key=["raw_fhir", "patient"], group_name="raw_fhir")
        def fhir() -> None: ...

        def model(key: str, group: str, *deps: str) -> dg.AssetsDefinition:
            @dg.asset(key=key.split("/"), group_name=group, deps=[d.split("/") for d in deps])
            def _model() -> None: ...
            return _model

        self.assets = [dataview, fhir, model("seeds/codes", "staging"),
                       model("staging/stg_patients", "staging", "raw_fhir/patient", "seeds/codes"),
                       model("staging/stg_claims", "staging", "raw_dataview/claim"),
                       model("staging/stg_era_kicks", "staging", "raw_dataview/erakick", "seeds/codes"),
                       model("intermediate/int_claims", "intermediate", "staging/stg_patients",
                             "staging/stg_claims", "staging/stg_era_kicks"),
                       model("marts/denials", "marts", "intermediate/int_claims"),
                       model("caspio/denials", "caspio", "marts/denials")]
        self.defs = with_automation(dg.Definitions(assets=self.assets), Settings.from_env({}))
        self.cursor = None

    def evaluate(self, instance: dg.DagsterInstance, at: dt.datetime) -> set[str]:
        """One tick of the automation sensor at ``at``; what it requests is materialised 30 s later, as
        its run would be."""
        with freeze_time(at):
            result = dg.evaluate_automation_conditions(defs=self.defs, instance=instance, cursor=self.cursor,
                                                       evaluation_time=at)
        self.cursor = result.cursor
        keys = {k for k in self.defs.resolve_asset_graph().get_all_asset_keys() if result.get_requested_partitions(k)}
        self.materialize(instance, at + dt.timedelta(seconds=30), keys)
        names = {k.to_user_string() for k in keys}
        self.requested.append(names)
        return names

    def extract(self, instance: dg.DagsterInstance, at: dt.datetime, *, fhir: bool = True, dataview: bool = True
                ) -> None:
        """The nightly extract runs: the FHIR load, and the previous day's Data View partition (without
        the experimental table unless it exists)."""
        day = (at.astimezone(NY).date() - dt.timedelta(days=1)).isoformat()
        if fhir:
            self.materialize(instance, at, {dg.AssetKey(["raw_fhir", "patient"])})
        if dataview:
            tables = ["claim", "erakick"] if self.with_erakick else ["claim"]
            self.materialize(instance, at, {dg.AssetKey(["raw_dataview", t]) for t in tables}, partition=day)

    @staticmethod
    def materialize(instance: dg.DagsterInstance, at: dt.datetime, keys: set[dg.AssetKey],
                    partition: str | None = None) -> None:
        """Record materialisations of ``keys`` at ``at`` in the instance (what the runs would record;
        the automation evaluator reads nothing else)."""
        with freeze_time(at):
            for key in keys:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


def at(day: int, hour: int, minute: int) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=NY)


DOWNSTREAM = {"staging/stg_patients", "staging/stg_claims", "intermediate/int_claims", "marts/denials",
              "caspio/denials"}


def test_downstream_builds_once_a_night_after_every_input_is_fresh() -> None:
    night = Night()
    with dg.instance_for_test() as instance:
        assert night.evaluate(instance, at(10, 1, 0)) == set()            # first evaluation: nothing surprising
        assert night.evaluate(instance, at(10, 1, 59)) == set()           # before the tick
        assert night.evaluate(instance, at(10, 2, 0)) == {"seeds/codes"}   # the tick: seeds have no inputs
        assert night.evaluate(instance, at(10, 2, 1)) == set()            # extracts still running
        night.extract(instance, at(10, 2, 20))
        # all of it in one evaluation (one run); the model of the absent experimental table waits
        assert night.evaluate(instance, at(10, 2, 21)) == DOWNSTREAM
        assert night.evaluate(instance, at(10, 2, 22)) == set()
        assert night.evaluate(instance, at(10, 14, 0)) == set()
        # a daytime extract (a manual run) does not rebuild anything before the next tick
        night.extract(instance, at(10, 15, 0), dataview=False)
        assert night.evaluate(instance, at(10, 15, 1)) == set()

        # next night the Data View load is late: what reads FHIR only goes ahead, the rest waits for it
        assert night.evaluate(instance, at(11, 2, 0)) == {"seeds/codes"}
        night.extract(instance, at(11, 2, 10), dataview=False)
        assert night.evaluate(instance, at(11, 2, 11)) == {"staging/stg_patients"}
        assert night.evaluate(instance, at(11, 3, 0)) == set()
        night.extract(instance, at(11, 4, 0), fhir=False)
        assert night.evaluate(instance, at(11, 4, 1)) == DOWNSTREAM - {"staging/stg_patients"}
        assert night.evaluate(instance, at(11, 4, 2)) == set()

        # the third night the experimental table exists: its staging model is rebuilt with the rest
        night.with_erakick = True
        assert night.evaluate(instance, at(12, 2, 0)) == {"seeds/codes"}
        night.extract(instance, at(12, 2, 30))
        assert night.evaluate(instance, at(12, 2, 31)) == DOWNSTREAM | {"staging/stg_era_kicks"}

    # nothing was ever requested twice in one night
    counts: dict[str, int] = {}
    for names in night.requested:
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    assert counts["caspio/denials"] == 3 and counts["seeds/codes"] == 3


def test_downstream_waits_while_an_input_is_still_being_rebuilt() -> None:
    night = Night()
    with dg.instance_for_test() as instance:
        night.evaluate(instance, at(10, 1, 0))
        assert night.evaluate(instance, at(10, 2, 0)) == {"seeds/codes"}
        # a run that rebuilds raw_fhir/patient (the events sensor's refresh, say) starts at 02:05 ...
        job = night.defs.resolve_implicit_global_asset_job_def()
        with freeze_time(at(10, 2, 5)):
            run = instance.create_run_for_job(job_def=job, asset_selection={dg.AssetKey(["raw_fhir", "patient"])},
                                              status=dg.DagsterRunStatus.STARTED)
        # ... and is still going when the nightly extracts have landed: what reads it waits
        night.extract(instance, at(10, 2, 20))
        assert night.evaluate(instance, at(10, 2, 21)) == {"staging/stg_claims"}
        assert night.evaluate(instance, at(10, 2, 30)) == set()
        with freeze_time(at(10, 2, 40)):
            instance.report_run_failed(run)  # the run is over (how it ended does not matter here)
        assert night.evaluate(instance, at(10, 2, 41)) == DOWNSTREAM - {"staging/stg_claims"}


def test_nightly_cron_follows_the_setting() -> None:
    assert nightly_cron(2, 0) == "0 2 * * *"
    assert nightly_cron(*Settings.from_env({"NIGHTLY_TIME": "23:45"}).nightly_hour_minute) == "45 23 * * *"


# --- run-failure alert --------------------------------------------------------------------------------
@dataclass
class Hook:
    """A webhook receiver on loopback that records what it is sent."""

    url: str
    received: list[dict]
    server: uvicorn.Server
    thread: threading.Thread


@pytest.fixture
def hook() -> Iterator[Hook]:
    received: list[dict] = []

    async def receive(request: Request) -> Response:
        received.append(json.loads(await request.body()))
        return JSONResponse({"ok": True})

    async def broken(request: Request) -> Response:
        return Response("no", status_code=500)

    app = Starlette(routes=[Route("/hook", receive, methods=["POST"]), Route("/broken", broken, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the webhook server did not start"
        time.sleep(0.01)
    yield Hook(f"http://127.0.0.1:{sock.getsockname()[1]}", received, server, thread)
    server.should_exit = True
    thread.join(10)


LONG_DETAIL = "x" * 3000


@pytest.fixture(scope="module")
def failed_run() -> Iterator[tuple[dg.DagsterRun, dg.RunFailureSensorContext]]:
    """A real run of a job whose multi-asset step materialises one table, then fails on the next."""

    @dg.asset(key=["raw_fhir", "patient"])
    def loaded() -> None: ...

    @dg.multi_asset(specs=[dg.AssetSpec(["staging", "stg_a"], deps=[["raw_fhir", "patient"]]),
                           dg.AssetSpec(["staging", "stg_b"], deps=[["raw_fhir", "patient"]])], name="dbt_models")
    def models():
        yield dg.MaterializeResult(asset_key=["staging", "stg_a"])
        raise ValueError(f"stg_b: Binder Error: column claim_status not found {LONG_DETAIL}")

    @dg.asset(key=["caspio", "b"], deps=[["staging", "stg_b"]])
    def published() -> None: ...

    defs = dg.Definitions(assets=[loaded, models, published],
                          jobs=[dg.define_asset_job("transform_job", selection="*")])
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("transform_job").execute_in_process(
            instance=instance, raise_on_error=False, tags={"dagster/schedule_name": "nightly"})
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        [record] = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        context = dg.build_run_status_sensor_context(
            sensor_name=SENSOR_NAME, dagster_event=record.event_log_entry.dagster_event, dagster_instance=instance,
            dagster_run=run).for_run_failure()
        yield run, context


def test_failed_run_is_posted_to_the_alert_webhook(hook: Hook, failed_run) -> None:
    run, context = failed_run
    sensor = build_run_failure_sensor(Settings.from_env({"ALERT_WEBHOOK_URL": f"{hook.url}/hook"}))
    sensor(context)
    [payload] = hook.received
    assert payload["event"] == "run_failure" and payload["source"] == "athena-pipeline"
    assert payload["job"] == "transform_job" and payload["run_id"] == run.run_id
    assert payload["failed_steps"] == ["dbt_models"]
    # the step materialised stg_a before failing: only stg_b failed (caspio/b never ran: not a failure)
    assert payload["failed_assets"] == ["staging/stg_b"] and payload["failed_assets_total"] == 1
    assert payload["error"]["class"] == "ValueError"
    assert payload["error"]["message"].startswith("stg_b: Binder Error: column claim_status not found x")
    assert len(payload["error"]["message"]) <= MAX_MESSAGE_CHARS
    assert payload["launched_by"] == {"dagster/schedule_name": "nightly"}
    assert run.run_id[:8] in payload["text"] and "dbt_models" in payload["text"]
    assert "Traceback" not in json.dumps(payload)


def test_alert_delivery_failures_are_logged_never_raised(hook: Hook, failed_run,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    sensor = build_run_failure_sensor(Settings.from_env({"ALERT_WEBHOOK_URL": down}))
    sensor(failed_run[1])  # does not raise
    assert not hook.received

    caplog.set_level("WARNING", logger="athena_pipeline.alerts")
    assert post_alert(down, {"text": "x"}) is False
    assert post_alert(f"{hook.url}/broken", {"text": "x"}) is False
    # a server that accepts the connection but never answers: the read timeout gives up
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.monotonic()
        assert post_alert(f"http://127.0.0.1:{silent.getsockname()[1]}/hook", {"text": "x"},
                          timeout=httpx.Timeout(0.5)) is False
        assert time.monotonic() - started < 5
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "ConnectError" in messages and "HTTP 500" in messages and "ReadTimeout" in messages
    assert "127.0.0.1" not in messages  # the URL is a secret: never logged
    assert post_alert(f"{hook.url}/hook", {"text": "delivered"}) is True
    assert hook.received == [{"text": "delivered"}]
