"""``make demo`` / ``athena-pipeline demo``: the whole pipeline, once, on the sandbox, in one command.

What a new user sees in a few minutes with nothing but Python and make, and why it is built so:

1. **A practice.** The sandbox world in ``.sandbox/world`` is generated once (in a child process,
   its output in ``.sandbox/logs/generate.log``) and reused afterwards. A new world ends ``days``
   before the last complete day in ``PIPELINE_TIMEZONE``: after the simulated day(s) the world's
   clock is "yesterday", so the new Data View rows fall in daily partitions Dagster already has.
2. **The outside world.** ``athena-pipeline sandbox serve`` (the athenahealth emulator, with the
   Caspio emulator at ``/caspio``) and ``athena-pipeline webhook serve`` (the receiver and its
   inbox) run as child processes, each in a process group of its own with its log in
   ``.sandbox/logs/``. Ports: the usual ones (8765, 8766) when free, else any free port; each child
   prints the address it listens on, which is read back, so there is no race for a port. Then
   ``subscriptions ensure`` registers the receiver with the emulator.
3. **The pipeline through Dagster.** The code location's jobs (``extract_fhir_job``,
   ``extract_dataview_job``, ``transform_job``, ``publish_job``) run in this process against the
   instance in ``DAGSTER_HOME`` (``.dagster_home``, the one ``make dev`` opens), so every run,
   materialization and check is in the UI afterwards. In process rather than ``dagster job
   execute``: the definitions load once, instead of once per step in a subprocess, which costs
   minutes on two cores. The first Data View run is a full refresh recorded on the latest
   partition: one copy of every row instead of a thousand-day backfill.
4. **A day goes by.** ``sandbox advance`` moves the world's clock; the emulator sends signed
   notifications to the receiver, which stores them; the demo waits until every delivery is
   acknowledged, then evaluates ``athena_events_sensor`` once, as the daemon would, and runs the
   appointment syncs it requests (Caspio within seconds of the change). Its debounced refresh
   (the ``_since`` FHIR export and what is downstream of it) is covered by the incremental run
   that follows, shaped like the nightly one: the new Data View day, the ``_since`` export, dbt
   and the Caspio publish (only rows that changed are written). dbt runs as of the world's clock,
   since the sandbox's "today" is not the wall clock's.
5. **A summary**: rows per mart, the headline KPIs, events and calls, where to look, time per stage.
6. **Clean up.** Every child is stopped in a ``finally`` (SIGTERM to its process group, SIGKILL
   after a grace period) on success, error, Ctrl-C, SIGTERM or SIGHUP; on Linux the kernel also
   sends them SIGTERM if the demo itself is killed (``PR_SET_PDEATHSIG``).

This module imports only the standard library, click and the settings at import time (the CLI
loads it for ``--help``); Dagster is imported after the environment is set, because the
definitions read it when they load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from athena_pipeline import settings as settings_mod

log = logging.getLogger("athena_pipeline.demo")

#: The repository root (``dagster.yaml`` is copied from here into DAGSTER_HOME, as ``make dev`` does).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: How long a server may take to print its address, and a stopped child to exit before SIGKILL.
READY_TIMEOUT = 90.0
STOP_GRACE = 10.0
#: Run-config fragment that keeps Dagster's console logger to errors (in ``dagster-runs.log``): the
#: demo prints its own lines, and every event is in the run's log in the instance (the UI shows it).
QUIET_LOGGERS: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
DEMO_TAGS = {"athena_pipeline/trigger": "demo"}
SENSOR_NAME = "athena_events_sensor"
SENSOR_TAG = "dagster/sensor_name"
RUN_KEY_TAG = "dagster/run_key"
PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"

Say = Callable[[str], None]


class DemoError(RuntimeError):
    """A stage of the demo failed; the message says which, and where to look."""


@dataclass(frozen=True)
class DemoOptions:
    """Everything the demo can be told. Relative paths are relative to the working directory."""

    world: Path = Path(settings_mod.SANDBOX_WORLD)
    warehouse: Path = Path("data/warehouse.duckdb")
    dagster_home: Path = Path(".dagster_home")
    #: Child process logs and the demo's own log; default ``<world's parent>/logs``.
    log_dir: Path | None = None
    #: Only used when the world is generated.
    seed: int = 42
    providers: int = 15
    patients: int | None = None
    #: athenahealth + Caspio emulator port and webhook receiver port; None = the usual one when
    #: free, else any free port; 0 = any free port.
    port: int | None = None
    webhook_port: int | None = None
    days: int = 1
    #: How long to wait for the emulator to deliver the day's notifications.
    event_timeout: float = 180.0
    #: Keep the emulators and the receiver running after the summary, until Ctrl-C.
    serve: bool = False

    def resolved(self) -> DemoOptions:
        world = self.world.expanduser().resolve()
        return dataclasses.replace(
            self, world=world, warehouse=self.warehouse.expanduser().resolve(),
            dagster_home=self.dagster_home.expanduser().resolve(),
            log_dir=(self.log_dir or world.parent / "logs").expanduser().resolve())


# --- child processes -------------------------------------------------------------------------------
def _pdeathsig() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when the demo dies, even by SIGKILL.

    The libc function is looked up here, in the parent: the child only makes one plain C call
    between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return preexec


class Child:
    """One child process in its own process group (session), output to a log file."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            # preexec_fn only while this process has no other thread: forking a threaded process and
            # running code before exec can deadlock. The long-lived servers start before any thread.
            preexec = _pdeathsig() if threading.active_count() == 1 else None
            self.proc = subprocess.Popen(
                list(args), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env=dict(env), cwd=os.getcwd(), start_new_session=True,
                preexec_fn=preexec)  # noqa: PLW1509 - only with no other thread (see above)
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.output().rstrip().splitlines()[-lines:])

    def wait_for(self, pattern: re.Pattern[str], timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """The first match of ``pattern`` in the child's output; DemoError if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.output())
            if match:
                return match
            if not self.running():
                raise DemoError(f"{self.name} exited (code {self.proc.returncode}) before it was ready; "
                                f"its log {self.log_path} ends with:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"{self.name} was not ready after {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.1)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to finish; DemoError with the end of its log when it fails."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"{self.name} did not finish within {timeout:.0f} s; see {self.log_path}") from None
        if code != 0:
            raise DemoError(f"{self.name} failed (exit code {code}); its log {self.log_path} ends with:\n"
                            f"{self.tail()}")
        return code

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to the child's process group, SIGKILL after ``grace`` seconds; idempotent."""
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # anything the child started in its group and left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


class Supervisor:
    """Starts children and stops every one of them, newest first, whatever happens."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []

    def start(self, name: str, log_name: str, *cli_args: str) -> Child:
        """``python -m athena_pipeline.cli <cli_args>`` with this interpreter (so the same venv)."""
        args = [sys.executable, "-m", "athena_pipeline.cli", "--log-level", "INFO", *cli_args]
        child = Child(name, args, self.log_dir / log_name, self.env)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception:  # keep stopping the others
                log.warning("could not stop %s (pid %s)", child.name, child.pid, exc_info=True)


@contextlib.contextmanager
def _signals_raise_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does, so the ``finally`` that stops the
    children runs (their default action would kill the demo and orphan them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(wanted: int | None, usual: int) -> int:
    """``wanted`` when given (0 = any); else ``usual`` when it is free, else 0 (any free port)."""
    if wanted is not None:
        return wanted
    return usual if _port_free(usual) else 0


# --- time per stage ---------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    note: str = ""


class Stages:
    """Numbered stage headers and the time each took."""

    def __init__(self, say: Say, total: int) -> None:
        self.say = say
        self.total = total
        self.done: list[Stage] = []

    @contextlib.contextmanager
    def stage(self, names: tuple[str, str]) -> Iterator[Stage]:
        name, title = names
        stage = Stage(name)
        self.say(f"\n[{len(self.done) + 1}/{self.total}] {title}")
        started = time.perf_counter()
        try:
            yield stage
        finally:
            stage.seconds = time.perf_counter() - started
            self.done.append(stage)
        self.say(f"      done in {_duration(stage.seconds)}" + (f": {stage.note}" if stage.note else ""))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


# --- environment ----------------------------------------------------------------------------------
#: Variables the demo sets itself: it always talks to the sandbox, whatever the shell points at.
_FORCED = (
    "ATHENA_FHIR_BASE_URL", "ATHENA_TOKEN_URL", "ATHENA_AUTH", "ATHENA_CLIENT_ID", "ATHENA_CLIENT_SECRET",
    "ATHENA_PRIVATE_KEY_PATH", "ATHENA_KEY_ID", "ATHENA_PRACTICE_ID", "ATHENA_GROUP_ID", "ATHENA_SCOPES",
    "ATHENA_JWT_ALGORITHM", "DATAVIEW_KIND", "DATAVIEW_DUCKDB_PATH", "DATAVIEW_DATABASE", "DATAVIEW_SCHEMA",
    "DATAVIEW_CONTEXT_IDS", "SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_PASSWORD", "SNOWFLAKE_ROLE",
    "SNOWFLAKE_WAREHOUSE", "WAREHOUSE_PATH", "LANDING_DIR", "SANDBOX_WORLD", "SANDBOX_PORT",
    "CASPIO_BASE_URL", "CASPIO_CLIENT_ID", "CASPIO_CLIENT_SECRET", "CASPIO_TABLE_PREFIX",
    "CASPIO_PUBLISH_PATIENT_LEVEL", "WEBHOOK_PORT", "WEBHOOK_URL", "EVENTS_INBOX_PATH",
)


def sandbox_environment(options: DemoOptions, base: Mapping[str, str], *, sandbox_port: int,
                        webhook_port: int, practice_id: int) -> dict[str, str]:
    """The environment of the demo and its children: every endpoint, credential and path on the
    sandbox and the demo's files (a shell pointing at production cannot leak in); tuning variables
    (time zone, memory limit, throttles) that are set are kept. Defaults of its own: Caspio's v4 bulk
    API (the first publish of every mart costs tens of calls instead of one per row) and no
    client-side throttle beyond athenahealth's production rate (see below)."""
    env = {k: v for k, v in base.items() if k not in _FORCED}
    data = options.warehouse.parent
    env.update({
        "SANDBOX_WORLD": str(options.world),
        "SANDBOX_PORT": str(sandbox_port),
        "ATHENA_PRACTICE_ID": str(practice_id),
        "DATAVIEW_KIND": "duckdb",
        "WAREHOUSE_PATH": str(options.warehouse),
        "LANDING_DIR": str(data / "landing"),
        "EVENTS_INBOX_PATH": str(data / "events.sqlite"),
        "WEBHOOK_PORT": str(webhook_port),
        "DAGSTER_HOME": str(options.dagster_home),
        "PYTHONUNBUFFERED": "1",
    })
    # The emulators limit nothing unless `sandbox serve` is told to, so the client-side throttles
    # (athena 5/s, Caspio 6.5/s: sized for the real services) would only slow the demo down.
    # athena: go-athenahealth's production figure; Caspio: none.
    env.setdefault("ATHENA_REQUESTS_PER_SECOND", "100")
    env.setdefault("CASPIO_REQUESTS_PER_SECOND", "0")
    env.setdefault("CASPIO_API_VERSION", "v4")
    env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    env.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    return env


def _apply_environment(env: Mapping[str, str]) -> None:
    for name in _FORCED:
        os.environ.pop(name, None)
    os.environ.update(env)


def _last_complete_day(timezone: str) -> dt.date:
    """Yesterday in the practice's time zone: the newest daily partition Dagster has."""
    return dt.datetime.now(ZoneInfo(timezone)).date() - dt.timedelta(days=1)


def world_end_for_demo(timezone: str, days: int) -> dt.date:
    """The last generated day of a new demo world: ``days`` before the last complete day, so that
    after the demo's ``sandbox advance --days <days>`` the world's clock is that day."""
    return _last_complete_day(timezone) - dt.timedelta(days=days)


# --- Dagster ----------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    """What one Dagster run did, as the summary needs it."""

    job: str
    run_id: str
    seconds: float
    materializations: dict[str, dict[str, Any]]
    checks_passed: int
    checks_failed: list[str]

    def metadata(self, key: str) -> dict[str, Any]:
        return self.materializations.get(key, {})

    def values(self, name: str, prefix: str = "") -> list[Any]:
        return [m[name] for k, m in self.materializations.items() if k.startswith(prefix) and name in m]

    def total(self, name: str, prefix: str = "") -> int:
        return int(sum(v for v in self.values(name, prefix) if isinstance(v, (int, float))))


def _metadata_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


_DBT_PROGRESS = re.compile(r"^(\d+) of (\d+) (?:OK|PASS|START|WARN|ERROR|FAIL|SKIP)", re.MULTILINE)


class _RunProgress(threading.Thread):
    """Prints a line when a step of the run finishes (if it took a while), and a heartbeat while a
    long step runs, read from the run's event log in the instance."""

    def __init__(self, instance: Any, run_id: str, say: Say, output_log: Path, *, min_step: float = 5.0,
                 heartbeat: float = 30.0) -> None:
        super().__init__(name="demo-run-progress", daemon=True)
        self.instance, self.run_id, self.say, self.output_log = instance, run_id, say, output_log
        self._log_start = output_log.stat().st_size if output_log.exists() else 0
        self.min_step, self.heartbeat = min_step, heartbeat
        self._halt = threading.Event()
        self._cursor: str | None = None
        self._steps: dict[str, float] = {}
        self._materialized = 0
        self._last_beat = time.monotonic()

    def run(self) -> None:
        while not self._halt.wait(2.0):
            self._poll()
            self._beat()

    def finish(self) -> None:
        self._halt.set()
        self.join(5.0)
        self._poll()

    def _poll(self) -> None:
        from dagster import DagsterEventType as T

        try:
            conn = self.instance.get_records_for_run(
                self.run_id, cursor=self._cursor,
                of_type={T.STEP_START, T.STEP_SUCCESS, T.STEP_FAILURE, T.ASSET_MATERIALIZATION})
        except Exception:  # progress lines are a nicety; the run is what matters
            log.debug("run progress not readable", exc_info=True)
            return
        self._cursor = conn.cursor or self._cursor
        for record in conn.records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type
            if kind == T.STEP_START:
                self._steps[event.step_key] = entry.timestamp
            elif kind == T.ASSET_MATERIALIZATION:
                self._materialized += 1
            elif kind in (T.STEP_SUCCESS, T.STEP_FAILURE):
                took = entry.timestamp - self._steps.pop(event.step_key, entry.timestamp)
                if kind == T.STEP_FAILURE:
                    self.say(f"      {event.step_key}: FAILED after {_duration(took)}")
                elif took >= self.min_step:
                    self.say(f"      {event.step_key}: done in {_duration(took)}")

    def _beat(self) -> None:
        if not self._steps or time.monotonic() - self._last_beat < self.heartbeat:
            return
        self._last_beat = time.monotonic()
        now = time.time()
        running = ", ".join(f"{k} ({_duration(now - t)})" for k, t in self._steps.items())
        dbt = self._dbt_progress()
        self.say(f"      ... {running}: " + (dbt or f"{self._materialized} asset(s) materialized so far"))

    def _dbt_progress(self) -> str | None:
        """dbt's newest ``N of M`` line in this run's part of the output log (dagster-dbt hands the
        materializations over only when dbt has finished)."""
        try:
            with open(self.output_log, "rb") as f:
                f.seek(max(self._log_start, f.seek(0, os.SEEK_END) - 8192))
                tail = f.read().decode(errors="replace")
        except OSError:
            return None
        found = _DBT_PROGRESS.findall(tail)
        if found:
            done, total = found[-1]
            return f"dbt at node {done} of {total} (models, seeds and tests)"
        return "dbt parsing the project" if "Running with dbt" in tail else None


class Pipeline:
    """The code location's definitions and the instance in DAGSTER_HOME; runs jobs in this process."""

    def __init__(self, say: Say, output_log: Path) -> None:
        import dagster as dg

        from athena_pipeline.definitions import defs

        self.dg = dg
        self.say = say
        #: Where what the steps print goes (dagster-dbt echoes every dbt log line to stdout, Dagster's
        #: console logger writes to stderr).
        self.output_log = output_log
        self.definitions = defs()
        self.graph = self.definitions.resolve_asset_graph()
        self.instance = dg.DagsterInstance.get()

    def last_dataview_partition(self) -> str:
        """The newest daily partition of the Data View assets (yesterday in PIPELINE_TIMEZONE)."""
        from athena_pipeline.defs.extract.partitions import DATAVIEW_DAILY

        key = DATAVIEW_DAILY.get_last_partition_key()
        if key is None:
            raise DemoError("the Data View assets have no partition yet (DATAVIEW_PARTITION_START is in the future)")
        return key

    def run(self, job: str, *, run_config: Mapping[str, Any] | None = None, partition_key: str | None = None,
            tags: Mapping[str, str] | None = None, asset_selection: Sequence[Any] | None = None) -> RunOutcome:
        """Execute ``job`` in this process, recorded in the instance; DemoError when the run fails."""
        from dagster._core.utils import make_new_run_id

        definition = self.definitions.resolve_job_def(job)
        run_id = make_new_run_id()
        config = {**QUIET_LOGGERS, **dict(run_config or {})}
        self.say(f"      Dagster run {run_id[:8]} of {job}"
                 + (f" ({len(asset_selection)} assets)" if asset_selection else ""))
        progress = _RunProgress(self.instance, run_id, self.say, self.output_log)
        progress.start()
        started = time.perf_counter()

        def execute() -> Any:
            with self._to_log(f"Dagster run {run_id} of {job}"):
                return definition.execute_in_process(
                    run_config=config, instance=self.instance, partition_key=partition_key, run_id=run_id,
                    tags={**DEMO_TAGS, **dict(tags or {})}, raise_on_error=False,
                    asset_selection=list(asset_selection) if asset_selection else None)

        streams = sys.stdout, sys.stderr
        try:
            result = _interruptible(execute)
        except KeyboardInterrupt:
            sys.stdout, sys.stderr = streams  # the abandoned worker never leaves its redirection
            self._cancel(run_id)
            raise
        finally:
            progress.finish()
        seconds = time.perf_counter() - started
        if not result.success:
            failures = [f"{e.step_key}: {_first_line(e.event_specific_data.error.message)}"
                        for e in result.get_step_failure_events() if e.event_specific_data.error]
            raise DemoError(f"Dagster run {run_id} of {job} failed: {'; '.join(failures) or 'see its logs'}. "
                            f"The stack trace is in {self.output_log}; the run's logs in the Dagster UI "
                            "(`make dev`, Runs).")
        materializations: dict[str, dict[str, Any]] = {}
        for event in result.get_asset_materialization_events():
            materialization = event.event_specific_data.materialization
            materializations[materialization.asset_key.to_user_string()] = _metadata_values(
                materialization.metadata)
        evaluations = result.get_asset_check_evaluations()
        failed = [f"{e.asset_check_key.asset_key.to_user_string()}:{e.asset_check_key.name} "
                  f"({e.severity.value})" for e in evaluations if not e.passed]
        return RunOutcome(job, run_id, seconds, materializations,
                          sum(1 for e in evaluations if e.passed), failed)

    @contextlib.contextmanager
    def _to_log(self, title: str) -> Iterator[None]:
        """What Dagster and dbt print (dbt's log lines, Dagster's console logger) into the log file;
        the demo's own lines go to the terminal it captured before."""
        with open(self.output_log, "a") as output, contextlib.redirect_stdout(output), \
                contextlib.redirect_stderr(output):
            print(f"=== {title}", flush=True)
            yield

    def _cancel(self, run_id: str) -> None:
        """After Ctrl-C: end the dbt (or other) subprocesses the run started and record the run as
        canceled, so the UI does not show it as running forever."""
        _terminate_descendants()
        try:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                self.instance.report_run_canceled(run, message="The demo was interrupted (Ctrl-C).")
        except Exception:  # best effort while shutting down
            log.debug("could not record run %s as canceled", run_id, exc_info=True)

    def sensor_tick(self, name: str) -> Any:
        """Evaluate sensor ``name`` once, with the cursor the instance holds for it, as the daemon would;
        its asset events are reported to the instance. Returns the SensorResult."""
        dg = self.dg
        sensor = self.definitions.resolve_sensor_def(name)
        state = self._sensor_state(sensor)
        cursor = state.instigator_data.cursor if state and state.instigator_data else None
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor, definitions=self.definitions,
                                          sensor_name=name, resources=dict(self.definitions.resources or {}))
        with self._to_log(f"sensor {name}"):
            result = sensor(context)
        if not isinstance(result, dg.SensorResult):  # a sensor may also yield or return run requests
            requests = list(result or [])
            result = dg.SensorResult(run_requests=[r for r in requests if isinstance(r, dg.RunRequest)],
                                     cursor=context.cursor)
        for event in result.asset_events or []:
            try:
                self.instance.report_runless_asset_event(event)
            except Exception:  # observations are informational
                log.debug("asset event of %s not reported", name, exc_info=True)
        return result

    def _sensor_state(self, sensor: Any) -> Any:
        """The instance's stored state of ``sensor`` (cursor), when the daemon has run it before."""
        try:
            for state in self.instance.all_instigator_state():
                if state.name == sensor.name:
                    return state
        except Exception:  # no stored state: start from scratch, like a first tick
            log.debug("no stored state for %s", sensor.name, exc_info=True)
        return None

    def run_request(self, request: Any, sensor_name: str, *, extra_config: Mapping[str, Any] | None = None
                    ) -> RunOutcome:
        """Execute a sensor's RunRequest as the daemon would launch it (its run key and sensor tags)."""
        config = _merge(dict(request.run_config or {}), dict(extra_config or {}))
        tags = {**dict(request.tags or {}), SENSOR_TAG: sensor_name}
        if request.run_key:
            tags[RUN_KEY_TAG] = request.run_key
        return self.run(request.job_name, run_config=config, tags=tags,
                        asset_selection=request.asset_selection, partition_key=request.partition_key)


