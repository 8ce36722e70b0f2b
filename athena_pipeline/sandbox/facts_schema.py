"""The sandbox world's underlying facts: one DuckDB file, ``<world>/facts.duckdb``.

Why a facts layer: the sandbox renders the *same* practice two ways (athenaOne Data View
tables and FHIR R4 resources). Both renderings are pure SQL over these tables, so they can
never disagree about a patient, a visit or a claim, and ``sandbox advance`` only has to
change facts and re-render.

Conventions
- Ids are BIGINT, unique per table, stable across ``advance`` (new rows get new ids).
- Timestamps are naive UTC (TIMESTAMP); dates are DATE.
- Every mutable table carries ``created_at``, ``updated_at`` (moves whenever the row
  changes, drives Data View LASTUPDATED and FHIR meta.lastUpdated) and ``deleted_at``
  (soft delete; NULL = live).
- Codes are real codes from public code systems (see ``codes.py``).
"""

from __future__ import annotations

AUDIT_COLUMNS = """
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP"""

FACT_TABLES: dict[str, str] = {
    # One row: the practice (athenaOne CONTEXTID = practice_id).
    "practice": """
    practice_id BIGINT PRIMARY KEY,
    name VARCHAR NOT NULL,
    parent_context_id BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL""",
    "departments": f"""
    department_id BIGINT PRIMARY KEY,
    name VARCHAR NOT NULL,
    billing_name VARCHAR NOT NULL,
    specialty VARCHAR NOT NULL,            -- e.g. 'Family Medicine', 'Pediatrics'
    address VARCHAR NOT NULL, city VARCHAR NOT NULL, state VARCHAR NOT NULL, zip VARCHAR NOT NULL,
    phone VARCHAR NOT NULL,
    place_of_service_code VARCHAR NOT NULL, -- CMS POS, '11' office
    {AUDIT_COLUMNS}""",
    "providers": f"""
    provider_id BIGINT PRIMARY KEY,
    npi VARCHAR NOT NULL,                   -- 10 digits, valid Luhn check digit (prefix 80840)
    first_name VARCHAR NOT NULL, last_name VARCHAR NOT NULL,
    sex VARCHAR NOT NULL,                   -- 'M' | 'F'
    provider_type VARCHAR NOT NULL,         -- 'MD' | 'DO' | 'NP' | 'PA'
    specialty VARCHAR NOT NULL,             -- e.g. 'Family Medicine'
    taxonomy_code VARCHAR NOT NULL,         -- NUCC taxonomy
    department_id BIGINT NOT NULL,          -- home department
    billable BOOLEAN NOT NULL,
    {AUDIT_COLUMNS}""",
    # Payers as athenaOne insurance packages.
    "insurance_packages": f"""
    insurance_package_id BIGINT PRIMARY KEY,
    name VARCHAR NOT NULL,                  -- 'Medicare Part B', 'Aetna PPO', 'Self Pay', ...
    payer_name VARCHAR NOT NULL,
    package_type VARCHAR NOT NULL,          -- 'Medicare' | 'Medicaid' | 'Commercial' | 'Self-Pay'
    product_type VARCHAR NOT NULL,          -- 'Medicare', 'HMO', 'PPO', 'Medicaid', 'Self-Pay'
    reporting_category VARCHAR NOT NULL,    -- 'Medicare' | 'Medicaid' | 'Commercial' | 'Self-Pay'
    payer_id VARCHAR NOT NULL,              -- clearinghouse payer id
    {AUDIT_COLUMNS}""",
    "patients": f"""
    patient_id BIGINT PRIMARY KEY,
    enterprise_id BIGINT NOT NULL,
    first_name VARCHAR NOT NULL, last_name VARCHAR NOT NULL,
    sex VARCHAR NOT NULL,                   -- 'M' | 'F'
    dob DATE NOT NULL,
    address VARCHAR NOT NULL, city VARCHAR NOT NULL, state VARCHAR NOT NULL, zip VARCHAR NOT NULL,
    phone VARCHAR NOT NULL,
    race VARCHAR NOT NULL,                  -- CDC race code, e.g. '2106-3'
    ethnicity VARCHAR NOT NULL,             -- CDC ethnicity code, '2135-2' | '2186-5'
    language VARCHAR NOT NULL,              -- BCP-47, 'en' | 'es' | ...
    status VARCHAR NOT NULL,                -- 'a' active | 'i' inactive | 'd' deceased
    deceased_date DATE,
    primary_provider_id BIGINT NOT NULL,
    department_id BIGINT NOT NULL,          -- current (home) department
    registered_date DATE NOT NULL,
    {AUDIT_COLUMNS}""",
    "patient_insurance": f"""
    patient_insurance_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    insurance_package_id BIGINT NOT NULL,
    sequence_number INTEGER NOT NULL,       -- 1 primary, 2 secondary
    member_id VARCHAR NOT NULL,
    issue_date DATE NOT NULL,
    expiration_date DATE,
    cancellation_date DATE,
    {AUDIT_COLUMNS}""",
    "appointments": f"""
    appointment_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    provider_id BIGINT NOT NULL,
    department_id BIGINT NOT NULL,
    appointment_type VARCHAR NOT NULL,      -- 'Office Visit' | 'New Patient' | 'Annual Physical' | 'Well Child' | 'Telehealth' | 'Follow Up'
    appointment_date DATE NOT NULL,
    start_time TIMESTAMP NOT NULL,
    duration_minutes INTEGER NOT NULL,
    booked_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,                -- athena: 'f' future | 'x' cancelled | '2' checked in | '3' checked out | '4' charge entered | 'o' open (no-show when past)
    is_no_show BOOLEAN NOT NULL,
    checkin_at TIMESTAMP,
    checkout_at TIMESTAMP,
    cancelled_at TIMESTAMP,
    cancel_reason VARCHAR,                  -- 'PATIENT CANCELLED' | 'PROVIDER UNAVAILABLE' | 'RESCHEDULED' | ...
    rescheduled_to_appointment_id BIGINT,   -- set on the cancelled original when rescheduled
    rescheduled_from_appointment_id BIGINT, -- set on the new booking
    {AUDIT_COLUMNS}""",
    "encounters": f"""
    encounter_id BIGINT PRIMARY KEY,
    appointment_id BIGINT,                  -- NULL for encounters without an appointment (rare)
    patient_id BIGINT NOT NULL,
    provider_id BIGINT NOT NULL,
    department_id BIGINT NOT NULL,
    encounter_date DATE NOT NULL,
    start_at TIMESTAMP NOT NULL,
    end_at TIMESTAMP NOT NULL,
    encounter_type VARCHAR NOT NULL,        -- 'VISIT' | 'PREVENTIVE' | 'TELEHEALTH' | 'PROCEDURE'
    visit_cpt VARCHAR NOT NULL,             -- E/M or preventive CPT billed for the visit (99213, 99396, ...)
    status VARCHAR NOT NULL,                -- 'CLOSED' | 'OPEN'
    closed_at TIMESTAMP,
    {AUDIT_COLUMNS}""",
    # Problem-list entries and encounter diagnoses.
    "conditions": f"""
    condition_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    encounter_id BIGINT,                    -- NULL for problem-list entries
    category VARCHAR NOT NULL,              -- 'problem-list-item' | 'encounter-diagnosis'
    icd10_code VARCHAR NOT NULL,            -- with the dot, e.g. 'E11.9'
    snomed_code VARCHAR,                    -- SNOMED CT concept where one is mapped
    description VARCHAR NOT NULL,
    condition_group VARCHAR NOT NULL,       -- grouping used by the generator, e.g. 'diabetes', 'hospice' (see codes.py)
    onset_date DATE NOT NULL,
    abatement_date DATE,
    clinical_status VARCHAR NOT NULL,       -- 'active' | 'resolved'
    {AUDIT_COLUMNS}""",
    # Vitals, labs, screenings. Blood pressure is ONE row with value (systolic) and value2 (diastolic).
    "observations": f"""
    observation_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    encounter_id BIGINT,
    category VARCHAR NOT NULL,              -- 'vital-signs' | 'laboratory' | 'survey' | 'social-history'
    kind VARCHAR NOT NULL,                  -- 'bp' | 'bmi' | 'weight' | 'height' | 'hba1c' | 'phq9' | 'phqa' | 'tobacco'
    loinc VARCHAR NOT NULL,                 -- 85354-9 for bp (components 8480-6/8462-4), 4548-4 hba1c, 39156-5 bmi, ...
    display VARCHAR NOT NULL,
    value DOUBLE,                           -- numeric value (systolic for bp)
    value2 DOUBLE,                          -- diastolic for bp
    value_code VARCHAR,                     -- coded answer (tobacco status SNOMED, screening result)
    value_display VARCHAR,
    unit VARCHAR,                           -- UCUM
    effective_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,                -- 'final' | 'amended'
    {AUDIT_COLUMNS}""",
    "procedures": f"""
    procedure_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    encounter_id BIGINT,                    -- NULL when done elsewhere (historical/outside record)
    kind VARCHAR NOT NULL,                  -- 'mammogram' | 'colonoscopy' | 'fit' | 'fit_dna' | 'ct_colonography' | 'flex_sig' | 'cervical_cytology' | 'hpv_test' | 'mastectomy_left' | 'mastectomy_right' | 'mastectomy_bilateral' | 'colectomy' | 'hysterectomy' | 'depression_followup' | 'bmi_followup' | 'tobacco_cessation_counseling' | 'dialysis' | ...
    code_system VARCHAR NOT NULL,           -- 'CPT' | 'HCPCS' | 'SNOMED' | 'LOINC'
    code VARCHAR NOT NULL,
    display VARCHAR NOT NULL,
    performed_date DATE NOT NULL,
    in_fhir BOOLEAN NOT NULL,               -- FALSE: only billing (a claim line) knows about it
    billed BOOLEAN NOT NULL,                -- TRUE: a claim line carries the code
    {AUDIT_COLUMNS}""",
    "immunizations": f"""
    immunization_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    encounter_id BIGINT,
    cvx VARCHAR NOT NULL,
    display VARCHAR NOT NULL,
    vaccine_group VARCHAR NOT NULL,         -- 'DTaP' | 'IPV' | 'MMR' | 'Hib' | 'HepB' | 'VZV' | 'PCV' | 'HepA' | 'RV' | 'Influenza' | ...
    occurrence_date DATE NOT NULL,
    status VARCHAR NOT NULL,                -- 'completed' | 'not-done'
    {AUDIT_COLUMNS}""",
    "medication_requests": f"""
    medication_request_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    encounter_id BIGINT,
    provider_id BIGINT NOT NULL,
    rxnorm VARCHAR NOT NULL,
    display VARCHAR NOT NULL,
    med_group VARCHAR NOT NULL,             -- 'metformin' | 'dementia' | 'tobacco_cessation' | 'antihypertensive' | ...
    authored_on DATE NOT NULL,
    status VARCHAR NOT NULL,                -- 'active' | 'completed' | 'stopped'
    {AUDIT_COLUMNS}""",
    "allergies": f"""
    allergy_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    code_system VARCHAR NOT NULL,           -- 'RXNORM' | 'SNOMED'
    code VARCHAR NOT NULL,
    display VARCHAR NOT NULL,
    criticality VARCHAR NOT NULL,           -- 'low' | 'high'
    recorded_date DATE NOT NULL,
    {AUDIT_COLUMNS}""",
    # One claim per billed encounter.
    "claims": f"""
    claim_id BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    encounter_id BIGINT NOT NULL,
    appointment_id BIGINT,
    rendering_provider_id BIGINT NOT NULL,
    department_id BIGINT NOT NULL,
    service_date DATE NOT NULL,
    created_date DATE NOT NULL,             -- charge entry
    submitted_date DATE,                    -- first submission to the primary payer (NULL for self-pay)
    primary_patient_insurance_id BIGINT,    -- NULL for self-pay
    secondary_patient_insurance_id BIGINT,
    primary_insurance_package_id BIGINT,
    secondary_insurance_package_id BIGINT,
    total_charge DECIMAL(12,2) NOT NULL,
    scrub_hold BOOLEAN NOT NULL,            -- held by a pre-submission edit (not clean)
    primary_status VARCHAR NOT NULL,        -- athena claim status: 'BILLED' | 'CLOSED' | 'HOLD' | 'APPEALED' | 'DROP' | 'NONE'
    secondary_status VARCHAR NOT NULL,
    patient_status VARCHAR NOT NULL,
    primary_outstanding DECIMAL(12,2) NOT NULL,   -- as of the world's current date
    secondary_outstanding DECIMAL(12,2) NOT NULL,
    patient_outstanding DECIMAL(12,2) NOT NULL,   -- negative = credit balance
    {AUDIT_COLUMNS}""",
    "claim_lines": f"""
    charge_id BIGINT PRIMARY KEY,           -- the CHARGE transaction id
    claim_id BIGINT NOT NULL,
    line_number INTEGER NOT NULL,
    procedure_code VARCHAR NOT NULL,        -- CPT/HCPCS
    units INTEGER NOT NULL,
    amount DECIMAL(12,2) NOT NULL,
    {AUDIT_COLUMNS}""",
    "claim_diagnoses": f"""
    claim_diagnosis_id BIGINT PRIMARY KEY,
    claim_id BIGINT NOT NULL,
    sequence_number INTEGER NOT NULL,       -- 1..8
    icd10_code VARCHAR NOT NULL,
    {AUDIT_COLUMNS}""",
    # The ledger. AMOUNT sign convention as athenaOne: CHARGE positive; PAYMENT and ADJUSTMENT negative;
    # TRANSFEROUT negative on the party giving up the balance, TRANSFERIN positive on the receiving one.
    "transactions": f"""
    transaction_id BIGINT PRIMARY KEY,
    claim_id BIGINT NOT NULL,
    charge_id BIGINT NOT NULL,
    patient_id BIGINT NOT NULL,
    transaction_type VARCHAR NOT NULL,      -- 'CHARGE' | 'PAYMENT' | 'ADJUSTMENT' | 'TRANSFERIN' | 'TRANSFEROUT'
    transaction_reason VARCHAR,             -- 'CONTRACTUAL' | 'DENIAL WRITE OFF' | 'BAD DEBT' | 'SMALL BALANCE' | 'REFUND' | 'COPAY' | 'INSURANCE PAYMENT' | 'PATIENT PAYMENT' | ...
    transfer_type VARCHAR NOT NULL,         -- responsible party of this row: 'Primary' | 'Secondary' | 'Patient'
    insurance_package_id BIGINT,            -- payer of the responsible party (NULL for patient)
    amount DECIMAL(12,2) NOT NULL,
    post_date DATE NOT NULL,
    payment_batch_id BIGINT,
    remittance_id BIGINT,                   -- the ERA that caused it, if any
    procedure_code VARCHAR NOT NULL,
    voided_date DATE,
    reversal_flag BOOLEAN NOT NULL,
    {AUDIT_COLUMNS}""",
    # Electronic remittance (835) at claim level: one row per payer adjudication of a claim.
    "remittances": f"""
    remittance_id BIGINT PRIMARY KEY,
    claim_id BIGINT NOT NULL,
    insurance_package_id BIGINT NOT NULL,
    payer_role VARCHAR NOT NULL,            -- 'Primary' | 'Secondary'
    remit_date DATE NOT NULL,
    remit_sequence INTEGER NOT NULL,        -- 1 = first remit of this claim from this payer (initial adjudication)
    billed_amount DECIMAL(12,2) NOT NULL,
    allowed_amount DECIMAL(12,2) NOT NULL,
    paid_amount DECIMAL(12,2) NOT NULL,
    patient_responsibility DECIMAL(12,2) NOT NULL,
    is_denial BOOLEAN NOT NULL,             -- zero paid with a non-excluded CARC
    {AUDIT_COLUMNS}""",
    # 835 CAS adjustments of a remittance (claim level), with the athena kick code the payer code was mapped to.
    "remittance_adjustments": f"""
    remittance_adjustment_id BIGINT PRIMARY KEY,
    remittance_id BIGINT NOT NULL,
    claim_id BIGINT NOT NULL,
    group_code VARCHAR NOT NULL,            -- 'CO' | 'PR' | 'OA' | 'PI' | 'CR'
    carc VARCHAR NOT NULL,                  -- claim adjustment reason code, e.g. '45', '197'
    amount DECIMAL(12,2) NOT NULL,          -- adjustment amount; negative only for CR reversals
    kick_code VARCHAR,                      -- athenaOne kick code (denials only)
    {AUDIT_COLUMNS}""",
    # Claim workflow notes: status changes with the kick reason applied (athenaOne CLAIMNOTE).
    "claim_events": f"""
    claim_event_id BIGINT PRIMARY KEY,
    claim_id BIGINT NOT NULL,
    event_type VARCHAR NOT NULL,            -- 'CREATED' | 'SCRUB_HOLD' | 'SUBMITTED' | 'DENIED' | 'APPEALED' | 'PAID' | 'TRANSFERRED' | 'WRITTEN_OFF' | 'CLOSED'
    event_date DATE NOT NULL,
    payer_role VARCHAR NOT NULL,            -- 'Primary' | 'Secondary' | 'Patient'
    kick_code VARCHAR,
    claim_status VARCHAR NOT NULL,          -- status after the event
    note VARCHAR,
    {AUDIT_COLUMNS}""",
}

# Reference tables (no audit columns): athenaOne kick reasons.
REFERENCE_TABLES: dict[str, str] = {
    "kick_reasons": """
    kick_reason_id BIGINT PRIMARY KEY,
    kick_code VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    category VARCHAR NOT NULL,              -- denial category (see codes.py)
    next_claim_status VARCHAR NOT NULL""",
}


def create_statements() -> list[str]:
    """DDL for an empty facts database, in dependency-free order."""
    tables = {**FACT_TABLES, **REFERENCE_TABLES}
    return [f"CREATE TABLE {name} ({cols}\n)" for name, cols in tables.items()]
