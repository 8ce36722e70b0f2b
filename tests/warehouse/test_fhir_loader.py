"""The FHIR raw loader: landed export folders -> raw_fhir.<type>, audit and meta, in one transaction.

Exports are written the way the bulk-export client lands them (``{Type}.{NNN}.ndjson``, ``deleted/``,
``error/``, ``api_calls.ndjson``, ``export.json`` last), into real DuckDB files in tmp dirs. The
third-party Synthea export in ``/work/shared/fixtures/synthea-10`` is loaded as is (skipped when
absent). The crash tests SIGKILL a real loader process mid-transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from athena_pipeline.warehouse.audit import get_watermark
from athena_pipeline.warehouse.connection import connect
from athena_pipeline.warehouse.fhir_loader import (
    _LOAD_SETTINGS,
    FhirExportError,
    landing_exports,
    load_fhir_directory,
    load_fhir_export,
)

# The shared folder sits beside the checkout (``../shared/fixtures/synthea-10``).
SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "synthea-10"
TXN_TIME = "2026-11-23T23:59:59Z"
REQUEST = "https://fhir.example/r4/Group/a-1.c-195900/$export?_type=Patient,Observation"


# Session settings a load changes for its own statements; the caller's values must come back.
SESSION_SETTINGS = [*_LOAD_SETTINGS, "disabled_optimizers"]


def session_settings(con: duckdb.DuckDBPyConnection) -> dict[str, object]:
    return {n: con.execute(f"SELECT current_setting('{n}')").fetchone()[0] for n in SESSION_SETTINGS}


# --- building exports -------------------------------------------------------------------------
def res(rtype: str, rid: str, last_updated: str | None, **body: object) -> dict:
    r: dict = {"resourceType": rtype, "id": rid}
    if last_updated is not None:
        r["meta"] = {"lastUpdated": last_updated}
    r.update(body)
    return r


def write_export(root: Path, export_id: str, files: dict[str, list], *, deleted: list[str] | None = None,
                 errors: list[dict] | None = None, api_calls: list[dict] | None = None,
                 transaction_time: str = TXN_TIME, kind: str = "full", since: str | None = None,
                 counts: dict[str, int] | None = None, trailing_newline: dict[str, bool] | None = None,
                 request: str = REQUEST) -> Path:
    """Write ``<root>/<export_id>/`` like the bulk-export client does; returns the folder.

    ``files`` maps a file name (``Patient.000.ndjson``) to its lines: dicts are JSON-encoded,
    strings written verbatim. ``deleted`` holds ``Type/id`` references, one Bundle per line.
    """
    d = root / export_id
    d.mkdir(parents=True)
    manifest_files = []
    for name, lines in files.items():
        text = "\n".join(json.dumps(x, separators=(",", ":")) if isinstance(x, dict) else x for x in lines)
        if (trailing_newline or {}).get(name, True) and lines:
            text += "\n"
        (d / name).write_text(text, encoding="utf-8")
        manifest_files.append({"type": name.split(".")[0], "path": name,
                               "count": (counts or {}).get(name, len(lines)), "bytes": len(text.encode())})
    deleted_entries, error_entries = [], []
    if deleted:
        (d / "deleted").mkdir()
        bundles = [{"resourceType": "Bundle", "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": ref}}]} for ref in deleted]
        (d / "deleted" / "Bundle.000.ndjson").write_text("".join(json.dumps(b) + "\n" for b in bundles))
        deleted_entries.append({"path": "deleted/Bundle.000.ndjson", "count": len(bundles)})
    if errors:
        (d / "error").mkdir()
        (d / "error" / "OperationOutcome.000.ndjson").write_text("".join(json.dumps(e) + "\n" for e in errors))
        error_entries.append({"path": "error/OperationOutcome.000.ndjson", "count": len(errors)})
    if api_calls:
        (d / "api_calls.ndjson").write_text("".join(json.dumps(c) + "\n" for c in api_calls))
    manifest = {"export_id": export_id, "kind": kind, "since": since, "transaction_time": transaction_time,
                "request": request, "status_url": "https://fhir.example/status/1",
                "types": sorted({f["type"] for f in manifest_files}), "files": manifest_files,
                "deleted": deleted_entries, "errors": error_entries, "downloaded_at": TXN_TIME}
    (d / "export.json").write_text(json.dumps(manifest))
    return d


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "wh" / "warehouse.duckdb"


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


TIMESTAMP_COLUMNS = {"loaded_at", "recorded_at", "quarantined_at", "updated_at"}


def content_hash(path: Path) -> dict[str, tuple]:
    """(rows, order-independent hash) of every warehouse table, wall-clock columns excluded."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        tables = rows(con, """SELECT schema_name, table_name FROM duckdb_tables()
                              WHERE database_name = current_database() ORDER BY 1, 2""")
        for schema, table in tables:
            cols = [c for (c,) in rows(con, """SELECT column_name FROM duckdb_columns() WHERE schema_name = ?
                                               AND table_name = ? ORDER BY column_index""", [schema, table])
                    if c not in TIMESTAMP_COLUMNS]
            expr = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols)
            out[f"{schema}.{table}"] = con.execute(
                f'SELECT count(*), coalesce(bit_xor(hash({expr})), 0) FROM "{schema}"."{table}"').fetchone()
        return out
    finally:
        con.close()


# --- a real third-party export --------------------------------------------------------------------
@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="shared/fixtures/synthea-10 is not present")
def test_synthea_fixture_loads_cleanly_with_the_right_counts(db: Path) -> None:
    expected = {}
    for p in SYNTHEA.glob("*.ndjson"):
        if p.name[0].isupper():
            expected[p.name.split(".")[0]] = sum(1 for line in p.read_bytes().splitlines() if line.strip())
    assert len(expected) >= 10

    with connect(db) as con:
        result = load_fhir_directory(con, SYNTHEA)
        assert result.quarantined == 0
        assert result.count_mismatches == []
        assert set(result.types) == set(expected)  # log.ndjson and README.md are not resource files
        for rtype, n in expected.items():
            stats = result.types[rtype]
            assert (stats.read, stats.inserted, stats.quarantined) == (n, n, 0), rtype
            table_rows, distinct_ids, typed = con.execute(
                f"SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE resource->>'resourceType' = ?) "
                f"FROM raw_fhir.{rtype.lower()}", [rtype]).fetchone()
            assert table_rows == distinct_ids == typed == n, rtype
        assert rows(con, "SELECT count(*) FROM audit.quarantine") == [(0,)]
        # Synthea has no meta.lastUpdated: stored as NULL, and there is no watermark without a manifest.
        assert rows(con, "SELECT count(last_updated) FROM raw_fhir.patient") == [(0,)]
        assert rows(con, "SELECT count(*) FROM meta.watermarks") == [(0,)]
        # The JSON is stored whole: a nested value survives the round trip.
        family = rows(con, "SELECT resource->'$.name[0].family' FROM raw_fhir.patient ORDER BY id LIMIT 1")[0][0]
        assert family is not None

        again = load_fhir_directory(con, SYNTHEA)
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, sum(expected.values()))


# --- upsert rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", ["export", "directory"])
def test_duplicates_across_files_keep_the_newest_then_the_later_file(tmp_path: Path, db: Path, loader: str) -> None:
    # With a manifest the files of a type are read as one run; a plain directory, file by file.
    export = write_export(tmp_path / "landing", "e1", {
        "Patient.000.ndjson": [res("Patient", "p1", "2026-01-02T00:00:00Z", gender="male"),
                               res("Patient", "p2", "2026-01-01T00:00:00Z", gender="female"),
                               res("Patient", "p3", "2026-03-01T00:00:00Z", gender="unknown")],
        "Patient.001.ndjson": [res("Patient", "p1", "2026-01-01T00:00:00Z", gender="female"),  # older: loses
                               res("Patient", "p2", "2026-01-01T00:00:00Z", gender="other"),  # tie: later file wins
                               res("Patient", "p3", "2026-03-01T00:00:00Z", gender="male"),
                               res("Patient", "p3", "2026-03-01T00:00:00Z", gender="female")],  # tie: later line
    })
    with connect(db) as con:
        result = load_fhir_export(con, export) if loader == "export" else load_fhir_directory(con, export)
        p = result.types["Patient"]
        assert (p.read, p.inserted, p.duplicates) == (7, 3, 4)
        stored = rows(con, "SELECT id, resource->>'gender', source_file, source_line FROM raw_fhir.patient ORDER BY id")
        assert stored == [("p1", "male", "Patient.000.ndjson", 1),
                          ("p2", "other", "Patient.001.ndjson", 2),
                          ("p3", "female", "Patient.001.ndjson", 4)]


def test_a_newer_copy_replaces_an_older_one_never_the_reverse(tmp_path: Path, db: Path) -> None:
    landing = tmp_path / "landing"
    first = write_export(landing, "e1", {"Patient.000.ndjson": [
        res("Patient", "p1", "2026-05-01T00:00:00Z", gender="male"),
        res("Patient", "p2", "2026-05-01T00:00:00Z", gender="male")]})
    older = write_export(landing, "e2", {"Patient.000.ndjson": [
        res("Patient", "p1", "2026-04-01T00:00:00Z", gender="female"),  # older than stored: ignored
        res("Patient", "p2", "2026-05-01T00:00:00Z", gender="female")]})  # same instant, new content: replaces
    newer = write_export(landing, "e3", {"Patient.000.ndjson": [
        res("Patient", "p1", "2026-06-01T00:00:00.5+02:00", gender="other")]})
    with connect(db) as con:
        load_fhir_export(con, first)
        r2 = load_fhir_export(con, older)
        assert (r2.types["Patient"].older, r2.types["Patient"].updated) == (1, 1)
        assert rows(con, "SELECT id, resource->>'gender', export_id FROM raw_fhir.patient ORDER BY id") == [
            ("p1", "male", "e1"), ("p2", "female", "e2")]
        r3 = load_fhir_export(con, newer)
        assert r3.types["Patient"].updated == 1
        assert rows(con, "SELECT resource->>'gender', last_updated FROM raw_fhir.patient WHERE id = 'p1'") == [
            ("other", dt.datetime(2026, 5, 31, 22, 0, 0, 500000, tzinfo=dt.UTC))]


def test_deletions_remove_stored_rows_and_keep_tombstones(tmp_path: Path, db: Path) -> None:
    landing = tmp_path / "landing"
    base = write_export(landing, "e1", {
        "Patient.000.ndjson": [res("Patient", f"p{i}", "2026-01-01T00:00:00Z") for i in range(1, 5)],
        "Observation.000.ndjson": [res("Observation", "o1", "2026-12-01T00:00:00Z", status="final")]})
    since = write_export(landing, "e2", {
        "Patient.000.ndjson": [res("Patient", "p4", "2026-11-01T00:00:00Z", gender="male")]},
        deleted=["Patient/p1", "Patient/p4", "Observation/o1", "Encounter/e9"],
        kind="since", since="2026-06-01T00:00:00Z", transaction_time="2026-11-23T00:00:00Z")
    stale = write_export(landing, "e3", {"Patient.000.ndjson": [
        res("Patient", "p1", "2026-01-01T00:00:00Z"),  # older than its deletion: stays deleted
        res("Patient", "p4", "2026-11-24T00:00:00Z", gender="female")]})  # newer than its deletion: back
    with connect(db) as con:
        load_fhir_export(con, base)
        r = load_fhir_export(con, since)
        # p1 deleted; p4 deleted, and its copy in this export is not newer than the deletion;
        # o1 (lastUpdated after the deletion time) survives; Encounter/e9 was never stored.
        assert (r.types["Patient"].deleted, r.types["Patient"].tombstoned) == (2, 1)
        assert r.deletions == 4
        assert rows(con, "SELECT id FROM raw_fhir.patient ORDER BY id") == [("p2",), ("p3",)]
        assert rows(con, "SELECT count(*) FROM raw_fhir.observation") == [(1,)]
        assert rows(con, """SELECT resource_type, id, applied FROM meta.fhir_deletions ORDER BY 1, 2""") == [
            ("Encounter", "e9", False), ("Observation", "o1", False), ("Patient", "p1", True), ("Patient", "p4", True)]
        r3 = load_fhir_export(con, stale)
        assert (r3.types["Patient"].tombstoned, r3.types["Patient"].inserted) == (1, 1)
        assert rows(con, "SELECT id, resource->>'gender' FROM raw_fhir.patient ORDER BY id") == [
            ("p2", None), ("p3", None), ("p4", "female")]


def _stored_rows(path: Path) -> dict[str, list[tuple]]:
    """Every raw row (wall-clock ``loaded_at`` aside), by table."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [t for (t,) in rows(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'raw_fhir'")]
        return {t: rows(con, f"""SELECT id, last_updated, resource::VARCHAR, export_id, source_file, source_line
                                 FROM raw_fhir.{t} ORDER BY id""") for t in sorted(tables)}
    finally:
        con.close()


