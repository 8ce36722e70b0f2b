"""Content fingerprints of a world's DuckDB files.

DuckDB stamps each file with its own header, so two files holding identical data are not
byte-identical. Determinism is therefore stated on content: every table's rows, rendered as text
and sorted, hashed with SHA-256. Same seed and options => same fingerprints.
"""

from __future__ import annotations

from pathlib import Path

import duckdb


def table_fingerprints(db_path: Path | str, schemas: tuple[str, ...] | None = None) -> dict[str, str]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute("""SELECT schema_name, table_name FROM duckdb_tables()
                              WHERE NOT internal ORDER BY 1, 2""").fetchall()
        out = {}
        for schema, table in rows:
            if schemas and schema not in schemas:
                continue
            (digest,) = con.execute(f"""SELECT sha256(coalesce(string_agg(r, chr(10) ORDER BY r), ''))
                FROM (SELECT t::VARCHAR AS r FROM "{schema}"."{table}" t)""").fetchone()
            out[f"{schema}.{table}"] = digest
        return out
    finally:
        con.close()


def world_fingerprints(world_dir: Path | str) -> dict[str, str]:
    """Fingerprints of every table of every rendering, plus the ground truth file's hash."""
    import hashlib

    root = Path(world_dir)
    out: dict[str, str] = {}
    for name in ("facts.duckdb", "dataview.duckdb", "fhir.duckdb"):
        path = root / name
        if path.exists():
            out.update({f"{name}:{k}": v for k, v in table_fingerprints(path).items()})
    gt = root / "ground_truth.json"
    if gt.exists():
        out["ground_truth.json"] = hashlib.sha256(gt.read_bytes()).hexdigest()
    return out
