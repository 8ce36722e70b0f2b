"""The Data View rendering: what the extractor and the dbt staging models will see.

Two worlds: a hand-made facts DB whose every figure is known (so a wrong join or sign shows up as
a wrong number), and, once the generator exists, a small generated world (1 provider, 300
patients) that must satisfy the same invariants.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import duckdb
import pytest

from athena_pipeline.athena import dataview_catalog as catalog
from athena_pipeline.athena.dataview_catalog import CATALOG, get_table, upstream_name
from athena_pipeline.sandbox import facts_schema
from athena_pipeline.sandbox.render_dataview import SCHEMA, render_dataview
from athena_pipeline.sandbox.world import World, WorldOptions

PRACTICE_ID = 195900
T0 = dt.datetime(2024, 3, 1, 9, 0)
T1 = dt.datetime(2024, 3, 10, 12, 0)
T_DEL = dt.datetime(2024, 4, 1, 8, 30)


# --------------------------------------------------------------------------------------------
# A hand-made world
# --------------------------------------------------------------------------------------------
def _insert(con: duckdb.DuckDBPyConnection, table: str, cols: str, rows: list[tuple],
            deleted: frozenset = frozenset(), audit: bool = True) -> None:
    """Insert test rows; the first column is the id, ids in ``deleted`` are soft-deleted."""
    names = [c.strip() for c in cols.split(",")]
    if audit:
        names += ["created_at", "updated_at", "deleted_at"]
        rows = [(*r, T0, T_DEL if r[0] in deleted else T1, T_DEL if r[0] in deleted else None) for r in rows]
    marks = ", ".join("?" for _ in names)
    con.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", rows)


def build_hand_facts(path: Path) -> None:
    """A practice with 4 patients, 3 claims and a ledger whose balances are worked out by hand.

    Claim 20000 (Medicare primary, Aetna secondary): charges 150 + 45; primary pays 100 + 30 after
    contractuals 20 + 10; 30 + 5 move to secondary; secondary pays 25 and moves 5 to the patient;
    a patient payment of 5 is voided and reversed. Outstanding: primary 0, secondary 5, patient 5.
    Claim 20001 (Aetna): 220 denied (CO-197, kick AUTHDENY) and appealed: primary 220.
    Claim 20002 (self-pay): 180 charged, patient paid 50: patient 130.
    """
    con = duckdb.connect(str(path))
    for stmt in facts_schema.create_statements():
        con.execute(stmt)
    con.execute("INSERT INTO practice VALUES (?, ?, ?, ?, ?)",
                [PRACTICE_ID, "Sandbox Family Medicine", 1, dt.datetime(2023, 1, 1), T1])
    _insert(con, "departments",
            "department_id, name, billing_name, specialty, address, city, state, zip, phone, place_of_service_code",
            [(1, "MAIN ST CLINIC", "Main St Clinic", "Family Medicine", "1 Main St", "Springfield", "MA",
              "01101", "4135550100", "11"),
             (2, "NORTH CLINIC", "North Clinic", "Pediatrics", "9 North Rd", "Springfield", "MA",
              "01104", "4135550199", "11")])
    _insert(con, "providers",
            "provider_id, npi, first_name, last_name, sex, provider_type, specialty, taxonomy_code, "
            "department_id, billable",
            [(10, "8084012345", "Ada", "Lovelace", "F", "MD", "Family Medicine", "207Q00000X", 1, True),
             (11, "8084054321", "Ben", "Franklin", "M", "NP", "Family Medicine", "363LF0000X", 2, False)])
    _insert(con, "insurance_packages",
            "insurance_package_id, name, payer_name, package_type, product_type, reporting_category, payer_id",
            [(100, "Medicare Part B", "Medicare", "Medicare", "Medicare", "Medicare", "00882"),
             (101, "Aetna PPO", "Aetna", "Commercial", "PPO", "Commercial", "60054"),
             (102, "Self Pay", "Self Pay", "Self-Pay", "Self-Pay", "Self-Pay", "SELF")])
    patient_cols = ("patient_id, enterprise_id, first_name, last_name, sex, dob, address, city, state, zip, "
                    "phone, race, ethnicity, language, status, deceased_date, primary_provider_id, "
                    "department_id, registered_date")
    _insert(con, "patients", patient_cols,
            [(1000, 51000, "Ann", "Able", "F", dt.date(1950, 5, 1), "2 Elm St", "Springfield", "MA", "01101",
              "4135550001", "2106-3", "2186-5", "en", "a", None, 10, 1, dt.date(2020, 1, 1)),
             (1001, 51001, "Bob", "Baker", "M", dt.date(1980, 7, 2), "3 Oak St", "Springfield", "MA", "01101",
              "4135550002", "2054-5", "2186-5", "en", "a", None, 10, 1, dt.date(2021, 2, 1)),
             (1002, 51002, "Cy", "Cole", "M", dt.date(1990, 8, 3), "4 Pine St", "Springfield", "MA", "01104",
              "4135550003", "2028-9", "2135-2", "es", "a", None, 11, 2, dt.date(2022, 3, 1)),
             (1003, 51003, "Di", "Dunn", "F", dt.date(1970, 9, 4), "5 Ash St", "Springfield", "MA", "01104",
              "4135550004", "2106-3", "2186-5", "en", "i", None, 11, 2, dt.date(2022, 4, 1))],
            deleted=frozenset({1003}))
    _insert(con, "patient_insurance",
            "patient_insurance_id, patient_id, insurance_package_id, sequence_number, member_id, issue_date",
            [(5000, 1000, 100, 1, "1EG4TE5MK73", dt.date(2015, 5, 1)),
             (5001, 1000, 101, 2, "W123456789", dt.date(2019, 1, 1)),
             (5002, 1001, 101, 1, "W987654321", dt.date(2021, 1, 1))])
    appt_cols = ("appointment_id, patient_id, provider_id, department_id, appointment_type, appointment_date, "
                 "start_time, duration_minutes, booked_at, status, is_no_show, checkin_at, checkout_at, "
                 "cancelled_at, cancel_reason, rescheduled_to_appointment_id, rescheduled_from_appointment_id")
    d1, d2 = dt.date(2024, 3, 1), dt.date(2024, 3, 4)
    _insert(con, "appointments", appt_cols,
            [(7000, 1000, 10, 1, "Office Visit", d1, dt.datetime(2024, 3, 1, 9), 15, dt.datetime(2024, 2, 1),
              "4", False, dt.datetime(2024, 3, 1, 8, 55), dt.datetime(2024, 3, 1, 9, 20), None, None, None, None),
             (7001, 1001, 10, 1, "Follow Up", d2, dt.datetime(2024, 3, 4, 10), 15, dt.datetime(2024, 2, 20),
              "4", False, dt.datetime(2024, 3, 4, 9, 58), dt.datetime(2024, 3, 4, 10, 25), None, None, None, 7003),
             (7002, 1002, 11, 2, "New Patient", d2, dt.datetime(2024, 3, 4, 11), 30, dt.datetime(2024, 2, 25),
              "4", False, dt.datetime(2024, 3, 4, 10, 50), dt.datetime(2024, 3, 4, 11, 40), None, None, None, None),
             (7003, 1001, 10, 1, "Follow Up", d1, dt.datetime(2024, 3, 1, 14), 15, dt.datetime(2024, 2, 10),
              "x", False, None, None, dt.datetime(2024, 2, 28, 16), "RESCHEDULED", 7001, None),
             (7004, 1001, 10, 1, "Annual Physical", dt.date(2024, 9, 1), dt.datetime(2024, 9, 1, 9), 30,
              dt.datetime(2024, 3, 4, 10, 30), "f", False, None, None, None, None, None, None),
             (7005, 1002, 11, 2, "Sick Visit", d2, dt.datetime(2024, 3, 4, 15), 15, dt.datetime(2024, 3, 1),
              "o", True, None, None, None, None, None, None),
             (7006, 1003, 11, 2, "Office Visit", d2, dt.datetime(2024, 3, 4, 16), 15, dt.datetime(2024, 3, 1),
              "x", False, None, None, dt.datetime(2024, 3, 2), "PATIENT CANCELLED", None, None)],
            deleted=frozenset({7006}))
    enc_cols = ("encounter_id, appointment_id, patient_id, provider_id, department_id, encounter_date, start_at, "
                "end_at, encounter_type, visit_cpt, status, closed_at")
    _insert(con, "encounters", enc_cols,
            [(8000, 7000, 1000, 10, 1, d1, dt.datetime(2024, 3, 1, 9), dt.datetime(2024, 3, 1, 9, 15), "VISIT",
              "99213", "CLOSED", dt.datetime(2024, 3, 1, 17)),
             (8001, 7001, 1001, 10, 1, d2, dt.datetime(2024, 3, 4, 10), dt.datetime(2024, 3, 4, 10, 15), "VISIT",
              "99214", "CLOSED", dt.datetime(2024, 3, 4, 17)),
             (8002, 7002, 1002, 11, 2, d2, dt.datetime(2024, 3, 4, 11), dt.datetime(2024, 3, 4, 11, 30), "VISIT",
              "99203", "CLOSED", dt.datetime(2024, 3, 4, 18)),
             (8003, None, 1000, 10, 1, dt.date(2024, 3, 5), dt.datetime(2024, 3, 5, 13),
              dt.datetime(2024, 3, 5, 13, 10), "TELEHEALTH", "99212", "OPEN", None)])
    cond_cols = ("condition_id, patient_id, encounter_id, category, icd10_code, snomed_code, description, "
                 "condition_group, onset_date, abatement_date, clinical_status")
    _insert(con, "conditions", cond_cols,
            [(9000, 1000, None, "problem-list-item", "E11.9", "44054006", "Type 2 diabetes mellitus", "diabetes_t2",
              dt.date(2015, 1, 1), None, "active"),
             (9001, 1000, 8000, "encounter-diagnosis", "E11.9", "44054006", "Type 2 diabetes mellitus",
              "diabetes_t2", d1, None, "active"),
             (9002, 1000, 8000, "encounter-diagnosis", "I10", "59621000", "Essential hypertension",
              "hypertension", d1, None, "active"),
             (9003, 1001, 8001, "encounter-diagnosis", "J06.9", "54150009", "Acute URI", "uri", d2,
              dt.date(2024, 3, 14), "resolved"),
             (9004, 1001, None, "problem-list-item", "F41.1", "21897009", "Generalized anxiety disorder", "anxiety",
              dt.date(2020, 1, 1), None, "active")],
            deleted=frozenset({9004}))
    obs_cols = ("observation_id, patient_id, encounter_id, category, kind, loinc, display, value, value2, "
                "value_code, value_display, unit, effective_at, status")
    at = dt.datetime(2024, 3, 1, 9, 5)
    _insert(con, "observations", obs_cols,
            [(9100, 1000, 8000, "vital-signs", "bp", "85354-9", "Blood pressure panel", 128.0, 82.0, None, None,
              "mm[Hg]", at, "final"),
             (9101, 1000, 8000, "vital-signs", "bmi", "39156-5", "BMI", 27.4, None, None, None, "kg/m2", at, "final"),
             (9102, 1000, 8000, "vital-signs", "weight", "29463-7", "Body weight", 80.5, None, None, None, "kg", at,
              "final"),
             (9103, 1000, 8000, "vital-signs", "height", "8302-2", "Body height", 175.0, None, None, None, "cm", at,
              "final"),
             (9104, 1000, 8000, "laboratory", "hba1c", "4548-4", "Hemoglobin A1c", 7.2, None, None, None, "%", at,
              "final"),
             (9105, 1000, 8000, "survey", "phq9", "73832-8", "Adult depression screening", None, None,
              "428181000124104", "Depression screening negative", None, at, "final"),
             (9106, 1001, 8001, "laboratory", "hba1c", "4548-4", "Hemoglobin A1c", 9.6, None, None, None, "%",
              dt.datetime(2024, 3, 4, 10, 5), "amended")],
            deleted=frozenset({9106}))
    claim_cols = ("claim_id, patient_id, encounter_id, appointment_id, rendering_provider_id, department_id, "
                  "service_date, created_date, submitted_date, primary_patient_insurance_id, "
                  "secondary_patient_insurance_id, primary_insurance_package_id, secondary_insurance_package_id, "
                  "total_charge, scrub_hold, primary_status, secondary_status, patient_status, "
                  "primary_outstanding, secondary_outstanding, patient_outstanding")
    _insert(con, "claims", claim_cols,
            [(20000, 1000, 8000, 7000, 10, 1, d1, d1, dt.date(2024, 3, 2), 5000, 5001, 100, 101, 195, False,
              "CLOSED", "BILLED", "BILLED", 0, 5, 5),
             (20001, 1001, 8001, 7001, 10, 1, d2, d2, dt.date(2024, 3, 5), 5002, None, 101, None, 220, False,
              "APPEALED", "NONE", "NONE", 220, 0, 0),
             (20002, 1002, 8002, 7002, 11, 2, d2, d2, None, None, None, None, None, 180, False,
              "NONE", "NONE", "BILLED", 0, 0, 130)])
    _insert(con, "claim_lines", "charge_id, claim_id, line_number, procedure_code, units, amount",
            [(30000, 20000, 1, "99213", 1, 150), (30001, 20000, 2, "83036", 1, 45),
             (30002, 20001, 1, "99214", 1, 220), (30003, 20002, 1, "99203", 1, 180)])
    _insert(con, "claim_diagnoses", "claim_diagnosis_id, claim_id, sequence_number, icd10_code",
            [(60000, 20000, 1, "E11.9"), (60001, 20000, 2, "I10"), (60002, 20000, 3, "Z00.00"),
             (60003, 20001, 1, "J06.9"), (60004, 20002, 1, "J01.90")],
            deleted=frozenset({60002}))
    tx_cols = ("transaction_id, claim_id, charge_id, patient_id, transaction_type, transaction_reason, "
               "transfer_type, insurance_package_id, amount, post_date, payment_batch_id, remittance_id, "
               "procedure_code, voided_date, reversal_flag")
    p1, p2, p3 = dt.date(2024, 3, 20), dt.date(2024, 4, 10), dt.date(2024, 4, 20)
    _insert(con, "transactions", tx_cols, [
        (30000, 20000, 30000, 1000, "CHARGE", None, "Primary", 100, 150, d1, None, None, "99213", None, False),
        (30001, 20000, 30001, 1000, "CHARGE", None, "Primary", 100, 45, d1, None, None, "83036", None, False),
        (31000, 20000, 30000, 1000, "PAYMENT", "INSURANCE PAYMENT", "Primary", 100, -100, p1, 900, 40000,
         "99213", None, False),
        (31001, 20000, 30000, 1000, "ADJUSTMENT", "CONTRACTUAL", "Primary", 100, -20, p1, 900, 40000, "99213",
         None, False),
        (31002, 20000, 30001, 1000, "ADJUSTMENT", "CONTRACTUAL", "Primary", 100, -10, p1, 900, 40000, "83036",
         None, False),
        (31003, 20000, 30001, 1000, "PAYMENT", "INSURANCE PAYMENT", "Primary", 100, -30, p1, 900, 40000, "83036",
         None, False),
        (31004, 20000, 30000, 1000, "TRANSFEROUT", None, "Primary", 100, -30, p1, None, 40000, "99213", None, False),
        (31005, 20000, 30000, 1000, "TRANSFERIN", None, "Secondary", 101, 30, p1, None, 40000, "99213", None, False),
        (31006, 20000, 30001, 1000, "TRANSFEROUT", None, "Primary", 100, -5, p1, None, 40000, "83036", None, False),
        (31007, 20000, 30001, 1000, "TRANSFERIN", None, "Secondary", 101, 5, p1, None, 40000, "83036", None, False),
        (31008, 20000, 30000, 1000, "PAYMENT", "INSURANCE PAYMENT", "Secondary", 101, -25, p2, 901, 40002,
         "99213", None, False),
        (31009, 20000, 30000, 1000, "TRANSFEROUT", None, "Secondary", 101, -5, p2, None, 40002, "99213", None,
         False),
        (31010, 20000, 30000, 1000, "TRANSFERIN", None, "Patient", None, 5, p2, None, 40002, "99213", None, False),
        (31011, 20000, 30000, 1000, "PAYMENT", "PATIENT PAYMENT", "Patient", None, -5, p3, 902, None, "99213",
         dt.date(2024, 4, 21), False),
        (31012, 20000, 30000, 1000, "PAYMENT", "PATIENT PAYMENT", "Patient", None, 5, dt.date(2024, 4, 21), 903,
         None, "99213", None, True),
        (30002, 20001, 30002, 1001, "CHARGE", None, "Primary", 101, 220, d2, None, None, "99214", None, False),
        (30003, 20002, 30003, 1002, "CHARGE", None, "Patient", None, 180, d2, None, None, "99203", None, False),
        (31013, 20002, 30003, 1002, "PAYMENT", "COPAY", "Patient", None, -50, d2, 904, None, "99203", None, False),
    ])
    _insert(con, "remittances",
            "remittance_id, claim_id, insurance_package_id, payer_role, remit_date, remit_sequence, billed_amount, "
            "allowed_amount, paid_amount, patient_responsibility, is_denial",
            [(40000, 20000, 100, "Primary", p1, 1, 195, 165, 130, 35, False),
             (40001, 20001, 101, "Primary", dt.date(2024, 3, 25), 1, 220, 0, 0, 0, True),
             (40002, 20000, 101, "Secondary", p2, 1, 35, 35, 25, 5, False)])
    _insert(con, "remittance_adjustments",
            "remittance_adjustment_id, remittance_id, claim_id, group_code, carc, amount, kick_code",
            [(41000, 40000, 20000, "CO", "45", 30, None), (41001, 40000, 20000, "PR", "2", 35, None),
             (41002, 40001, 20001, "CO", "197", 220, "AUTHDENY")])
    _insert(con, "claim_events",
            "claim_event_id, claim_id, event_type, event_date, payer_role, kick_code, claim_status, note",
            [(50000, 20000, "CREATED", d1, "Primary", None, "BILLED", None),
             (50001, 20000, "SUBMITTED", dt.date(2024, 3, 2), "Primary", None, "BILLED", None),
             (50002, 20000, "PAID", p1, "Primary", None, "CLOSED", None),
             (50003, 20000, "TRANSFERRED", dt.date(2024, 3, 21), "Secondary", None, "BILLED", "Crossed over"),
             (50004, 20001, "CREATED", d2, "Primary", None, "BILLED", None),
             (50005, 20001, "SUBMITTED", dt.date(2024, 3, 5), "Primary", None, "BILLED", None),
             (50006, 20001, "DENIED", dt.date(2024, 3, 25), "Primary", "AUTHDENY", "HOLD", "Auth missing"),
             (50007, 20001, "APPEALED", dt.date(2024, 4, 2), "Primary", "AIP", "APPEALED", "Auth obtained")])
    _insert(con, "kick_reasons", "kick_reason_id, kick_code, name, category, next_claim_status",
            [(1, "AUTHDENY", "Authorization / referral", "authorization", "HOLD"),
             (2, "AIP", "Appeal in process", "workflow", "APPEALED"),
             (3, "CONTRACT", "Contractual adjustment", "adjustment", "CLOSED")], audit=False)
    con.close()


def _hand_world(root: Path) -> World:
    root.mkdir(parents=True, exist_ok=True)
    world = World(root=root, options=WorldOptions(providers=2, patients=4, practice_id=PRACTICE_ID),
                  current_date=dt.date(2024, 6, 30))
    world.save()
    build_hand_facts(world.facts_path)
    return world


def _generated_world(root: Path) -> World:
    """Facts from the real generator; only the facts, so this test exercises this renderer alone."""
    from athena_pipeline.sandbox.generate import build_facts

    options = WorldOptions(providers=1, patients=300)
    world = World(root=root, options=options, current_date=options.end)
    build_facts(world.facts_path, options, world.clock)
    world.save()
    return world


@pytest.fixture(scope="module", params=["hand", "generated"])
def rendered(request, tmp_path_factory) -> tuple[World, dict[str, int]]:
    root = tmp_path_factory.mktemp(f"world_{request.param}")
    world = _hand_world(root) if request.param == "hand" else _generated_world(root)
    counts = render_dataview(world)
    return world, counts


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> World:
    world = _hand_world(tmp_path_factory.mktemp("hand_world"))
    render_dataview(world)
    return world


def _ro(world: World) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(world.dataview_path), read_only=True)


def _q(name: str) -> str:
    return f'{SCHEMA}."{name}"'


def _table_hashes(world: World) -> dict[str, str]:
    con = _ro(world)
    try:
        out = {}
        for t in CATALOG:
            order = ", ".join(f'"{c}"' for c in t.key_columns)
            row = con.execute(f"SELECT string_agg(CAST(x AS VARCHAR), '\n' ORDER BY {order}) FROM {_q(t.name)} x"
                              ).fetchone()
            out[t.name] = hashlib.sha256((row[0] or "").encode()).hexdigest()
        return out
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# Invariants, on every world
# --------------------------------------------------------------------------------------------
def test_rendered_tables_are_exactly_the_catalogue(rendered):
    world, counts = rendered
    con = _ro(world)
    tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables "
                         "WHERE table_catalog = current_database()").fetchall()
    con.close()
    assert {schema for schema, _ in tables} == {SCHEMA}
    assert sorted(name for _, name in tables) == sorted(t.name for t in CATALOG)
    assert list(counts) == [t.name for t in CATALOG]
    assert all(n > 0 for n in counts.values()), {k: v for k, v in counts.items() if v == 0}


def test_every_catalogued_column_exists_upper_case(rendered):
    world, _ = rendered
    con = _ro(world)
    for t in CATALOG:
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            [SCHEMA, t.name]).fetchall()]
        assert cols == [c.upper() for c in cols], t.name
        expected = {*catalog.CONTEXT_COLUMNS, *catalog.AUDIT_COLUMNS, *t.primary_key,
                    *t.documented_columns, *t.guessed_columns}
        assert expected <= set(cols), (t.name, sorted(expected - set(cols)))
    con.close()


def test_context_and_audit_columns_on_every_row(rendered):
    world, _ = rendered
    con = _ro(world)
    pid = world.practice_id
    for t in CATALOG:
        bad = con.execute(
            f"SELECT count(*) FROM {_q(t.name)} WHERE CONTEXTID IS DISTINCT FROM ? OR CONTEXTNAME IS NULL "
            "OR CONTEXTPARENTCONTEXTID IS NULL OR CREATEDDATETIME IS NULL OR LASTUPDATED IS NULL "
            "OR (DELETEDDATETIME IS NULL) <> (DELETEDBY IS NULL) "
            "OR (DELETEDBY IS NOT NULL AND DELETEDBY <> 'SYSTEM')", [pid]).fetchone()[0]
        assert bad == 0, t.name
    con.close()


def test_primary_keys_unique_per_context(rendered):
    world, _ = rendered
    con = _ro(world)
    for t in CATALOG:
        key = ", ".join(f'"{c}"' for c in t.key_columns)
        nulls = " OR ".join(f'"{c}" IS NULL' for c in t.key_columns)
        dupes = con.execute(f"SELECT count(*) FROM (SELECT {key} FROM {_q(t.name)} GROUP BY ALL "
                            "HAVING count(*) > 1)").fetchone()[0]
        null_keys = con.execute(f"SELECT count(*) FROM {_q(t.name)} WHERE {nulls}").fetchone()[0]
        assert (dupes, null_keys) == (0, 0), t.name
    con.close()


def test_soft_deleted_facts_stay_with_deleted_datetime(rendered):
    world, _ = rendered
    facts = duckdb.connect(str(world.facts_path), read_only=True)
    expected = {
        "PATIENT": "SELECT patient_id, deleted_at FROM patients",
        "APPOINTMENT": "SELECT appointment_id, deleted_at FROM appointments",
        "CLAIMDIAGNOSIS": "SELECT claim_diagnosis_id, deleted_at FROM claim_diagnoses",
        "CLAIM": "SELECT claim_id, deleted_at FROM claims",
        "TRANSACTION": "SELECT transaction_id, deleted_at FROM transactions",
        "CLINICALENCOUNTER": "SELECT encounter_id, deleted_at FROM encounters",
    }
    con = _ro(world)
    for table, sql in expected.items():
        want = sorted(facts.execute(sql).fetchall())
        key = get_table(table).primary_key[0]
        got = sorted(con.execute(f'SELECT "{key}", DELETEDDATETIME FROM {_q(table)}').fetchall())
        assert got == want, table
    facts.close()
    con.close()


def test_transaction_signs(rendered):
    """athenaOne signs: CHARGE positive ($0 for reporting-only codes such as G8431), PAYMENT and
    ADJUSTMENT negative, except reversals and refunds of a credit balance, which add back."""
    world, _ = rendered
    con = _ro(world)
    wrong = con.execute(f"""
        SELECT TRANSACTIONTYPE, TRANSACTIONREASON, REVERSALFLAG, count(*) FROM {_q('TRANSACTION')}
        WHERE (TRANSACTIONTYPE = 'CHARGE' AND REVERSALFLAG = 'N' AND AMOUNT < 0)
           OR (TRANSACTIONTYPE = 'CHARGE' AND REVERSALFLAG = 'Y' AND AMOUNT > 0)
           OR (TRANSACTIONTYPE IN ('PAYMENT', 'ADJUSTMENT') AND REVERSALFLAG = 'N'
               AND TRANSACTIONREASON IS DISTINCT FROM 'REFUND' AND AMOUNT >= 0)
           OR (TRANSACTIONTYPE = 'PAYMENT' AND TRANSACTIONREASON = 'REFUND' AND AMOUNT <= 0)
           OR (TRANSACTIONTYPE IN ('PAYMENT', 'ADJUSTMENT') AND REVERSALFLAG = 'Y' AND AMOUNT <= 0)
           OR (TRANSACTIONTYPE = 'TRANSFEROUT' AND REVERSALFLAG = 'N' AND AMOUNT >= 0)
           OR (TRANSACTIONTYPE = 'TRANSFERIN' AND REVERSALFLAG = 'N' AND AMOUNT <= 0)
           OR REVERSALFLAG NOT IN ('Y', 'N')
        GROUP BY ALL""").fetchall()
    types = {r[0] for r in con.execute(f"SELECT DISTINCT TRANSACTIONTYPE FROM {_q('TRANSACTION')}").fetchall()}
    positive_charges = con.execute(f"SELECT count(*) FROM {_q('TRANSACTION')} "
                                   "WHERE TRANSACTIONTYPE = 'CHARGE' AND AMOUNT > 0").fetchone()[0]
    con.close()
    assert wrong == []
    assert {"CHARGE", "PAYMENT", "ADJUSTMENT"} <= types
    assert positive_charges > 0


def test_ledger_sums_to_claim_outstanding(rendered):
    world, _ = rendered
    con = _ro(world)
    mismatches = con.execute(f"""
        WITH ledger AS (
            SELECT CLAIMID,
                   sum(AMOUNT) AS total,
                   sum(AMOUNT) FILTER (WHERE TRANSACTIONTRANSFERTYPE = 'Primary') AS prim,
                   sum(AMOUNT) FILTER (WHERE TRANSACTIONTRANSFERTYPE = 'Secondary') AS sec,
                   sum(AMOUNT) FILTER (WHERE TRANSACTIONTRANSFERTYPE = 'Patient') AS pat
            FROM {_q('TRANSACTION')} WHERE DELETEDDATETIME IS NULL GROUP BY CLAIMID)
        SELECT c.CLAIMID, l.total, c.PRIMARYOUTSTANDING, c.SECONDARYOUTSTANDING, c.PATIENTOUTSTANDING
        FROM {_q('CLAIM')} c LEFT JOIN ledger l USING (CLAIMID)
        WHERE c.DELETEDDATETIME IS NULL AND (
              coalesce(l.total, 0) <> c.PRIMARYOUTSTANDING + c.SECONDARYOUTSTANDING + c.PATIENTOUTSTANDING
           OR coalesce(l.prim, 0) <> c.PRIMARYOUTSTANDING
           OR coalesce(l.sec, 0) <> c.SECONDARYOUTSTANDING
           OR coalesce(l.pat, 0) <> c.PATIENTOUTSTANDING)
        LIMIT 5""").fetchall()
    con.close()
    assert mismatches == []


def test_references_resolve(rendered):
    """Every id a staging model joins on points at a row that exists (deleted or not)."""
    world, _ = rendered
    checks = {
        "CLAIM.PATIENTID not in PATIENT": ("CLAIM", "PATIENT", "PATIENTID"),
        "TRANSACTION.CLAIMID not in CLAIM": ("TRANSACTION", "CLAIM", "CLAIMID"),
        "CLAIMNOTE.CLAIMID not in CLAIM": ("CLAIMNOTE", "CLAIM", "CLAIMID"),
        "ERARECORD.CLAIMID not in CLAIM": ("ERARECORD", "CLAIM", "CLAIMID"),
        "APPOINTMENT.PATIENTID not in PATIENT": ("APPOINTMENT", "PATIENT", "PATIENTID"),
        "APPOINTMENT.APPOINTMENTTYPEID not in APPOINTMENTTYPE": ("APPOINTMENT", "APPOINTMENTTYPE", "APPOINTMENTTYPEID"),
        "VITALSIGN.CLINICALENCOUNTERID not in CLINICALENCOUNTER":
            ("VITALSIGN", "CLINICALENCOUNTER", "CLINICALENCOUNTERID"),
        "CLINICALRESULTOBSERVATION.CLINICALRESULTID not in CLINICALRESULT":
            ("CLINICALRESULTOBSERVATION", "CLINICALRESULT", "CLINICALRESULTID"),
        "CLINICALRESULT.DOCUMENTID not in DOCUMENT": ("CLINICALRESULT", "DOCUMENT", "DOCUMENTID"),
    }
    con = _ro(world)
    found = {
        label: con.execute(f"SELECT count(*) FROM {_q(child)} WHERE {col} IS NOT NULL AND {col} NOT IN "
                           f"(SELECT {col} FROM {_q(parent)})").fetchone()[0]
        for label, (child, parent, col) in checks.items()
    }
    found["ERAKICK.KICKCODE without KICKREASONID"] = con.execute(
        f"SELECT count(*) FROM {_q('ERAKICK')} WHERE KICKCODE IS NOT NULL AND KICKREASONID IS NULL").fetchone()[0]
    found["CLAIMNOTE.KICKCODE without KICKREASONID"] = con.execute(
        f"SELECT count(*) FROM {_q('CLAIMNOTE')} WHERE KICKCODE IS NOT NULL AND KICKREASONID IS NULL").fetchone()[0]
    con.close()
    assert {k: v for k, v in found.items() if v} == {}


def test_render_is_deterministic(rendered):
    world, counts = rendered
    first = _table_hashes(world)
    assert render_dataview(world) == counts
    assert _table_hashes(world) == first


def test_attaches_read_only_as_athenahealth(rendered):
    world, counts = rendered
    con = duckdb.connect()
    con.execute(f"ATTACH '{world.dataview_path}' AS ATHENAHEALTH (READ_ONLY)")
    assert con.execute("SELECT count(*) FROM ATHENAHEALTH.ATHENAONE.PATIENT").fetchone()[0] == counts["PATIENT"]
    assert con.execute('SELECT count(*) FROM ATHENAHEALTH.ATHENAONE."TRANSACTION"').fetchone()[0] == \
        counts["TRANSACTION"]
    with pytest.raises(duckdb.Error):
        con.execute("DELETE FROM ATHENAHEALTH.ATHENAONE.PATIENT")
    con.close()
    assert sorted(p.name for p in world.root.iterdir() if "dataview" in p.name) == ["dataview.duckdb"]


# --------------------------------------------------------------------------------------------
# Exact figures, on the hand-made world
# --------------------------------------------------------------------------------------------
def test_types_are_what_snowflake_hands_over(hand):
    con = _ro(hand)
    types = dict(con.execute(
        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns").fetchall())
    con.close()
    assert types["PATIENT.PATIENTID"] == "BIGINT"
    assert types["PATIENT.DOB"] == "DATE"
    assert types["PATIENT.LASTUPDATED"] == "TIMESTAMP"
    assert types["TRANSACTION.AMOUNT"] == "DECIMAL(12,2)"
    assert types["CLAIM.PRIMARYOUTSTANDING"] == "DECIMAL(12,2)"
    assert types["TRANSACTION.REVERSALFLAG"] == "VARCHAR"
    assert types["CLINICALRESULTOBSERVATION.RESULT"] == "VARCHAR"
    assert types["VITALSIGN.VALUE"] == "VARCHAR"
    assert types["APPOINTMENT.APPOINTMENTTYPEID"] == "BIGINT"


def test_claim_row_carries_status_balances_and_diagnoses(hand):
    con = _ro(hand)
    row = con.execute(f"""
        SELECT PATIENTID, CLAIMAPPOINTMENTID, CLAIMPRIMARYPATIENTINSID, CLAIMSECONDARYPATIENTINSID,
               RENDERINGPROVIDERID, SERVICEDEPARTMENTID, PRIMARYCLAIMSTATUS, SECONDARYCLAIMSTATUS,
               PATIENTCLAIMSTATUS, PRIMARYOUTSTANDING, SECONDARYOUTSTANDING, PATIENTOUTSTANDING,
               CLAIMSERVICEDATE, LASTBILLEDDATE1, LASTBILLEDDATE2, DIAGNOSIS1, DIAGNOSIS2, DIAGNOSIS3
        FROM {_q('CLAIM')} WHERE CLAIMID = 20000""").fetchone()
    self_pay = con.execute(f"SELECT CLAIMPRIMARYPATIENTINSID, LASTBILLEDDATE1, DIAGNOSIS1 FROM {_q('CLAIM')} "
                           "WHERE CLAIMID = 20002").fetchone()
    first_billed = con.execute(f"SELECT CLAIMID, min(FIRSTBILLEDDATETIME) FROM {_q('TRANSACTION')} "
                               "WHERE TRANSACTIONTYPE = 'CHARGE' GROUP BY CLAIMID ORDER BY CLAIMID").fetchall()
    con.close()
    assert row == (1000, 7000, 5000, 5001, 10, 1, "CLOSED", "BILLED", "BILLED", 0, 5, 5,
                   dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 21), "E11.9", "I10", None)
    assert self_pay == (None, None, "J01.90")
    assert first_billed == [(20000, dt.datetime(2024, 3, 2)), (20001, dt.datetime(2024, 3, 5)), (20002, None)]


def test_transaction_links_charges_payers_and_remits(hand):
    con = _ro(hand)
    charge = con.execute(f"""SELECT AMOUNT, CHARGEID, PARENTCHARGEID, UNITS, TRANSACTIONPATIENTINSID, PROCEDURECODE
                             FROM {_q('TRANSACTION')} WHERE TRANSACTIONID = 30001""").fetchone()
    payment = con.execute(f"""SELECT AMOUNT, CHARGEID, PARENTCHARGEID, UNITS, ERARECORDID, PAYMENTBATCHID,
                                     INSURANCEPACKAGEID, TRANSACTIONPATIENTINSID
                              FROM {_q('TRANSACTION')} WHERE TRANSACTIONID = 31008""").fetchone()
    void = con.execute(f"""SELECT TRANSACTIONID, AMOUNT, VOIDEDDATE, REVERSALFLAG FROM {_q('TRANSACTION')}
                           WHERE TRANSACTIONID IN (31011, 31012) ORDER BY 1""").fetchall()
    con.close()
    assert charge == (45, 30001, 30001, 1, 5000, "83036")
    assert payment == (-25, 30000, 30000, None, 40002, 901, 101, 5001)
    assert void == [(31011, -5, dt.date(2024, 4, 21), "N"), (31012, 5, None, "Y")]


def test_vitals_are_key_value_rows_per_encounter(hand):
    con = _ro(hand)
    rows = con.execute(f"""SELECT ENCOUNTERDATAID, CLINICALENCOUNTERID, "KEY", "VALUE", DISPLAYUNIT
                           FROM {_q('VITALSIGN')} ORDER BY ENCOUNTERDATAID""").fetchall()
    con.close()
    assert rows == [
        (91001, 8000, "VITALS.BLOODPRESSURE.SYSTOLIC", "128", "mmHg"),
        (91002, 8000, "VITALS.BLOODPRESSURE.DIASTOLIC", "82", "mmHg"),
        (91011, 8000, "VITALS.BMI", "27.4", "kg/m2"),
        (91021, 8000, "VITALS.WEIGHT", "80.5", "kg"),
        (91031, 8000, "VITALS.HEIGHT", "175", "cm"),
    ]


def test_lab_results_reach_the_patient_through_document(hand):
    con = _ro(hand)
    rows = con.execute(f"""
        SELECT d.PATIENTID, d.CLINICALENCOUNTERID, o.LOINCID, o.RESULT, o.OBSERVATIONUNITS, o.RESULTSTATUS,
               r.OBSERVATIONDATETIME, o.DELETEDDATETIME IS NOT NULL
        FROM {_q('CLINICALRESULTOBSERVATION')} o
        JOIN {_q('CLINICALRESULT')} r USING (CONTEXTID, CLINICALRESULTID)
        JOIN {_q('DOCUMENT')} d USING (CONTEXTID, DOCUMENTID)
        ORDER BY o.CLINICALOBSERVATIONID""").fetchall()
    con.close()
    assert rows == [
        (1000, 8000, "4548-4", "7.2", "%", "FINAL", dt.datetime(2024, 3, 1, 9, 5), False),
        (1001, 8001, "4548-4", "9.6", "%", "AMENDED", dt.datetime(2024, 3, 4, 10, 5), True),
    ]


def test_appointments_encounters_and_diagnoses(hand):
    con = _ro(hand)
    appts = con.execute(f"""
        SELECT a.APPOINTMENTID, t.APPOINTMENTTYPENAME, a.APPOINTMENTSTATUS, a.NOSHOWYN, a.CLAIMID,
               a.RESCHEDULEDAPPOINTMENTID
        FROM {_q('APPOINTMENT')} a JOIN {_q('APPOINTMENTTYPE')} t USING (CONTEXTID, APPOINTMENTTYPEID)
        WHERE a.APPOINTMENTID IN (7000, 7003, 7005) ORDER BY 1""").fetchall()
    enc = con.execute(f"SELECT CLINICALENCOUNTERID, CLAIMID, APPOINTMENTID FROM {_q('CLINICALENCOUNTER')} "
                      "ORDER BY 1").fetchall()
    dx = con.execute(f"SELECT CLINICALENCOUNTERID, DIAGNOSISCODE, SNOMEDCODE, ORDERING "
                     f"FROM {_q('CLINICALENCOUNTERDIAGNOSIS')} ORDER BY 1, 4").fetchall()
    problems = con.execute(f"SELECT PATIENTPROBLEMID, DIAGNOSISCODE, STATUS, DELETEDBY FROM {_q('PATIENTPROBLEM')} "
                           "ORDER BY 1").fetchall()
    con.close()
    assert appts == [(7000, "Office Visit", "4", "N", 20000, None),
                     (7003, "Follow Up", "x", "N", None, 7001),
                     (7005, "Sick Visit", "o", "Y", None, None)]
    assert enc == [(8000, 20000, 7000), (8001, 20001, 7001), (8002, 20002, 7002), (8003, None, None)]
    assert dx == [(8000, "E11.9", "44054006", 1), (8000, "I10", "59621000", 2), (8001, "J06.9", "54150009", 1)]
    assert problems == [(9000, "E11.9", "ACTIVE", None), (9004, "F41.1", "ACTIVE", "SYSTEM")]


def test_kick_codes_claim_notes_and_era(hand):
    con = _ro(hand)
    note = con.execute(f"""SELECT n.ACTION, n.TRANSFERTYPE, n.CLAIMSTATUS, k.KICKCODE, k.NEXTCLAIMSTATUS,
                                  k.KICKREASONCATEGORY
                           FROM {_q('CLAIMNOTE')} n JOIN {_q('KICKREASON')} k USING (CONTEXTID, KICKREASONID)
                           WHERE n.CLAIMID = 20001 ORDER BY n.CLAIMNOTEID""").fetchall()
    era = con.execute(f"""SELECT e.ERARECORDID, e.PAIDAMOUNT, e.DENIALYN, k.GROUPCODE, k.ADJUSTMENTREASONCODE,
                                 k.KICKCODE, k.KICKEDAMOUNT
                          FROM {_q('ERARECORD')} e JOIN {_q('ERAKICK')} k USING (CONTEXTID, ERARECORDID)
                          WHERE e.CLAIMID = 20001""").fetchall()
    con.close()
    assert note == [("DENIED", "Primary", "HOLD", "AUTHDENY", "HOLD", "authorization"),
                    ("APPEALED", "Primary", "APPEALED", "AIP", "APPEALED", "workflow")]
    assert era == [(40001, 0, "Y", "CO", "197", "AUTHDENY", 220)]


# --------------------------------------------------------------------------------------------
# Writing the file, and the catalogue's naming hook
# --------------------------------------------------------------------------------------------
def _rows_by_key(world: World) -> dict[str, dict[tuple, tuple[str, dt.datetime]]]:
    """Per table: key -> (row as text, LASTUPDATED)."""
    con = _ro(world)
    out = {}
    for t in CATALOG:
        key = ", ".join(f'"{c}"' for c in t.key_columns)
        rows = con.execute(f"SELECT [{key}], CAST(x AS VARCHAR), LASTUPDATED FROM {_q(t.name)} x").fetchall()
        out[t.name] = {tuple(k): (text, ts) for k, text, ts in rows}
    con.close()
    return out


def test_lastupdated_moves_whenever_a_row_changes(tmp_path):
    """An incremental extract keeps ``LASTUPDATED > previous max`` per table: every new or changed row
    must pass that filter, including rows that copy values from other facts (claim ids, billing dates)."""
    world = _hand_world(tmp_path / "w")
    render_dataview(world)
    before = _rows_by_key(world)
    watermark = {name: max(ts for _, ts in rows.values()) for name, rows in before.items()}

    # The practice lives on, as ``sandbox advance`` would make it: claim 20001 is re-submitted after
    # its appeal, and the telehealth encounter 8003 gets its claim.
    later = dt.datetime(2024, 5, 2, 17, 0)
    con = duckdb.connect(str(world.facts_path))
    con.execute("INSERT INTO claim_events VALUES (50008, 20001, 'SUBMITTED', DATE '2024-05-02', 'Primary', 'CIP', "
                "'BILLED', 'Corrected claim', ?, ?, NULL)", [later, later])
    con.execute("UPDATE claims SET updated_at = ?, primary_status = 'BILLED' WHERE claim_id = 20001", [later])
    con.execute("""INSERT INTO claims VALUES (20003, 1000, 8003, NULL, 10, 1, DATE '2024-03-05', DATE '2024-05-02',
                   NULL, 5000, NULL, 100, NULL, 95, FALSE, 'HOLD', 'NONE', 'NONE', 95, 0, 0, ?, ?, NULL)""",
                [later, later])
    con.execute("INSERT INTO claim_lines VALUES (30004, 20003, 1, '99212', 1, 95, ?, ?, NULL)", [later, later])
    con.execute("""INSERT INTO transactions VALUES (30004, 20003, 30004, 1000, 'CHARGE', NULL, 'Primary', 100, 95,
                   DATE '2024-05-02', NULL, NULL, '99212', NULL, FALSE, ?, ?, NULL)""", [later, later])
    con.close()
    render_dataview(world)
    after = _rows_by_key(world)

    missed = {}
    changed_tables = set()
    for name, rows in after.items():
        for key, (text, ts) in rows.items():
            if before[name].get(key, (None,))[0] != text:
                changed_tables.add(name)
                if ts <= watermark[name]:
                    missed.setdefault(name, []).append(key)
    assert missed == {}
    assert {"CLAIM", "CLAIMNOTE", "TRANSACTION", "CLINICALENCOUNTER"} <= changed_tables
    assert after["TRANSACTION"][(PRACTICE_ID, 30002)][1] == later  # its LASTBILLEDDATETIME moved


def test_failed_render_keeps_the_previous_file(tmp_path):
    world = _hand_world(tmp_path / "w")
    render_dataview(world)
    before = world.dataview_path.read_bytes()
    con = duckdb.connect(str(world.facts_path))
    con.execute("DROP TABLE transactions")
    con.close()
    with pytest.raises(duckdb.Error):
        render_dataview(world)
    assert world.dataview_path.read_bytes() == before
    assert sorted(p.name for p in world.root.iterdir() if "dataview" in p.name) == ["dataview.duckdb"]


def test_table_map_renames_upstream_tables(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.TABLE_MAP_ENV, '{"erarecord": "ERA_RECORD", "KICKREASON": "KICK_REASON"}')
    assert upstream_name("ERARECORD") == "ERA_RECORD"
    assert get_table("kickreason").upstream_name() == "KICK_REASON"
    assert upstream_name("CLAIM") == "CLAIM"
    world = _hand_world(tmp_path / "w")
    counts = render_dataview(world, table_map=catalog.table_map())
    con = _ro(world)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    n = con.execute(f"SELECT count(*) FROM {_q('ERA_RECORD')}").fetchone()[0]
    con.close()
    assert {"ERA_RECORD", "KICK_REASON", "CLAIM"} <= names and "ERARECORD" not in names
    assert counts["ERARECORD"] == n == 3


@pytest.mark.parametrize("value, message", [
    ("{not json", "not valid JSON"),
    ('["ERARECORD"]', "must be a JSON object"),
    ('{"ERARECORDS": "X"}', "not a catalogued"),
    ('{"ERARECORD": "ERA; DROP TABLE x"}', "plain identifier"),
])
def test_table_map_rejects_bad_configuration(value, message):
    with pytest.raises(ValueError, match=message):
        upstream_name("ERARECORD", env={catalog.TABLE_MAP_ENV: value})


def test_catalogue_names_follow_the_house_naming():
    claim = get_table("CLAIM")
    assert (claim.source_name, claim.raw_table, claim.staging_model) == (
        "dataview.claim", "raw_dataview.claim", "stg_dataview__claims")
    assert claim.key_columns == ("CONTEXTID", "CLAIMID")
    assert len({t.staging_model for t in CATALOG}) == len(CATALOG)
    assert {t.name for t in catalog.experimental_tables()} == {
        "APPOINTMENTTYPE", "KICKREASON", "CLAIMNOTE", "ERARECORD", "ERAKICK"}
    assert all(t.watermark_column == "LASTUPDATED" and t.soft_delete_column == "DELETEDDATETIME" for t in CATALOG)
    with pytest.raises(KeyError):
        get_table("NOPE")
