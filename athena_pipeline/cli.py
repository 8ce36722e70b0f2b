"""The ``athena-pipeline`` command.

Why a CLI next to Dagster: the sandbox (generate a world, serve the emulators, move the
world clock) and a few operator chores must work without a Dagster instance, from a
Makefile, a test or a terminal. Heavy modules are imported inside each command, so
``--help`` is instant and works whatever else is installed.

Options fall back to the environment variables documented in ``settings.py`` (shown in
``--help``); flags override them. Expected failures (a missing world, a bad option) end
with a one-line ``Error: ...`` and exit code 1, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from athena_pipeline import settings as settings_mod
from athena_pipeline.cli_options import (
    CASPIO_CONFIG_KEYWORDS,
    DATE,
    athena_emulator_options,
    caspio_emulator_options,
    flag,
    from_env,
    names,
    one_line_errors,
    override,
    practice_id_option,
    quiet_http_logs,
    split_values,
    world_option,
)

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now* (click's test runner swaps it per call)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # the base class assigns it; we always follow sys.stderr
        pass


def _setup_logging(level: str) -> None:
    """One stderr handler on the root logger, installed once, at ``level``."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)


def _clean_errors(func: F) -> F:
    """Turn the errors a user can cause and fix into a one-line ``click.ClickException``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as exc:
            logging.getLogger(__name__).debug("%s failed", func.__name__, exc_info=True)
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(message) from None

    return wrapper  # type: ignore[return-value]


def _load_world(world_dir: Path) -> Any:
    """The world at ``world_dir``; FileNotFoundError (-> clean CLI error) when there is none."""
    from athena_pipeline.sandbox.world import World

    return World.load(world_dir)


def default_end_date(today: dt.date | None = None) -> dt.date:
    """Yesterday: the last complete day, so a fresh world never contains a half-simulated day."""
    return (today or dt.date.today()) - dt.timedelta(days=1)


def default_start_date(end: dt.date) -> dt.date:
    """Three years of history ending on ``end``: end minus 3 years plus 1 day (Feb 29 -> Mar 1)."""
    try:
        three_years_back = end.replace(year=end.year - 3)
    except ValueError:  # Feb 29 in a year three years after a non-leap year
        three_years_back = end.replace(year=end.year - 3, day=28)
    return three_years_back + dt.timedelta(days=1)


def count_facts(facts_path: Path) -> dict[str, int]:
    """Rows per facts table, in one query over the read-only facts database."""
    import duckdb

    from athena_pipeline.sandbox.facts_schema import FACT_TABLES

    sql = " UNION ALL ".join(
        f"SELECT {i} AS i, '{name}' AS t, count(*) AS n FROM {name}" for i, name in enumerate(FACT_TABLES)
    )
    with duckdb.connect(str(facts_path), read_only=True) as con:
        rows = con.execute(f"SELECT t, n FROM ({sql}) ORDER BY i").fetchall()
    return {table: int(n) for table, n in rows}


# --- the command tree ----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="athena-pipeline")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Logging threshold (logs go to stderr; results to stdout).",
)
def main(log_level: str) -> None:
    """athenahealth -> DuckDB -> dbt marts -> Caspio, with a built-in sandbox."""
    _setup_logging(log_level.upper())


@main.command("settings")
@_clean_errors
def show_settings() -> None:
    """Print the effective configuration as JSON (secrets shown as ***)."""
    s = settings_mod.Settings.from_env()
    click.echo(json.dumps({**s.redacted(), "is_sandbox": s.is_sandbox}, indent=2))


@main.group()
def sandbox() -> None:
    """A synthetic practice and emulators of the athenahealth APIs, on loopback."""


@sandbox.command()
@world_option("--out", "out_dir", "World directory to create.")
@click.option("--seed", type=int, default=42, show_default=True,
              help="Random seed; same options => same world.")
@click.option("--providers", type=click.IntRange(min=1), default=15, show_default=True,
              help="Rendering providers.")
@override("--patients", click.IntRange(min=1), "Patients in the panel.  [default: 1,650 per provider]")
@override("--start", DATE, "First simulated day.  [default: END - 3 years + 1 day]")
@override("--end", DATE, "Last simulated day.  [default: yesterday]")
@practice_id_option
@_clean_errors
def generate(
    out_dir: Path,
    seed: int,
    providers: int,
    patients: int | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    practice_id: int,
) -> None:
    """Generate a sandbox world (facts + Data View and FHIR renderings) into --out."""
    end_date = end.date() if end else default_end_date()
    start_date = start.date() if start else default_start_date(end_date)
    if start_date > end_date:
        raise ValueError(f"--start {start_date} is after --end {end_date}")

    from athena_pipeline.sandbox.generate import generate_world
    from athena_pipeline.sandbox.world import WorldOptions

    options = WorldOptions(
        seed=seed,
        providers=providers,
        patients=patients,
        start=start_date,
        end=end_date,
        practice_id=practice_id,
    )
    t0 = time.perf_counter()
    world = generate_world(out_dir, options)
    elapsed = time.perf_counter() - t0

    counts = count_facts(world.facts_path)
    click.echo(
        f"world {world.root}: {options.providers} providers, {options.patient_count:,} patients, "
        f"{options.start} .. {options.end} (clock {world.current_date}), seed {options.seed}"
    )
    width = max(len(t) for t in counts)
    for table, n in counts.items():
        click.echo(f"  {table:<{width}}  {n:>12,}")
    click.echo(f"generated in {elapsed:.1f} s")


@sandbox.command()
@world_option("--world", "world_dir", "World directory to serve (made by `sandbox generate`).")
@click.option("--host", default=settings_mod.SANDBOX_HOST, show_default=True, help="Interface to bind.")
@from_env("--port", "SANDBOX_PORT", settings_mod.SANDBOX_PORT, "TCP port; 0 picks a free one.",
          type=click.IntRange(0, 65535))
@athena_emulator_options
@caspio_emulator_options
@_clean_errors
def serve(world_dir: Path, host: str, port: int, faults: str | None, caspio_faults: str | None,
          **emulator_options: Any) -> None:
    """Serve the athenahealth emulator (OAuth, FHIR R4, Bulk Data export, v1 reads) for a world,
    and the Caspio emulator at /caspio (client sandbox-caspio-client / sandbox-caspio-secret)."""
    _load_world(world_dir)
    from athena_pipeline.sandbox.caspio.faults import CaspioFaults
    from athena_pipeline.sandbox.caspio.server import build_caspio_config
    from athena_pipeline.sandbox.server import build_config
    from athena_pipeline.sandbox.server import serve as serve_world

    # the --caspio-* options, renamed to build_caspio_config's keywords; the rest of the emulator
    # options are named as build_config's keywords
    caspio = {keyword: emulator_options.pop(name) for name, keyword in CASPIO_CONFIG_KEYWORDS.items()}
    config = build_config(**emulator_options)
    caspio_config = build_caspio_config(**caspio)
    CaspioFaults(caspio_faults)  # a bad spec is a one-line error now, not at the first request
    log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    try:
        serve_world(world_dir, host=host, port=port, faults=faults, config=config, log_level=log_level,
                    caspio_config=caspio_config, caspio_faults=caspio_faults)
    except KeyboardInterrupt:  # Ctrl-C is how a foreground server is meant to stop
        click.echo("emulator stopped", err=True)


@sandbox.command()
@world_option("--world", "world_dir", "World directory to advance.")
@click.option("--days", type=click.IntRange(min=1), required=True,
              help="Days to simulate past the world clock.")
@_clean_errors
def advance(world_dir: Path, days: int) -> None:
    """Move the world clock forward: new visits, claims and payments, then re-render."""
    _load_world(world_dir)
    from athena_pipeline.sandbox.advance import advance_world

    t0 = time.perf_counter()
    summary = advance_world(world_dir, days)
    elapsed = time.perf_counter() - t0
    _echo_summary(summary)
    click.echo(f"advanced {days} day(s) in {elapsed:.1f} s")


@sandbox.command()
@world_option("--world", "world_dir", "World directory to fingerprint.")
@_clean_errors
def fingerprint(world_dir: Path) -> None:
    """SHA-256 of every table's sorted rows (and of ground_truth.json): same seed and options, same lines."""
    _load_world(world_dir)
    from athena_pipeline.sandbox.fingerprint import world_fingerprints

    for name, digest in world_fingerprints(world_dir).items():
        click.echo(f"{digest}  {name}")


