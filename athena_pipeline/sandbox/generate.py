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


from athena_pipeline.sandbox.duck import connect_for_build
from athena_pipeline.sandbox.gen.assemble import build_timeline
from athena_pipeline.sandbox.gen.ctx import Ctx, IdAllocator
from athena_pipeline.sandbox.gen.people import build_reference
from athena_pipeline.sandbox.timeline import finish_timeline, materialize, write_timeline
from athena_pipeline.sandbox.world import World, WorldOptions

log = logging.getLogger(__name__)

HORIZON_DAYS = 120  # the timeline runs this far past the end date; `sandbox advance` can move up to it
# Patients are generated in shards of about this many, so memory stays flat as practices grow
# (a shard's frames are written to DuckDB and dropped before the next is built).
PATIENTS_PER_SHARD = 25_000


def shard_sizes(n: int) -> list[int]:
    k = max(1, -(-n // PATIENTS_PER_SHARD))
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


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
    horizon = options.end + dt.timedelta(days=HORIZON_DAYS)
    ids = IdAllocator()
    ref = build_reference(Ctx(options=options, horizon_end=horizon, ids=ids))
    if path.exists():
        path.unlink()
    con = connect_for_build(path)
    try:
        write_timeline(con, ref)
        offset = 0
        sizes = shard_sizes(options.patient_count)
        for shard, size in enumerate(sizes):
            t0 = time.perf_counter()
            ctx = Ctx(options=options, horizon_end=horizon, ids=ids, shard=shard, patient_offset=offset,
                      shard_patients=size)
            write_timeline(con, build_timeline(ctx, ref))
            offset += size
            log.info("shard %d/%d: %d patients in %.1fs", shard + 1, len(sizes), size, time.perf_counter() - t0)
        t0 = time.perf_counter()
        finish_timeline(con)
        log.info("line-level ledger in %.1fs", time.perf_counter() - t0)
        t0 = time.perf_counter()
        materialize(con, clock)
        log.info("facts as of %s in %.1fs", clock, time.perf_counter() - t0)
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

    t0 = time.perf_counter()
    out = {"dataview": render_dataview(world)}
    log.info("Data View rendered in %.1fs", time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["fhir"] = render_fhir(world)
    log.info("FHIR rendered in %.1fs", time.perf_counter() - t0)
    t0 = time.perf_counter()
    write_ground_truth(world)
    log.info("ground truth in %.1fs", time.perf_counter() - t0)
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