def _interruptible(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a worker thread while this (main) thread waits, so Ctrl-C still works.

    Why: ``execute_in_process`` on the main thread swaps in Dagster's own SIGINT and SIGTERM handlers,
    which only set a flag that an in-process run never reads, and clear it when the run ends: Ctrl-C
    would be lost for the whole run (minutes for dbt). Off the main thread Dagster leaves the
    handlers alone. On KeyboardInterrupt the worker (a daemon thread) is abandoned; the caller ends
    its subprocesses and the process exits.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="demo-dagster-run", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _terminate_descendants() -> None:
    """SIGTERM the processes this one started outside the supervisor (dbt, started by dagster-dbt).
    The supervised servers are in process groups of their own and are stopped by the supervisor."""
    me = os.getpid()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me and int(fields[2]) == os.getpgrp():  # ppid, pgrp: our own group only
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGTERM)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``base``, nested dicts merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _first_line(text: str | None) -> str:
    return (str(text or "").strip().splitlines() or [""])[0]


def _prepare_dagster_home(home: Path) -> None:
    """``DAGSTER_HOME`` with the project's ``dagster.yaml``, exactly as ``make dev`` prepares it."""
    home.mkdir(parents=True, exist_ok=True)
    source, target = REPO_ROOT / "dagster.yaml", home / "dagster.yaml"
    if source.is_file() and (not target.is_file() or target.read_bytes() != source.read_bytes()):
        shutil.copyfile(source, target)


