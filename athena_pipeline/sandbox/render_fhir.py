"""Rendering B: the world's facts as FHIR R4 (US Core shaped) resources, ``<world>/fhir.duckdb``.

Why SQL files: every resource type is one SELECT over ``facts.duckdb`` that assembles the JSON
text with ``concat()`` and small macros (``fhir_sql/<type>.sql``, helpers in ``_setup.sql``).
Nothing loops over rows in Python, so a 25k-patient world renders in seconds, and the same facts
always give the same bytes. (Struct literals + ``to_json`` read nicer but were several times slower.)

Output contract (read by the athenahealth emulator)::

    resources(resource_type, id, patient_id, last_updated, resource)   -- live resources, JSON text
    deletions(resource_type, id, deleted_at)                           -- soft-deleted in facts
    world_meta(key, value)                                             -- practice_id, clock, current_date

Rules the SQL follows (see ``fhir_sql/_setup.sql``):
- ids are athena style, ``a-{practiceid}.{Kind}-{id}`` (the practice itself is ``a-1.Practice-{pid}``);
- a row soft-deleted in facts, or belonging to a soft-deleted patient, is a deletion, not a resource;
- an optional reference to something that is not rendered (e.g. a deleted encounter or provider)
  is left out, and ``last_updated`` moves to when that target was deleted, so ``_since`` exports
  pick up the changed resource; otherwise ``last_updated`` is the fact row's ``updated_at``
  (truncated to whole seconds so it equals ``meta.lastUpdated`` exactly);
- absent values are absent members, never ``"x":null`` (FHIR forbids nulls).
"""

from __future__ import annotations

import os
from importlib import resources as importlib_resources
from pathlib import Path

import duckdb

from athena_pipeline.sandbox.duck import connect_for_build
from athena_pipeline.sandbox.world import World

#: FHIR resource type -> SQL file in ``fhir_sql/``. Rendered (and stored) in sorted type order.
RESOURCE_SQL: dict[str, str] = {
    "AllergyIntolerance": "allergy_intolerance.sql",
    "Appointment": "appointment.sql",
    "Condition": "condition.sql",
    "Coverage": "coverage.sql",
    "DiagnosticReport": "diagnostic_report.sql",
    "DocumentReference": "document_reference.sql",
    "Encounter": "encounter.sql",
    "Immunization": "immunization.sql",
    "Location": "location.sql",
    "MedicationRequest": "medication_request.sql",
    "Observation": "observation.sql",
    "Organization": "organization.sql",
    "Patient": "patient.sql",
    "Practitioner": "practitioner.sql",
    "Procedure": "procedure.sql",
}

# Each type is inserted in id order, all types in one transaction (no commit or checkpoint between
# them); the casts pin the contract's column types.
RESOURCES_INSERT = """
INSERT INTO resources
SELECT CAST(resource_type AS VARCHAR) AS resource_type,
       CAST(id AS VARCHAR) AS id,
       CAST(patient_id AS VARCHAR) AS patient_id,
       CAST(last_updated AS TIMESTAMP) AS last_updated,
       CAST(resource AS VARCHAR) AS resource
FROM rendered
WHERE deleted_at IS NULL
ORDER BY id
"""
DELETIONS_INSERT = """
INSERT INTO deletions
SELECT CAST(resource_type AS VARCHAR) AS resource_type,
       CAST(id AS VARCHAR) AS id,
       CAST(deleted_at AS TIMESTAMP) AS deleted_at
FROM rendered
WHERE deleted_at IS NOT NULL
ORDER BY id
"""


