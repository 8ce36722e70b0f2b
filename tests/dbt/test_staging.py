"""dbt staging on real warehouses: a generated sandbox practice and a real third-party export (Synthea).

Each case loads raw tables with the project's own loaders into a temp ``warehouse.duckdb``, runs
the real ``dbt build --select staging`` (models and their data tests) in a subprocess, and checks
what a user of the marts relies on: every raw row is staged (minus Data View soft deletes),
patient references resolve, blood pressures unnest into systolic/diastolic, codes and dates
survive the flattening. dbt writes its target and logs to the temp dir, never to
``dbt_project/target`` (the manifest Dagster loads).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import yaml

from athena_pipeline.athena.dataview import DuckDBDataViewSource
from athena_pipeline.athena.dataview_catalog import CATALOG
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.world import World, WorldOptions
from athena_pipeline.warehouse.connection import connect
from athena_pipeline.warehouse.dataview_loader import load_dataview_batches
from athena_pipeline.warehouse.fhir_loader import load_fhir_directory

REPO = Path(__file__).resolve().parents[2]
DBT_PROJECT = REPO / "dbt_project"
SYNTHEA = REPO.parent / "shared" / "fixtures" / "synthea-10"
DBT = Path(sys.executable).with_name("dbt")

# staging model -> raw FHIR table it stages one row per resource of
FHIR_MODELS = {
    "stg_fhir__patients": "patient", "stg_fhir__practitioners": "practitioner",
    "stg_fhir__organizations": "organization", "stg_fhir__locations": "location",
    "stg_fhir__encounters": "encounter", "stg_fhir__conditions": "condition",
    "stg_fhir__observations": "observation", "stg_fhir__procedures": "procedure",
    "stg_fhir__immunizations": "immunization", "stg_fhir__medication_requests": "medicationrequest",
    "stg_fhir__allergy_intolerances": "allergyintolerance", "stg_fhir__diagnostic_reports": "diagnosticreport",
    "stg_fhir__document_references": "documentreference", "stg_fhir__coverages": "coverage",
    "stg_fhir__appointments": "appointment",
}
# models whose rows belong to a patient
PATIENT_MODELS = [m for m in FHIR_MODELS if m not in (
    "stg_fhir__patients", "stg_fhir__practitioners", "stg_fhir__organizations", "stg_fhir__locations")]
# codings model -> (raw table, JSON paths whose codings it holds)
CODINGS_MODELS = {
    "stg_fhir__condition_codings": ("condition", ["$.code.coding[*]"]),
    "stg_fhir__observation_codings": ("observation", ["$.code.coding[*]", "$.valueCodeableConcept.coding[*]"]),
    "stg_fhir__procedure_codings": ("procedure", ["$.code.coding[*]"]),
    "stg_fhir__immunization_codings": ("immunization", ["$.vaccineCode.coding[*]"]),
    "stg_fhir__allergy_intolerance_codings": ("allergyintolerance", ["$.code.coding[*]"]),
    "stg_fhir__encounter_codings": ("encounter", ["$.type[*].coding[*]", "$.reasonCode[*].coding[*]"]),
    "stg_fhir__diagnostic_report_codings": ("diagnosticreport", ["$.code.coding[*]"]),
    "stg_fhir__document_reference_codings": ("documentreference", ["$.type.coding[*]"]),
}


@dataclass
class BuiltWarehouse:
    path: Path
    dbt_output: str


def run_dbt(warehouse: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Real dbt against ``warehouse`` (which must be named warehouse.duckdb: dbt-duckdb's database is the stem)."""
    assert warehouse.name == "warehouse.duckdb"
    work = warehouse.parent
    env = {**os.environ, "WAREHOUSE_PATH": str(warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    return subprocess.run(
        [str(DBT), *args, "--project-dir", str(DBT_PROJECT), "--profiles-dir", str(DBT_PROJECT),
         "--target-path", str(work / "dbt_target"), "--log-path", str(work / "dbt_logs")],
        env=env, capture_output=True, text=True, timeout=240, check=False)


def build_staging(warehouse: Path) -> BuiltWarehouse:
    result = run_dbt(warehouse, "build", "--select", "staging")
    assert result.returncode == 0, f"dbt build --select staging failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    return BuiltWarehouse(warehouse, result.stdout)


def export_fhir_ndjson(world: World, folder: Path) -> None:
    """The world's FHIR rendering as a bulk-export-like folder: one ``{Type}.000.ndjson`` per type."""
    folder.mkdir(parents=True)
    with duckdb.connect(str(world.fhir_path), read_only=True) as con:
        for (rtype,) in con.execute("SELECT DISTINCT resource_type FROM resources ORDER BY 1").fetchall():
            target = str(folder / f"{rtype}.000.ndjson").replace("'", "''")
            # One JSON text per line, written verbatim (no CSV quoting: the delimiter never occurs).
            con.execute(f"""COPY (SELECT resource FROM resources WHERE resource_type = ? ORDER BY id)
                            TO '{target}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x01')""",
                        [rtype])


def count(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> int:
    return con.execute(sql, params or []).fetchone()[0]


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(count(con, "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                      [schema, table]))


# --- the sandbox practice ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return generate_world(tmp_path_factory.mktemp("staging-world") / "world", WorldOptions(providers=1, patients=400))


@pytest.fixture(scope="module")
def sandbox(sandbox_world: World, tmp_path_factory: pytest.TempPathFactory) -> BuiltWarehouse:
    work = tmp_path_factory.mktemp("staging-sandbox")
    export_fhir_ndjson(sandbox_world, work / "export")
    warehouse = work / "warehouse.duckdb"
    with connect(warehouse) as con:
        load_fhir_directory(con, work / "export")
        with DuckDBDataViewSource(sandbox_world.dataview_path) as source:
            for entry in CATALOG:
                load_dataview_batches(con, entry.name, source.fetch(entry.name), window=(None, None), run_id="test")
    return build_staging(warehouse)


def test_every_fhir_resource_is_staged_once(sandbox):
    with duckdb.connect(str(sandbox.path), read_only=True) as con:
        for model, raw in FHIR_MODELS.items():
            raw_rows = count(con, f"SELECT count(*) FROM raw_fhir.{raw}")
            assert raw_rows > 0, f"the sandbox world has no {raw} resources"
            assert count(con, f"SELECT count(*) FROM main.{model}") == raw_rows, model
        for model, (raw, paths) in CODINGS_MODELS.items():
            expected = sum(count(con, f"SELECT coalesce(sum(len(json_extract(resource, '{p}'))), 0) FROM raw_fhir.{raw}")
                           for p in paths)
            assert count(con, f"SELECT count(*) FROM main.{model}") == expected, model


def test_data_view_rows_are_staged_minus_soft_deletes_which_are_counted(sandbox):
    with duckdb.connect(str(sandbox.path), read_only=True) as con:
        soft = {t: (model, present, total, deleted) for t, model, present, total, deleted in con.execute(
            "SELECT table_name, staging_model, is_present, total_rows, soft_deleted_rows "
            "FROM main.stg_dataview__soft_deletes").fetchall()}
        assert set(soft) == {e.name.lower() for e in CATALOG}
        deleted_somewhere = 0
        for entry in CATALOG:
            raw = entry.name.lower()
            total = count(con, f"SELECT count(*) FROM raw_dataview.{raw}")
            live = count(con, f'SELECT count(*) FROM raw_dataview.{raw} WHERE "DELETEDDATETIME" IS NULL')
            assert count(con, f"SELECT count(*) FROM main.{entry.staging_model}") == live, entry.staging_model
            assert soft[raw] == (entry.staging_model, True, total, total - live), raw
            deleted_somewhere += total - live
        assert deleted_somewhere > 0, "the sandbox world soft-deletes some rows (appointments, problems)"
        # typed and renamed: money is decimal, flags boolean, keys bigint
        types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                                 "WHERE table_name = 'stg_dataview__claims'").fetchall())
        assert types["claim_id"] == "BIGINT" and types["patient_outstanding"].startswith("DECIMAL")
        assert dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                                "WHERE table_name = 'stg_dataview__appointments'").fetchall())["is_no_show"] == "BOOLEAN"


def test_patient_references_resolve(sandbox):
    with duckdb.connect(str(sandbox.path), read_only=True) as con:
        for model in PATIENT_MODELS:
            assert count(con, f"SELECT count(*) FROM main.{model} WHERE patient_id IS NULL") == 0, model
            orphans = count(con, f"SELECT count(*) FROM main.{model} m ANTI JOIN main.stg_fhir__patients p "
                                 "USING (patient_id)")
            assert orphans == 0, f"{model}: {orphans} rows point at no staged patient"
        # the FHIR patient carries the athenaOne patient id, so both sources join
        assert count(con, "SELECT count(*) FROM main.stg_fhir__patients f JOIN main.stg_dataview__patients d "
                          "ON d.patient_id = f.athena_patient_id") == count(con, "SELECT count(*) FROM main.stg_fhir__patients")
        assert count(con, "SELECT count(*) FROM main.stg_dataview__claims c ANTI JOIN main.stg_dataview__patients p "
                          "USING (patient_id)") == 0
        # references to other resources resolve too
        assert count(con, "SELECT count(*) FROM main.stg_fhir__encounters e ANTI JOIN main.stg_fhir__practitioners p "
                          "USING (practitioner_id)") == 0
        assert count(con, "SELECT count(*) FROM main.stg_fhir__conditions c JOIN main.stg_fhir__encounters e "
                          "USING (encounter_id)") > 0


def test_blood_pressures_unnest_into_systolic_and_diastolic(sandbox, sandbox_world):
    with duckdb.connect(str(sandbox.path), read_only=True) as con:
        con.execute(f"ATTACH '{sandbox_world.facts_path}' AS facts (READ_ONLY)")
        panels = count(con, "SELECT count(*) FROM main.stg_fhir__observations WHERE code = '85354-9'")
        assert panels > 100
        parts = con.execute("""
            SELECT blood_pressure_part, count(*), count(value_numeric) FROM main.stg_fhir__observation_components
            WHERE observation_code = '85354-9' GROUP BY 1 ORDER BY 1""").fetchall()
        assert parts == [("diastolic", panels, panels), ("systolic", panels, panels)]
        # the values are the ones the generator planted (facts: value = systolic, value2 = diastolic)
        mismatches = count(con, """
            WITH bp AS (
                SELECT observation_id,
                       max(value_numeric) FILTER (WHERE blood_pressure_part = 'systolic') AS systolic,
                       max(value_numeric) FILTER (WHERE blood_pressure_part = 'diastolic') AS diastolic
                FROM main.stg_fhir__observation_components GROUP BY 1)
            SELECT count(*) FROM bp JOIN facts.observations f
              ON f.observation_id = CAST(regexp_extract(bp.observation_id, '([0-9]+)$', 1) AS BIGINT)
            WHERE bp.systolic IS DISTINCT FROM f.value OR bp.diastolic IS DISTINCT FROM f.value2""")
        assert mismatches == 0


def test_codes_values_and_dates_survive_flattening(sandbox, sandbox_world):
    with duckdb.connect(str(sandbox.path), read_only=True) as con:
        con.execute(f"ATTACH '{sandbox_world.facts_path}' AS facts (READ_ONLY)")

        def fid(column: str) -> str:
            return f"CAST(regexp_extract({column}, '([0-9]+)$', 1) AS BIGINT)"

        # conditions: ICD-10-CM and SNOMED CT picked by system, onset date as recorded
        assert count(con, f"""SELECT count(*) FROM main.stg_fhir__conditions s JOIN facts.conditions f
                              ON f.condition_id = {fid('s.condition_id')}
                              WHERE s.icd10_code IS DISTINCT FROM f.icd10_code
                                 OR s.snomed_code IS DISTINCT FROM f.snomed_code
                                 OR s.onset_date IS DISTINCT FROM f.onset_date""") == 0
        # observations: quantities and coded answers (HbA1c %, smoking status SNOMED CT)
        assert count(con, f"""SELECT count(*) FROM main.stg_fhir__observations s JOIN facts.observations f
                              ON f.observation_id = {fid('s.observation_id')}
                              WHERE f.kind <> 'bp' AND (s.value_numeric IS DISTINCT FROM f.value
                                 OR s.value_code IS DISTINCT FROM f.value_code
                                 OR s.effective_at IS DISTINCT FROM date_trunc('second', f.effective_at))""") == 0
        assert count(con, "SELECT count(*) FROM main.stg_fhir__observations WHERE code = '72166-2' "
                          "AND value_type = 'codeable_concept' AND value_code_system = 'snomed-ct'") > 0
        # procedures: performed date and code system
        assert count(con, f"""SELECT count(*) FROM main.stg_fhir__procedures s JOIN facts.procedures f
                              ON f.procedure_id = {fid('s.procedure_id')}
                              WHERE s.performed_date IS DISTINCT FROM f.performed_date OR s.code IS DISTINCT FROM f.code""") == 0
        types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                                 "WHERE table_name = 'stg_fhir__observations'").fetchall())
        assert (types["effective_at"], types["effective_date"], types["value_numeric"]) == ("TIMESTAMP", "DATE", "DOUBLE")