# --- waiting for the day's notifications ---------------------------------------------------------------
@dataclass
class EventsSeen:
    recorded: int = 0
    delivered: int = 0
    dead: int = 0
    received: int = 0
    duplicates_ignored: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    complete: bool = True


def wait_for_deliveries(world_dir: Path, inbox_path: Path, clock: dt.datetime, *, timeout: float,
                        say: Say, events_before: int = 0, since: float = 0.0,
                        inbox_before: tuple[int, int] = (0, 0)) -> EventsSeen:
    """Wait until the emulator has recorded the world's changes up to ``clock``, fanned them out and
    has no delivery pending (each was acknowledged or dead-lettered); then read the inbox.

    Reads the emulator's ``subscriptions.sqlite`` and the receiver's inbox (both SQLite in WAL mode,
    safe to read while they write). ``events_before`` (the emulator's event count), ``since`` (epoch
    seconds) and ``inbox_before`` (:func:`inbox_totals`) are taken before the advance, so the figures
    are this day's, not the world's whole history (old deliveries are purged after an hour).
    """
    from athena_pipeline.events.inbox import Inbox
    from athena_pipeline.sandbox.emulator.subscriptions import EventStore

    started = time.monotonic()
    seen = EventsSeen()
    store = EventStore(world_dir)
    last_note = started
    try:
        while True:
            counts = store.counts()
            events = store.event_count()
            saved = counts.get("events_clock")
            caught_up = saved is not None and dt.datetime.fromisoformat(saved) >= clock
            deliveries = counts.get("deliveries", {})
            pending = int(deliveries.get("pending", 0))
            fanned = int(counts.get("fanout_cursor") or 0) >= events
            if caught_up and fanned and pending == 0:
                break
            if time.monotonic() - started > timeout:
                seen.complete = False
                say(f"      the emulator still had {pending} notification(s) to deliver after {timeout:.0f} s; "
                    "going on with what arrived")
                break
            if time.monotonic() - last_note >= 10:
                last_note = time.monotonic()
                say(f"      ... {events - events_before:,} change event(s) recorded, {pending:,} "
                    "notification(s) still to deliver")
            time.sleep(0.25)
        seen.recorded = store.event_count() - events_before
        seen.delivered = sum(1 for d in store.deliveries("delivered") if d.created_at >= since)
        seen.dead = sum(1 for d in store.deliveries("dead") if d.created_at >= since)
    finally:
        store.close()
    with Inbox(inbox_path) as inbox:
        stats = inbox.stats()
    seen.received = stats.total - inbox_before[0]
    seen.duplicates_ignored = stats.duplicates_ignored - inbox_before[1]
    seen.by_type = dict(stats.unprocessed_by_type)
    seen.seconds = time.monotonic() - started
    return seen


