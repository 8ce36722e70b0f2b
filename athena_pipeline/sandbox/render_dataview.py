"""Rendering A: the world's facts as athenaOne Data View tables, ``<world>/dataview.duckdb``.

Why this shape: the pipeline reads the real Data View from a Snowflake share at
``ATHENAHEALTH.ATHENAONE.<TABLE>``. The sandbox file has one schema, ``ATHENAONE``, with upper-case
table and column names, so ``ATTACH '<world>/dataview.duckdb' AS ATHENAHEALTH (READ_ONLY)`` makes
``SELECT * FROM ATHENAHEALTH.ATHENAONE.PATIENT`` behave like the share. Types are what Snowflake
hands over through Arrow: ids BIGINT, money DECIMAL(12,2), text VARCHAR, DATE, TIMESTAMP (NTZ).

The list of tables comes from :mod:`athena_pipeline.athena.dataview_catalog` (the one place names
live); this module only knows how to compute each one from the facts. Every table:

* carries ``CONTEXTID`` (= practice id), ``CONTEXTNAME`` and ``CONTEXTPARENTCONTEXTID``;
* carries ``CREATEDDATETIME``, ``CREATEDBY``, ``DELETEDDATETIME`` (= facts ``deleted_at``),
  ``DELETEDBY`` (``'SYSTEM'`` when deleted) and ``LASTUPDATED`` (= facts ``updated_at``, or later
  when the row copies a value from another facts row, so the watermark moves whenever the row
  changes), and keeps soft-deleted rows, because the real share does and the extractor must apply
  those deletes;
* is built by one ``CREATE TABLE ... AS SELECT ... ORDER BY <key>`` in DuckDB (no Python row loops),
  so renders are fast and deterministic.

Sandbox simplifications (each also noted in the catalogue): CHARTID = PATIENTID; one provider group
and chart-sharing group (id 1); CLINICALENCOUNTERDIAGNOSIS/PATIENTPROBLEM.DIAGNOSISCODE hold the
ICD-10-CM code directly; CLINICALRESULTOBSERVATION.LOINCID holds the LOINC code; VITALSIGN values
are in the facts' UCUM units. Survey and social-history observations (PHQ, tobacco) and
immunizations, medications, allergies and procedures are FHIR-only in the sandbox.

The file is written next to the world under a temporary name and ``os.replace``-d onto
``dataview.duckdb``, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


from athena_pipeline.sandbox.duck import connect_for_build
from athena_pipeline.athena.dataview_catalog import CATALOG, DataViewTable
from athena_pipeline.sandbox.world import World

SCHEMA = "ATHENAONE"

# Every row's practice context. ``p`` is the one-row facts ``practice`` table, cross-joined.
_CTX = ("p.practice_id AS CONTEXTID, p.name AS CONTEXTNAME, "
        "p.parent_context_id AS CONTEXTPARENTCONTEXTID")


def _audit(alias: str, *also_changed_at: str) -> str:
    """The audit columns from a facts row's created/updated/deleted timestamps.

    ``LASTUPDATED`` is the incremental watermark, so it must move whenever *any* column of the
    Data View row changes. Rows that copy a value from another facts row (a claim id, a billing
    date) pass that row's change time in ``also_changed_at``; ``greatest`` skips NULLs.
    """
    updated = f"greatest({alias}.updated_at, {', '.join(also_changed_at)})" if also_changed_at \
        else f"{alias}.updated_at"
    return (f"{alias}.created_at AS CREATEDDATETIME, 'SYSTEM' AS CREATEDBY, "
            f"{alias}.deleted_at AS DELETEDDATETIME, "
            f"CASE WHEN {alias}.deleted_at IS NOT NULL THEN 'SYSTEM' END AS DELETEDBY, "
            f"{updated} AS LASTUPDATED")


# Reference tables have no audit columns in the facts: they live as long as the practice does.
_REFERENCE_AUDIT = ("p.created_at AS CREATEDDATETIME, 'SYSTEM' AS CREATEDBY, "
                    "CAST(NULL AS TIMESTAMP) AS DELETEDDATETIME, CAST(NULL AS VARCHAR) AS DELETEDBY, "
                    "p.updated_at AS LASTUPDATED")


def _num_text(expr: str) -> str:
    """A DOUBLE as athenaOne shows it in a text column: '120', '7.2' (never '120.0')."""
    return (f"CASE WHEN {expr} IS NULL THEN NULL "
            f"WHEN {expr} = trunc({expr}) THEN CAST(CAST({expr} AS BIGINT) AS VARCHAR) "
            f"ELSE CAST(round({expr}, 2) AS VARCHAR) END")


def _yn(expr: str) -> str:
    return f"CASE WHEN {expr} THEN 'Y' ELSE 'N' END"


# Appointment type ids are a fixed list (stable across ``advance``); a name the list does not
# know gets 100 + its rank among unknown names, which is still deterministic.
_APPOINTMENT_TYPES = ("Office Visit", "New Patient", "Annual Physical", "Well Child", "Telehealth", "Follow Up",
                      "Procedure")
_KNOWN_TYPES_SQL = ", ".join(f"({i}, '{name}')" for i, name in enumerate(_APPOINTMENT_TYPES, start=1))

_RACE_NAMES = {
    "2106-3": "White", "2054-5": "Black or African American", "2028-9": "Asian",
    "1002-5": "American Indian or Alaska Native", "2076-8": "Native Hawaiian or Other Pacific Islander",
    "2131-1": "Other Race",
}
_ETHNICITY_NAMES = {"2135-2": "Hispanic or Latino", "2186-5": "Not Hispanic or Latino"}
_LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "zh": "Chinese", "vi": "Vietnamese", "ko": "Korean",
    "tl": "Tagalog", "ar": "Arabic", "ru": "Russian", "fr": "French", "ht": "Haitian Creole",
    "pt": "Portuguese", "pl": "Polish", "de": "German",
}


def _lookup(expr: str, names: Mapping[str, str]) -> str:
    whens = " ".join(f"WHEN '{code}' THEN '{name}'" for code, name in names.items())
    return f"CASE {expr} {whens} ELSE {expr} END"


# Helper tables, computed once in the connection's TEMP catalogue (never written to the file).
_HELPERS: dict[str, str] = {
    "appointment_types": f"""
        WITH known(id, name) AS (VALUES {_KNOWN_TYPES_SQL}),
        used AS (SELECT DISTINCT appointment_type AS name FROM f.appointments)
        SELECT k.id AS type_id, k.name FROM known k
        UNION ALL
        SELECT 100 + dense_rank() OVER (ORDER BY u.name) AS type_id, u.name
        FROM used u WHERE u.name NOT IN (SELECT name FROM known)""",
    # Claim per appointment / encounter: prefer a live claim, fall back to a deleted one.
    # ``linked_at``: the last time the choice could have changed (a claim created or deleted).
    "claim_by_appointment": """
        SELECT appointment_id, coalesce(min(claim_id) FILTER (WHERE deleted_at IS NULL), min(claim_id)) AS claim_id,
               max(greatest(created_at, deleted_at)) AS linked_at
        FROM f.claims WHERE appointment_id IS NOT NULL GROUP BY appointment_id""",
    "claim_by_encounter": """
        SELECT encounter_id, coalesce(min(claim_id) FILTER (WHERE deleted_at IS NULL), min(claim_id)) AS claim_id,
               max(greatest(created_at, deleted_at)) AS linked_at
        FROM f.claims GROUP BY encounter_id""",
    # Latest (re)submission per payer, from the claim workflow events. A claim reaches the secondary
    # payer by crossover (a Secondary TRANSFERRED event); a Primary TRANSFERRED is a drop to patient.
    "claim_billing": """
        SELECT claim_id,
               max(event_date) FILTER (WHERE payer_role = 'Primary'
                                        AND event_type IN ('SUBMITTED', 'APPEALED')) AS last_billed_1,
               max(event_date) FILTER (WHERE payer_role = 'Secondary'
                                        AND event_type IN ('SUBMITTED', 'APPEALED', 'TRANSFERRED')) AS last_billed_2,
               max(updated_at) FILTER (WHERE payer_role = 'Primary'
                                        AND event_type IN ('SUBMITTED', 'APPEALED')) AS billed_1_changed_at,
               max(updated_at) FILTER (WHERE event_type IN ('SUBMITTED', 'APPEALED', 'TRANSFERRED')) AS billed_changed_at
        FROM f.claim_events WHERE deleted_at IS NULL GROUP BY claim_id""",
    "claim_dx": "SELECT claim_id, "
                + ", ".join(f"max(icd10_code) FILTER (WHERE sequence_number = {i} AND deleted_at IS NULL) AS dx{i}"
                            for i in range(1, 9))
                + ", max(updated_at) AS dx_changed_at FROM f.claim_diagnoses GROUP BY claim_id",
    "kick_by_code": "SELECT kick_code, min(kick_reason_id) AS kick_reason_id FROM f.kick_reasons GROUP BY kick_code",
}

_PRACTICE = "CROSS JOIN f.practice p"

# One SELECT per catalogued table, producing its columns in Data View order.
_SELECTS: dict[str, str] = {
    "PATIENT": f"""
        SELECT {_CTX},
               t.patient_id AS PATIENTID, t.enterprise_id AS ENTERPRISEID,
               t.first_name AS FIRSTNAME, t.last_name AS LASTNAME, t.sex AS SEX, t.dob AS DOB,
               t.address AS ADDRESS, t.city AS CITY, t.state AS STATE, t.zip AS ZIP,
               t.phone AS PATIENTHOMEPHONE,
               {_lookup('t.race', _RACE_NAMES)} AS RACE, t.race AS CDCRACECODE,
               {_lookup('t.ethnicity', _ETHNICITY_NAMES)} AS ETHNICITY, t.ethnicity AS CDCETHNICITYCODE,
               {_lookup('t.language', _LANGUAGE_NAMES)} AS LANGUAGE,
               t.status AS PATIENTSTATUS, t.deceased_date AS DECEASEDDATE,
               t.registered_date AS REGISTRATIONDATE, t.department_id AS REGISTRATIONDEPARTMENTID,
               t.department_id AS CURRENTDEPARTMENTID, t.primary_provider_id AS PRIMARYPROVIDERID,
               CAST(1 AS BIGINT) AS PROVIDERGROUPID, CAST(NULL AS BIGINT) AS NEWPATIENTID,
               'N' AS TESTPATIENTYN,
               {_audit('t')}
        FROM f.patients t {_PRACTICE}""",
    "PROVIDER": f"""
        SELECT {_CTX},
               t.provider_id AS PROVIDERID, t.npi AS PROVIDERNPINUMBER,
               t.first_name AS PROVIDERFIRSTNAME, t.last_name AS PROVIDERLASTNAME, t.sex AS PROVIDERSEX,
               t.provider_type AS PROVIDERTYPE, t.specialty AS SPECIALTY, t.taxonomy_code AS TAXONOMY,
               CAST(1 AS BIGINT) AS PROVIDERGROUPID, CAST(NULL AS BIGINT) AS SUPERVISINGPROVIDERID,
               {_yn('t.billable')} AS BILLABLEYN,
               {_audit('t')}
        FROM f.providers t {_PRACTICE}""",
    "DEPARTMENT": f"""
        SELECT {_CTX},
               t.department_id AS DEPARTMENTID, t.name AS DEPARTMENTNAME, t.billing_name AS BILLINGNAME,
               t.address AS DEPARTMENTADDRESS, t.city AS DEPARTMENTCITY, t.state AS DEPARTMENTSTATE,
               t.zip AS DEPARTMENTZIP, t.phone AS DEPARTMENTPHONE, t.specialty AS DEPARTMENTSPECIALTY,
               t.place_of_service_code AS PLACEOFSERVICECODE,
               CAST(1 AS BIGINT) AS PROVIDERGROUPID, CAST(1 AS BIGINT) AS CHARTSHARINGGROUPID,
               {_audit('t')}
        FROM f.departments t {_PRACTICE}""",
    "INSURANCEPACKAGE": f"""
        SELECT {_CTX},
               t.insurance_package_id AS INSURANCEPACKAGEID, t.name AS INSURANCEPACKAGENAME,
               t.package_type AS INSURANCEPACKAGETYPE, t.product_type AS INSURANCEPRODUCTTYPE,
               t.reporting_category AS INSURANCEREPORTINGCATEGORY,
               t.payer_name AS PAYERNAME, t.payer_id AS PAYERID,
               {_audit('t')}
        FROM f.insurance_packages t {_PRACTICE}""",
    "PATIENTINSURANCE": f"""
        SELECT {_CTX},
               t.patient_insurance_id AS PATIENTINSURANCEID, t.patient_id AS PATIENTID,
               t.insurance_package_id AS INSURANCEPACKAGEID,
               CAST(t.sequence_number AS BIGINT) AS SEQUENCENUMBER, t.member_id AS INSURANCEIDNUMBER,
               t.issue_date AS ISSUEDATE, t.expiration_date AS EXPIRATIONDATE,
               t.cancellation_date AS CANCELLATIONDATE,
               {_audit('t')}
        FROM f.patient_insurance t {_PRACTICE}""",
    "APPOINTMENTTYPE": f"""
        SELECT {_CTX},
               CAST(t.type_id AS BIGINT) AS APPOINTMENTTYPEID, t.name AS APPOINTMENTTYPENAME,
               {_REFERENCE_AUDIT}
        FROM appointment_types t {_PRACTICE}""",
    "APPOINTMENT": f"""
        SELECT {_CTX},
               t.appointment_id AS APPOINTMENTID, t.patient_id AS PATIENTID,
               t.department_id AS DEPARTMENTID, t.provider_id AS PROVIDERID,
               CAST(ty.type_id AS BIGINT) AS APPOINTMENTTYPEID,
               t.appointment_date AS APPOINTMENTDATE, t.start_time AS APPOINTMENTSTARTTIME,
               CAST(t.duration_minutes AS BIGINT) AS APPOINTMENTDURATION,
               t.status AS APPOINTMENTSTATUS, {_yn('t.is_no_show')} AS NOSHOWYN,
               t.booked_at AS APPOINTMENTSCHEDULEDDATETIME,
               t.checkin_at AS APPOINTMENTCHECKINDATETIME, t.checkout_at AS APPOINTMENTCHECKOUTDATETIME,
               t.cancelled_at AS APPOINTMENTCANCELLEDDATETIME, t.cancel_reason AS APPOINTMENTCANCELREASON,
               t.rescheduled_to_appointment_id AS RESCHEDULEDAPPOINTMENTID,
               CASE WHEN t.rescheduled_to_appointment_id IS NOT NULL THEN t.cancelled_at END
                   AS RESCHEDULEDDATETIME,
               ca.claim_id AS CLAIMID,
               {_audit('t', 'ca.linked_at')}
        FROM f.appointments t {_PRACTICE}
        JOIN appointment_types ty ON ty.name = t.appointment_type
        LEFT JOIN claim_by_appointment ca ON ca.appointment_id = t.appointment_id""",
    "CLINICALENCOUNTER": f"""
        SELECT {_CTX},
               t.encounter_id AS CLINICALENCOUNTERID, t.patient_id AS PATIENTID, t.patient_id AS CHARTID,
               t.appointment_id AS APPOINTMENTID, t.department_id AS DEPARTMENTID, ce.claim_id AS CLAIMID,
               t.provider_id AS PROVIDERID, t.encounter_date AS ENCOUNTERDATE,
               t.start_at AS ENCOUNTERDATETIMEUTC, t.status AS ENCOUNTERSTATUS,
               t.encounter_type AS CLINICALENCOUNTERTYPE, t.closed_at AS CLOSEDDATETIME,
               t.updated_at AS LASTMODIFIED,
               {_audit('t', 'ce.linked_at')}
        FROM f.encounters t {_PRACTICE}
        LEFT JOIN claim_by_encounter ce ON ce.encounter_id = t.encounter_id""",
    "CLINICALENCOUNTERDIAGNOSIS": f"""
        SELECT {_CTX},
               t.condition_id AS CLINICALENCOUNTERDXID, t.encounter_id AS CLINICALENCOUNTERID,
               t.icd10_code AS DIAGNOSISCODE, t.description AS DIAGNOSISCODEDESCRIPTION,
               t.snomed_code AS SNOMEDCODE, upper(t.clinical_status) AS STATUS,
               CAST(row_number() OVER (PARTITION BY t.encounter_id ORDER BY t.condition_id) AS BIGINT)
                   AS ORDERING,
               {_audit('t')}
        FROM f.conditions t {_PRACTICE}
        WHERE t.category = 'encounter-diagnosis' AND t.encounter_id IS NOT NULL""",
    "PATIENTPROBLEM": f"""
        SELECT {_CTX},
               t.condition_id AS PATIENTPROBLEMID, t.patient_id AS PATIENTID, t.patient_id AS CHARTID,
               t.icd10_code AS DIAGNOSISCODE, t.description AS DIAGNOSISCODEDESCRIPTION,
               t.snomed_code AS SNOMEDCODE, upper(t.clinical_status) AS STATUS,
               t.onset_date AS ONSETDATE, CAST(t.abatement_date AS TIMESTAMP) AS DEACTIVATEDDATETIME,
               t.updated_at AS LASTMODIFIEDDATETIME,
               {_audit('t')}
        FROM f.conditions t {_PRACTICE}
        WHERE t.category = 'problem-list-item'""",
    "DOCUMENT": f"""
        SELECT {_CTX},
               t.observation_id AS DOCUMENTID, t.patient_id AS PATIENTID, t.patient_id AS CHARTID,
               e.department_id AS DEPARTMENTID, t.encounter_id AS CLINICALENCOUNTERID,
               'LABRESULT' AS DOCUMENTCLASS, 'LAB' AS CLINICALORDERTYPEGROUP, t.display AS DOCUMENTSUBJECT,
               'CLOSED' AS STATUS, t.effective_at AS OBSERVATIONDATETIME,
               {_audit('t')}
        FROM f.observations t {_PRACTICE}
        LEFT JOIN f.encounters e ON e.encounter_id = t.encounter_id
        WHERE t.category = 'laboratory'""",
    "CLINICALRESULT": f"""
        SELECT {_CTX},
               t.observation_id AS CLINICALRESULTID, t.observation_id AS DOCUMENTID,
               'LAB' AS CLINICALORDERTYPEGROUP,
               greatest(t.created_at, t.effective_at) AS RESULTSREPORTEDDATETIME,
               t.effective_at AS OBSERVATIONDATETIME,
               {_audit('t')}
        FROM f.observations t {_PRACTICE}
        WHERE t.category = 'laboratory'""",
    "CLINICALRESULTOBSERVATION": f"""
        SELECT {_CTX},
               t.observation_id AS CLINICALOBSERVATIONID, t.observation_id AS CLINICALRESULTID,
               t.loinc AS LOINCID, t.loinc AS OBSERVATIONIDENTIFIER, t.display AS OBSERVATIONIDENTIFIERTEXT,
               t.loinc AS OBSERVATIONIDENTIFIERLOINC,
               coalesce({_num_text('t.value')}, t.value_display, t.value_code) AS RESULT,
               t.unit AS OBSERVATIONUNITS, CAST(NULL AS VARCHAR) AS REFERENCERANGE,
               CAST(NULL AS VARCHAR) AS OBSERVATIONABNORMALFLAGID, upper(t.status) AS RESULTSTATUS,
               t.effective_at AS OBSERVATIONTIMESTAMPDATETIME, t.updated_at AS LASTMODIFIEDDATETIME,
               {_audit('t')}
        FROM f.observations t {_PRACTICE}
        WHERE t.category = 'laboratory'""",
    # Blood pressure is one facts row (value = systolic, value2 = diastolic) and two VITALSIGN rows;
    # ENCOUNTERDATAID = observation_id * 10 + component keeps both stable across ``advance``.
    "VITALSIGN": f"""
        WITH v AS (
            SELECT t.*, 1 AS component,
                   CASE t.kind WHEN 'bp' THEN 'VITALS.BLOODPRESSURE.SYSTOLIC' ELSE 'VITALS.' || upper(t.kind) END
                       AS vital_key,
                   t.value AS reading
            FROM f.observations t WHERE t.category = 'vital-signs'
            UNION ALL
            SELECT t.*, 2, 'VITALS.BLOODPRESSURE.DIASTOLIC', t.value2
            FROM f.observations t WHERE t.category = 'vital-signs' AND t.kind = 'bp'
        )
        SELECT {_CTX},
               t.observation_id * 10 + t.component AS ENCOUNTERDATAID,
               t.encounter_id AS CLINICALENCOUNTERID, t.vital_key AS "KEY",
               {_num_text('t.reading')} AS "VALUE",
               {_num_text('t.reading')} AS DISPLAYVALUE,
               CASE t.unit WHEN 'mm[Hg]' THEN 'mmHg' ELSE t.unit END AS DISPLAYUNIT,
               t.unit AS DBUNIT, t.effective_at AS OBSERVATIONDATETIME,
               {_audit('t')}
        FROM v t {_PRACTICE}""",
    "CLAIM": f"""
        SELECT {_CTX},
               t.claim_id AS CLAIMID, t.patient_id AS PATIENTID, t.appointment_id AS CLAIMAPPOINTMENTID,
               t.primary_patient_insurance_id AS CLAIMPRIMARYPATIENTINSID,
               t.secondary_patient_insurance_id AS CLAIMSECONDARYPATIENTINSID,
               t.rendering_provider_id AS RENDERINGPROVIDERID, t.department_id AS SERVICEDEPARTMENTID,
               t.primary_status AS PRIMARYCLAIMSTATUS, t.secondary_status AS SECONDARYCLAIMSTATUS,
               t.patient_status AS PATIENTCLAIMSTATUS,
               t.primary_outstanding AS PRIMARYOUTSTANDING, t.secondary_outstanding AS SECONDARYOUTSTANDING,
               t.patient_outstanding AS PATIENTOUTSTANDING,
               t.service_date AS CLAIMSERVICEDATE,
               CASE WHEN CAST(t.created_at AS DATE) = t.created_date THEN t.created_at
                    ELSE CAST(t.created_date AS TIMESTAMP) END AS CLAIMCREATEDDATETIME,
               coalesce(b.last_billed_1, t.submitted_date) AS LASTBILLEDDATE1,
               b.last_billed_2 AS LASTBILLEDDATE2,
               {", ".join(f"dx.dx{i} AS DIAGNOSIS{i}" for i in range(1, 9))},
               t.updated_at AS LASTMODIFIED,
               {_audit('t', 'b.billed_changed_at', 'dx.dx_changed_at')}
        FROM f.claims t {_PRACTICE}
        LEFT JOIN claim_billing b ON b.claim_id = t.claim_id
        LEFT JOIN claim_dx dx ON dx.claim_id = t.claim_id""",
    "CLAIMDIAGNOSIS": f"""
        SELECT {_CTX},
               t.claim_diagnosis_id AS CLAIMDIAGNOSISID, t.claim_id AS CLAIMID,
               t.icd10_code AS DIAGNOSISCODE, CAST(t.sequence_number AS BIGINT) AS SEQUENCENUMBER,
               'ICD10' AS DIAGNOSISCODESETNAME,
               {_audit('t')}
        FROM f.claim_diagnoses t {_PRACTICE}""",
    # The ledger. Facts amounts are already signed as athenaOne signs them. CHARGEID and
    # PARENTCHARGEID are the charge (claim line) the row applies to; a CHARGE row is its own charge.
    "TRANSACTION": f"""
        SELECT {_CTX},
               t.transaction_id AS TRANSACTIONID, t.transaction_type AS TRANSACTIONTYPE,
               t.transaction_reason AS TRANSACTIONREASON, t.transfer_type AS TRANSACTIONTRANSFERTYPE,
               t.amount AS AMOUNT, t.charge_id AS CHARGEID, t.charge_id AS PARENTCHARGEID,
               t.claim_id AS CLAIMID, t.patient_id AS PATIENTID,
               t.insurance_package_id AS INSURANCEPACKAGEID,
               CASE t.transfer_type WHEN 'Primary' THEN c.primary_patient_insurance_id
                                    WHEN 'Secondary' THEN c.secondary_patient_insurance_id END
                   AS TRANSACTIONPATIENTINSID,
               t.payment_batch_id AS PAYMENTBATCHID, t.remittance_id AS ERARECORDID,
               t.post_date AS POSTDATE, t.voided_date AS VOIDEDDATE, {_yn('t.reversal_flag')} AS REVERSALFLAG,
               t.procedure_code AS PROCEDURECODE,
               CASE WHEN t.transaction_type = 'CHARGE' THEN CAST(l.units AS BIGINT) END AS UNITS,
               c.service_date AS CHARGEFROMDATE, c.service_date AS CHARGETODATE,
               CASE WHEN t.transaction_type = 'CHARGE' THEN CAST(c.submitted_date AS TIMESTAMP) END
                   AS FIRSTBILLEDDATETIME,
               CASE WHEN t.transaction_type = 'CHARGE'
                    THEN CAST(coalesce(b.last_billed_1, c.submitted_date) AS TIMESTAMP) END
                   AS LASTBILLEDDATETIME,
               t.created_at AS TRANSACTIONCREATEDDATETIME,
               {_audit('t', "CASE WHEN t.transaction_type = 'CHARGE' THEN b.billed_1_changed_at END")}
        FROM f.transactions t {_PRACTICE}
        LEFT JOIN f.claims c ON c.claim_id = t.claim_id
        LEFT JOIN f.claim_lines l ON l.charge_id = t.charge_id
        LEFT JOIN claim_billing b ON b.claim_id = t.claim_id""",
    "KICKREASON": f"""
        SELECT {_CTX},
               t.kick_reason_id AS KICKREASONID, t.kick_code AS KICKCODE, t.name AS KICKREASONNAME,
               CAST(dense_rank() OVER (ORDER BY t.category) AS BIGINT) AS KICKREASONCATEGORYID,
               t.category AS KICKREASONCATEGORY, t.next_claim_status AS NEXTCLAIMSTATUS,
               {_REFERENCE_AUDIT}
        FROM f.kick_reasons t {_PRACTICE}""",
    "CLAIMNOTE": f"""
        SELECT {_CTX},
               t.claim_event_id AS CLAIMNOTEID, t.claim_id AS CLAIMID, c.patient_id AS PATIENTID,
               t.event_type AS ACTION, t.event_date AS NOTEDATE, t.payer_role AS TRANSFERTYPE,
               k.kick_reason_id AS KICKREASONID, t.kick_code AS KICKCODE,
               t.claim_status AS CLAIMSTATUS, t.note AS NOTE,
               {_audit('t')}
        FROM f.claim_events t {_PRACTICE}
        LEFT JOIN f.claims c ON c.claim_id = t.claim_id
        LEFT JOIN kick_by_code k ON k.kick_code = t.kick_code""",
    "ERARECORD": f"""
        SELECT {_CTX},
               t.remittance_id AS ERARECORDID, t.claim_id AS CLAIMID, c.patient_id AS PATIENTID,
               t.insurance_package_id AS INSURANCEPACKAGEID, t.payer_role AS TRANSFERTYPE,
               t.remit_date AS REMITDATE, CAST(t.remit_sequence AS BIGINT) AS REMITSEQUENCE,
               t.billed_amount AS BILLEDAMOUNT, t.allowed_amount AS ALLOWEDAMOUNT,
               t.paid_amount AS PAIDAMOUNT, t.patient_responsibility AS PATIENTRESPONSIBILITYAMOUNT,
               {_yn('t.is_denial')} AS DENIALYN,
               {_audit('t')}
        FROM f.remittances t {_PRACTICE}
        LEFT JOIN f.claims c ON c.claim_id = t.claim_id""",
    "ERAKICK": f"""
        SELECT {_CTX},
               t.remittance_adjustment_id AS ERAKICKID, t.remittance_id AS ERARECORDID,
               t.claim_id AS CLAIMID, t.group_code AS GROUPCODE, t.carc AS ADJUSTMENTREASONCODE,
               t.kick_code AS KICKCODE, k.kick_reason_id AS KICKREASONID, t.amount AS KICKEDAMOUNT,
               {_audit('t')}
        FROM f.remittance_adjustments t {_PRACTICE}
        LEFT JOIN kick_by_code k ON k.kick_code = t.kick_code""",
}


def rendered_table_names() -> list[str]:
    """The logical tables this renderer knows how to build (must equal the catalogue)."""
    return list(_SELECTS)


def _check_catalogue() -> None:
    catalogued = {t.name for t in CATALOG}
    known = set(_SELECTS)
    if catalogued != known:
        raise RuntimeError(
            "Data View catalogue and renderer disagree: "
            f"catalogued but not rendered {sorted(catalogued - known)}, "
            f"rendered but not catalogued {sorted(known - catalogued)}"
        )


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _create_statement(entry: DataViewTable, physical: str) -> str:
    # A world is one practice, so CONTEXTID is constant and ordering by the rest of the key is
    # ordering by the key (and measurably cheaper on the multi-million-row ledger).
    order = ", ".join(_quote(c) for c in entry.primary_key)
    return (f"CREATE TABLE {SCHEMA}.{_quote(physical)} AS\n"
            f"SELECT * FROM ({_SELECTS[entry.name]}\n) ORDER BY {order}")


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def render_dataview(world: World, *, table_map: Mapping[str, str] | None = None) -> dict[str, int]:
    """Write ``<world>/dataview.duckdb`` from ``<world>/facts.duckdb``; return rows per logical table.

    ``table_map`` (logical -> physical name, e.g. from ``dataview_catalog.table_map()``) renames
    tables in the file, so the extractor's ``DATAVIEW_TABLE_MAP`` hook can be exercised end to end.
    By default the file uses the logical names, whatever the environment says: a world is a
    function of its options only.
    """
    _check_catalogue()
    facts = world.facts_path
    if not facts.exists():
        raise FileNotFoundError(f"{facts} not found: generate the world first")
    physical = {t.name: (table_map or {}).get(t.name, t.name) for t in CATALOG}
    if len({n.upper() for n in physical.values()}) != len(physical):
        raise ValueError("table_map maps two Data View tables onto the same name")

    final = world.dataview_path
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    _remove(tmp)
    counts: dict[str, int] = {}
    try:
        con = connect_for_build(tmp)
        try:
            con.execute(f"ATTACH {_sql_string(str(facts))} AS f (READ_ONLY)")
            con.execute(f"CREATE SCHEMA {SCHEMA}")
            for name, sql in _HELPERS.items():
                con.execute(f"CREATE TEMP TABLE {name} AS {sql}")
            for entry in CATALOG:
                con.execute(_create_statement(entry, physical[entry.name]))
                row = con.execute(f"SELECT count(*) FROM {SCHEMA}.{_quote(physical[entry.name])}").fetchone()
                counts[entry.name] = int(row[0]) if row else 0
            con.execute("DETACH f")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        # A WAL left by some earlier crashed writer would be replayed onto the new file: drop it.
        final.with_name(final.name + ".wal").unlink(missing_ok=True)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    return counts