def load_sql(name: str, *, practice_id: int, current_date: str) -> str:
    """Read one ``fhir_sql`` file and fill its only placeholders: ``{pid}`` and ``{current_date}``.

    Plain ``str.replace`` (not ``format``): the SQL is full of JSON braces. Both values are
    validated here (an int and an ISO date), so the substitution cannot inject SQL.
    """
    pid = int(practice_id)
    if len(current_date) != 10 or not current_date.replace("-", "").isdigit():
        raise ValueError(f"current_date must be YYYY-MM-DD, got {current_date!r}")
    text = importlib_resources.files("athena_pipeline.sandbox").joinpath("fhir_sql", name).read_text()
    return text.replace("{pid}", str(pid)).replace("{current_date}", current_date)


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _practice_id(con: duckdb.DuckDBPyConnection) -> int:
    rows = con.execute("SELECT practice_id FROM f.practice").fetchall()
    if len(rows) != 1:
        raise ValueError(f"facts.practice must hold exactly one row, found {len(rows)}")
    return int(rows[0][0])


def render_into(con: duckdb.DuckDBPyConnection, world: World) -> dict[str, int]:
    """Render into the (empty) database ``con`` is connected to; facts must be attached as ``f``.

    Split from :func:`render_fhir` so the write-then-rename dance stays in one place.
    Returns the number of live resources per type (every type in ``RESOURCE_SQL``, zeros included).
    """
    pid = _practice_id(con)
    current_date = world.current_date.isoformat()
    # JSON text compresses ~15x with zstd and writes faster than DuckDB's default string
    # analysis (dictionary/FSST), which otherwise dominates the write.
    con.execute("SET force_compression = 'zstd'")
    con.execute(load_sql("_setup.sql", practice_id=pid, current_date=current_date))
    # One statement per type, in (resource_type, id) order: each sort is bounded by the largest
    # type instead of the whole world, so big practices spill less and never run out of memory.
    con.execute("""CREATE TABLE resources (resource_type VARCHAR, id VARCHAR, patient_id VARCHAR,
                                           last_updated TIMESTAMP, resource VARCHAR)""")
    con.execute("CREATE TABLE deletions (resource_type VARCHAR, id VARCHAR, deleted_at TIMESTAMP)")
    con.execute("BEGIN")
    for resource_type in sorted(RESOURCE_SQL):
        sql = load_sql(RESOURCE_SQL[resource_type], practice_id=pid, current_date=current_date)
        con.execute(f"CREATE OR REPLACE TEMP VIEW rendered AS SELECT resource_type, id, patient_id, "
                    f"last_updated, deleted_at, resource FROM ({sql})")
        con.execute(RESOURCES_INSERT)
        # Same view again: DuckDB prunes the unused JSON column, so this pass only re-runs the joins.
        con.execute(DELETIONS_INSERT)
    con.execute("COMMIT")
    con.execute("CREATE TABLE world_meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL)")
    con.executemany(
        "INSERT INTO world_meta VALUES (?, ?)",
        [
            ["clock", world.clock.isoformat()],
            ["current_date", current_date],
            ["practice_id", str(pid)],
        ],
    )
    counts = dict.fromkeys(sorted(RESOURCE_SQL), 0)
    for resource_type, n in con.execute(
        "SELECT resource_type, count(*) FROM resources GROUP BY ALL"
    ).fetchall():
        counts[resource_type] = int(n)
    return counts


def render_fhir(world: World) -> dict[str, int]:
    """Render ``world.facts_path`` to ``world.fhir_path`` atomically; return live counts per type.

    Written to a temporary file in the world directory and moved over ``fhir.duckdb`` with
    ``os.replace``, so the emulator never opens a half-written rendering.
    """
    facts = Path(world.facts_path)
    if not facts.exists():
        raise FileNotFoundError(f"{facts} not found: generate the world first")
    tmp = Path(world.root) / f".fhir.duckdb.tmp-{os.getpid()}"
    for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
        stale.unlink(missing_ok=True)
    try:
        con = connect_for_build(tmp)
        try:
            con.execute(f"ATTACH {_sql_literal(str(facts))} AS f (READ_ONLY)")
            counts = render_into(con, world)
            con.execute("DETACH f")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, world.fhir_path)
    except BaseException:
        for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
            stale.unlink(missing_ok=True)
        raise
    return counts

