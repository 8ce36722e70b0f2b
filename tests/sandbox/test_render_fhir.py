"""render_fhir: the world's facts as FHIR R4 resources in ``fhir.duckdb``.

Three worlds are used:
- a hand-made facts DB with one row per interesting case (deleted patient, deleted encounter,
  billing-only procedure, BP, lab, coded answers...), so each behaviour is pinned to a known row;
- a bulk synthetic facts DB built in SQL (``range()``), sized like a real practice, for timing;
- a small generated world from ``generate.generate_world`` when the generator is importable.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
from pathlib import Path

import duckdb
import pytest

from athena_pipeline.sandbox import facts_schema
from athena_pipeline.sandbox.fhir_checks import unresolved_references
from athena_pipeline.sandbox.render_fhir import RESOURCE_SQL, render_fhir
from athena_pipeline.sandbox.world import World, WorldOptions

PID = 4321
CTX = f"a-{PID}"
CURRENT_DATE = dt.date(2026, 11, 23)

# --------------------------------------------------------------------------------------------
# Hand-made facts: a handful of rows per table, each one a case the tests look at.
# --------------------------------------------------------------------------------------------
T0 = "TIMESTAMP '2024-01-01 08:00:00'"
T1 = "TIMESTAMP '2026-05-01 12:30:45.250'"  # updated (fractional seconds are truncated in FHIR)
TDEL = "TIMESTAMP '2026-06-01 09:00:00'"
TDEL_PATIENT = "TIMESTAMP '2026-07-01 10:00:00'"
TDEL_ENC = "TIMESTAMP '2026-08-01 11:00:00'"
TDEL_PROV = "TIMESTAMP '2026-09-01 12:00:00'"

HANDMADE_ROWS: dict[str, str] = {
    "practice": f"({PID}, 'Riverbend Family Medicine', 1, {T0}, {T0})",
    "departments": f"""
        (1, 'Riverbend Main', 'RIVERBEND MAIN', 'Family Medicine', '1 Main St', 'Springfield', 'IL',
         '62701', '2175550100', '11', {T0}, {T0}, NULL),
        (2, 'Riverbend East (closed)', 'RIVERBEND EAST', 'Pediatrics', '9 East Rd', 'Springfield', 'IL',
         '62702', '2175550101', '11', {T0}, {T0}, {TDEL})""",
    "providers": f"""
        (10, '1234567893', 'Ada', 'Lovelace', 'F', 'MD', 'Family Medicine', '207Q00000X', 1, TRUE, {T0}, {T1}, NULL),
        (11, '1245319599', 'Ben', 'Carson', 'M', 'NP', 'Family Medicine', '363LF0000X', 1, TRUE, {T0}, {T0}, NULL),
        (12, '1003000126', 'Cy', 'Gone', 'M', 'DO', 'Family Medicine', '207Q00000X', 2, TRUE, {T0}, {T0}, {TDEL_PROV})""",
    "insurance_packages": f"""
        (100, 'Medicare Part B', 'CMS', 'Medicare', 'Medicare', 'Medicare', '00430', {T0}, {T0}, NULL),
        (101, 'Aetna PPO', 'Aetna', 'Commercial', 'PPO', 'Commercial', '60054', {T0}, {T0}, NULL)""",
    # 1 active; 2 deceased; 3 soft-deleted; 4 whose provider and department are both deleted.
    "patients": f"""
        (1, 9001, 'Alice', 'Alpha', 'F', DATE '1950-02-03', '10 Oak St', 'Springfield', 'IL', '62701',
         '2175551000', '2106-3', '2186-5', 'en', 'a', NULL, 10, 1, DATE '2020-01-01', {T0}, {T1}, NULL),
        (2, 9002, 'Bob', 'Beta "B\\2" O''Neil é', 'M', DATE '1940-05-06', '11 Oak St', 'Springfield', 'IL', '62701',
         '2175551001', '2054-5', '2135-2', 'es', 'd', DATE '2026-03-04', 11, 1, DATE '2020-01-01', {T0}, {T0}, NULL),
        (3, 9003, 'Cat', 'Gamma', 'F', DATE '1990-07-08', '12 Oak St', 'Springfield', 'IL', '62701',
         '2175551002', '2131-1', '2186-5', 'en', 'a', NULL, 10, 1, DATE '2020-01-01', {T0}, {T0}, {TDEL_PATIENT}),
        (4, 9004, 'Dan', 'Delta', 'M', DATE '2015-09-10', '13 Oak St', 'Springfield', 'IL', '62701',
         '2175551003', '2028-9', '2186-5', 'vi', 'i', NULL, 12, 2, DATE '2021-01-01', {T0}, {T0}, NULL)""",
    "patient_insurance": f"""
        (200, 1, 100, 1, 'M1', DATE '2020-01-01', NULL, NULL, {T0}, {T0}, NULL),
        (201, 1, 101, 2, 'A1', DATE '2020-01-01', DATE '2025-01-01', DATE '2024-06-30', {T0}, {T0}, NULL),
        (202, 3, 101, 1, 'A3', DATE '2020-01-01', NULL, NULL, {T0}, {T0}, NULL),
        (203, 2, 100, 1, 'M2', DATE '2020-01-01', NULL, NULL, {T0}, {T0}, {TDEL})""",
    # 300 f future, 301 x cancelled, 302 o past (no-show), 303 '2', 304 '3', 305 '4' (deleted provider),
    # 306 for the deleted patient, 307 soft-deleted, 308 'o' in the future (still booked).
    "appointments": f"""
        (300, 1, 10, 1, 'Office Visit', DATE '2026-12-01', TIMESTAMP '2026-12-01 09:00:00', 20,
         TIMESTAMP '2026-11-01 10:00:00', 'f', FALSE, NULL, NULL, NULL, NULL, NULL, NULL, {T0}, {T0}, NULL),
        (301, 1, 10, 1, 'Follow Up', DATE '2026-02-01', TIMESTAMP '2026-02-01 09:00:00', 15,
         TIMESTAMP '2026-01-01 10:00:00', 'x', FALSE, NULL, NULL, TIMESTAMP '2026-01-30 08:00:00',
         'PATIENT CANCELLED', NULL, NULL, {T0}, {T0}, NULL),
        (302, 1, 10, 1, 'Office Visit', DATE '2026-03-01', TIMESTAMP '2026-03-01 09:00:00', 20,
         TIMESTAMP '2026-02-01 10:00:00', 'o', TRUE, NULL, NULL, NULL, NULL, NULL, NULL, {T0}, {T0}, NULL),
        (303, 1, 10, 1, 'Office Visit', DATE '2026-11-23', TIMESTAMP '2026-11-23 09:00:00', 20,
         TIMESTAMP '2026-11-01 10:00:00', '2', FALSE, TIMESTAMP '2026-11-23 08:55:00', NULL, NULL, NULL,
         NULL, NULL, {T0}, {T0}, NULL),
        (304, 1, 10, 1, 'Annual Physical', DATE '2026-04-01', TIMESTAMP '2026-04-01 09:00:00', 40,
         TIMESTAMP '2026-03-01 10:00:00', '3', FALSE, TIMESTAMP '2026-04-01 08:55:00',
         TIMESTAMP '2026-04-01 09:45:00', NULL, NULL, NULL, NULL, {T0}, {T0}, NULL),
        (305, 4, 12, 2, 'Well Child', DATE '2026-04-02', TIMESTAMP '2026-04-02 09:00:00', 30,
         TIMESTAMP '2026-03-01 10:00:00', '4', FALSE, TIMESTAMP '2026-04-02 08:55:00',
         TIMESTAMP '2026-04-02 09:40:00', NULL, NULL, NULL, NULL, {T0}, {T0}, NULL),
        (306, 3, 10, 1, 'Office Visit', DATE '2026-04-03', TIMESTAMP '2026-04-03 09:00:00', 20,
         TIMESTAMP '2026-03-01 10:00:00', '3', FALSE, NULL, NULL, NULL, NULL, NULL, NULL, {T0}, {T0}, NULL),
        (307, 1, 10, 1, 'Office Visit', DATE '2026-04-04', TIMESTAMP '2026-04-04 09:00:00', 20,
         TIMESTAMP '2026-03-01 10:00:00', 'f', FALSE, NULL, NULL, NULL, NULL, NULL, NULL, {T0}, {T0}, {TDEL}),
        (308, 1, 10, 1, 'Telehealth', DATE '2026-12-05', TIMESTAMP '2026-12-05 09:00:00', 20,
         TIMESTAMP '2026-11-01 10:00:00', 'o', FALSE, NULL, NULL, NULL, NULL, NULL, NULL, {T0}, {T0}, NULL)""",
    # 400 closed (appt 304); 401 open telehealth; 402 closed, soft-deleted; 403 deleted patient's;
    # 404 closed, no appointment, deleted provider + department.
    "encounters": f"""
        (400, 304, 1, 10, 1, DATE '2026-04-01', TIMESTAMP '2026-04-01 09:00:00', TIMESTAMP '2026-04-01 09:40:00',
         'PREVENTIVE', '99397', 'CLOSED', TIMESTAMP '2026-04-01 17:00:00', {T0}, {T1}, NULL),
        (401, 303, 1, 11, 1, DATE '2026-11-23', TIMESTAMP '2026-11-23 09:00:00', TIMESTAMP '2026-11-23 09:20:00',
         'TELEHEALTH', '99213', 'OPEN', NULL, {T0}, {T0}, NULL),
        (402, NULL, 1, 10, 1, DATE '2026-05-01', TIMESTAMP '2026-05-01 09:00:00', TIMESTAMP '2026-05-01 09:20:00',
         'VISIT', '99213', 'CLOSED', TIMESTAMP '2026-05-01 12:00:00', {T0}, {T0}, {TDEL_ENC}),
        (403, 306, 3, 10, 1, DATE '2026-04-03', TIMESTAMP '2026-04-03 09:00:00', TIMESTAMP '2026-04-03 09:20:00',
         'VISIT', '99213', 'CLOSED', TIMESTAMP '2026-04-03 12:00:00', {T0}, {T0}, NULL),
        (404, 305, 4, 12, 2, DATE '2026-04-02', TIMESTAMP '2026-04-02 09:00:00', TIMESTAMP '2026-04-02 09:30:00',
         'PREVENTIVE', '99393', 'CLOSED', TIMESTAMP '2026-04-02 12:00:00', {T0}, {T0}, NULL)""",
    # 500 problem list w/ SNOMED; 501 dx on encounter 400; 502 dx on the deleted encounter 402;
    # 503 no SNOMED, resolved; 504 soft-deleted.
    "conditions": f"""
        (500, 1, NULL, 'problem-list-item', 'E11.9', '44054006', 'Type 2 diabetes mellitus without complications',
         'diabetes_t2', DATE '2019-01-01', NULL, 'active', {T0}, {T0}, NULL),
        (501, 1, 400, 'encounter-diagnosis', 'Z00.00', '410620009', 'Encounter for general adult medical examination',
         'adult_exam', DATE '2026-04-01', NULL, 'active', {T0}, {T0}, NULL),
        (502, 1, 402, 'encounter-diagnosis', 'J06.9', '54150009', 'Acute upper respiratory infection, unspecified',
         'uri', DATE '2026-05-01', DATE '2026-05-15', 'resolved', {T0}, {T0}, NULL),
        (503, 1, NULL, 'problem-list-item', 'M54.50', NULL, 'Low back pain, unspecified',
         'back_pain', DATE '2025-01-01', DATE '2025-03-01', 'resolved', {T0}, {T0}, NULL),
        (504, 1, NULL, 'problem-list-item', 'I10', '59621000', 'Essential (primary) hypertension',
         'hypertension', DATE '2025-01-01', NULL, 'active', {T0}, {T0}, {TDEL})""",
    "observations": f"""
        (600, 1, 400, 'vital-signs', 'bp', '85354-9', 'Blood pressure panel with all children optional',
         128, 82, NULL, NULL, 'mm[Hg]', TIMESTAMP '2026-04-01 09:05:00', 'final', {T0}, {T0}, NULL),
        (601, 1, 400, 'vital-signs', 'bmi', '39156-5', 'Body mass index (BMI) [Ratio]',
         31.4, NULL, NULL, NULL, 'kg/m2', TIMESTAMP '2026-04-01 09:05:00', 'final', {T0}, {T0}, NULL),
        (602, 1, 400, 'laboratory', 'hba1c', '4548-4', 'Hemoglobin A1c/Hemoglobin.total in Blood',
         9.6, NULL, NULL, NULL, '%', TIMESTAMP '2026-04-01 09:30:00', 'final', {T0}, {T1}, NULL),
        (603, 1, 400, 'social-history', 'tobacco', '72166-2', 'Tobacco smoking status',
         NULL, NULL, '8517006', 'Ex-smoker', NULL, TIMESTAMP '2026-04-01 09:06:00', 'final', {T0}, {T0}, NULL),
        (604, 1, 400, 'survey', 'phq_adult', '73832-8', 'Adult depression screening assessment',
         NULL, NULL, '428181000124104', 'Depression screening negative', NULL,
         TIMESTAMP '2026-04-01 09:07:00', 'final', {T0}, {T0}, NULL),
        (605, 1, 402, 'laboratory', 'hba1c', '4548-4', 'Hemoglobin A1c/Hemoglobin.total in Blood',
         7.1, NULL, NULL, NULL, '%', TIMESTAMP '2026-05-01 09:30:00', 'final', {T0}, {T0}, NULL),
        (606, 1, 400, 'laboratory', 'hba1c', '4548-4', 'Hemoglobin A1c/Hemoglobin.total in Blood',
         6.9, NULL, NULL, NULL, '%', TIMESTAMP '2026-04-01 09:30:00', 'final', {T0}, {T0}, {TDEL}),
        (607, 3, 403, 'vital-signs', 'bp', '85354-9', 'Blood pressure panel with all children optional',
         150, 95, NULL, NULL, 'mm[Hg]', TIMESTAMP '2026-04-03 09:05:00', 'final', {T0}, {T0}, NULL)""",
    # 700 in chart with encounter; 701 billing only; 702 outside record (no encounter, SNOMED);
    # 703 HCPCS; 704 on the deleted encounter.
    "procedures": f"""
        (700, 1, 400, 'mammogram', 'CPT', '77067', 'Screening mammography, bilateral', DATE '2026-04-01',
         TRUE, TRUE, {T0}, {T0}, NULL),
        (701, 1, 400, 'colonoscopy', 'CPT', '45378', 'Colonoscopy, flexible; diagnostic', DATE '2026-04-01',
         FALSE, TRUE, {T0}, {T0}, NULL),
        (702, 1, NULL, 'hospice', 'SNOMED', '385763009', 'Hospice care', DATE '2025-01-01',
         TRUE, FALSE, {T0}, {T0}, NULL),
        (703, 1, 400, 'bmi_followup', 'HCPCS', 'G8417', 'BMI documented above normal parameters',
         DATE '2026-04-01', TRUE, TRUE, {T0}, {T0}, NULL),
        (704, 1, 402, 'fit', 'CPT', '82274', 'Blood, occult, by fecal hemoglobin', DATE '2026-05-01',
         TRUE, TRUE, {T0}, {T0}, NULL)""",
    "immunizations": f"""
        (800, 1, 400, '150', 'Influenza, injectable, quadrivalent, preservative free', 'Influenza',
         DATE '2026-04-01', 'completed', {T0}, {T0}, NULL),
        (801, 4, 404, '20', 'DTaP', 'DTaP', DATE '2026-04-02', 'completed', {T0}, {T0}, NULL)""",
    "medication_requests": f"""
        (900, 1, 400, 10, '860975', 'metformin 500 MG ER', 'metformin', DATE '2026-04-01', 'active',
         {T0}, {T0}, NULL),
        (901, 4, 404, 12, '308182', 'amoxicillin 500 MG Oral Capsule', 'amoxicillin', DATE '2026-04-02',
         'completed', {T0}, {T0}, NULL)""",
    "allergies": f"""
        (1000, 1, 'RXNORM', '7980', 'Penicillin G', 'high', DATE '2020-01-01', {T0}, {T0}, NULL),
        (1001, 4, 'SNOMED', '762952008', 'Peanut (substance)', 'low', DATE '2021-01-01', {T0}, {T0}, NULL)""",
}


def make_handmade_world(root: Path) -> World:
    """A world directory whose facts are the rows above (no generator needed)."""
    root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(root / "facts.duckdb"))
    try:
        for ddl in facts_schema.create_statements():
            con.execute(ddl)
        for table, values in HANDMADE_ROWS.items():
            con.execute(f"INSERT INTO {table} VALUES {values}")
    finally:
        con.close()
    world = World(root=root, options=WorldOptions(providers=1, patients=4, practice_id=PID),
                  current_date=CURRENT_DATE)
    world.save()
    return world


def make_bulk_world(root: Path, patients: int) -> World:
    """A practice-sized facts DB built in SQL: ~100 fact rows per patient, a few soft deletes.

    Not realistic medicine (that is the generator's job); realistic *volume and shape* for timing.
    """
    root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(root / "facts.duckdb"))
    ts = "TIMESTAMP '2024-01-01' + to_seconds(i * 37 % 86400) + to_days(i % 1000)"
    try:
        for ddl in facts_schema.create_statements():
            con.execute(ddl)
        con.execute(f"""
            SET VARIABLE n = {int(patients)};
            INSERT INTO practice VALUES ({PID}, 'Bulk Practice', 1, TIMESTAMP '2024-01-01', TIMESTAMP '2024-01-01');
            INSERT INTO departments SELECT i, 'Dept ' || i, 'DEPT ' || i, 'Family Medicine', i || ' Main St',
                'Springfield', 'IL', '62701', '2175550100', '11', {ts}, {ts}, NULL FROM range(1, 4) r(i);
            INSERT INTO providers SELECT i, '1234567893', 'First' || i, 'Last' || i, 'F', 'MD', 'Family Medicine',
                '207Q00000X', 1 + i % 3, TRUE, {ts}, {ts}, NULL FROM range(1, 16) r(i);
            INSERT INTO insurance_packages SELECT i, 'Plan ' || i, 'Payer ' || i, 'Commercial', 'PPO',
                'Commercial', '6' || i, {ts}, {ts}, NULL FROM range(1, 11) r(i);
            INSERT INTO patients SELECT i, 100000 + i, 'First' || i, 'Last' || i, CASE WHEN i % 2 = 0 THEN 'F' ELSE 'M' END,
                DATE '1940-01-01' + to_days(i % 25000), i || ' Oak St', 'Springfield', 'IL', '62701', '2175551000',
                '2106-3', '2186-5', 'en', 'a', NULL, 1 + i % 15, 1 + i % 3, DATE '2020-01-01', {ts}, {ts},
                CASE WHEN i % 997 = 0 THEN {ts} + to_days(5) END
                FROM range(1, getvariable('n') + 1) r(i);
            INSERT INTO patient_insurance SELECT i, 1 + i % getvariable('n'), 1 + i % 10, 1, 'M' || i,
                DATE '2020-01-01', NULL, NULL, {ts}, {ts}, NULL FROM range(1, getvariable('n') * 3 // 2) r(i);
            INSERT INTO appointments SELECT i, 1 + i // 8 % getvariable('n'), 1 + i % 15, 1 + i % 3, 'Office Visit',
                DATE '2024-01-01' + to_days(i % 1000), TIMESTAMP '2024-01-01 09:00:00' + to_days(i % 1000), 20,
                TIMESTAMP '2023-12-01', CASE WHEN i % 10 = 0 THEN 'x' ELSE '4' END, FALSE, NULL, NULL, NULL,
                NULL, NULL, NULL, {ts}, {ts}, NULL FROM range(1, getvariable('n') * 8 + 1) r(i);
            INSERT INTO encounters SELECT i, i, 1 + i // 8 % getvariable('n'), 1 + i % 15, 1 + i % 3,
                DATE '2024-01-01' + to_days(i % 1000), TIMESTAMP '2024-01-01 09:00:00' + to_days(i % 1000),
                TIMESTAMP '2024-01-01 09:20:00' + to_days(i % 1000), 'VISIT', '99213', 'CLOSED',
                TIMESTAMP '2024-01-01 17:00:00' + to_days(i % 1000), {ts}, {ts},
                CASE WHEN i % 1999 = 0 THEN {ts} + to_days(3) END
                FROM range(1, getvariable('n') * 8 + 1) r(i) WHERE i % 10 <> 0;
            INSERT INTO conditions SELECT i, 1 + i // 6 % getvariable('n'), CASE WHEN i % 2 = 0 THEN i END,
                CASE WHEN i % 2 = 0 THEN 'encounter-diagnosis' ELSE 'problem-list-item' END, 'E11.9', '44054006',
                'Type 2 diabetes mellitus without complications', 'diabetes_t2', DATE '2023-01-01', NULL, 'active',
                {ts}, {ts}, NULL FROM range(1, getvariable('n') * 6 + 1) r(i);
            INSERT INTO observations SELECT i, 1 + i // 60 % getvariable('n'), 1 + i // 8,
                CASE i % 5 WHEN 0 THEN 'vital-signs' WHEN 1 THEN 'vital-signs' WHEN 2 THEN 'laboratory'
                           WHEN 3 THEN 'social-history' ELSE 'survey' END,
                CASE i % 5 WHEN 0 THEN 'bp' WHEN 1 THEN 'bmi' WHEN 2 THEN 'hba1c' WHEN 3 THEN 'tobacco'
                           ELSE 'phq_adult' END,
                CASE i % 5 WHEN 0 THEN '85354-9' WHEN 1 THEN '39156-5' WHEN 2 THEN '4548-4' WHEN 3 THEN '72166-2'
                           ELSE '73832-8' END,
                'Some observation', CASE WHEN i % 5 < 3 THEN 100 + i % 50 END,
                CASE WHEN i % 5 = 0 THEN 60 + i % 30 END,
                CASE WHEN i % 5 >= 3 THEN '8517006' END, CASE WHEN i % 5 >= 3 THEN 'Ex-smoker' END,
                CASE i % 5 WHEN 0 THEN 'mm[Hg]' WHEN 1 THEN 'kg/m2' WHEN 2 THEN '%' END,
                {ts}, 'final', {ts}, {ts}, CASE WHEN i % 4999 = 0 THEN {ts} END
                FROM range(1, getvariable('n') * 60 + 1) r(i);
            INSERT INTO procedures SELECT i, 1 + i // 3 % getvariable('n'), CASE WHEN i % 3 = 0 THEN NULL ELSE i END,
                'mammogram', 'CPT', '77067', 'Screening mammography', DATE '2025-01-01', i % 7 <> 0, TRUE,
                {ts}, {ts}, NULL FROM range(1, getvariable('n') * 3 + 1) r(i);
            INSERT INTO immunizations SELECT i, 1 + i // 4 % getvariable('n'), i, '150', 'Influenza', 'Influenza',
                DATE '2025-01-01', 'completed', {ts}, {ts}, NULL FROM range(1, getvariable('n') * 4 + 1) r(i);
            INSERT INTO medication_requests SELECT i, 1 + i // 4 % getvariable('n'), i, 1 + i % 15, '860975',
                'metformin', 'metformin', DATE '2025-01-01', 'active', {ts}, {ts}, NULL
                FROM range(1, getvariable('n') * 4 + 1) r(i);
            INSERT INTO allergies SELECT i, 1 + i * 3 % getvariable('n'), 'RXNORM', '7980', 'Penicillin G', 'low',
                DATE '2020-01-01', {ts}, {ts}, NULL FROM range(1, getvariable('n') // 3 + 1) r(i);
        """)
    finally:
        con.close()
    world = World(root=root, options=WorldOptions(providers=15, patients=patients, practice_id=PID),
                  current_date=CURRENT_DATE)
    world.save()
    return world


def _rows(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _resource(path: Path, resource_type: str, fhir_id: str) -> dict | None:
    rows = _rows(path, "SELECT resource FROM resources WHERE resource_type = ? AND id = ?",
                 [resource_type, fhir_id])
    assert len(rows) <= 1
    return json.loads(rows[0][0]) if rows else None


def _deleted(path: Path, resource_type: str, fhir_id: str) -> dt.datetime | None:
    rows = _rows(path, "SELECT deleted_at FROM deletions WHERE resource_type = ? AND id = ?",
                 [resource_type, fhir_id])
    return rows[0][0] if rows else None


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> tuple[World, dict[str, int]]:
    world = make_handmade_world(tmp_path_factory.mktemp("handmade"))
    counts = render_fhir(world)
    return world, counts


# --------------------------------------------------------------------------------------------
# Contract
# --------------------------------------------------------------------------------------------
def test_every_type_rendered_and_counts_match_table(handmade):
    world, counts = handmade
    assert set(counts) == set(RESOURCE_SQL)
    assert all(n > 0 for n in counts.values()), counts
    stored = dict(_rows(world.fhir_path, "SELECT resource_type, count(*) FROM resources GROUP BY ALL"))
    assert stored == counts
    # Practice + one live department; Location only for the live department.
    assert counts["Organization"] == 2 and counts["Location"] == 1


def test_output_tables_have_the_contract_schema(handmade):
    world, _ = handmade
    cols = _rows(world.fhir_path, """
        SELECT table_name, column_name, data_type FROM information_schema.columns
        ORDER BY table_name, ordinal_position""")
    assert [c for c in cols if c[0] == "resources"] == [
        ("resources", "resource_type", "VARCHAR"), ("resources", "id", "VARCHAR"),
        ("resources", "patient_id", "VARCHAR"), ("resources", "last_updated", "TIMESTAMP"),
        ("resources", "resource", "VARCHAR")]
    assert [c for c in cols if c[0] == "deletions"] == [
        ("deletions", "resource_type", "VARCHAR"), ("deletions", "id", "VARCHAR"),
        ("deletions", "deleted_at", "TIMESTAMP")]
    tables = _rows(world.fhir_path, "SELECT table_name FROM duckdb_tables() ORDER BY 1")
    assert tables == [("deletions",), ("resources",), ("world_meta",)]
    meta = dict(_rows(world.fhir_path, "SELECT key, value FROM world_meta"))
    assert meta == {"practice_id": str(PID), "clock": "2026-11-23T23:59:59", "current_date": "2026-11-23"}
    assert not list(world.root.glob(".fhir.duckdb.tmp-*")), "temporary file left behind"


def test_every_row_is_valid_compact_json_matching_its_columns(handmade):
    world, _ = handmade
    rows = _rows(world.fhir_path, "SELECT resource_type, id, patient_id, last_updated, resource FROM resources")
    for rtype, fid, patient_id, last_updated, text in rows:
        res = json.loads(text)
        assert res["resourceType"] == rtype and res["id"] == fid
        assert res["meta"]["lastUpdated"] == last_updated.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert json.dumps(res, separators=(",", ":"), ensure_ascii=False) == text, "not compact JSON"
        assert ":null" not in text and "{}" not in text and "[]" not in text, text
        assert fid.startswith((f"{CTX}.", f"a-1.Practice-{PID}"))
        if rtype in ("Practitioner", "Organization", "Location"):
            assert patient_id is None
        elif rtype == "Patient":
            assert patient_id == fid
        elif rtype == "Appointment":
            assert res["participant"][0]["actor"] == {"reference": f"Patient/{patient_id}"}, fid
        else:
            owner = res.get("subject") or res.get("patient") or res.get("beneficiary")
            assert owner == {"reference": f"Patient/{patient_id}"}, (rtype, fid)


def test_rows_are_sorted_by_type_then_id(handmade):
    world, _ = handmade
    keys = _rows(world.fhir_path, "SELECT resource_type, id FROM resources")
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_no_unresolved_references(handmade):
    world, _ = handmade
    assert unresolved_references(world.fhir_path) == []


def test_reference_checker_reports_a_dangling_reference(tmp_path):
    db = tmp_path / "fhir.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE resources(resource_type VARCHAR, id VARCHAR, patient_id VARCHAR, "
                "last_updated TIMESTAMP, resource VARCHAR)")
    con.execute("""INSERT INTO resources VALUES
        ('Patient', 'p1', 'p1', TIMESTAMP '2024-01-01', '{"resourceType":"Patient","id":"p1"}'),
        ('Encounter', 'e1', 'p1', TIMESTAMP '2024-01-01',
         '{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"},
           "participant":[{"individual":{"reference":"Practitioner/gone"}}]}')""")
    con.close()
    assert unresolved_references(db) == [("Encounter", "e1", "Practitioner/gone")]


# --------------------------------------------------------------------------------------------
# Deletions and optional references
# --------------------------------------------------------------------------------------------
def test_soft_deleted_rows_land_in_deletions_not_resources(handmade):
    world, _ = handmade
    p = world.fhir_path
    cases = {
        ("Organization", f"{CTX}.Department-2"): dt.datetime(2026, 6, 1, 9),
        ("Location", f"{CTX}.Department-2"): dt.datetime(2026, 6, 1, 9),
        ("Practitioner", f"{CTX}.Provider-12"): dt.datetime(2026, 9, 1, 12),
        ("Patient", f"{CTX}.E-3"): dt.datetime(2026, 7, 1, 10),
        ("Coverage", f"{CTX}.PatientInsurance-203"): dt.datetime(2026, 6, 1, 9),
        ("Appointment", f"{CTX}.Appointment-307"): dt.datetime(2026, 6, 1, 9),
        ("Encounter", f"{CTX}.encounter-402"): dt.datetime(2026, 8, 1, 11),
        ("DocumentReference", f"{CTX}.document-402"): dt.datetime(2026, 8, 1, 11),
        ("Condition", f"{CTX}.condition-504"): dt.datetime(2026, 6, 1, 9),
        ("Observation", f"{CTX}.observation-606"): dt.datetime(2026, 6, 1, 9),
        ("DiagnosticReport", f"{CTX}.diagnosticreport-606"): dt.datetime(2026, 6, 1, 9),
        # everything of a deleted patient goes with the patient
        ("Coverage", f"{CTX}.PatientInsurance-202"): dt.datetime(2026, 7, 1, 10),
        ("Appointment", f"{CTX}.Appointment-306"): dt.datetime(2026, 7, 1, 10),
        ("Encounter", f"{CTX}.encounter-403"): dt.datetime(2026, 7, 1, 10),
        ("DocumentReference", f"{CTX}.document-403"): dt.datetime(2026, 7, 1, 10),
        ("Observation", f"{CTX}.observation-607"): dt.datetime(2026, 7, 1, 10),
    }
    for (rtype, fid), deleted_at in cases.items():
        assert _resource(p, rtype, fid) is None, (rtype, fid)
        assert _deleted(p, rtype, fid) == deleted_at, (rtype, fid)
    n_del = _rows(p, "SELECT count(*) FROM deletions")[0][0]
    assert n_del == len(cases)
    overlap = _rows(p, "SELECT count(*) FROM resources JOIN deletions USING (resource_type, id)")[0][0]
    assert overlap == 0


def test_references_to_deleted_targets_are_dropped_and_bump_last_updated(handmade):
    world, _ = handmade
    p = world.fhir_path
    cond = _resource(p, "Condition", f"{CTX}.condition-502")  # its encounter 402 was deleted
    assert "encounter" not in cond
    assert cond["meta"]["lastUpdated"] == "2026-08-01T11:00:00Z"
    lab = _resource(p, "Observation", f"{CTX}.observation-605")
    assert "encounter" not in lab
    pat4 = _resource(p, "Patient", f"{CTX}.E-4")  # provider 12 and department 2 deleted
    assert "generalPractitioner" not in pat4 and "managingOrganization" not in pat4
    assert pat4["meta"]["lastUpdated"] == "2026-09-01T12:00:00Z"
    enc = _resource(p, "Encounter", f"{CTX}.encounter-404")
    assert "participant" not in enc and "location" not in enc and "serviceProvider" not in enc
    assert enc["appointment"] == [{"reference": f"Appointment/{CTX}.Appointment-305"}]
    appt = _resource(p, "Appointment", f"{CTX}.Appointment-305")
    assert [x["actor"]["reference"] for x in appt["participant"]] == [f"Patient/{CTX}.E-4"]
    med = _resource(p, "MedicationRequest", f"{CTX}.medicationrequest-901")
    assert "requester" not in med
    # An untouched row keeps its own updated_at (fractional seconds truncated).
    pat1 = _resource(p, "Patient", f"{CTX}.E-1")
    assert pat1["meta"]["lastUpdated"] == "2026-05-01T12:30:45Z"


# --------------------------------------------------------------------------------------------
# Resource content
# --------------------------------------------------------------------------------------------
def test_patient_is_us_core_shaped(handmade):
    world, _ = handmade
    pat = _resource(world.fhir_path, "Patient", f"{CTX}.E-1")
    ext = {e["url"].rsplit("/", 1)[1]: e for e in pat["extension"]}
    race = {x["url"]: x for x in ext["us-core-race"]["extension"]}
    assert race["ombCategory"]["valueCoding"] == {
        "system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}
    assert race["text"]["valueString"] == "White"
    eth = {x["url"]: x for x in ext["us-core-ethnicity"]["extension"]}
    assert eth["ombCategory"]["valueCoding"]["code"] == "2186-5"
    assert ext["us-core-birthsex"]["valueCode"] == "F"
    assert pat["identifier"][0]["system"] == f"urn:athenahealth:athenanet:patient:{PID}"
    assert pat["identifier"][0]["value"] == "1"
    assert pat["name"] == [{"use": "official", "family": "Alpha", "given": ["Alice"]}]
    assert pat["gender"] == "female" and pat["birthDate"] == "1950-02-03" and pat["active"] is True
    assert pat["address"][0]["postalCode"] == "62701"
    assert pat["telecom"][0] == {"system": "phone", "value": "2175551000", "use": "home"}
    assert pat["communication"][0]["language"]["coding"][0]["code"] == "en"
    assert pat["generalPractitioner"] == [{"reference": f"Practitioner/{CTX}.Provider-10"}]
    assert pat["managingOrganization"] == {"reference": f"Organization/{CTX}.Department-1"}
    assert "deceasedDateTime" not in pat
    dead = _resource(world.fhir_path, "Patient", f"{CTX}.E-2")
    assert dead["deceasedDateTime"] == "2026-03-04" and dead["active"] is False
    assert dead["gender"] == "male"
    # free text is escaped, not pasted: quotes, backslashes and non-ASCII survive the round trip
    assert dead["name"][0]["family"] == 'Beta "B\\2" O\'Neil é'
    assert dead["communication"][0]["language"]["coding"][0] == {
        "system": "urn:ietf:bcp:47", "code": "es", "display": "Spanish"}


def test_practitioner_organization_location(handmade):
    world, _ = handmade
    p = world.fhir_path
    doc = _resource(p, "Practitioner", f"{CTX}.Provider-10")
    assert doc["identifier"] == [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}]
    assert doc["name"][0]["family"] == "Lovelace" and doc["gender"] == "female"
    assert doc["qualification"][0]["code"]["coding"][0]["code"] == "MD"
    practice = _resource(p, "Organization", f"a-1.Practice-{PID}")
    assert practice["name"] == "Riverbend Family Medicine"
    dept = _resource(p, "Organization", f"{CTX}.Department-1")
    assert dept["partOf"] == {"reference": f"Organization/a-1.Practice-{PID}"}
    loc = _resource(p, "Location", f"{CTX}.Department-1")
    assert loc["managingOrganization"] == {"reference": f"Organization/{CTX}.Department-1"}
    assert loc["address"]["city"] == "Springfield"


def test_coverage(handmade):
    world, _ = handmade
    primary = _resource(world.fhir_path, "Coverage", f"{CTX}.PatientInsurance-200")
    assert primary["status"] == "active" and primary["order"] == 1
    assert primary["beneficiary"] == {"reference": f"Patient/{CTX}.E-1"}
    assert primary["payor"][0]["display"] == "Medicare Part B"
    assert primary["payor"][0]["identifier"]["value"] == "100"
    assert primary["period"] == {"start": "2020-01-01"}
    cancelled = _resource(world.fhir_path, "Coverage", f"{CTX}.PatientInsurance-201")
    assert cancelled["status"] == "cancelled" and cancelled["order"] == 2
    assert cancelled["period"] == {"start": "2020-01-01", "end": "2024-06-30"}


def test_appointment_status_mapping(handmade):
    world, _ = handmade
    expected = {300: "booked", 301: "cancelled", 302: "noshow", 303: "checked-in", 304: "fulfilled",
                305: "fulfilled", 308: "booked"}
    for appt_id, status in expected.items():
        appt = _resource(world.fhir_path, "Appointment", f"{CTX}.Appointment-{appt_id}")
        assert appt["status"] == status, appt_id
    cancelled = _resource(world.fhir_path, "Appointment", f"{CTX}.Appointment-301")
    assert cancelled["cancelationReason"] == {"text": "PATIENT CANCELLED"}
    assert cancelled["appointmentType"] == {"text": "Follow Up"}
    assert cancelled["start"] == "2026-02-01T09:00:00Z" and cancelled["end"] == "2026-02-01T09:15:00Z"
    actors = [x["actor"]["reference"] for x in cancelled["participant"]]
    assert actors == [f"Patient/{CTX}.E-1", f"Practitioner/{CTX}.Provider-10", f"Location/{CTX}.Department-1"]


def test_encounter(handmade):
    world, _ = handmade
    enc = _resource(world.fhir_path, "Encounter", f"{CTX}.encounter-400")
    assert enc["status"] == "finished"
    assert enc["class"]["code"] == "AMB"
    assert enc["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    assert enc["type"][0]["coding"][0] == {"system": "http://www.ama-assn.org/go/cpt", "code": "99397"}
    assert enc["subject"] == {"reference": f"Patient/{CTX}.E-1"}
    assert enc["participant"][0]["individual"] == {"reference": f"Practitioner/{CTX}.Provider-10"}
    assert enc["period"] == {"start": "2026-04-01T09:00:00Z", "end": "2026-04-01T09:40:00Z"}
    assert enc["location"] == [{"location": {"reference": f"Location/{CTX}.Department-1"}}]
    assert enc["serviceProvider"] == {"reference": f"Organization/{CTX}.Department-1"}
    assert enc["appointment"] == [{"reference": f"Appointment/{CTX}.Appointment-304"}]
    tele = _resource(world.fhir_path, "Encounter", f"{CTX}.encounter-401")
    assert tele["status"] == "in-progress" and tele["class"]["code"] == "VR"


def test_condition_carries_icd10_and_snomed(handmade):
    world, _ = handmade
    cond = _resource(world.fhir_path, "Condition", f"{CTX}.condition-500")
    systems = {c["system"]: c["code"] for c in cond["code"]["coding"]}
    assert systems == {"http://hl7.org/fhir/sid/icd-10-cm": "E11.9", "http://snomed.info/sct": "44054006"}
    assert cond["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert cond["category"][0]["coding"][0]["system"] == \
        "http://terminology.hl7.org/CodeSystem/condition-category"
    assert cond["clinicalStatus"]["coding"][0]["code"] == "active"
    assert cond["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert cond["onsetDateTime"] == "2019-01-01" and "encounter" not in cond
    dx = _resource(world.fhir_path, "Condition", f"{CTX}.condition-501")
    assert dx["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert dx["encounter"] == {"reference": f"Encounter/{CTX}.encounter-400"}
    icd_only = _resource(world.fhir_path, "Condition", f"{CTX}.condition-503")
    assert [c["system"] for c in icd_only["code"]["coding"]] == ["http://hl7.org/fhir/sid/icd-10-cm"]
    assert icd_only["abatementDateTime"] == "2025-03-01"
    assert icd_only["clinicalStatus"]["coding"][0]["code"] == "resolved"


def test_blood_pressure_is_one_panel_with_two_components(handmade):
    world, _ = handmade
    bp = _resource(world.fhir_path, "Observation", f"{CTX}.observation-600")
    assert bp["code"]["coding"][0]["code"] == "85354-9"
    assert "valueQuantity" not in bp
    comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in bp["component"]}
    assert comps == {
        "8480-6": {"value": 128.0, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        "8462-4": {"value": 82.0, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
    }
    assert bp["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "vital-signs", "display": "Vital Signs"}


def test_observation_values_quantity_and_coded(handmade):
    world, _ = handmade
    p = world.fhir_path
    bmi = _resource(p, "Observation", f"{CTX}.observation-601")
    assert bmi["valueQuantity"] == {"value": 31.4, "unit": "kg/m2", "system": "http://unitsofmeasure.org",
                                    "code": "kg/m2"}
    assert bmi["effectiveDateTime"] == "2026-04-01T09:05:00Z" and bmi["status"] == "final"
    assert bmi["encounter"] == {"reference": f"Encounter/{CTX}.encounter-400"}
    tobacco = _resource(p, "Observation", f"{CTX}.observation-603")
    assert tobacco["valueCodeableConcept"]["coding"][0] == {
        "system": "http://snomed.info/sct", "code": "8517006", "display": "Ex-smoker"}
    assert tobacco["category"][0]["coding"][0]["code"] == "social-history"
    screen = _resource(p, "Observation", f"{CTX}.observation-604")
    assert screen["valueCodeableConcept"]["coding"][0]["code"] == "428181000124104"
    assert screen["code"]["coding"][0] == {"system": "http://loinc.org", "code": "73832-8",
                                           "display": "Adult depression screening assessment"}


def test_diagnostic_report_per_lab_observation(handmade):
    world, counts = handmade
    labs = _rows(world.fhir_path, """SELECT count(*) FROM resources WHERE resource_type = 'Observation'
        AND json_extract_string(resource, '$.category[0].coding[0].code') = 'laboratory'""")[0][0]
    assert counts["DiagnosticReport"] == labs == 2
    dr = _resource(world.fhir_path, "DiagnosticReport", f"{CTX}.diagnosticreport-602")
    assert dr["result"] == [{"reference": f"Observation/{CTX}.observation-602"}]
    assert dr["code"]["coding"][0]["code"] == "4548-4"
    assert dr["category"][0]["coding"][0]["code"] == "LAB"
    assert dr["status"] == "final" and dr["effectiveDateTime"] == "2026-04-01T09:30:00Z"
    assert dr["meta"]["lastUpdated"] == "2026-05-01T12:30:45Z"  # the observation row's updated_at


def test_procedures_only_in_fhir_with_system_by_code_system(handmade):
    world, counts = handmade
    p = world.fhir_path
    assert _resource(p, "Procedure", f"{CTX}.procedure-701") is None
    assert _deleted(p, "Procedure", f"{CTX}.procedure-701") is None
    assert counts["Procedure"] == 4
    mammo = _resource(p, "Procedure", f"{CTX}.procedure-700")
    assert mammo["code"]["coding"][0]["system"] == "http://www.ama-assn.org/go/cpt"
    assert mammo["status"] == "completed" and mammo["performedDateTime"] == "2026-04-01"
    assert mammo["encounter"] == {"reference": f"Encounter/{CTX}.encounter-400"}
    outside = _resource(p, "Procedure", f"{CTX}.procedure-702")
    assert outside["code"]["coding"][0]["system"] == "http://snomed.info/sct" and "encounter" not in outside
    hcpcs = _resource(p, "Procedure", f"{CTX}.procedure-703")
    assert hcpcs["code"]["coding"][0]["system"] == "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"


def test_immunization_medication_allergy(handmade):
    world, _ = handmade
    p = world.fhir_path
    imm = _resource(p, "Immunization", f"{CTX}.immunization-800")
    assert imm["vaccineCode"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/cvx", "code": "150",
        "display": "Influenza, injectable, quadrivalent, preservative free"}
    assert imm["occurrenceDateTime"] == "2026-04-01" and imm["primarySource"] is True
    assert imm["patient"] == {"reference": f"Patient/{CTX}.E-1"}
    med = _resource(p, "MedicationRequest", f"{CTX}.medicationrequest-900")
    assert med["medicationCodeableConcept"]["coding"][0]["system"] == \
        "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert med["intent"] == "order" and med["authoredOn"] == "2026-04-01"
    assert med["requester"] == {"reference": f"Practitioner/{CTX}.Provider-10"}
    drug = _resource(p, "AllergyIntolerance", f"{CTX}.allergy-1000")
    assert drug["code"]["coding"][0]["system"] == "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert drug["criticality"] == "high" and drug["recordedDate"] == "2020-01-01"
    food = _resource(p, "AllergyIntolerance", f"{CTX}.allergy-1001")
    assert food["code"]["coding"][0]["system"] == "http://snomed.info/sct"


def test_document_reference_per_closed_encounter(handmade):
    world, counts = handmade
    p = world.fhir_path
    assert _resource(p, "DocumentReference", f"{CTX}.document-401") is None  # OPEN encounter
    # closed & live encounters: 400, 404
    assert counts["DocumentReference"] == 2
    doc = _resource(p, "DocumentReference", f"{CTX}.document-400")
    assert doc["type"]["coding"][0]["code"] == "11506-3"
    assert doc["category"][0]["coding"][0]["code"] == "clinical-note"
    assert doc["context"]["encounter"] == [{"reference": f"Encounter/{CTX}.encounter-400"}]
    att = doc["content"][0]["attachment"]
    assert att["contentType"] == "text/plain"
    assert base64.b64decode(att["data"]).decode() == "Visit note for encounter 400"
    assert doc["date"] == "2026-04-01T17:00:00Z"
    assert doc["meta"]["lastUpdated"] == "2026-05-01T12:30:45Z"  # encounter 400's updated_at


SYNTHEA = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "synthea-10"

# Paths a staging model reads; each must have the same JSON type in our export and in Synthea's.
SHARED_SHAPE: dict[str, list[str]] = {
    "Patient": ["$.gender", "$.birthDate", "$.name[0].family", "$.name[0].given[0]", "$.address[0].postalCode",
                "$.telecom[0].value", "$.extension[0].extension[0].valueCoding.code",
                "$.communication[0].language.coding[0].code"],
    "Encounter": ["$.status", "$.class.code", "$.type[0].coding[0].code", "$.subject.reference",
                  "$.period.start", "$.period.end", "$.participant[0].individual.reference",
                  "$.location[0].location.reference", "$.serviceProvider.reference"],
    "Condition": ["$.clinicalStatus.coding[0].code", "$.verificationStatus.coding[0].code",
                  "$.category[0].coding[0].code", "$.code.coding[0].system", "$.code.coding[0].code",
                  "$.code.text", "$.subject.reference", "$.encounter.reference", "$.onsetDateTime",
                  "$.abatementDateTime", "$.recordedDate"],
    "Immunization": ["$.status", "$.vaccineCode.coding[0].code", "$.patient.reference", "$.encounter.reference",
                     "$.occurrenceDateTime", "$.primarySource"],
    "MedicationRequest": ["$.status", "$.intent", "$.medicationCodeableConcept.coding[0].code",
                          "$.subject.reference", "$.encounter.reference", "$.authoredOn", "$.requester.reference"],
    "Procedure": ["$.status", "$.code.coding[0].system", "$.code.coding[0].code", "$.subject.reference",
                  "$.encounter.reference"],
    "AllergyIntolerance": ["$.clinicalStatus.coding[0].code", "$.verificationStatus.coding[0].code",
                           "$.code.coding[0].code", "$.patient.reference", "$.criticality", "$.category[0]"],
    "DocumentReference": ["$.status", "$.type.coding[0].code", "$.category[0].coding[0].code",
                          "$.subject.reference", "$.date", "$.content[0].attachment.contentType",
                          "$.content[0].attachment.data", "$.context.encounter[0].reference",
                          "$.context.period.start"],
    "Location": ["$.name", "$.status", "$.address.city", "$.address.line[0]", "$.telecom[0].value"],
    "Organization": ["$.name", "$.active", "$.type[0].coding[0].code"],
    "Practitioner": ["$.identifier[0].system", "$.identifier[0].value", "$.name[0].family", "$.gender"],
}


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="synthea-10 fixture not present")
def test_shapes_match_a_real_third_party_export(handmade):
    """One set of staging models reads both our export and Synthea's: same JSON types at the same paths."""
    world, _ = handmade
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{world.fhir_path}' AS ours (READ_ONLY)")
        for rtype, paths in SHARED_SHAPE.items():
            fixture = SYNTHEA / f"{rtype}.000.ndjson"
            for path in paths:
                theirs = {t for (t,) in con.execute(
                    "SELECT DISTINCT json_type(json, ?) FROM read_ndjson_objects(?) WHERE json_type(json, ?) IS NOT NULL",
                    [path, str(fixture), path]).fetchall()}
                mine = {t for (t,) in con.execute(
                    "SELECT DISTINCT json_type(resource, ?) FROM ours.resources "
                    "WHERE resource_type = ? AND json_type(resource, ?) IS NOT NULL",
                    [path, rtype, path]).fetchall()}
                assert theirs, f"fixture has no {rtype} {path}"
                assert mine == theirs, f"{rtype} {path}: ours {mine} vs synthea {theirs}"
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# Determinism, atomic replace, speed
# --------------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for table, order in (("resources", "resource_type, id"), ("deletions", "resource_type, id"),
                         ("world_meta", "key")):
        for row in _rows(path, f"SELECT * FROM {table}"):  # physical order: must already be sorted
            h.update(repr(row).encode())
        h.update(table.encode())
        assert _rows(path, f"SELECT * FROM {table}") == _rows(path, f"SELECT * FROM {table} ORDER BY {order}")
    return h.hexdigest()


def test_render_is_deterministic_and_replaces_atomically(tmp_path):
    world = make_handmade_world(tmp_path / "w")
    first = render_fhir(world)
    d1 = _digest(world.fhir_path)
    second = render_fhir(world)  # replaces the existing file
    assert first == second
    assert _digest(world.fhir_path) == d1
    assert sorted(p.name for p in world.root.iterdir()) == ["facts.duckdb", "fhir.duckdb", "world.json"]


def test_missing_facts_is_a_clear_error(tmp_path):
    world = World(root=tmp_path, options=WorldOptions(), current_date=CURRENT_DATE)
    with pytest.raises(FileNotFoundError, match="facts.duckdb"):
        render_fhir(world)
    assert not world.fhir_path.exists()


def _check_whole(world: World, counts: dict[str, int]) -> None:
    p = world.fhir_path
    bad = _rows(p, """
        SELECT count(*) FILTER (WHERE NOT json_valid(resource)),
               count(*) FILTER (WHERE json_extract_string(resource, '$.resourceType') <> resource_type
                                   OR json_extract_string(resource, '$.id') <> id),
               count(*) FILTER (WHERE json_extract_string(resource, '$.meta.lastUpdated')
                                      <> strftime(last_updated, '%Y-%m-%dT%H:%M:%SZ')),
               count(*) FILTER (WHERE contains(resource, ':null'))
        FROM resources""")[0]
    assert bad == (0, 0, 0, 0)
    assert unresolved_references(p) == []
    dup = _rows(p, "SELECT count(*) - count(DISTINCT (resource_type, id)) FROM resources")[0][0]
    assert dup == 0
    assert sum(counts.values()) == _rows(p, "SELECT count(*) FROM resources")[0][0]


def test_timing_mid_size_bulk_world(tmp_path):
    world = make_bulk_world(tmp_path / "bulk", patients=2500)
    started = time.perf_counter()
    counts = render_fhir(world)
    elapsed = time.perf_counter() - started
    print(f"\nrender_fhir bulk world 2,500 patients: {sum(counts.values()):,} resources in {elapsed:.2f}s {counts}")
    _check_whole(world, counts)
    # billing-only procedures (i % 7 == 0) are absent, deleted ones are in deletions
    n_proc = _rows(world.facts_path, "SELECT count(*) FROM procedures WHERE in_fhir")[0][0]
    n_proc_del = _rows(world.fhir_path, "SELECT count(*) FROM deletions WHERE resource_type = 'Procedure'")[0][0]
    assert counts["Procedure"] + n_proc_del == n_proc
    assert elapsed < 20


@pytest.mark.slow
def test_timing_full_size_bulk_world(tmp_path):
    """15-provider scale: ~25k patients, ~2.7M fact rows. Target: well under 20 s on 2 cores."""
    world = make_bulk_world(tmp_path / "bulk", patients=25_000)
    started = time.perf_counter()
    counts = render_fhir(world)
    elapsed = time.perf_counter() - started
    print(f"\nrender_fhir bulk world 25,000 patients: {sum(counts.values()):,} resources in {elapsed:.2f}s")
    _check_whole(world, counts)
    assert elapsed < 20


def _generate_world():
    try:
        from athena_pipeline.sandbox.generate import generate_world
    except ImportError:
        return None
    return generate_world


@pytest.mark.skipif(_generate_world() is None, reason="sandbox generator not available yet")
def test_generated_world(tmp_path):
    generate_world = _generate_world()
    world = generate_world(tmp_path / "gen", WorldOptions(providers=1, patients=300))
    started = time.perf_counter()
    counts = render_fhir(world)
    elapsed = time.perf_counter() - started
    print(f"\nrender_fhir generated world (1 provider, 300 patients): {counts} in {elapsed:.2f}s")
    _check_whole(world, counts)
    for rtype in ("Patient", "Practitioner", "Organization", "Location", "Encounter", "Observation",
                  "Condition", "Appointment", "Coverage", "DocumentReference"):
        assert counts[rtype] > 0, rtype
    facts_bp = _rows(world.facts_path, "SELECT count(*) FROM observations WHERE kind = 'bp' AND deleted_at IS NULL")
    fhir_bp = _rows(world.fhir_path, """SELECT count(*) FROM resources WHERE resource_type = 'Observation'
        AND json_extract_string(resource, '$.code.coding[0].code') = '85354-9'
        AND json_array_length(resource, '$.component') = 2""")
    assert fhir_bp[0][0] <= facts_bp[0][0] and fhir_bp[0][0] > 0
    billing_only = _rows(world.facts_path, "SELECT 'a-' || (SELECT practice_id FROM practice) || '.procedure-' "
                         "|| procedure_id FROM procedures WHERE NOT in_fhir")
    if billing_only:
        ids = [r[0] for r in billing_only]
        present = _rows(world.fhir_path, "SELECT count(*) FROM resources WHERE resource_type = 'Procedure' "
                        "AND list_contains(?, id)", [ids])[0][0]
        assert present == 0