def test_a_first_load_stores_the_same_rows_as_an_upsert_into_stored_rows(tmp_path: Path) -> None:
    """A load into empty tables takes a fast path (no comparison with stored rows); loading the same
    export over older stored copies, some of them deleted by it, must end with identical rows."""
    landing = tmp_path / "landing"
    older = write_export(landing, "e0", {
        "Patient.000.ndjson": [res("Patient", "p1", "2025-01-01T00:00:00Z", gender="old"),
                               res("Patient", "p9", "2025-01-01T00:00:00Z")],
        "Observation.000.ndjson": [res("Observation", "o2", "2025-01-01T00:00:00Z")]},
        transaction_time="2025-01-02T00:00:00Z")
    export = write_export(landing, "e1", {
        "Patient.000.ndjson": [res("Patient", "p1", "2026-02-01T00:00:00Z", gender="A"),
                               res("Patient", "p2", "2026-01-01T00:00:00Z", gender="first"),
                               res("Patient", "p3", None, gender="undated")],
        "Patient.001.ndjson": [res("Patient", "p1", "2026-01-01T00:00:00Z", gender="older copy"),
                               "not json",
                               res("Patient", "p2", "2026-01-01T00:00:00Z", gender="B"),  # tie: later file
                               res("Patient", "p4", "2026-01-01T00:00:00Z")],
        "Observation.000.ndjson": [res("Observation", "o1", "2026-01-01T00:00:00Z", status="preliminary"),
                                   res("Observation", "o2", "2026-01-01T00:00:00Z")],
        "Observation.001.ndjson": [res("Observation", "o1", "2026-03-01T00:00:00Z", status="final")]},
        deleted=["Patient/p9", "Observation/o2"])
    fresh, upserted = tmp_path / "fresh.duckdb", tmp_path / "upserted.duckdb"
    with connect(fresh) as con:
        first = load_fhir_export(con, export)
    with connect(upserted) as con:
        load_fhir_export(con, older)
        over = load_fhir_export(con, export)

    assert _stored_rows(fresh) == _stored_rows(upserted)
    stored = _stored_rows(fresh)
    assert [(r[0], json.loads(r[2]).get("gender"), r[4], r[5]) for r in stored["patient"]] == [
        ("p1", "A", "Patient.000.ndjson", 1), ("p2", "B", "Patient.001.ndjson", 3),
        ("p3", "undated", "Patient.000.ndjson", 3), ("p4", None, "Patient.001.ndjson", 4)]
    assert [(r[0], json.loads(r[2])["status"], r[4]) for r in stored["observation"]] == [
        ("o1", "final", "Observation.001.ndjson")]  # o2: deleted after its lastUpdated
    p_first, p_over = first.types["Patient"], over.types["Patient"]
    assert (p_first.inserted, p_first.updated, p_first.duplicates, p_first.quarantined) == (4, 0, 2, 1)
    assert (p_over.inserted, p_over.updated, p_over.duplicates, p_over.deleted) == (3, 1, 2, 1)
    assert (first.types["Observation"].tombstoned, over.types["Observation"].tombstoned) == (1, 1)
    assert over.types["Observation"].deleted == 1


