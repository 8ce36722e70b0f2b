"""CLI commands for Event Subscriptions, registered on ``athena-pipeline`` by ``cli.py``:

- ``athena-pipeline webhook serve|stats``             the receiver and its inbox
- ``athena-pipeline subscriptions ensure|list|delete`` subscriptions as code (athenahealth API)
- ``athena-pipeline sandbox events status|config|inject|replay``  the emulator's delivery side

Why a module of its own: several engineers add commands to ``cli.py`` at once; keeping these here
makes that file's change three lines. Heavy imports happen inside each command, so ``--help``
stays instant. Expected failures end as one ``Error: ...`` line (exit 1), never a traceback, and
never show a secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from athena_pipeline import settings as settings_mod
from athena_pipeline.cli_options import one_line_errors, quiet_http_logs, split_values

F = TypeVar("F", bound=Callable[..., Any])


# --- webhook ---------------------------------------------------------------------------------------
@click.group("webhook")
def webhook_group() -> None:
    """The webhook receiver for athenahealth Event Subscriptions and its durable inbox."""


@webhook_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(0, 65535), envvar="WEBHOOK_PORT", show_envvar=True,
              default=settings_mod.WEBHOOK_PORT, show_default=True, help="TCP port; 0 picks a free one.")
@click.option("--inbox", "inbox_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="EVENTS_INBOX_PATH", show_envvar=True, default=None,
              help="Inbox SQLite file.  [default: data/events.sqlite]")
@click.option("--max-bytes", type=click.IntRange(min=1024), envvar="WEBHOOK_MAX_BYTES", show_envvar=True,
              default=None, help="Largest body accepted (413 above).  [default: 1048576]")
@click.option("--fsync/--no-fsync", default=True, show_default=True,
              help="fsync every commit (survives power loss) or only write it (survives a killed process).")
@one_line_errors
def webhook_serve(host: str, port: int, inbox_path: Path | None, max_bytes: int | None, fsync: bool) -> None:
    """Serve POST /webhook (signed notifications -> inbox, committed before 2xx) and GET /health.

    The secret(s) come from WEBHOOK_SECRET (comma-separated while rotating).
    """
    from athena_pipeline.events.receiver import config_from_settings, serve

    settings = settings_mod.Settings.from_env()
    config = config_from_settings(settings, max_bytes=max_bytes)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    try:
        serve(config, inbox_path or settings.events_inbox_path, host=host, port=port, log_level=level,
              synchronous="FULL" if fsync else "NORMAL")
    except KeyboardInterrupt:
        click.echo("webhook receiver stopped", err=True)


@webhook_group.command("stats")
@click.option("--inbox", "inbox_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="EVENTS_INBOX_PATH", show_envvar=True, default=None,
              help="Inbox SQLite file.  [default: data/events.sqlite]")
@one_line_errors
def webhook_stats(inbox_path: Path | None) -> None:
    """Print inbox counters as JSON (total, unprocessed by type, duplicates, last heartbeat)."""
    from athena_pipeline.events.inbox import Inbox

    path = inbox_path or settings_mod.Settings.from_env().events_inbox_path
    if not Path(path).exists():
        raise click.ClickException(f"no inbox at {path} (start `athena-pipeline webhook serve` first)")
    with Inbox(path) as inbox:
        click.echo(json.dumps(inbox.stats().to_dict(), indent=2))


# --- subscriptions -----------------------------------------------------------------------------------
@click.group("subscriptions")
def subscriptions_group() -> None:
    """athenahealth Event Subscriptions as code: one per configured topic and practice.

    Reads ATHENA_* (client, practice), ATHENA_EVENT_TOPICS, WEBHOOK_URL and WEBHOOK_SECRET.
    """
    quiet_http_logs()


def _echo_subs(subs: list[Any]) -> None:
    click.echo(f"  {'id':<38}{'topic':<30}{'status':<11}endpoint")
    for s in subs:
        click.echo(f"  {s.id:<38}{(s.topic or '?'):<30}{(s.status or '?'):<11}{s.endpoint or ''}")


@subscriptions_group.command("ensure")
@click.option("--endpoint", default=None, metavar="URL", help="Endpoint to register.  [default: WEBHOOK_URL]")
@click.option("--topics", "topics", multiple=True, metavar="TOPIC[,TOPIC...]",
              help="Topics or families.  [default: ATHENA_EVENT_TOPICS]")
@click.option("--replace", is_flag=True, help="Recreate every Subscription (e.g. after rotating WEBHOOK_SECRET).")
@one_line_errors
def subscriptions_ensure(endpoint: str | None, topics: tuple[str, ...], replace: bool) -> None:
    """Create what is missing, replace what points elsewhere or failed, keep the rest. Idempotent."""
    from athena_pipeline.events.subscriptions import ensure_subscriptions

    settings = settings_mod.Settings.from_env()
    result = ensure_subscriptions(settings, endpoint=endpoint, topics=split_values(topics) or None, replace=replace)
    for label, subs in (("created", result.created), ("replaced (old, deleted)", result.replaced),
                        ("deleted (topic no longer configured)", result.deleted)):
        if subs:
            click.echo(f"{label}:")
            _echo_subs(subs)
    s = result.summary()
    click.echo(f"subscriptions: {s['created']} created, {s['kept']} kept, {s['replaced']} replaced, "
               f"{s['deleted']} deleted" + ("" if result.changed else " (nothing to do)"))


@subscriptions_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def subscriptions_list(as_json: bool) -> None:
    """This client's Subscriptions for the practice."""
    from athena_pipeline.events.subscriptions import list_subscriptions

    subs = list_subscriptions(settings_mod.Settings.from_env())
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in subs], indent=2))
        return
    _echo_subs(subs)
    click.echo(f"{len(subs)} subscription(s)")