def test_context_ids_var_and_a_share_with_fewer_columns(sandbox, sandbox_world, tmp_path):
    """A share holding two practices stages only the configured one; a share without some of our
    columns (names differ per practice) still stages, with those columns NULL."""
    warehouse = tmp_path / "warehouse.duckdb"
    shutil.copy(sandbox.path, warehouse)  # a copy: the views are rebuilt with other settings
    practice = sandbox_world.practice_id
    with duckdb.connect(str(warehouse)) as con:
        before = count(con, "SELECT count(*) FROM main.stg_dataview__patients")
        providers = count(con, "SELECT count(*) FROM main.stg_dataview__providers")
        con.execute('INSERT INTO raw_dataview.patient SELECT * REPLACE ("CONTEXTID" + 1 AS "CONTEXTID") '
                    "FROM raw_dataview.patient")
        assert count(con, "SELECT count(*) FROM main.stg_dataview__patients") == 2 * before  # default: every practice
        con.execute('ALTER TABLE raw_dataview.provider DROP COLUMN "TAXONOMY"')
    result = run_dbt(warehouse, "run", "--select", "stg_dataview__patients", "stg_dataview__soft_deletes",
                     "stg_dataview__providers", "--vars", json.dumps({"context_ids": [practice]}))
    assert result.returncode == 0, result.stdout[-4000:]
    assert "has no column(s) TAXONOMY" in result.stdout
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT DISTINCT context_id FROM main.stg_dataview__patients").fetchall() == [(practice,)]
        assert count(con, "SELECT count(*) FROM main.stg_dataview__patients") == before
        assert count(con, "SELECT total_rows FROM main.stg_dataview__soft_deletes WHERE table_name = 'patient'") == before
        assert con.execute("SELECT count(*), count(taxonomy_code), count(npi) FROM main.stg_dataview__providers"
                           ).fetchone() == (providers, 0, providers)


