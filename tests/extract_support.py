"""Helpers shared by the extraction tests (CLI and Dagster): a small generated world, the emulator
settings they run with, the environment that points the pipeline at it, and content fingerprints
of the raw schemas.

Why a generated world (not the hand-built fixture of tests/sandbox): extraction must be shown on
what the generator really produces (Data View and FHIR from one set of facts, soft deletes,
``sandbox advance`` with updates and deletions).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb

from athena_pipeline.sandbox.emulator.config import EmulatorConfig
from athena_pipeline.sandbox.server import RunningServer
from athena_pipeline.settings import ENV_VARS, Settings

#: 600 patients of one provider, 2025-07-01 .. 2026-05-15: about 18,500 FHIR resources. Advancing
#: it 30 days brings updates and (checked by the tests, not assumed) at least one deletion.
WORLD_START = dt.date(2025, 7, 1)
WORLD_END = dt.date(2026, 5, 15)
WORLD_PATIENTS = 600
ADVANCE_DAYS = 30

#: Columns a load stamps itself; everything else must be identical between two warehouses.
LOAD_COLUMNS = frozenset({"loaded_at", "export_id", "_loaded_at", "_run_id"})
#: Also where a row came from, when the two warehouses were fed different exports.
PROVENANCE_COLUMNS = LOAD_COLUMNS | {"source_file", "source_line"}


def generate(root: Path, patients: int = WORLD_PATIENTS) -> Path:
    """A deterministic world at ``root`` (seed 42)."""
    from athena_pipeline.sandbox.generate import generate_world
    from athena_pipeline.sandbox.world import WorldOptions

    generate_world(root, WorldOptions(providers=1, patients=patients, start=WORLD_START, end=WORLD_END))
    return root


def copy_world(world: Path, to: Path) -> Path:
    """A private copy a test may advance (renderings and world.json, not emulator state)."""
    to.mkdir(parents=True)
    for name in ("world.json", "facts.duckdb", "dataview.duckdb", "fhir.duckdb", "ground_truth.json"):
        if (world / name).exists():
            shutil.copy2(world / name, to / name)
    return to


def emulator_config(**overrides) -> EmulatorConfig:
    """Small files (many of them, so a kill can land mid-download or mid-load), short delays."""
    values = {"resources_per_file": 150, "export_processing_delay_seconds": 0.2, "poll_retry_after_seconds": 1,
              "file_expiry_seconds": 600, "token_rate_limit_per_minute": 10_000}
    values.update(overrides)
    return EmulatorConfig(**values)


def pipeline_env(server: RunningServer, world: Path, state: Path, **extra: str) -> dict[str, str]:
    """Environment variables that point the pipeline at ``server`` and keep its data in ``state``."""
    env = {
        "ATHENA_FHIR_BASE_URL": server.fhir_base,
        "ATHENA_TOKEN_URL": server.token_url,
        "ATHENA_REQUESTS_PER_SECOND": "1000",
        "ATHENA_BULK_CONCURRENCY": "2",
        "ATHENA_BULK_POLL_SECONDS": "0.5",
        "WAREHOUSE_PATH": str(state / "warehouse.duckdb"),
        "LANDING_DIR": str(state / "landing"),
        "DATAVIEW_DUCKDB_PATH": str(world / "dataview.duckdb"),
        "SANDBOX_WORLD": str(world),
    }
    env.update(extra)
    return env


def settings_from(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def clean_environ(environ: dict[str, str], env: dict[str, str]) -> dict[str, str]:
    """``environ`` without any pipeline variable, plus ``env`` (for subprocesses)."""
    return {**{k: v for k, v in environ.items() if k not in ENV_VARS}, **env}


def content_fingerprints(db: Path, exclude: frozenset[str] = LOAD_COLUMNS,
                         schemas: tuple[str, ...] = ("raw_fhir", "raw_dataview")) -> dict[str, str]:
    """SHA-256 of each raw table's sorted rows over every column except ``exclude``.

    (``sandbox.fingerprint.table_fingerprints`` hashes every column; load stamps differ between
    two correct runs, so they are left out here.)
    """
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT internal "
                             "ORDER BY 1, 2").fetchall()
        out: dict[str, str] = {}
        for schema, table in tables:
            if schema not in schemas:
                continue
            cols = [c for (c,) in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
                "ORDER BY column_name", [schema, table]).fetchall() if c not in exclude]
            select = ", ".join(f'"{c}"' for c in cols)
            (digest,) = con.execute(f"""SELECT sha256(coalesce(string_agg(r, chr(10) ORDER BY r), ''))
                FROM (SELECT t::VARCHAR AS r FROM (SELECT {select} FROM "{schema}"."{table}") t)""").fetchone()
            out[f"{schema}.{table}"] = digest
        return out
    finally:
        con.close()


def world_counts(world: Path) -> dict[str, int]:
    """Resources per type the world's FHIR rendering serves."""
    con = duckdb.connect(str(world / "fhir.duckdb"), read_only=True)
    try:
        return dict(con.execute("SELECT resource_type, count(*) FROM resources WHERE resource IS NOT NULL "
                                "GROUP BY 1").fetchall())
    finally:
        con.close()


def raw_counts(db: Path, schema: str = "raw_fhir") -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = ?",
                                            [schema]).fetchall()]
        return {t: con.execute(f'SELECT count(*) FROM {schema}."{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()