@pytest.mark.parametrize("stored", [False, True], ids=["first-load", "over-stored-rows"])
def test_line_numbers_stay_exact_when_manifest_counts_are_wrong(tmp_path: Path, db: Path, stored: bool) -> None:
    """The files of a type are read in one scan and numbered from the manifest counts; a count that
    is off (a short or padded file) must not shift the line numbers of the files after it."""
    if stored:
        with connect(db) as con:
            load_fhir_export(con, write_export(tmp_path / "landing", "e0", {"Patient.000.ndjson": [
                res("Patient", "z1", TXN_TIME)]}))
    export = write_export(tmp_path / "landing", "e1", {
        "Patient.000.ndjson": [res("Patient", "a1", TXN_TIME), res("Patient", "a2", TXN_TIME)],
        "Patient.001.ndjson": [res("Patient", "b1", TXN_TIME), "not json", res("Patient", "b3", TXN_TIME)],
        "Patient.002.ndjson": [res("Patient", "c1", TXN_TIME), res("Patient", "c2", TXN_TIME)]},
        counts={"Patient.000.ndjson": 3, "Patient.001.ndjson": 1})
    with connect(db) as con:
        result = load_fhir_export(con, export)
        assert [(m.file, m.expected, m.read) for m in result.count_mismatches] == [
            ("Patient.000.ndjson", 3, 2), ("Patient.001.ndjson", 1, 3)]
        assert rows(con, "SELECT id, source_file, source_line FROM raw_fhir.patient WHERE export_id = 'e1' "
                         "ORDER BY id") == [
            ("a1", "Patient.000.ndjson", 1), ("a2", "Patient.000.ndjson", 2),
            ("b1", "Patient.001.ndjson", 1), ("b3", "Patient.001.ndjson", 3),
            ("c1", "Patient.002.ndjson", 1), ("c2", "Patient.002.ndjson", 2)]
        assert rows(con, "SELECT source_file, source_line, reason FROM audit.quarantine") == [
            ("Patient.001.ndjson", 2, "not valid JSON")]
        assert rows(con, "SELECT count(*) FROM raw_fhir.patient") == [(7 if stored else 6,)]


