"""Integrity checks over a rendered ``fhir.duckdb``, in SQL so they run on full-size worlds.

Why: a FHIR export whose references dangle breaks every downstream join (staging models join
Encounter.subject to Patient, Condition.encounter to Encounter, ...). The renderer promises that
every ``reference`` resolves to a row of ``resources``; this is the check tests hold it to.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

UNRESOLVED_SQL = """
WITH refs AS (
    SELECT r.resource_type, r.id,
           unnest(json_extract_string(r.resource, '$..reference')) AS reference
    FROM resources r
),
targets AS (
    SELECT resource_type || '/' || id AS reference FROM resources
)
SELECT refs.resource_type, refs.id, refs.reference
FROM refs
ANTI JOIN targets USING (reference)
ORDER BY 1, 2, 3
"""


def unresolved_references(fhir_db_path: Path | str) -> list[tuple[str, str, str]]:
    """Every ``reference`` string (at any depth) that does not name a stored ``Type/id``.

    Returns ``(resource_type, id, reference)`` of the referring resource, sorted; empty means
    the rendering is referentially whole. Only relative ``Type/id`` references can resolve;
    anything else (absolute URLs, conditional ``Type?identifier=`` references) is reported.
    """
    con = duckdb.connect(str(fhir_db_path), read_only=True)
    try:
        rows = con.execute(UNRESOLVED_SQL).fetchall()
    finally:
        con.close()
    return [(str(t), str(i), str(ref)) for t, i, ref in rows]
