"""``sandbox advance``: the practice lives on for N more days.

The timeline already holds what happens next (bookings, visits, results, claims, remits, payments,
denials, amendments, soft deletes) up to the horizon; advancing moves the clock, re-materialises
the facts as of the new day, re-renders both renderings and the ground truth. Each step is atomic
and idempotent for a given clock, and the world clock in ``world.json`` moves last, so a crash
mid-way followed by a re-run converges to the same world.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import duckdb

from athena_pipeline.sandbox.duck import connect_for_build
from athena_pipeline.sandbox.generate import render_all
from athena_pipeline.sandbox.timeline import materialize
from athena_pipeline.sandbox.world import World

log = logging.getLogger(__name__)


def _change_counts(con: duckdb.DuckDBPyConnection, since: dt.datetime) -> dict[str, dict[str, int]]:
    """Rows created, updated (but older) and soft-deleted after ``since``, per facts table."""
    out = {}
    tables = [t for (t,) in con.execute("""SELECT table_name FROM duckdb_columns()
        WHERE schema_name = 'main' AND column_name = 'deleted_at' ORDER BY 1""").fetchall()]
    ts = f"TIMESTAMP '{since.isoformat(sep=' ')}'"
    for t in tables:
        created, updated, deleted = con.execute(f"""SELECT count(*) FILTER (WHERE created_at > {ts}),
            count(*) FILTER (WHERE created_at <= {ts} AND updated_at > {ts}),
            count(*) FILTER (WHERE deleted_at > {ts}) FROM main.{t}""").fetchone()
        if created or updated or deleted:
            out[t] = {"created": created, "updated": updated, "deleted": deleted}
    return out


def advance_world(world_dir: Path, days: int) -> dict:
    """Move the world ``days`` forward (1 <= days, up to the generated horizon); returns a summary."""
    if days < 1:
        raise ValueError("--days must be at least 1")
    world = World.load(world_dir)
    horizon = dt.date.fromisoformat(world.extra["horizon_end"])
    new_date = world.current_date + dt.timedelta(days=days)
    if new_date > horizon:
        left = (horizon - world.current_date).days
        raise ValueError(f"cannot advance {days} days: the world's timeline ends on {horizon} "
                         f"({left} days left); generate a new world with a later --end")
    old_clock = world.clock
    t0 = time.perf_counter()
    world.current_date = new_date
    con = connect_for_build(world.facts_path)
    try:
        materialize(con, world.clock)
        changes = _change_counts(con, old_clock)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    render_all(world)
    world.advanced_days += days
    world.save()
    log.info("advanced %d days to %s in %.1fs", days, new_date, time.perf_counter() - t0)
    return {"from": (new_date - dt.timedelta(days=days)).isoformat(), "to": new_date.isoformat(),
            "changes": changes}