# --- a real third-party export ------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthea(tmp_path_factory: pytest.TempPathFactory) -> BuiltWarehouse:
    if not (SYNTHEA / "Patient.000.ndjson").is_file():
        pytest.skip(f"the Synthea fixture is not at {SYNTHEA}")
    warehouse = tmp_path_factory.mktemp("staging-synthea") / "warehouse.duckdb"
    with connect(warehouse) as con:
        load_fhir_directory(con, SYNTHEA)
    return build_staging(warehouse)


def test_synthea_export_stages_whatever_types_it_has(synthea):
    with duckdb.connect(str(synthea.path), read_only=True) as con:
        staged_types = 0
        for model, raw in FHIR_MODELS.items():
            if table_exists(con, "raw_fhir", raw):
                staged_types += 1
                assert count(con, f"SELECT count(*) FROM main.{model}") == count(con, f"SELECT count(*) FROM raw_fhir.{raw}")
            else:  # e.g. Observation: absent from this export, staged as an empty, typed relation
                assert count(con, f"SELECT count(*) FROM main.{model}") == 0, model
        assert staged_types >= 10
        assert not table_exists(con, "raw_fhir", "observation")
        assert count(con, "SELECT count(*) FROM main.stg_fhir__observation_components") == 0
        types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                                 "WHERE table_name = 'stg_fhir__observations'").fetchall())
        assert types["value_numeric"] == "DOUBLE" and types["effective_at"] == "TIMESTAMP"
        # no Data View at all: every Data View model builds empty, and says so
        assert con.execute("SELECT bool_or(is_present), sum(total_rows) FROM main.stg_dataview__soft_deletes"
                           ).fetchone() == (False, 0)
        assert count(con, "SELECT count(*) FROM main.stg_dataview__claims") == 0
    assert "does not exist in this warehouse" in synthea.dbt_output