def test_a_raw_table_of_an_earlier_version_is_rebuilt_once_keeping_its_rows(tmp_path: Path, db: Path) -> None:
    """Earlier versions created raw tables with a PRIMARY KEY (no zstd); the first load that touches
    one rebuilds it without the key, keeping its rows, and leaves the session settings alone."""
    export = write_export(tmp_path / "landing", "e1", {"Patient.000.ndjson": [
        res("Patient", "p1", "2026-02-01T00:00:00Z", gender="new"), res("Patient", "p2", "2026-01-01T00:00:00Z"),
        res("Patient", "p2", "2026-01-01T00:00:00Z", gender="dup")]})
    with connect(db) as con:
        con.execute("CREATE SCHEMA raw_fhir")
        con.execute("""CREATE TABLE raw_fhir.patient (id VARCHAR PRIMARY KEY, last_updated TIMESTAMPTZ,
                       resource JSON, export_id VARCHAR, source_file VARCHAR, source_line BIGINT,
                       loaded_at TIMESTAMPTZ)""")
        con.execute("""INSERT INTO raw_fhir.patient VALUES
                       ('p1', '2026-01-01T00:00:00Z', '{"resourceType":"Patient","id":"p1"}', 'e0', 'P.ndjson', 1, now()),
                       ('p0', '2026-01-01T00:00:00Z', '{"resourceType":"Patient","id":"p0"}', 'e0', 'P.ndjson', 2, now())""")
        before = session_settings(con)
        result = load_fhir_export(con, export)
        assert (result.inserted, result.updated, result.types["Patient"].duplicates) == (1, 1, 1)
        assert rows(con, "SELECT id, resource->>'gender', export_id FROM raw_fhir.patient ORDER BY id") == [
            ("p0", None, "e0"), ("p1", "new", "e1"), ("p2", "dup", "e1")]
        assert rows(con, """SELECT count(*) FROM duckdb_constraints() WHERE schema_name = 'raw_fhir'
                            AND constraint_type = 'PRIMARY KEY'""") == [(0,)]
        assert "COMPRESSION ZSTD" in rows(con, "SELECT sql FROM duckdb_tables() WHERE table_name = 'patient'")[0][0]
        assert session_settings(con) == before


