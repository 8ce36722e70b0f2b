"""The facts timeline and its materialisation as of the world clock.

``timeline.*`` holds every event up to the horizon, including ones dated after the clock (future
bookings, payments still to come). ``materialize`` derives the public facts tables (``main.*``,
exactly ``facts_schema.py``) as the practice looks at the clock: rows not yet created are absent,
states (appointment status, claim status and balances, amendments, soft deletes) are as of then,
and ``updated_at`` is the latest change visible. ``sandbox advance`` only moves the clock and
re-materialises, so the practice "lives on" consistently and deterministically.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import polars as pl

from athena_pipeline.sandbox.facts_schema import create_statements

# Timeline table -> SQL selecting its columns from the registered polars frame ``src``.
TIMELINE_SELECT: dict[str, str] = {
    "practice": "SELECT * FROM src",
    "departments": "SELECT * EXCLUDE (deleted_at) FROM src",
    "providers": "SELECT * EXCLUDE (deleted_at) FROM src",
    "insurance_packages": "SELECT * EXCLUDE (deleted_at) FROM src",
    "kick_reasons": "SELECT * FROM src",
    "patients": "SELECT * FROM src",
    "patient_insurance": "SELECT * FROM src",
    "appointments": """SELECT appointment_id, patient_id, provider_id, department_id, appointment_type,
        appointment_date::DATE AS appointment_date, start_time::TIMESTAMP AS start_time,
        duration_minutes::INTEGER AS duration_minutes, booked_at::TIMESTAMP AS booked_at, is_no_show, is_cancelled,
        checkin_at::TIMESTAMP AS checkin_at, checkout_at::TIMESTAMP AS checkout_at,
        cancelled_at::TIMESTAMP AS cancelled_at, cancel_reason,
        rescheduled_to_appointment_id, rescheduled_from_appointment_id, t_deleted_at::TIMESTAMP AS t_deleted_at
        FROM src""",
    "encounters": """SELECT encounter_id, appointment_id, patient_id, provider_id, department_id,
        encounter_date::DATE AS encounter_date, start_at::TIMESTAMP AS start_at, end_at::TIMESTAMP AS end_at,
        encounter_type, visit_cpt, closed_at::TIMESTAMP AS closed_at, created_at::TIMESTAMP AS created_at FROM src""",
    "conditions": """SELECT condition_id, patient_id, encounter_id, category, icd10_code, snomed_code, description,
        condition_group, onset_date::DATE AS onset_date, abatement_date::DATE AS abatement_date,
        created_at::TIMESTAMP AS created_at, t_deleted_at::TIMESTAMP AS t_deleted_at FROM src""",
    "observations": """SELECT observation_id, patient_id, encounter_id, category, kind, loinc, display,
        CASE WHEN isnan(value) THEN NULL ELSE value END AS value,
        CASE WHEN isnan(value2) THEN NULL ELSE value2 END AS value2,
        value_code, value_display, unit, effective_at::TIMESTAMP AS effective_at,
        created_at::TIMESTAMP AS created_at, t_update_at::TIMESTAMP AS t_update_at FROM src""",
    "procedures": """SELECT procedure_id, patient_id, encounter_id, kind, code_system, code, display,
        performed_date::DATE AS performed_date, in_fhir, billed, created_at::TIMESTAMP AS created_at FROM src""",
    "immunizations": """SELECT immunization_id, patient_id, NULL::BIGINT AS encounter_id, cvx, display, vaccine_group,
        occurrence_date::DATE AS occurrence_date, 'completed' AS status, created_at::TIMESTAMP AS created_at FROM src""",
    "medication_requests": """SELECT medication_request_id, patient_id, NULL::BIGINT AS encounter_id,
        primary_provider_id AS provider_id, rxnorm, display, med_group, authored_on::DATE AS authored_on,
        'active' AS status, created_at::TIMESTAMP AS created_at FROM src""",
    "allergies": """SELECT allergy_id, patient_id, code_system, code, display, criticality,
        created_at::DATE AS recorded_date, created_at::TIMESTAMP AS created_at FROM src""",
    "claims": """SELECT claim_id, patient_id, encounter_id, appointment_id, provider_id AS rendering_provider_id,
        department_id, encounter_date::DATE AS service_date, created_date::DATE AS created_date,
        submitted_date::DATE AS submitted_date,
        NULLIF(primary_pi, -1) AS primary_patient_insurance_id, NULLIF(secondary_pi, -1) AS secondary_patient_insurance_id,
        NULLIF(primary_pkg, -1) AS primary_insurance_package_id, NULLIF(secondary_pkg, -1) AS secondary_insurance_package_id,
        round(total_charge, 2)::DECIMAL(12,2) AS total_charge, scrub_hold FROM src""",
    "claim_lines": """SELECT charge_id, claim_id, line_number::INTEGER AS line_number, procedure_code,
        1 AS units, round(amount, 2)::DECIMAL(12,2) AS amount, created_date::DATE AS created_date FROM src""",
    "claim_diagnoses": """SELECT claim_diagnosis_id, claim_id, sequence_number, icd10_code,
        created_date::DATE AS created_date FROM src""",
    "ledger": """SELECT claim_id, transaction_type, transaction_reason, transfer_type, NULLIF(pkg, 0)::BIGINT AS pkg,
        round(amount, 2)::DECIMAL(12,2) AS amount, post_date::DATE AS post_date, remit_ref FROM src""",
    "remittances": """SELECT remittance_id, remit_key, claim_id, pkg AS insurance_package_id, payer_role,
        remit_date::DATE AS remit_date, remit_sequence::INTEGER AS remit_sequence,
        round(billed_amount, 2)::DECIMAL(12,2) AS billed_amount, round(allowed_amount, 2)::DECIMAL(12,2) AS allowed_amount,
        round(paid_amount, 2)::DECIMAL(12,2) AS paid_amount,
        round(patient_responsibility, 2)::DECIMAL(12,2) AS patient_responsibility, is_denial FROM src""",
    "remittance_adjustments": """SELECT remittance_adjustment_id, remittance_id, claim_id, group_code, carc,
        round(amount, 2)::DECIMAL(12,2) AS amount, kick_code, remit_date::DATE AS remit_date FROM src""",
    "claim_events": """SELECT claim_event_id, claim_id, event_type, event_date::DATE AS event_date, payer_role,
        kick_code, claim_status, note FROM src""",
}

# Spread claim-level money over charge lines (pro rata; the largest line takes the rounding rest),
# giving athenaOne-style line-level transactions. CHARGE rows keep transaction_id == charge_id.
TRANSACTIONS_SQL = """
CREATE TABLE timeline.transactions AS
WITH lines AS (
    SELECT claim_id, charge_id, amount AS line_amount, procedure_code,
           sum(amount) OVER (PARTITION BY claim_id) AS claim_total,
           row_number() OVER (PARTITION BY claim_id ORDER BY amount DESC, charge_id) AS rk
    FROM timeline.claim_lines WHERE amount > 0
), money AS (
    SELECT l.*, g.transaction_type, g.transaction_reason, g.transfer_type, g.pkg, g.amount AS claim_amount,
           g.post_date, g.remit_ref, g.ledger_seq,
           -- cumulative rounding: a line's running total is always round(running claim total x weight),
           -- so a settled claim leaves every line at exactly zero, not a cent off
           sum(g.amount) OVER (PARTITION BY l.charge_id ORDER BY g.ledger_seq
                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
    FROM timeline.ledger g JOIN lines l USING (claim_id)
    WHERE g.transaction_type <> 'CHARGE'
), shared AS (
    SELECT *, (round(running * line_amount / claim_total, 2)
               - round((running - claim_amount) * line_amount / claim_total, 2))::DECIMAL(12,2) AS share
    FROM money
), fixed AS (
    SELECT *, CASE WHEN rk = 1 THEN claim_amount - (sum(share) OVER (PARTITION BY ledger_seq) - share)
                   ELSE share END AS amount
    FROM shared
), charges AS (
    SELECT cl.charge_id AS transaction_id, cl.claim_id, cl.charge_id, 'CHARGE' AS transaction_type,
           NULL::VARCHAR AS transaction_reason, g.transfer_type, g.pkg, cl.amount, g.post_date,
           NULL::BIGINT AS remit_ref, cl.procedure_code, 0 AS sort_key
    FROM timeline.claim_lines cl JOIN timeline.ledger g ON g.claim_id = cl.claim_id AND g.transaction_type = 'CHARGE'
), others AS (
    SELECT NULL::BIGINT AS transaction_id, claim_id, charge_id, transaction_type, transaction_reason, transfer_type,
           pkg, amount, post_date, remit_ref, procedure_code, ledger_seq AS sort_key
    FROM fixed WHERE amount <> 0
), numbered AS (
    SELECT * REPLACE (coalesce(transaction_id, 20000000 + row_number() OVER (
               ORDER BY post_date, claim_id, sort_key, charge_id)) AS transaction_id)
    FROM (SELECT * FROM charges UNION ALL SELECT * FROM others)
)
SELECT n.transaction_id, n.claim_id, n.charge_id, c.patient_id, n.transaction_type, n.transaction_reason,
       n.transfer_type, n.pkg AS insurance_package_id, n.amount::DECIMAL(12,2) AS amount, n.post_date,
       CASE WHEN n.transaction_type = 'PAYMENT' AND n.transaction_reason NOT IN ('REFUND')
            THEN 5000000 + dense_rank() OVER (ORDER BY n.post_date, coalesce(n.pkg, 0)
                 ) END AS payment_batch_id,
       r.remittance_id, n.procedure_code
FROM numbered n
JOIN timeline.claims c USING (claim_id)
LEFT JOIN timeline.remittances r ON r.remit_key = n.remit_ref
ORDER BY n.transaction_id
"""


def write_timeline(con: duckdb.DuckDBPyConnection, frames: dict[str, pl.DataFrame]) -> None:
    """Write one shard's frames: a table's first shard creates it, later shards append."""
    con.execute("CREATE SCHEMA IF NOT EXISTS timeline")
    existing = {t for (t,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'timeline'").fetchall()}
    for name, sql in TIMELINE_SELECT.items():
        if name not in frames:
            continue
        src = frames[name]  # noqa: F841 - DuckDB's replacement scan reads the local ``src``
        if name == "ledger":
            sql = "SELECT ledger_seq, " + sql.removeprefix("SELECT ")
        con.execute(f"INSERT INTO timeline.{name} {sql}" if name in existing else f"CREATE TABLE timeline.{name} AS {sql}")


def finish_timeline(con: duckdb.DuckDBPyConnection) -> None:
    """Steps over the whole timeline once every shard is in: the line-level ledger."""
    con.execute(TRANSACTIONS_SQL)


def _ts(d: dt.date | dt.datetime) -> str:
    return f"TIMESTAMP '{d.isoformat(sep=' ') if isinstance(d, dt.datetime) else d.isoformat()}'"


def materialize(con: duckdb.DuckDBPyConnection, clock: dt.datetime) -> None:
    """(Re)build ``main.*`` facts as of ``clock`` from ``timeline.*`` (one transaction)."""
    T = _ts(clock)
    D = f"DATE '{clock.date().isoformat()}'"
    ev_ts = "(({d})::TIMESTAMP + INTERVAL 17 HOUR)"  # money/claim events happen during the day
    con.execute("BEGIN")
    for (name,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall():
        con.execute(f"DROP TABLE main.{name}")
    for stmt in create_statements():
        con.execute(stmt)
    ins = lambda table, sql: con.execute(f"INSERT INTO main.{table} {sql}")  # noqa: E731
    ins("practice", "SELECT * FROM timeline.practice")
    for t, key in [("departments", "department_id"), ("providers", "provider_id"),
                   ("insurance_packages", "insurance_package_id")]:
        ins(t, f"SELECT *, NULL AS deleted_at FROM timeline.{t} WHERE created_at <= {T} ORDER BY {key}")
    ins("kick_reasons", "SELECT * FROM timeline.kick_reasons ORDER BY kick_reason_id")
    ins("patients", f"""
        SELECT patient_id, enterprise_id, first_name, last_name, sex, dob, address, city, state, zip,
               CASE WHEN t_update_at <= {T} THEN phone ELSE phone_old END,
               race, ethnicity, language,
               CASE WHEN deceased_date <= {D} THEN 'd' ELSE status END,
               CASE WHEN deceased_date <= {D} THEN deceased_date END,
               primary_provider_id, department_id, registered_date, created_at,
               greatest(created_at, CASE WHEN t_update_at <= {T} THEN t_update_at END,
                        CASE WHEN deceased_date <= {D} THEN deceased_date::TIMESTAMP + INTERVAL 12 HOUR END),
               NULL
        FROM timeline.patients WHERE created_at <= {T} ORDER BY patient_id""")
    ins("patient_insurance", f"""
        SELECT patient_insurance_id, patient_id, insurance_package_id, sequence_number, member_id, issue_date,
               expiration_date, cancellation_date, created_at, updated_at, NULL
        FROM timeline.patient_insurance WHERE created_at <= {T} ORDER BY patient_insurance_id""")
    ins("appointments", f"""
        WITH a AS (
            SELECT t.*, c.created_date AS claim_date,
                   (t.is_cancelled AND t.cancelled_at <= {T}) AS x,
                   (t.start_time > {T}) AS fut
            FROM timeline.appointments t LEFT JOIN timeline.claims c USING (appointment_id)
            WHERE t.booked_at <= {T})
        SELECT appointment_id, patient_id, provider_id, department_id, appointment_type, appointment_date, start_time,
               duration_minutes, booked_at,
               CASE WHEN x THEN 'x' WHEN fut THEN 'f' WHEN is_no_show THEN 'o'
                    WHEN is_cancelled THEN 'f'
                    WHEN claim_date <= {D} THEN '4' WHEN checkout_at <= {T} THEN '3'
                    WHEN checkin_at <= {T} THEN '2' ELSE 'f' END,
               (is_no_show AND NOT fut AND start_time + INTERVAL 2 HOUR <= {T}),
               CASE WHEN checkin_at <= {T} THEN checkin_at END,
               CASE WHEN checkout_at <= {T} THEN checkout_at END,
               CASE WHEN x THEN cancelled_at END, CASE WHEN x THEN cancel_reason END,
               CASE WHEN x THEN rescheduled_to_appointment_id END, rescheduled_from_appointment_id,
               booked_at,
               greatest(booked_at, CASE WHEN checkin_at <= {T} THEN checkin_at END,
                        CASE WHEN checkout_at <= {T} THEN checkout_at END, CASE WHEN x THEN cancelled_at END,
                        CASE WHEN claim_date <= {D} THEN {ev_ts.format(d='claim_date')} END,
                        CASE WHEN is_no_show AND start_time + INTERVAL 2 HOUR <= {T} THEN start_time + INTERVAL 2 HOUR END,
                        CASE WHEN t_deleted_at <= {T} THEN t_deleted_at END),
               CASE WHEN t_deleted_at <= {T} THEN t_deleted_at END
        FROM a ORDER BY appointment_id""")
    ins("encounters", f"""
        SELECT encounter_id, appointment_id, patient_id, provider_id, department_id, encounter_date, start_at, end_at,
               encounter_type, visit_cpt, CASE WHEN closed_at <= {T} THEN 'CLOSED' ELSE 'OPEN' END,
               CASE WHEN closed_at <= {T} THEN closed_at END, created_at,
               CASE WHEN closed_at <= {T} THEN closed_at ELSE created_at END, NULL
        FROM timeline.encounters WHERE created_at <= {T} ORDER BY encounter_id""")
    ins("conditions", f"""
        SELECT condition_id, patient_id, encounter_id, category, icd10_code, snomed_code, description, condition_group,
               onset_date, CASE WHEN abatement_date <= {D} THEN abatement_date END,
               CASE WHEN abatement_date <= {D} THEN 'resolved' ELSE 'active' END, created_at,
               greatest(created_at, CASE WHEN abatement_date <= {D} THEN abatement_date::TIMESTAMP + INTERVAL 9 HOUR END,
                        CASE WHEN t_deleted_at <= {T} THEN t_deleted_at END),
               CASE WHEN t_deleted_at <= {T} THEN t_deleted_at END
        FROM timeline.conditions WHERE created_at <= {T} ORDER BY condition_id""")
    ins("observations", f"""
        SELECT observation_id, patient_id, encounter_id, category, kind, loinc, display, value, value2, value_code,
               value_display, unit, effective_at, CASE WHEN t_update_at <= {T} THEN 'amended' ELSE 'final' END,
               created_at, greatest(created_at, CASE WHEN t_update_at <= {T} THEN t_update_at END), NULL
        FROM timeline.observations WHERE created_at <= {T} ORDER BY observation_id""")
    ins("procedures", f"""
        SELECT procedure_id, patient_id, encounter_id, kind, code_system, code, display, performed_date, in_fhir, billed,
               created_at, created_at, NULL FROM timeline.procedures WHERE created_at <= {T} ORDER BY procedure_id""")
    ins("immunizations", f"""
        SELECT immunization_id, patient_id, encounter_id, cvx, display, vaccine_group, occurrence_date, status,
               created_at, created_at, NULL FROM timeline.immunizations WHERE created_at <= {T} ORDER BY immunization_id""")
    ins("medication_requests", f"""
        SELECT medication_request_id, patient_id, encounter_id, provider_id, rxnorm, display, med_group, authored_on,
               status, created_at, created_at, NULL
        FROM timeline.medication_requests WHERE created_at <= {T} ORDER BY medication_request_id""")
    ins("allergies", f"""
        SELECT allergy_id, patient_id, code_system, code, display, criticality, recorded_date, created_at, created_at, NULL
        FROM timeline.allergies WHERE created_at <= {T} ORDER BY allergy_id""")
    # Money and claim workflow: dated events up to the clock's day.
    ins("transactions", f"""
        SELECT transaction_id, claim_id, charge_id, patient_id, transaction_type, transaction_reason, transfer_type,
               insurance_package_id, amount, post_date, payment_batch_id, remittance_id, procedure_code,
               NULL, FALSE, {ev_ts.format(d='post_date')}, {ev_ts.format(d='post_date')}, NULL
        FROM timeline.transactions WHERE post_date <= {D} ORDER BY transaction_id""")
    ins("remittances", f"""
        SELECT remittance_id, claim_id, insurance_package_id, payer_role, remit_date, remit_sequence, billed_amount,
               allowed_amount, paid_amount, patient_responsibility, is_denial,
               {ev_ts.format(d='remit_date')}, {ev_ts.format(d='remit_date')}, NULL
        FROM timeline.remittances WHERE remit_date <= {D} ORDER BY remittance_id""")
    ins("remittance_adjustments", f"""
        SELECT remittance_adjustment_id, remittance_id, claim_id, group_code, carc, amount, kick_code,
               {ev_ts.format(d='remit_date')}, {ev_ts.format(d='remit_date')}, NULL
        FROM timeline.remittance_adjustments WHERE remit_date <= {D} ORDER BY remittance_adjustment_id""")
    ins("claim_events", f"""
        SELECT claim_event_id, claim_id, event_type, event_date, payer_role, kick_code, claim_status, note,
               {ev_ts.format(d='event_date')}, {ev_ts.format(d='event_date')}, NULL
        FROM timeline.claim_events WHERE event_date <= {D} ORDER BY claim_event_id""")
    ins("claim_lines", f"""
        SELECT charge_id, claim_id, line_number, procedure_code, units, amount,
               {ev_ts.format(d='created_date')}, {ev_ts.format(d='created_date')}, NULL
        FROM timeline.claim_lines WHERE created_date <= {D} ORDER BY charge_id""")
    ins("claim_diagnoses", f"""
        SELECT claim_diagnosis_id, claim_id, sequence_number, icd10_code,
               {ev_ts.format(d='created_date')}, {ev_ts.format(d='created_date')}, NULL
        FROM timeline.claim_diagnoses WHERE created_date <= {D} ORDER BY claim_diagnosis_id""")
    ins("claims", f"""
        WITH bal AS (
            SELECT claim_id,
                   sum(amount) FILTER (WHERE transfer_type = 'Primary') AS p,
                   sum(amount) FILTER (WHERE transfer_type = 'Secondary') AS s,
                   sum(amount) FILTER (WHERE transfer_type = 'Patient') AS pt,
                   max(post_date) AS last_tx
            FROM main.transactions GROUP BY claim_id),
        st AS (
            SELECT claim_id, payer_role, arg_max(claim_status, claim_event_id) AS status, max(event_date) AS last_ev
            FROM main.claim_events GROUP BY claim_id, payer_role),
        piv AS (
            SELECT claim_id,
                   max(status) FILTER (WHERE payer_role = 'Primary') AS ps,
                   max(status) FILTER (WHERE payer_role = 'Secondary') AS ss,
                   max(status) FILTER (WHERE payer_role = 'Patient') AS pts,
                   max(last_ev) AS last_ev
            FROM st GROUP BY claim_id)
        SELECT c.claim_id, c.patient_id, c.encounter_id, c.appointment_id, c.rendering_provider_id, c.department_id,
               c.service_date, c.created_date, CASE WHEN c.submitted_date <= {D} THEN c.submitted_date END,
               c.primary_patient_insurance_id, c.secondary_patient_insurance_id,
               c.primary_insurance_package_id, c.secondary_insurance_package_id, c.total_charge, c.scrub_hold,
               coalesce(CASE WHEN c.primary_insurance_package_id IS NULL THEN 'NONE' END, piv.ps, 'HOLD'),
               coalesce(piv.ss, 'NONE'), coalesce(piv.pts, 'NONE'),
               coalesce(bal.p, 0), coalesce(bal.s, 0), coalesce(bal.pt, 0),
               {ev_ts.format(d='c.created_date')},
               {ev_ts.format(d='greatest(c.created_date, bal.last_tx, piv.last_ev)')}, NULL
        FROM timeline.claims c LEFT JOIN bal USING (claim_id) LEFT JOIN piv USING (claim_id)
        WHERE c.created_date <= {D} ORDER BY c.claim_id""")
    con.execute("COMMIT")