def test_synthea_references_codings_and_choice_types(synthea):
    with duckdb.connect(str(synthea.path), read_only=True) as con:
        for model in PATIENT_MODELS:
            if count(con, f"SELECT count(*) FROM main.{model}"):
                assert count(con, f"SELECT count(*) FROM main.{model} m ANTI JOIN main.stg_fhir__patients p "
                                  "USING (patient_id)") == 0, model
                assert count(con, f"SELECT count(*) FROM main.{model} WHERE patient_id IS NULL") == 0, model
        # practitioners are referenced conditionally by NPI (Practitioner?identifier=...us-npi|...)
        encounters = count(con, "SELECT count(*) FROM main.stg_fhir__encounters")
        assert count(con, "SELECT count(*) FROM main.stg_fhir__encounters e JOIN main.stg_fhir__practitioners p "
                          "ON p.npi = e.practitioner_npi") == encounters
        # performedPeriod (Synthea) becomes performed_at, with timezone offsets converted to UTC
        assert count(con, "SELECT count(*) FROM main.stg_fhir__procedures WHERE performed_at IS NULL") == 0
        raw_start, staged = con.execute("""
            SELECT r.resource ->> '$.performedPeriod.start', s.performed_at
            FROM raw_fhir.procedure r JOIN main.stg_fhir__procedures s ON s.procedure_id = r.id
            WHERE r.resource ->> '$.performedPeriod.start' LIKE '%-04:00' LIMIT 1""").fetchone()
        assert staged == duckdb.execute(f"SELECT timezone('UTC', TIMESTAMPTZ '{raw_start}')").fetchone()[0]
        # SNOMED CT conditions, and DocumentReference with two LOINC codings each
        assert count(con, "SELECT count(*) FROM main.stg_fhir__conditions WHERE snomed_code IS NULL") == 0
        assert count(con, "SELECT count(*) FROM main.stg_fhir__document_reference_codings") == \
            count(con, "SELECT sum(len(json_extract(resource, '$.type.coding[*]'))) FROM raw_fhir.documentreference")
        assert count(con, "SELECT max(coding_index) FROM main.stg_fhir__document_reference_codings") >= 2
        assert count(con, "SELECT count(*) FROM main.stg_fhir__medication_requests WHERE rxnorm_code IS NULL") == 0