# --- malformed input --------------------------------------------------------------------------------
def test_every_kind_of_malformed_line_is_quarantined_by_file_and_line(tmp_path: Path, db: Path) -> None:
    secret = "Zebedee-Quarantine-Secret"
    lines = [
        res("Patient", "ok1", "2026-01-01T00:00:00Z"),                                   # 1
        f'{{"resourceType":"Patient","id":"x1","name":"{secret}" oops}}',                # 2 not JSON
        '[{"resourceType":"Patient"}]',                                                  # 3 not an object
        {"id": "x2", "name": secret},                                                    # 4 no resourceType
        {"resourceType": "Patient", "name": secret},                                     # 5 no id
        res("Observation", "x3", "2026-01-01T00:00:00Z", note=secret),                   # 6 wrong type
        res("Patient", "bad id!", "2026-01-01T00:00:00Z"),                               # 7 invalid id
        res("Patient", "x4", "yesterday", name=secret),                                  # 8 bad instant
        "\x00\x01 binary junk",                                                          # 9 not JSON
        res("Patient", "ok2", "2026-01-02T00:00:00Z"),                                   # 10
        f'{{"resourceType":"Patient","id":"cut","name":"{secret}',                       # 11 truncated
    ]
    export = write_export(tmp_path / "landing", "e1", {
        "Patient.000.ndjson": lines,
        "Observation.000.ndjson": [res("Observation", "o1", "2026-01-01T00:00:00Z")]},
        trailing_newline={"Patient.000.ndjson": False})
    with connect(db) as con:
        result = load_fhir_export(con, export)
        assert result.count_mismatches == []  # quarantined lines count as read
        assert (result.types["Patient"].read, result.types["Patient"].quarantined) == (11, 9)
        assert result.quarantined == 9
        assert rows(con, "SELECT id FROM raw_fhir.patient ORDER BY id") == [("ok1",), ("ok2",)]
        assert rows(con, "SELECT id FROM raw_fhir.observation") == [("o1",)]
        quarantine = rows(con, """SELECT source_file, source_line, resource_type, reason, byte_length
                                  FROM audit.quarantine ORDER BY source_line""")
        assert [(q[0], q[1], q[3]) for q in quarantine] == [
            ("Patient.000.ndjson", 2, "not valid JSON"),
            ("Patient.000.ndjson", 3, "not a JSON object"),
            ("Patient.000.ndjson", 4, "no resourceType"),
            ("Patient.000.ndjson", 5, "no id"),
            ("Patient.000.ndjson", 6, "resourceType Observation in a Patient file"),
            ("Patient.000.ndjson", 7, "id is not a valid FHIR id"),
            ("Patient.000.ndjson", 8, "meta.lastUpdated is not a valid instant"),
            ("Patient.000.ndjson", 9, "not valid JSON"),
            ("Patient.000.ndjson", 11, "truncated last line (no trailing newline, not valid JSON)"),
        ]
        assert {q[2] for q in quarantine} == {"Patient"}
        assert quarantine[-1][4] == len(lines[-1].encode())  # the cut line's byte length, from the file's tail
        assert quarantine[2][4] == len(json.dumps(lines[3], separators=(",", ":")).encode())
        # Nothing of the rejected lines' content reaches the audit table.
        dump = json.dumps(rows(con, "SELECT * FROM audit.quarantine"), default=str)
        assert secret not in dump and "x1" not in dump and "bad id" not in dump


def test_a_last_line_without_newline_loads_when_it_is_complete(tmp_path: Path, db: Path) -> None:
    export = write_export(tmp_path / "landing", "e1", {"Patient.000.ndjson": [
        res("Patient", "p1", "2026-01-01T00:00:00Z"), res("Patient", "p2", "2026-01-01T00:00:00Z")]},
        trailing_newline={"Patient.000.ndjson": False})
    assert not (export / "Patient.000.ndjson").read_bytes().endswith(b"\n")
    with connect(db) as con:
        result = load_fhir_export(con, export)
        assert (result.types["Patient"].inserted, result.quarantined) == (2, 0)


def test_line_count_differing_from_the_manifest_is_reported(tmp_path: Path, db: Path) -> None:
    export = write_export(tmp_path / "landing", "e1", {"Patient.000.ndjson": [
        res("Patient", "p1", "2026-01-01T00:00:00Z"), res("Patient", "p2", "2026-01-01T00:00:00Z")]},
        counts={"Patient.000.ndjson": 3})
    with connect(db) as con:
        result = load_fhir_export(con, export)
        assert [(m.file, m.expected, m.read) for m in result.count_mismatches] == [("Patient.000.ndjson", 3, 2)]
        assert result.types["Patient"].inserted == 2
        assert "COUNT MISMATCH Patient.000.ndjson" in result.summary()