@subscriptions_group.command("delete")
@click.argument("ids", nargs=-1)
@click.option("--all", "delete_all", is_flag=True, help="Delete every Subscription to WEBHOOK_URL.")
@one_line_errors
def subscriptions_delete(ids: tuple[str, ...], delete_all: bool) -> None:
    """Delete Subscriptions by id, or all of ours (--all)."""
    if bool(ids) == delete_all:
        raise click.UsageError("give subscription ids or --all (not both)")
    from athena_pipeline.events.subscriptions import delete_subscriptions

    settings = settings_mod.Settings.from_env()
    gone = delete_subscriptions(settings, list(ids) or None,
                                endpoint=settings.webhook_url if delete_all else None)
    click.echo(f"deleted {len(gone)} subscription(s)")


# --- sandbox events -------------------------------------------------------------------------------------
def _world_option(func: F) -> F:
    return click.option("--world", "world_dir", type=click.Path(file_okay=False, path_type=Path),
                        envvar="SANDBOX_WORLD", show_envvar=True, default=settings_mod.SANDBOX_WORLD,
                        show_default=True, help="World directory (made by `sandbox generate`).")(func)


def _store(world_dir: Path):
    from athena_pipeline.sandbox.emulator.subscriptions import EventStore
    from athena_pipeline.sandbox.world import World

    World.load(world_dir)  # a clean error for a non-world
    return EventStore(world_dir)


@click.group("events")
def events_group() -> None:
    """Event Subscription delivery of the sandbox emulator: knobs, synthetic events, dead letters.

    These commands change <world>/subscriptions.sqlite; a running emulator picks changes up
    within a fraction of a second.
    """


@events_group.command("status")
@_world_option
@one_line_errors
def events_status(world_dir: Path) -> None:
    """Knobs, subscriptions, events and deliveries (pending, delivered, dead) as JSON."""
    from dataclasses import asdict

    store = _store(world_dir)
    try:
        dead = store.deliveries("dead")
        click.echo(json.dumps({"knobs": asdict(store.knobs()), **store.counts(),
                               "dead_letters": [d.to_dict() for d in dead[:20]]}, indent=2))
    finally:
        store.close()