def _echo_summary(summary: dict[str, Any]) -> None:
    """``key: value`` lines; a dict of per-table dicts (e.g. row changes) as one line per table."""
    for key, value in summary.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            click.echo(f"  {key}:")
            width = max(len(str(k)) for k in value)
            for table, counts in value.items():
                cells = "  ".join(
                    f"{name}={n:,}" if isinstance(n, int) else f"{name}={n}" for name, n in counts.items()
                )
                click.echo(f"    {table:<{width}}  {cells}")
        else:
            click.echo(f"  {key}: {value}")


# --- extract: athenahealth into the warehouse -------------------------------------------------------


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@main.group()
def extract() -> None:
    """Copy athenahealth data into the warehouse (FHIR bulk export, Data View tables).

    Reads the same environment variables as Dagster (ATHENA_*, DATAVIEW_*, WAREHOUSE_PATH,
    LANDING_DIR, ...; see `athena-pipeline settings`).
    """
    quiet_http_logs()


@extract.command("fhir")
@names("--types", "TYPE[,TYPE...]",
       "Resource types to export (repeatable or comma-separated).  [default: all]")
@override("--since", None,
          "_since instant, e.g. 2026-01-01T00:00:00Z.  [default: the watermark of the last load]",
          metavar="INSTANT")