def test_an_incomplete_export_is_refused_before_anything_is_written(tmp_path: Path, db: Path) -> None:
    export = write_export(tmp_path / "landing", "e1", {"Patient.000.ndjson": [res("Patient", "p1", None)]})
    (export / "Patient.000.ndjson").unlink()
    no_manifest = tmp_path / "landing" / "e2"
    no_manifest.mkdir()
    (no_manifest / "Patient.000.ndjson").write_text(json.dumps(res("Patient", "p1", None)) + "\n")
    listed_twice = write_export(tmp_path / "landing", "e3", {"Patient.000.ndjson": [res("Patient", "p1", None)]})
    manifest = json.loads((listed_twice / "export.json").read_text())
    manifest["files"] *= 2
    (listed_twice / "export.json").write_text(json.dumps(manifest))
    with connect(db) as con:
        with pytest.raises(FhirExportError, match="incomplete: Patient.000.ndjson"):
            load_fhir_export(con, export)
        with pytest.raises(FhirExportError, match="no export.json"):
            load_fhir_export(con, no_manifest)
        with pytest.raises(FhirExportError, match="lists Patient.000.ndjson more than once"):
            load_fhir_export(con, listed_twice)
        assert rows(con, "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'raw_fhir'") == [(0,)]


def test_a_failing_load_raises_its_own_error_and_rolls_back(tmp_path: Path, db: Path) -> None:
    export = write_export(tmp_path / "landing", "e1", {"Patient.000.ndjson": [res("Patient", "p1", TXN_TIME)]})
    with connect(db) as con:
        # A raw table someone created by hand with the wrong type for ``resource``.
        con.execute("CREATE SCHEMA raw_fhir")
        con.execute("""CREATE TABLE raw_fhir.patient (id VARCHAR PRIMARY KEY, last_updated TIMESTAMPTZ,
                       resource INTEGER, export_id VARCHAR, source_file VARCHAR, source_line BIGINT,
                       loaded_at TIMESTAMPTZ)""")
        before = session_settings(con)
        with pytest.raises(duckdb.ConversionException):
            load_fhir_export(con, export)
        # Rolled back, and the connection is usable with its settings as they were.
        assert session_settings(con) == before
        assert before["disabled_optimizers"] == "" and before["preserve_insertion_order"] is True
        assert con.execute("SELECT count(*) FROM raw_fhir.patient").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'meta'").fetchone() == (0,)


def test_a_line_too_large_for_the_reader_fails_the_load_clearly(tmp_path: Path, db: Path) -> None:
    from athena_pipeline.warehouse import fhir_loader

    huge = json.dumps(res("DocumentReference", "d1", TXN_TIME, data="A" * (2 * fhir_loader.MAX_OBJECT_BYTES + 10)))
    export = write_export(tmp_path / "landing", "e1", {"DocumentReference.000.ndjson": [huge]})
    with connect(db) as con:
        with pytest.raises(FhirExportError, match="larger than DuckDB's JSON reader allows"):
            load_fhir_export(con, export)
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'raw_fhir'").fetchone() == (0,)


def test_landing_exports_lists_only_complete_downloads(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    done = write_export(landing / "fhir", "e1", {"Patient.000.ndjson": []})
    partial = landing / "fhir" / "e2"
    partial.mkdir()
    (partial / "Patient.000.ndjson").write_text("")
    assert landing_exports(landing) == [done]
    assert landing_exports(tmp_path / "nowhere") == []


# --- audit, watermark, idempotence ------------------------------------------------------------------
def _full_export(landing: Path, export_id: str = "e1") -> Path:
    return write_export(
        landing, export_id,
        {"Patient.000.ndjson": [res("Patient", "p1", "2026-01-01T00:00:00Z"), "not json",
                                res("Patient", "p2", "2026-01-01T00:00:00Z")],
         "Patient.001.ndjson": [res("Patient", "p2", "2026-02-01T00:00:00Z")],
         "Observation.000.ndjson": [res("Observation", "o1", "2026-01-01T00:00:00Z")]},
        deleted=["Patient/p1", "Observation/o9"],
        errors=[{"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "x" * 500},
            {"severity": "warning", "code": "informational", "details": {"text": "partial"}}]}],
        api_calls=[{"ts": "2026-11-23T23:00:00Z", "system": "athena_fhir", "method": "GET",
                    "path_template": "/Group/{id}/$export", "status": 202, "duration_ms": 12.5, "bytes": 0,
                    "request_id": "r-1", "resource_count": None},
                   {"ts": "2026-11-23T23:01:00Z", "system": "athena_fhir", "method": "GET",
                    "path_template": "/bulk/{file}", "status": 200, "duration_ms": 80, "bytes": 1234,
                    "request_id": "r-2", "resource_count": 3}])