_KNOB_OPTIONS = (
    ("--trickle", "trickle_per_minute", float, "Synthetic appointment changes per minute (0 = off)."),
    ("--duplicates", "duplicate_rate", float, "Probability a notification is sent twice (0-1)."),
    ("--batch-size", "batch_size", int, "Most events per notification bundle."),
    ("--reorder-jitter", "reorder_jitter_seconds", float, "Delay spread when reordering, seconds."),
    ("--heartbeat", "heartbeat_seconds", float, "Heartbeat period, seconds (0 = off)."),
    ("--ack-timeout", "ack_timeout_seconds", float, "A delivery fails without a 2xx within this (athena: 2)."),
    ("--retry-window", "retry_window_seconds", float, "Retry failed deliveries this long (athena: 3600)."),
    ("--backoff", "backoff_initial_seconds", float, "First retry wait, doubling each time."),
    ("--backoff-max", "backoff_max_seconds", float, "Longest retry wait."),
    ("--retention", "dead_letter_retention_seconds", float, "Keep dead letters this long (athena: 7 days)."),
    ("--max-in-flight", "max_in_flight", int, "Concurrent notification POSTs."),
    ("--seed", "seed", int, "Seed for duplicates, reordering and trickle."),
)


def _knob_options(func: F) -> F:
    for flag, dest, kind, text in reversed(_KNOB_OPTIONS):
        func = click.option(flag, dest, type=kind, default=None, help=text)(func)
    func = click.option("--reorder/--no-reorder", "reorder", default=None,
                        help="Deliver out of order.")(func)
    func = click.option("--handshake/--no-handshake", "handshake", default=None,
                        help="Handshake after create (2xx -> active, else error).")(func)
    return func


@events_group.command("config")
@_world_option
@_knob_options
@click.option("--reset", is_flag=True, help="Back to the defaults (athena's timings, no faults).")
@one_line_errors
def events_config(world_dir: Path, reset: bool, **knobs: Any) -> None:
    """Change delivery knobs (only the ones given); prints the result."""
    from dataclasses import asdict

    store = _store(world_dir)
    try:
        if reset:
            store.reset_knobs()
        changes = {k: v for k, v in knobs.items() if v is not None}
        result = store.configure(**changes) if changes or not reset else store.knobs()
        click.echo(json.dumps(asdict(result), indent=2))
    finally:
        store.close()


@events_group.command("inject")
@_world_option
@click.option("--topic", default="Appointment.update", show_default=True, help="Topic of the events.")
@click.option("--count", type=click.IntRange(1, 100_000), default=1, show_default=True)
@one_line_errors
def events_inject(world_dir: Path, topic: str, count: int) -> None:
    """Record synthetic events now (appointments: real ids of the world); the emulator delivers them."""
    from athena_pipeline.sandbox.emulator.delivery import DeliveryWorker
    from athena_pipeline.sandbox.emulator.fhir_store import FhirStore

    _store(world_dir).close()
    worker = DeliveryWorker(world_dir, FhirStore(world_dir))
    try:
        ids = worker.inject(topic, count)
    finally:
        worker.store.close()
    click.echo(f"recorded {len(ids)} {topic} event(s)")


@events_group.command("replay")
@_world_option
@click.option("--subscription", default=None, metavar="ID", help="Only this Subscription's dead letters.")
@click.option("--delivery", "deliveries", type=int, multiple=True, metavar="ID",
              help="Only these deliveries (repeatable).")
@one_line_errors
def events_replay(world_dir: Path, subscription: str | None, deliveries: tuple[int, ...]) -> None:
    """Send dead-lettered notifications again (kept 7 days), with a fresh retry window."""
    store = _store(world_dir)
    try:
        n = store.replay(list(deliveries) or None, subscription)
    finally:
        store.close()
    click.echo(f"replaying {n} dead-lettered delivery(ies)")