@flag("--full", "Export everything, ignoring the watermark.")
@one_line_errors
def extract_fhir_command(types: tuple[str, ...], since: str | None, full: bool) -> None:
    """FHIR Bulk Data export into LANDING_DIR, then load into raw_fhir.

    Incremental by default: _since is the transactionTime of the last loaded export. A run killed
    mid-download resumes the same export; landed exports not loaded yet are loaded first-come.
    """
    if full and since:
        raise click.UsageError("give either --since or --full, not both")
    from athena_pipeline.extract import extract_fhir

    settings = settings_mod.Settings.from_env()
    result = extract_fhir(settings, types=split_values(types) or None, since=since, full=full)
    e = result.export
    how = "reused (landed earlier, not loaded)" if e.resumed and not e.calls else (
        "resumed" if e.resumed else "new")
    kind = f"incremental since {e.since}" if e.since else "full"
    click.echo(f"export {e.export_id}: {kind}, {how}; "
               f"{sum(e.counts.values()):,} resources, {e.deleted_count:,} deleted, {e.files} files, "
               f"{_human_bytes(e.bytes)} in {e.duration_seconds:.1f} s, {e.calls} API calls; "
               f"transaction time {e.transaction_time}")
    for export_dir, load in result.loads:
        click.echo(f"loaded {load.export_id}: {load.lines_read:,} lines, {load.files} files, "
                   f"{_human_bytes(load.bytes)} in {load.duration_s:.2f} s ({load.rows_per_second:,.0f} rows/s)")
        click.echo(f"  {'type':<22}{'read':>9}{'inserted':>10}{'updated':>9}{'deleted':>9}{'quarantined':>13}")
        for name, t in sorted(load.types.items()):
            click.echo(f"  {name:<22}{t.read:>9,}{t.inserted:>10,}{t.updated:>9,}{t.deleted:>9,}{t.quarantined:>13,}")
        for m in load.count_mismatches:
            click.echo(f"  COUNT MISMATCH {m.file}: manifest {m.expected}, read {m.read}")
        if load.watermark is not None:
            click.echo(f"  watermark fhir/{load.watermark_key}: "
                       f"{load.watermark.isoformat().replace('+00:00', 'Z')}")
    if not result.loads:
        click.echo("nothing new to load")
    fatal = {k: v for k, v in result.error_issues.items() if k in ("fatal", "error")}
    if fatal:
        raise click.ClickException(
            f"the server reported {sum(fatal.values())} fatal/error issue(s) in the export's error files "
            "(see error/ in its landing folder, and audit.export_errors); the resources it did export are "
            "loaded, the others are missing: export the affected types again with --full --types ...")


@extract.command("dataview")
@names("--tables", "TABLE[,TABLE...]",
       "Data View tables to copy (repeatable or comma-separated).  [default: every catalogued table]")
@override("--start", DATE, "First day of LASTUPDATED to copy (midnight in PIPELINE_TIMEZONE).  "
          "[default: each table's watermark]")
