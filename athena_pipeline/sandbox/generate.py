"""Generate a sandbox world: timeline -> facts as of the end date -> both renderings -> ground truth.

Why this shape: see ``world.py`` (layout) and ``timeline.py`` (clock). Everything is written to
temporary files first and moved into place, so an interrupted run never leaves a half world.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path

import duckdb

from athena_pipeline.sandbox.gen.assemble import build_timeline
from athena_pipeline.sandbox.gen.ctx import Ctx
from athena_pipeline.sandbox.timeline import materialize, write_timeline
from athena_pipeline.sandbox.world import World, WorldOptions

log = logging.getLogger(__name__)

HORIZON_DAYS = 120  # the timeline runs this far past the end date; `sandbox advance` can move up to it


def _validate(options: WorldOptions) -> None:
    if options.providers < 1:
        raise ValueError("--providers must be at least 1")
    if options.patient_count < 10:
        raise ValueError("--patients must be at least 10")
    if options.end <= options.start:
        raise ValueError(f"--end ({options.end}) must be after --start ({options.start})")
    if (options.end - options.start).days < 60:
        raise ValueError("the world must span at least 60 days (--start .. --end)")


def build_facts(path: Path, options: WorldOptions, clock: dt.datetime) -> dict[str, int]:
    """Write ``facts.duckdb`` (timeline + facts as of ``clock``) to ``path``; returns row counts."""
    ctx = Ctx(options=options, horizon_end=options.end + dt.timedelta(days=HORIZON_DAYS))
    t0 = time.perf_counter()
    frames = build_timeline(ctx)
    log.info("timeline built in %.1fs", time.perf_counter() - t0)
    if path.exists():
        path.unlink()
    con = duckdb.connect(str(path))
    try:
        con.execute("SET threads TO 2")
        write_timeline(con, frames)
        materialize(con, clock)
        counts = {t: con.execute(f"SELECT count(*) FROM main.{t}").fetchone()[0]
                  for (t,) in con.execute(
                      "SELECT table_name FROM duckdb_tables() WHERE schema_name='main' ORDER BY 1").fetchall()}
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return counts


def render_all(world: World) -> dict[str, dict[str, int]]:
    """Both renderings and the ground truth, from the facts as they stand."""
    from athena_pipeline.sandbox.ground_truth import write_ground_truth
    from athena_pipeline.sandbox.render_dataview import render_dataview
    from athena_pipeline.sandbox.render_fhir import render_fhir

    out = {"dataview": render_dataview(world), "fhir": render_fhir(world)}
    write_ground_truth(world)
    return out


def generate_world(out_dir: Path, options: WorldOptions) -> World:
    """Generate a complete world in ``out_dir`` (created; an existing world there is replaced)."""
    _validate(options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = World(root=out_dir, options=options, current_date=options.end)
    t0 = time.perf_counter()
    tmp = out_dir / "facts.duckdb.tmp"
    counts = build_facts(tmp, options, world.clock)
    os.replace(tmp, world.facts_path)
    log.info("facts written in %.1fs: %s", time.perf_counter() - t0,
             ", ".join(f"{k}={v}" for k, v in counts.items()))
    world.extra["horizon_end"] = (options.end + dt.timedelta(days=HORIZON_DAYS)).isoformat()
    world.save()
    render_all(world)
    log.info("world generated in %.1fs at %s", time.perf_counter() - t0, out_dir)
    return world