def test_errors_api_calls_exports_and_watermark_are_recorded(tmp_path: Path, db: Path) -> None:
    with connect(db) as con:
        result = load_fhir_export(con, _full_export(tmp_path / "landing"))
        assert result.error_issues == {"error": 1, "warning": 1} and result.has_fatal_errors
        assert result.api_calls == 2
        errs = rows(con, "SELECT severity, code, length(diagnostics), source_line FROM audit.export_errors ORDER BY 1")
        assert errs == [("error", "processing", 200, 1), ("warning", "informational", 7, 1)]
        calls = rows(con, "SELECT system, path_template, status, bytes, resource_count, run_id FROM audit.api_calls "
                          "ORDER BY ts")
        assert calls == [("athena_fhir", "/Group/{id}/$export", 202, 0, None, "e1"),
                         ("athena_fhir", "/bulk/{file}", 200, 1234, 3, "e1")]
        assert rows(con, "SELECT export_id, kind, status, files, resources FROM meta.fhir_exports") == [
            ("e1", "full", "loaded", 5, 4)]
        expected = dt.datetime(2026, 11, 23, 23, 59, 59, tzinfo=dt.UTC)
        assert get_watermark(con, "fhir", "a-1.c-195900") == expected == result.watermark
        # An older export loaded later never moves the watermark back.
        old = write_export(tmp_path / "landing", "e0", {"Patient.000.ndjson": []},
                           transaction_time="2025-01-01T00:00:00Z")
        load_fhir_export(con, old)
        assert get_watermark(con, "fhir", "a-1.c-195900") == expected


def test_reloading_the_same_export_changes_nothing(tmp_path: Path, db: Path) -> None:
    export = _full_export(tmp_path / "landing")
    with connect(db) as con:
        first = load_fhir_export(con, export)
        # p1 is also announced as deleted (at transactionTime, after its lastUpdated): not stored.
        assert (first.inserted, first.deleted, first.quarantined) == (2, 0, 1)
        assert first.types["Patient"].tombstoned == 1
    before = content_hash(db)
    with connect(db) as con:
        before_times = rows(con, "SELECT loaded_at FROM raw_fhir.patient ORDER BY id")
        again = load_fhir_export(con, export)
        assert (again.inserted, again.updated, again.deleted, again.changed) == (0, 0, 0, False)
        assert again.already_loaded and again.api_calls == 0
        assert again.unchanged == 2 and again.types["Patient"].tombstoned == 1
        assert rows(con, "SELECT loaded_at FROM raw_fhir.patient ORDER BY id") == before_times
    assert content_hash(db) == before


# --- crash safety -----------------------------------------------------------------------------------
KILLER = textwrap.dedent(r"""
    import os, signal, sys, time
    from pathlib import Path
    from athena_pipeline.warehouse.connection import connect
    from athena_pipeline.warehouse.fhir_loader import load_fhir_export

    db, export, when = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    class Tripwire:
        # Passes statements through; SIGKILLs this process at the chosen point of the load.
        def __init__(self, con):
            self.con, self.raw_inserts = con, 0
        def __getattr__(self, name):
            return getattr(self.con, name)
        def execute(self, sql, *args):
            head = " ".join(sql.split())[:40]
            if when == "commit" and head == "COMMIT":
                os.kill(os.getpid(), signal.SIGKILL)
            result = self.con.execute(sql, *args)
            if when == "mid-insert" and head.startswith("INSERT INTO raw_fhir."):
                self.raw_inserts += 1
                if self.raw_inserts == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result

    with connect(db) as con:
        if when == "timer":
            print("loading", flush=True)
            load_fhir_export(con, export)
        else:
            load_fhir_export(Tripwire(con), export)
    print("finished", flush=True)
""")


def _world_exports(tmp_path: Path) -> tuple[Path, Path]:
    """Two exports from a generated world: e1 is older (every 5th resource stale, a type missing),
    e2 is the world as it stands, with deletions of 50 resources."""
    from athena_pipeline.sandbox.generate import generate_world
    from athena_pipeline.sandbox.world import WorldOptions

    world = generate_world(tmp_path / "world", WorldOptions(providers=1, patients=300))
    con = duckdb.connect()
    con.execute("ATTACH ? AS f (READ_ONLY)", [str(world.fhir_path)])
    exports = []
    for export_id in ("e1", "e2"):
        d = tmp_path / "landing" / export_id
        (d / "deleted").mkdir(parents=True)
        files = []
        types = [t for (t,) in con.execute("SELECT DISTINCT resource_type FROM f.resources ORDER BY 1").fetchall()]
        for rtype in types:
            if export_id == "e1" and rtype == "Immunization":
                continue
            select = "resource"
            if export_id == "e1":  # older copies: lastUpdated 2000, different content
                select = ("CASE WHEN hash(id) % 5 = 0 THEN json_merge_patch(resource, "
                          "'{\"meta\": {\"lastUpdated\": \"2000-01-01T00:00:00Z\"}, \"_stale\": true}') "
                          "ELSE resource END")
            for part in (0, 1):
                name = f"{rtype}.{part:03d}.ndjson"
                con.execute(f"""COPY (SELECT {select} FROM f.resources WHERE resource_type = '{rtype}'
                                      AND resource IS NOT NULL AND hash(id) % 2 = {part} ORDER BY id)
                                TO '{d / name}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x01')""")
                n = (d / name).read_bytes().count(b"\n")
                files.append({"type": rtype, "path": name, "count": n})
        deleted = []
        if export_id == "e2":
            con.execute(f"""COPY (SELECT json_object('resourceType', 'Bundle', 'type', 'transaction', 'entry',
                                     json_array(json_object('request', json_object('method', 'DELETE',
                                     'url', resource_type || '/' || id)))) FROM f.resources
                                  WHERE resource_type = 'Observation' ORDER BY id LIMIT 50)
                            TO '{d / "deleted" / "Bundle.000.ndjson"}' (FORMAT csv, HEADER false, QUOTE '',
                                ESCAPE '', DELIMITER '\x01')""")
            deleted = [{"path": "deleted/Bundle.000.ndjson", "count": 50}]
        manifest = {"export_id": export_id, "kind": "full", "since": None,
                    "transaction_time": "2026-11-23T23:59:59Z" if export_id == "e2" else "2026-06-01T00:00:00Z",
                    "request": REQUEST, "types": types, "files": files, "deleted": deleted, "errors": []}
        (d / "export.json").write_text(json.dumps(manifest))
        exports.append(d)
    con.close()
    return exports[0], exports[1]