@override("--end", DATE, "Day to stop at, exclusive: the window is [START, END).  [default: no end]")
@flag("--full-refresh", "Copy every row, whatever the watermark.")
@one_line_errors
def extract_dataview_command(tables: tuple[str, ...], start: dt.datetime | None, end: dt.datetime | None,
                             full_refresh: bool) -> None:
    """Copy Data View tables (Arrow batches) into raw_dataview, one transaction per table.

    Incremental by default: each table continues from its LASTUPDATED watermark.
    """
    if full_refresh and (start or end):
        raise click.UsageError("give either --start/--end or --full-refresh, not both")
    from athena_pipeline.extract import extract_dataview

    settings = settings_mod.Settings.from_env()
    t0 = time.perf_counter()
    results = extract_dataview(settings, tables=split_values(tables) or None,
                               start=start.date() if start else None, end=end.date() if end else None,
                               full_refresh=full_refresh)
    click.echo(f"  {'table':<28}{'fetched':>9}{'inserted':>10}{'updated':>9}{'deleted':>9}{'rows/s':>10}  watermark")
    for r in results.values():
        wm = r.watermark.isoformat().replace("+00:00", "Z") if r.watermark else "-"
        click.echo(f"  {r.raw_table:<28}{r.received:>9,}{r.inserted:>10,}{r.updated:>9,}{r.soft_deleted:>9,}"
                   f"{r.rows_per_second:>10,.0f}  {wm}")
    total = sum(r.received for r in results.values())
    elapsed = time.perf_counter() - t0
    click.echo(f"copied {len(results)} table(s), {total:,} rows fetched in {elapsed:.1f} s "
               f"({total / elapsed if elapsed > 0 else 0:,.0f} rows/s)")


# --- publish: marts into Caspio ----------------------------------------------------------------------


@main.command("publish")
@names("--tables", "MART[,MART...]",
       "Marts to publish (repeatable or comma-separated).  [default: every mart]")
@flag("--dry-run", "Print the plan per table (inserts, updates, deletes, calls); "
      "write nothing, to Caspio or the warehouse.")
@flag("--reconcile", "Read each table back from Caspio and repair drift "
      "(rows edited, deleted or added by hand).")
@flag("--force", "Publish even when the plan needs more calls than CASPIO_CALL_BUDGET.")
@one_line_errors
def publish_command(tables: tuple[str, ...], dry_run: bool, reconcile: bool, force: bool) -> None:
    """Publish the marts into Caspio: keyed diff sync, only what changed is written.

    Reads CASPIO_* and WAREHOUSE_PATH (see `athena-pipeline settings`). Patient-level marts are
    published only with CASPIO_PUBLISH_PATIENT_LEVEL=true.
    """
    quiet_http_logs()
    from athena_pipeline.caspio.publish import client_for, publish, total_calls, warehouse_factory

    settings = settings_mod.Settings.from_env()
    log = logging.getLogger("athena_pipeline.publish")
    with client_for(settings, force=force) as client:
        results = publish(warehouse_factory(settings), client, split_values(tables) or None, settings=settings,
                          dry_run=dry_run, reconcile=reconcile, force=force, on_progress=log.info)
    click.echo(f"  {'table':<34}{'rows':>8}{'insert':>8}{'update':>8}{'delete':>8}{'same':>8}"
               f"{'calls' if not dry_run else 'plan':>8}  status")
    for r in results:
        if r.status == "skipped":
            click.echo(f"  {r.table:<34}{'-':>8}{'':>40}  skipped: {r.message}")
            continue
        calls = r.planned_calls if dry_run else r.calls
        note = r.status + (f" (reconcile: {r.reconcile_reason})" if r.reconciled else "")
        if r.drift and any(r.drift.values()):
            note += "; drift fixed: " + ", ".join(f"{n} {k}" for k, n in r.drift.items() if n)
        click.echo(f"  {r.table:<34}{r.rows:>8,}{r.inserted:>8,}{r.updated:>8,}{r.deleted:>8,}{r.unchanged:>8,}"
                   f"{calls:>8,}  {note}")
    if dry_run:
        planned = total_calls([r.plan for r in results if r.plan is not None])
        verdict = "within" if planned <= settings.caspio_call_budget else "OVER (use --force)"
        click.echo(f"dry run: {planned:,} Caspio call(s) planned (token included), {verdict} the budget of "
                   f"{settings.caspio_call_budget:,}; nothing written")
    else:
        click.echo(f"published {sum(r.status in ('published', 'unchanged') for r in results)} table(s): "
                   f"{sum(r.writes for r in results):,} write(s), {sum(r.calls for r in results):,} call(s)")


# --- events: webhook receiver, subscriptions as code, sandbox delivery (athena_pipeline/events/cli.py)
from athena_pipeline.events.cli import events_group, subscriptions_group, webhook_group

main.add_command(webhook_group)
main.add_command(subscriptions_group)
sandbox.add_command(events_group)

# --- demo: the whole pipeline once on the sandbox (athena_pipeline/demo.py; `make demo`)
from athena_pipeline.demo import demo_command

main.add_command(demo_command)


if __name__ == "__main__":  # pragma: no cover
    main()