def test_reference_and_datetime_forms_seen_in_the_field(tmp_path):
    """The macros every staging model uses, on the reference and dateTime forms exporters write."""
    forms = [  # (reference, dateTime) -> (type, patient_id, npi, UTC timestamp, recorded date)
        ("Patient/a-195900.E-17", "2024-03-05T23:30:00-05:00",
         ("Patient", "a-195900.E-17", None, "2024-03-06 04:30:00", "2024-03-05")),
        ("https://fhir.example.org/r4/Patient/123/_history/2", "2024-03",
         ("Patient", "123", None, "2024-03-01 00:00:00", "2024-03-01")),
        ("urn:uuid:1f3c9a7e-0000-4000-8000-000000000001", "2024",
         (None, "1f3c9a7e-0000-4000-8000-000000000001", None, "2024-01-01 00:00:00", "2024-01-01")),
        ("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999974493", "2024-03-05",
         ("Practitioner", None, "9999974493", "2024-03-05 00:00:00", "2024-03-05")),
        ("#med1", "2024-03-05T10:00:00Z", (None, None, None, "2024-03-05 10:00:00", "2024-03-05")),
        ("Group/g1", "2024-03-05T10:00:00.123+05:30", ("Group", None, None, "2024-03-05 04:30:00.123", "2024-03-05")),
        ("Location?identifier=https://github.com/synthetichealth/synthea|abc", "not a date",
         ("Location", None, None, None, None)),
    ]
    values = ", ".join(f"({i}, '{ref}', '{ts}')" for i, (ref, ts, _) in enumerate(forms))
    inline = (f"select {{{{ fhir_ref_type('ref') }}}} as t, {{{{ fhir_ref_id('ref', 'Patient') }}}} as p, "
              f"{{{{ fhir_ref_identifier('ref', 'http://hl7.org/fhir/sid/us-npi') }}}} as npi, "
              f"cast({{{{ fhir_timestamp('ts') }}}} as varchar) as utc, cast({{{{ fhir_date('ts') }}}} as varchar) as d "
              f"from (values {values}) v(i, ref, ts) order by i")
    result = run_dbt(tmp_path / "warehouse.duckdb", "show", "--quiet", "--output", "json", "--limit", "50",
                     "--inline", inline)
    assert result.returncode == 0, result.stdout[-4000:]
    rows = json.loads(result.stdout[result.stdout.index("{"):])["show"]
    assert [(r["t"], r["p"], r["npi"], r["utc"], r["d"]) for r in rows] == [expected for _, _, expected in forms]