@pytest.fixture(scope="module")
def world_exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _world_exports(tmp_path_factory.mktemp("fhir_world"))


def _run_killer(db: Path, export: Path, when: str, kill_after: float | None = None) -> int:
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(db), str(export), when],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if kill_after is not None:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "loading"
            time.sleep(kill_after)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.mark.parametrize("when", ["mid-insert", "commit"])
def test_a_load_killed_mid_transaction_leaves_the_previous_state_and_converges(
        tmp_path: Path, world_exports: tuple[Path, Path], when: str) -> None:
    e1, e2 = world_exports
    reference, victim = tmp_path / "reference.duckdb", tmp_path / "victim.duckdb"
    for path in (reference, victim):
        with connect(path) as con:
            load_fhir_export(con, e1)
    pre_state = content_hash(victim)
    with connect(reference) as con:
        clean = load_fhir_export(con, e2)
    assert clean.inserted and clean.updated and clean.deleted and clean.unchanged

    assert _run_killer(victim, e2, when) == -signal.SIGKILL
    assert content_hash(victim) == pre_state  # nothing of the killed load is visible

    with connect(victim) as con:
        rerun = load_fhir_export(con, e2)
    assert (rerun.inserted, rerun.updated, rerun.deleted) == (clean.inserted, clean.updated, clean.deleted)
    assert content_hash(victim) == content_hash(reference)


def test_a_load_killed_at_an_arbitrary_moment_converges(tmp_path: Path, world_exports: tuple[Path, Path]) -> None:
    e1, e2 = world_exports
    reference, victim = tmp_path / "reference.duckdb", tmp_path / "victim.duckdb"
    for path in (reference, victim):
        with connect(path) as con:
            load_fhir_export(con, e1)
    t0 = time.perf_counter()
    with connect(reference) as con:
        load_fhir_export(con, e2)
    duration = time.perf_counter() - t0
    pre_state = content_hash(victim)
    for fraction in (0.3, 0.7):
        code = _run_killer(victim, e2, "timer", kill_after=duration * fraction)
        state = content_hash(victim)
        if code == -signal.SIGKILL:  # killed mid-load: all or nothing
            assert state in (pre_state, content_hash(reference))
    with connect(victim) as con:
        load_fhir_export(con, e2)
    assert content_hash(victim) == content_hash(reference)


def test_peak_memory_does_not_follow_file_size(tmp_path: Path) -> None:
    """Under a fixed DuckDB memory_limit (200 MB), a 200 MB export loads in about the same memory
    as a 50 MB one: files are streamed, nothing holds a whole file. (Without a limit DuckDB uses
    free RAM as cache, so RSS would grow with the data without being needed.)"""
    child = textwrap.dedent(r"""
        import json, resource, sys
        from pathlib import Path
        from athena_pipeline.warehouse.connection import connect
        from athena_pipeline.warehouse.fhir_loader import load_fhir_export
        with connect(sys.argv[1], memory_limit="200MB") as con:
            r = load_fhir_export(con, Path(sys.argv[2]))
        print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "n": r.inserted}))
    """)
    peaks, sizes = {}, {}
    con = duckdb.connect()
    for n in (40_000, 160_000):
        export = write_export(tmp_path / f"landing{n}", "e1", {"Observation.000.ndjson": []}, counts={
            "Observation.000.ndjson": n})
        path = export / "Observation.000.ndjson"
        con.execute(f"""COPY (SELECT json_object('resourceType', 'Observation', 'id', 'o' || i,
                                     'meta', json_object('lastUpdated', '2026-01-01T00:00:00Z'),
                                     'note', repeat(md5(i::VARCHAR), 36)) FROM range({n}) t(i))
                        TO '{path}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x01')""")
        sizes[n] = path.stat().st_size / 2**20
        out = subprocess.run([sys.executable, "-c", child, str(tmp_path / f"wh{n}.duckdb"), str(export)],
                             capture_output=True, text=True, check=True)
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["n"] == n
        peaks[n] = report["rss_mb"]
    assert sizes[160_000] - sizes[40_000] > 140
    # 140 MB more input; peak RSS grows by a fraction of that (DuckDB stays within its limit).
    assert peaks[160_000] - peaks[40_000] < 60, (peaks, sizes)