def inbox_totals(inbox_path: Path) -> tuple[int, int]:
    """(events stored, duplicates ignored) in the receiver's inbox so far."""
    from athena_pipeline.events.inbox import Inbox

    with Inbox(inbox_path) as inbox:
        stats = inbox.stats()
    return stats.total, stats.duplicates_ignored


def emulator_event_count(world_dir: Path) -> int:
    """Change events the emulator has recorded for the world so far."""
    from athena_pipeline.sandbox.emulator.subscriptions import EventStore

    store = EventStore(world_dir)
    try:
        return store.event_count()
    finally:
        store.close()


# --- the summary ----------------------------------------------------------------------------------------
@dataclass
class DemoReport:
    """What the demo did and found; :func:`format_summary` prints it."""

    world: dict[str, Any] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    marts: list[dict[str, Any]] = field(default_factory=list)
    kpis: dict[str, Any] = field(default_factory=dict)
    care_gaps: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, Any] = field(default_factory=dict)
    appointment_sync: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    total_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_marts(warehouse: Path, published: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows per mart (schema ``marts``) and its Caspio table, from the last publish of each."""
    from athena_pipeline.caspio.publish import mart_catalog
    from athena_pipeline.warehouse.connection import connect

    catalog = mart_catalog()
    out = []
    with connect(warehouse, read_only=True, wait_seconds=30) as con:
        tables = {t for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'marts'").fetchall()}
        for name in sorted(catalog):
            rows = int(con.execute(f'SELECT count(*) FROM marts."{name}"').fetchone()[0]) if name in tables else None
            info = published.get(name, {})
            phi = catalog[name].contains_phi
            out.append({"mart": name, "rows": rows, "caspio_table": info.get("table"),
                        "caspio_rows": info.get("dagster/row_count"), "patient_level": phi})
    return out


def read_kpis(warehouse: Path, ground_truth: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The headline KPIs: initial denial rate, days in A/R, open care gaps by measure.

    Each is read on its own: a mart that is missing or changed shape gives ``None`` for its figure,
    never a failed demo.
    """
    from athena_pipeline.warehouse.connection import connect

    kpis: dict[str, Any] = {}
    gaps: list[dict[str, Any]] = []
    with connect(warehouse, read_only=True, wait_seconds=30) as con:
        def one(sql: str) -> tuple | None:
            try:
                return con.execute(sql).fetchone()
            except Exception as exc:  # noqa: BLE001 - a figure is missing, the summary goes on
                log.warning("KPI query failed: %s", _first_line(str(exc)))
                return None

        row = one("""SELECT sum(claims_denied_initial)::DOUBLE / nullif(sum(claims_first_remitted), 0),
                            sum(claims_denied_initial), sum(claims_first_remitted), min(month), max(month)
                     FROM marts.denials_by_payer_month
                     WHERE month > (SELECT max(month) FROM marts.denials_by_payer_month) - INTERVAL 12 MONTH""")
        if row and row[0] is not None:
            kpis["initial_denial_rate_12m"] = float(row[0])
            kpis["initial_denials_12m"] = int(row[1])
            kpis["claims_adjudicated_12m"] = int(row[2])
        row = one("""SELECT month, initial_denial_rate FROM marts.revenue_cycle_kpis
                     WHERE grain_level = 'practice' AND NOT is_partial_month AND initial_denial_rate IS NOT NULL
                     ORDER BY month DESC LIMIT 1""")
        if row:
            kpis["hfma_denial_rate_month"] = row[0].isoformat()[:7] if row[0] else None
            kpis["hfma_initial_denial_rate"] = float(row[1])
        row = one("""SELECT as_of_date, days_in_ar, ar_end_of_month FROM marts.revenue_cycle_kpis
                     WHERE grain_level = 'practice' ORDER BY month DESC LIMIT 1""")
        if row:
            kpis["as_of_date"] = row[0].isoformat() if row[0] else None
            kpis["days_in_ar"] = float(row[1]) if row[1] is not None else None
            kpis["ar_total"] = float(row[2]) if row[2] is not None else None
        try:
            rows = con.execute("""SELECT measure_id, measure_name, open_gaps, performance_rate, is_inverse,
                                         denominator, period_end
                                  FROM marts.quality_measure_performance
                                  WHERE reporting_level = 'practice'
                                    AND period_end = (SELECT max(period_end) FROM marts.quality_measure_performance)
                                  ORDER BY measure_id""").fetchall()
        except Exception as exc:  # noqa: BLE001 - the gaps are missing, the summary goes on
            log.warning("care-gap query failed: %s", _first_line(str(exc)))
            rows = []
        gaps = [{"measure_id": r[0], "measure_name": r[1], "open_gaps": int(r[2]),
                 "performance_rate": float(r[3]) if r[3] is not None else None, "is_inverse": bool(r[4]),
                 "denominator": int(r[5]), "period_end": r[6].isoformat() if r[6] else None} for r in rows]
    if ground_truth.get("as_of") == kpis.get("as_of_date") and ground_truth.get("days_in_ar") is not None:
        kpis["days_in_ar_ground_truth"] = float(ground_truth["days_in_ar"])
    return kpis, gaps


def caspio_meter(base_url: str) -> int | None:
    """Calls the Caspio emulator has metered this month (its ``/_emulator/stats``, no token)."""
    import httpx

    try:
        response = httpx.get(f"{base_url}/caspio/_emulator/stats", timeout=httpx.Timeout(5.0))
        response.raise_for_status()
        return int(response.json()["meter"]["calls"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def format_summary(report: DemoReport) -> str:
    """The summary block the demo prints last."""
    w, k = report.world, report.kpis
    practice = (f"Practice: {w.get('providers')} provider(s), {w.get('patients', 0):,} patients; world clock "
                f"{w.get('clock')} after {w.get('days')} simulated day(s); marts as of {k.get('as_of_date') or '?'}")
    lines = ["", "=" * 78, "Summary", "=" * 78, practice, "", f"  {'mart':<30}{'rows':>10}   Caspio table"]
    for m in report.marts:
        if m["caspio_table"]:
            where = f"{m['caspio_table']} ({_num(m['caspio_rows'])} rows)"
        elif m["patient_level"]:
            where = "not published: patient-level (CASPIO_PUBLISH_PATIENT_LEVEL=true to publish)"
        else:
            where = "not published"
        lines.append(f"  {m['mart']:<30}{_num(m['rows']):>10}   {where}")
    sync = report.appointment_sync
    if sync.get("table"):
        lines.append(f"  {'(appointments, from events)':<30}{'':>10}   {sync['table']} "
                     f"({_num(sync.get('rows_written'))} row(s) written)")
    lines += ["", "Headline KPIs"]
    if k.get("initial_denial_rate_12m") is not None:
        hfma = (f"; HFMA rate for {k['hfma_denial_rate_month']}: {_pct(k.get('hfma_initial_denial_rate'))}"
                if k.get("hfma_initial_denial_rate") is not None else "")
        lines.append(f"  Initial denial rate (12 months)  {_pct(k['initial_denial_rate_12m'])} of claims adjudicated "
                     f"({k['initial_denials_12m']:,} of {k['claims_adjudicated_12m']:,}){hfma}")
    else:
        lines.append("  Initial denial rate              n/a")
    if k.get("days_in_ar") is not None:
        truth = (f" (the sandbox planted {k['days_in_ar_ground_truth']:.2f})"
                 if k.get("days_in_ar_ground_truth") is not None else "")
        ar = f"; A/R ${k['ar_total']:,.0f}" if k.get("ar_total") is not None else ""
        lines.append(f"  Days in A/R                      {k['days_in_ar']:.2f}{truth}{ar}")
    else:
        lines.append("  Days in A/R                      n/a")
    if report.care_gaps:
        period = report.care_gaps[0].get("period_end")
        lines.append(f"  Open care gaps by measure (measurement period ending {period}):")
        for g in report.care_gaps:
            rate = _pct(g["performance_rate"]) + (" (lower is better)" if g["is_inverse"] else "")
            lines.append(f"    {g['measure_id']:<8}{(g['measure_name'] or '')[:44]:<46}{g['open_gaps']:>7,} open"
                         f"   performance {rate}")
    else:
        lines.append("  Open care gaps                   n/a")
    e = report.events
    if e:
        by_type = ", ".join(f"{t} {n:,}" for t, n in sorted(e.get("by_type", {}).items())) or "none"
        lines += ["", (f"Events: {e.get('recorded', 0):,} change(s) in the simulated day -> "
                       f"{e.get('received', 0):,} in the inbox ({by_type}); {e.get('dead', 0):,} dead-lettered, "
                       f"{e.get('duplicates_ignored', 0):,} duplicate(s) ignored")]
    if sync:
        failed = int(sync.get("failed_runs") or 0)
        lines.append(f"Appointment sync: {sync.get('runs', 0) + failed} run(s) from athena_events_sensor"
                     + (f" ({failed} FAILED, see the error below)" if failed else "") + ", "
                     f"{_num(sync.get('appointments'))} appointment(s): {_num(sync.get('inserted'))} inserted, "
                     f"{_num(sync.get('updated'))} updated, {_num(sync.get('deleted'))} deleted, "
                     f"{_num(sync.get('unchanged'))} unchanged"
                     + (f", {sync['gone']:,} gone from athenahealth (404)" if sync.get("gone") else "")
                     + "; in Caspio "
                     f"{_duration(sync.get('seconds_after_change', 0.0))} after the day's changes")
    c = report.calls
    lines += ["", "API calls"]
    lines.append(f"  athenahealth  {_num(c.get('athena_bulk'))} for the bulk exports, "
                 f"{_num(c.get('athena_v1'))} v1 reads for the appointment sync")
    caspio = f"  Caspio        {_num(c.get('caspio_total'))} in all: initial publish {_num(c.get('caspio_initial'))}, " \
             f"appointment sync {_num(c.get('caspio_sync'))}, incremental publish {_num(c.get('caspio_incremental'))}"
    if c.get("caspio_meter") is not None:
        caspio += f" (the emulator's meter this month: {c['caspio_meter']:,})"
    lines.append(caspio)
    u = report.urls
    lines += ["", "Where to look",
              f"  Dagster UI        make dev   -> http://127.0.0.1:3000 (these runs are in {u.get('dagster_home')})",
              f"  Caspio tables     make dev   -> http://127.0.0.1:{settings_mod.SANDBOX_PORT}/caspio/_emulator/",
              f"  Warehouse         {u.get('warehouse')}  (DuckDB: marts.*)",
              f"  Logs              {u.get('logs')}"]
    if u.get("live_caspio_view"):
        lines.append(f"  Right now         {u['live_caspio_view']} (while the demo serves)")
    lines += ["", "Time per stage"]
    for s in report.stages:
        lines.append(f"  {s['name']:<40}{_duration(s['seconds']):>12}")
    lines.append(f"  {'total':<40}{_duration(report.total_seconds):>12}")
    return "\n".join(lines)


# --- the demo -----------------------------------------------------------------------------------------
#: (short name for the timing table, title) of each stage.
STAGE_TITLES = (
    ("sandbox practice", "Sandbox practice"),
    ("emulators, receiver, subscriptions",
     "Emulators (athenahealth + Caspio), webhook receiver, Event Subscriptions"),
    ("extract FHIR", "Extract FHIR: bulk export + load (extract_fhir_job)"),
    ("extract Data View", "Extract Data View: every table, full refresh (extract_dataview_job)"),
    ("dbt build", "dbt build: staging -> intermediate -> marts (transform_job)"),
    ("publish to Caspio", "Publish the marts to Caspio (publish_job)"),
    ("a day of changes, events to the inbox",
     "A day goes by: sandbox advance, notifications -> receiver -> inbox"),
    ("sensor: appointment sync", "athena_events_sensor: appointment sync into Caspio"),
    ("incremental run", "Incremental run: the new Data View day, FHIR _since, dbt, Caspio"),
)


def run_demo(options: DemoOptions, say: Say | None = None) -> DemoReport:
    """Run the whole demo (see the module docstring); returns the report it printed.

    Raises DemoError when a stage fails and KeyboardInterrupt on Ctrl-C, in both cases after
    stopping every child. A failed appointment sync run does not stop the demo (nothing after it
    depends on it): the summary shows it, then DemoError is raised. With ``options.serve`` the
    summary is printed while the servers still run, and Ctrl-C then ends the demo normally.
    """
    options = options.resolved()
    assert options.log_dir is not None
    options.log_dir.mkdir(parents=True, exist_ok=True)
    if say is None:
        terminal = sys.stdout  # kept: Dagster runs redirect sys.stdout to a log file

        def say(text: str) -> None:
            click.echo(text, file=terminal)
    say("athena-pipeline demo: a synthetic practice through the whole pipeline, orchestrated by Dagster "
        f"(logs in {options.log_dir})")
    demo = _Demo(options, say)
    started = time.perf_counter()
    with _signals_raise_interrupt():
        try:
            demo.run()
            demo.report.stages = [{"name": s.name, "seconds": round(s.seconds, 1)} for s in demo.stages.done]
            demo.report.total_seconds = round(time.perf_counter() - started, 1)
            if options.serve:
                demo.serve_until_interrupted()
        finally:
            demo.supervisor.stop_all()
    if not options.serve:
        say(format_summary(demo.report))
    if demo.failures:
        raise DemoError(f"the demo finished, but {len(demo.failures)} run(s) failed: "
                        + " | ".join(demo.failures))
    return demo.report


class _Demo:
    """The stages, in order, and what they hand each other (the world, the environment, the runs)."""

    def __init__(self, options: DemoOptions, say: Say) -> None:
        assert options.log_dir is not None
        self.options = options
        self.say = say
        self.report = DemoReport()
        self.stages = Stages(say, len(STAGE_TITLES))
        self.base_env = dict(os.environ)
        self.supervisor = Supervisor(options.log_dir, {**self.base_env, "PYTHONUNBUFFERED": "1"})
        self.timezone = settings_mod.Settings.from_env().pipeline_timezone
        self.env: dict[str, str] = {}
        self.pipeline: Pipeline | None = None
        self.runs: list[RunOutcome] = []
        #: Failures the demo went on after (an appointment sync run); reported, and exit status 1.
        self.failures: list[str] = []

    def run(self) -> None:
        titles = iter(STAGE_TITLES)
        with self.stages.stage(next(titles)) as stage:
            world = self.world(stage)
        with self.stages.stage(next(titles)) as stage:
            self.servers(stage, world.practice_id)
        meter_before = caspio_meter(self.report.urls["athena"])
        _prepare_dagster_home(self.options.dagster_home)
        with _quiet_library_warnings():
            self.pipeline = Pipeline(self.say, self.options.log_dir / "dagster-runs.log")
            first = self.first_runs(titles, world.current_date)
            with self.stages.stage(next(titles)) as stage:
                old_clock, world, changed_at = self.a_day_goes_by(stage, world)
            with self.stages.stage(next(titles)) as stage:
                syncs, refreshes = self.sensor(stage, changed_at)
            with self.stages.stage(next(titles)) as stage:
                later = self.incremental(refreshes, old_clock, world.current_date)
                stage.note = (f"{sum(o.total(n, 'caspio/') for o in later for n in WRITES):,} Caspio row(s) "
                              f"written with {sum(o.total('calls_used', 'caspio/') for o in later):,} call(s)")
            self.summarize(world, first, syncs, later, meter_before)

    # 1 ----------------------------------------------------------------------------------------------
    def world(self, stage: Stage) -> Any:
        """The world in ``options.world``; generated first when there is none."""
        from athena_pipeline.sandbox.world import World

        options = self.options
        if (options.world / "world.json").is_file():
            world = World.load(options.world)
            stage.note = f"reusing {options.world}"
        else:
            end = world_end_for_demo(self.timezone, options.days)
            args = ["sandbox", "generate", "--out", str(options.world), "--seed", str(options.seed),
                    "--providers", str(options.providers), "--end", end.isoformat()]
            if options.patients:
                args += ["--patients", str(options.patients)]
            self.say(f"      generating a new world (ends {end}; output in {self.supervisor.log_dir / 'generate.log'})")
            self.supervisor.start("sandbox generate", "generate.log", *args).wait()
            world = World.load(options.world)
            stage.note = f"generated {options.world}"
        o = world.options
        self.report.world = {"path": str(world.root), "providers": o.providers, "patients": o.patient_count,
                             "start": o.start.isoformat(), "end": o.end.isoformat(),
                             "clock": world.current_date.isoformat(), "days": options.days}
        self.say(f"      {o.providers} provider(s), {o.patient_count:,} patients, {o.start} .. {o.end}, "
                 f"clock {world.current_date}")
        return world

    # 2 ----------------------------------------------------------------------------------------------
    def servers(self, stage: Stage, practice_id: int) -> None:
        """The emulator and the receiver, their addresses in the environment, the subscriptions."""
        options = self.options
        sandbox_port = choose_port(options.port, settings_mod.SANDBOX_PORT)
        webhook_port = choose_port(options.webhook_port, settings_mod.WEBHOOK_PORT)
        env = self.env = sandbox_environment(options, self.base_env, sandbox_port=sandbox_port,
                                             webhook_port=webhook_port, practice_id=practice_id)
        self.supervisor.env = env
        emulator = self.supervisor.start("the sandbox emulator", "sandbox.log", "sandbox", "serve",
                                         "--world", str(options.world), "--port", str(sandbox_port))
        receiver = self.supervisor.start("the webhook receiver", "webhook.log", "webhook", "serve",
                                         "--port", str(webhook_port), "--inbox", env["EVENTS_INBOX_PATH"])
        base = emulator.wait_for(re.compile(r"athenahealth emulator: base=(http://\S+)")).group(1)
        emulator.wait_for(re.compile(r"caspio emulator: base=\S+"))
        webhook_url = receiver.wait_for(re.compile(r"webhook receiver: url=(http://\S+)")).group(1)
        env["SANDBOX_PORT"] = base.rsplit(":", 1)[1]
        env["WEBHOOK_PORT"] = webhook_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        _apply_environment(env)  # Dagster's resources and the plain-Python clients read it from here on
        self.report.urls = {"athena": base, "caspio": f"{base}/caspio", "webhook": webhook_url,
                            "dagster_home": str(options.dagster_home), "warehouse": str(options.warehouse),
                            "logs": str(self.supervisor.log_dir)}
        self.say(f"      athenahealth emulator {base}/fhir/r4, Caspio emulator {base}/caspio, "
                 f"webhook receiver {webhook_url}")
        from athena_pipeline.events.subscriptions import ensure_subscriptions

        s = ensure_subscriptions(settings_mod.Settings.from_env()).summary()
        stage.note = (f"{s['created'] + s['kept']} subscription(s) to {webhook_url} ({s['created']} created, "
                      f"{s['kept']} kept" + (f", {s['replaced']} pointing elsewhere replaced" if s["replaced"] else "")
                      + ")")

    # 3-6 --------------------------------------------------------------------------------------------
    def first_runs(self, titles: Iterator[tuple[str, str]], clock: dt.date) -> dict[str, RunOutcome]:
        """The whole pipeline once: FHIR, Data View (full refresh), dbt as of the world's clock, Caspio."""
        from athena_pipeline.defs.transform.assets import transform_run_config

        pipeline = self._pipeline()
        first: dict[str, RunOutcome] = {}
        with self.stages.stage(next(titles)) as stage:
            out = first["fhir"] = pipeline.run("extract_fhir_job")
            export = out.metadata("fhir_bulk_export")
            stage.note = (f"{_num(export.get('dagster/row_count'))} resources ({export.get('kind', '?')} export, "
                          f"{_num(export.get('files'))} files, {_num(export.get('api_calls'))} API calls); "
                          f"{_num(out.total('inserted', 'raw_fhir/'))} rows inserted into raw_fhir" + _checks(out))
        with self.stages.stage(next(titles)) as stage:
            partition = pipeline.last_dataview_partition()
            out = first["dataview"] = pipeline.run("extract_dataview_job", partition_key=partition,
                                                   run_config=DATAVIEW_FULL_REFRESH)
            stage.note = (f"{len(out.materializations)} tables, {_num(out.total('received'))} rows copied "
                          f"(partition {partition}, full refresh)" + _checks(out))
        with self.stages.stage(next(titles)) as stage:
            out = first["dbt"] = pipeline.run("transform_job", run_config=transform_run_config(as_of_date=clock))
            stage.note = f"{len(out.materializations)} models and seeds built as of {clock}" + _checks(out)
        with self.stages.stage(next(titles)) as stage:
            out = first["publish"] = pipeline.run("publish_job")
            stage.note = (f"{len(out.materializations)} Caspio tables: {_num(out.total('rows_inserted'))} rows "
                          f"inserted, {_num(out.total('rows_updated'))} updated, "
                          f"{_num(out.total('calls_used'))} Caspio calls" + _checks(out))
        self.runs += first.values()
        return first

    # 7 ----------------------------------------------------------------------------------------------
    def a_day_goes_by(self, stage: Stage, world: Any) -> tuple[dt.date, Any, float]:
        """``sandbox advance``, then wait for the notifications; returns (old clock, world, when)."""
        from athena_pipeline.sandbox.world import World

        options = self.options
        inbox = Path(self.env["EVENTS_INBOX_PATH"])
        events_before, inbox_before, since = emulator_event_count(options.world), inbox_totals(inbox), time.time()
        changed_at = time.monotonic()
        self.supervisor.start("sandbox advance", "advance.log", "sandbox", "advance", "--world",
                              str(options.world), "--days", str(options.days)).wait()
        old_clock = world.current_date
        world = World.load(options.world)
        self.report.world["clock"] = world.current_date.isoformat()
        self.say(f"      world clock {old_clock} -> {world.current_date}; waiting for the emulator's notifications")
        seen = wait_for_deliveries(options.world, inbox, world.clock, timeout=options.event_timeout, say=self.say,
                                   events_before=events_before, since=since, inbox_before=inbox_before)
        self.report.events = dataclasses.asdict(seen)
        stage.note = (f"{seen.recorded:,} change event(s), {seen.delivered:,} notification(s) acknowledged, "
                      f"{sum(seen.by_type.values()):,} event(s) waiting in the inbox")
        return old_clock, world, changed_at

    # 8 ----------------------------------------------------------------------------------------------
    def sensor(self, stage: Stage, changed_at: float) -> tuple[list[RunOutcome], list[Any]]:
        """One tick of ``athena_events_sensor``; its appointment syncs run now. Returns the sync runs
        and the other requests (the debounced refresh), which the incremental run covers."""
        pipeline = self._pipeline()
        requests = list(pipeline.sensor_tick(SENSOR_NAME).run_requests or [])
        syncs = [r for r in requests if r.job_name == APPOINTMENT_SYNC_JOB]
        refreshes = [r for r in requests if r.job_name != APPOINTMENT_SYNC_JOB]
        self.say(f"      the sensor requested {len(syncs)} appointment sync run(s)" + (
            f" and a debounced {refreshes[0].job_name} for {refreshes[0].tags.get('athena_pipeline/events', '?')} "
            "other event(s), which the incremental run covers" if refreshes else ""))
        runs: list[RunOutcome] = []
        failed: list[str] = []
        for request in syncs:  # the rest of the demo does not depend on these: a failure is reported
            try:
                runs.append(pipeline.run_request(request, SENSOR_NAME))
            except DemoError as exc:
                failed.append(str(exc))
                self.say(f"      {_first_line(str(exc))}")
        self.runs += runs
        self.failures += failed
        self.report.appointment_sync = {**_sync_summary(runs, time.monotonic() - changed_at),
                                        "failed_runs": len(failed)}
        stage.note = (f"{self.report.appointment_sync['appointments']:,} appointment(s) synced into "
                      f"{self.report.appointment_sync.get('table') or 'Caspio'}"
                      + (f"; {len(failed)} of {len(syncs)} sync run(s) FAILED" if failed else ""))
        return runs, refreshes

    # 9 ----------------------------------------------------------------------------------------------
    def incremental(self, refreshes: Sequence[Any], old_clock: dt.date, clock: dt.date) -> list[RunOutcome]:
        """The nightly shape after a day: the new Data View day(s), the ``_since`` FHIR export and
        load, dbt (incremental staging, rebuilt marts) and the Caspio publish (only what changed),
        as of the world's new clock.

        These runs stand in for the sensor's debounced ``events_refresh_job``: that job covers only
        what is downstream of FHIR, so running it and then the Data View side would invoke dbt twice
        (its start-up, and a second round of Dagster events for the models both need). Each run
        carries the run key of the refresh it covers (tag ``athena_pipeline/covers_run_key``).
        """
        from athena_pipeline.defs.transform.assets import transform_run_config

        pipeline = self._pipeline()
        covers = ",".join(r.run_key for r in refreshes if r.run_key)[:200]
        tags = {"athena_pipeline/covers_run_key": covers} if covers else {}
        runs = [self.dataview_days(old_clock, clock),
                pipeline.run("extract_fhir_job", tags=tags),
                pipeline.run("transform_job", run_config=transform_run_config(as_of_date=clock), tags=tags),
                pipeline.run("publish_job", tags=tags)]
        self.runs += runs
        return runs

    def dataview_days(self, old_clock: dt.date, clock: dt.date) -> RunOutcome:
        """The Data View partitions that hold the world's new day(s), in one run.

        A world day D (naive UTC timestamps) spans the practice's days D-1 and D, hence the
        partitions from ``old_clock`` to ``clock``. When ``clock`` is later than the newest
        partition Dagster has (a reused world that ran ahead of the wall clock), the newest
        partition is run with a full refresh instead, so the marts still see every row.
        """
        pipeline = self._pipeline()
        last = dt.date.fromisoformat(pipeline.last_dataview_partition())
        if clock > last:
            self.say(f"      the world's day {clock} is later than the newest Data View partition ({last}): "
                     "a full refresh on that partition instead")
            return pipeline.run("extract_dataview_job", partition_key=last.isoformat(),
                                run_config=DATAVIEW_FULL_REFRESH)
        first = min(old_clock, clock).isoformat()
        self.say(f"      Data View partitions {first} .. {clock}")
        if first == clock.isoformat():
            return pipeline.run("extract_dataview_job", partition_key=first)
        return pipeline.run("extract_dataview_job",
                            tags={PARTITION_RANGE_START: first, PARTITION_RANGE_END: clock.isoformat()})

    # the summary's figures ------------------------------------------------------------------------------
    def summarize(self, world: Any, first: Mapping[str, RunOutcome], syncs: Sequence[RunOutcome],
                  later: Sequence[RunOutcome], meter_before: int | None) -> None:
        report = self.report
        published: dict[str, dict[str, Any]] = {}
        for outcome in [first["publish"], *later]:
            for key, meta in outcome.materializations.items():
                if key.startswith("caspio/") and key != "caspio/appointments":
                    published[key.split("/", 1)[1]] = meta
        report.marts = read_marts(self.options.warehouse, published)
        report.kpis, report.care_gaps = read_kpis(self.options.warehouse, _read_json(world.ground_truth_path))
        calls = {"athena_bulk": sum(o.total("api_calls", "fhir_bulk_export") for o in [first["fhir"], *later]),
                 "athena_v1": report.appointment_sync.get("athena_calls", 0),
                 "caspio_initial": first["publish"].total("calls_used"),
                 "caspio_sync": int(report.appointment_sync.get("caspio_calls", 0)),
                 "caspio_incremental": sum(o.total("calls_used", "caspio/") for o in later)}
        meter_after = caspio_meter(report.urls["athena"])
        calls["caspio_meter"] = meter_after
        calls["caspio_total"] = (meter_after - meter_before if meter_after is not None and meter_before is not None
                                 else calls["caspio_initial"] + calls["caspio_sync"] + calls["caspio_incremental"])
        report.calls = calls
        report.runs = [{"job": o.job, "run_id": o.run_id, "seconds": round(o.seconds, 1),
                        "materializations": len(o.materializations), "checks_passed": o.checks_passed,
                        "checks_failed": o.checks_failed} for o in self.runs]

    def serve_until_interrupted(self) -> None:
        """Print the summary with the live Caspio view, then wait for Ctrl-C (or a server to stop)."""
        report = self.report
        report.urls["live_caspio_view"] = f"{report.urls['caspio']}/_emulator/"
        self.say(format_summary(report))
        self.say(f"\nServing until Ctrl-C: Caspio tables at {report.urls['caspio']}/_emulator/, athenahealth at "
                 f"{report.urls['athena']}, webhook receiver at {report.urls['webhook']}")
        servers = [c for c in self.supervisor.children if c.running()]
        try:
            while all(c.running() for c in servers):
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.say("stopping")
            return
        raise DemoError(f"a server stopped on its own; see the logs in {self.supervisor.log_dir}")

    def _pipeline(self) -> Pipeline:
        assert self.pipeline is not None, "the Dagster definitions are loaded after the servers start"
        return self.pipeline


#: Caspio row counts a publish writes.
WRITES = ("rows_inserted", "rows_updated", "rows_deleted")
APPOINTMENT_SYNC_JOB = "appointment_sync_job"
DATAVIEW_FULL_REFRESH: dict[str, Any] = {"ops": {"raw_dataview": {"config": {"full_refresh": True}}}}


def _checks(outcome: RunOutcome) -> str:
    text = f"; {outcome.checks_passed} check(s) passed" if outcome.checks_passed or outcome.checks_failed else ""
    if outcome.checks_failed:
        text += f", {len(outcome.checks_failed)} failed: " + ", ".join(outcome.checks_failed[:4]) + (
            " ..." if len(outcome.checks_failed) > 4 else "")
    return text


def _sync_summary(runs: Sequence[RunOutcome], seconds_after_change: float) -> dict[str, Any]:
    """The appointment syncs' materialization metadata, added up."""
    metas = [m for m in (o.metadata("caspio/appointments") for o in runs) if m]

    def total(name: str) -> int:
        return int(sum(m.get(name, 0) or 0 for m in metas))

    return {"runs": len(runs), "table": next((m.get("table") for m in metas if m.get("table")), None),
            "appointments": total("appointments_requested"), "inserted": total("rows_inserted"),
            "updated": total("rows_updated"), "deleted": total("rows_deleted"),
            "unchanged": total("rows_unchanged"), "gone": total("not_found_deleted"),
            "rows_written": sum(total(n) for n in WRITES),
            "athena_calls": total("athena_calls"), "caspio_calls": total("caspio_calls"),
            "seconds_after_change": round(seconds_after_change, 1)}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _quiet_library_warnings() -> Iterator[None]:
    """Dagster's beta/preview warnings go to the demo's log file, not the terminal."""
    with warnings.catch_warnings():
        logging.captureWarnings(True)
        try:
            warnings.simplefilter("default")
            yield
        finally:
            logging.captureWarnings(False)


# --- logging ------------------------------------------------------------------------------------------
class _TerminalFilter(logging.Filter):
    """Keeps library warnings and Dagster's own log records (also in the UI) off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "py.warnings" and not record.name.startswith("dagster")


def setup_demo_logging(log_dir: Path) -> Path:
    """Everything at INFO into ``<log_dir>/demo.log``; the terminal keeps the demo's own lines and
    warnings from the pipeline (no library warnings)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "demo.log"
    root = logging.getLogger()
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    for existing in root.handlers:
        if existing.level < logging.WARNING:
            existing.setLevel(logging.WARNING)
        existing.addFilter(_TerminalFilter())
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


# --- the command --------------------------------------------------------------------------------------
@click.command("demo")
@click.option("--world", "world_dir", type=click.Path(file_okay=False, path_type=Path), envvar="SANDBOX_WORLD",
              show_envvar=True, default=settings_mod.SANDBOX_WORLD, show_default=True,
              help="World directory; generated when missing, reused otherwise.")
@click.option("--warehouse", type=click.Path(dir_okay=False, path_type=Path), envvar="WAREHOUSE_PATH",
              show_envvar=True, default="data/warehouse.duckdb", show_default=True,
              help="The demo's DuckDB warehouse (landing files and the event inbox go beside it).")
@click.option("--dagster-home", type=click.Path(file_okay=False, path_type=Path), envvar="DAGSTER_HOME",
              show_envvar=True, default=".dagster_home", show_default=True,
              help="Dagster instance the runs are recorded in (`make dev` opens .dagster_home).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of a new world.")
@click.option("--providers", type=click.IntRange(min=1), default=15, show_default=True,
              help="Providers of a new world (fewer: a quicker demo).")
@click.option("--patients", type=click.IntRange(min=1), default=None,
              help="Patients of a new world.  [default: 1,650 per provider]")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port of the athenahealth + Caspio emulator; 0 = any free port.  "
                   "[default: 8765 when free, else any]")
@click.option("--webhook-port", type=click.IntRange(0, 65535), default=None,
              help="Port of the webhook receiver; 0 = any free port.  [default: 8766 when free, else any]")
@click.option("--days", type=click.IntRange(1, 30), default=1, show_default=True,
              help="Days the simulated practice lives on after the first run.")
@click.option("--event-timeout", type=click.FloatRange(min=1), default=180.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the emulator to deliver the day's notifications.")
@click.option("--serve", is_flag=True,
              help="After the summary, keep the emulators and the receiver running until Ctrl-C.")
@click.option("--json-report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the summary as JSON to this file.")
def demo_command(world_dir: Path, warehouse: Path, dagster_home: Path, seed: int, providers: int,
                 patients: int | None, port: int | None, webhook_port: int | None, days: int,
                 event_timeout: float, serve: bool, json_report: Path | None) -> None:
    """The whole pipeline once on the sandbox: world, emulators, webhook receiver, extract -> dbt ->
    Caspio through Dagster, a simulated day with events and an appointment sync, then a summary.

    Every process it starts is stopped when it ends (also on Ctrl-C). The runs are recorded in
    --dagster-home: `make dev` shows them.
    """
    terminal_err = sys.stderr  # Dagster runs redirect sys.stderr while they run (see Pipeline.run)
    options = DemoOptions(world=world_dir, warehouse=warehouse, dagster_home=dagster_home, seed=seed,
                          providers=providers, patients=patients, port=port, webhook_port=webhook_port,
                          days=days, event_timeout=event_timeout, serve=serve).resolved()
    assert options.log_dir is not None
    setup_demo_logging(options.log_dir)
    try:
        report = run_demo(options)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("\ndemo interrupted; every process it started has been stopped", file=terminal_err)
        # Exit at once: a Dagster run abandoned in its worker thread must not be finalized (DuckDB's
        # and Arrow's bindings report leaked objects at interpreter shutdown). Children are stopped.
        logging.shutdown()
        for stream in (sys.__stdout__, terminal_err):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)
    if json_report is not None:
        json_report.parent.mkdir(parents=True, exist_ok=True)
        json_report.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