# --- the project files agree with the catalogue (no dbt run) -----------------------------------
def test_sources_and_models_cover_the_catalogues():
    dv = yaml.safe_load((DBT_PROJECT / "models/staging/dataview/_dataview__sources.yml").read_text())["sources"][0]
    assert dv["schema"] == "raw_dataview"
    assert [t["name"] for t in dv["tables"]] == [e.name.lower() for e in CATALOG]
    for table in dv["tables"]:
        assert table["meta"]["dagster"]["asset_key"] == ["raw_dataview", table["name"]]
    for entry in CATALOG:
        assert (DBT_PROJECT / "models/staging/dataview" / f"{entry.staging_model}.sql").is_file(), entry.staging_model
    macro = (DBT_PROJECT / "macros/staging/dataview.sql").read_text()
    listed = macro.split("dataview_tables()", 1)[1].split("]", 1)[0]
    assert [t.strip(" '\n") for t in listed.split("[", 1)[1].split(",")] == [e.name.lower() for e in CATALOG]

    fhir = yaml.safe_load((DBT_PROJECT / "models/staging/fhir/_fhir__sources.yml").read_text())["sources"][0]
    assert fhir["schema"] == "raw_fhir"
    assert {t["name"] for t in fhir["tables"]} == set(FHIR_MODELS.values())
    for table in fhir["tables"]:
        assert table["meta"]["dagster"]["asset_key"] == ["raw_fhir", table["name"]]

    documented = {m["name"] for f in (DBT_PROJECT / "models/staging").rglob("_*__models.yml")
                  for m in yaml.safe_load(f.read_text())["models"]}
    files = {p.stem for p in (DBT_PROJECT / "models/staging").rglob("stg_*.sql")}
    assert files == documented, "every staging model has a YAML entry (grain + columns)"
