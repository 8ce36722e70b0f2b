"""The dbt seed rows the sandbox generator implies: every code it plants, with the concept the marts use.

Why: the marts find diabetes, mammograms or denials by joining staged codes to the seeds in
``dbt_project/seeds/`` (``value_sets.csv``, ``carc_categories.csv``, ``kick_codes.csv``). The
generator plants codes from :mod:`athena_pipeline.sandbox.codes`. If the two drifted apart, a
measure would silently count nothing in the sandbox and nobody would notice. This module renders
the rows the generator's codes require; ``tests/dbt/test_seeds.py`` asserts every one of them is
in the committed CSVs with the same concept (the CSVs also hold extra real codes added by hand,
so a real practice's data matches too).

The concept names here are the vocabulary of the value-set seed (snake_case, one per clinical
idea, e.g. ``diabetes``, ``mammography``, ``hba1c_lab_test``). Every group, kind and fee code in
``codes.py`` must have a concept: an unmapped one raises :class:`UnmappedCodeError`, so adding a
code to the generator without deciding what it means fails the test instead of drifting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from athena_pipeline.sandbox import codes

# codes.py system names -> the normalised names of the seeds (and of stg_fhir__*_codings.code_system).
CODE_SYSTEMS: dict[str, str] = {
    "ICD10": "icd-10-cm",
    "SNOMED": "snomed-ct",
    "LOINC": "loinc",
    "CPT": "cpt",
    "HCPCS": "hcpcs",
    "CVX": "cvx",
    "RXNORM": "rxnorm",
}

# codes.CONDITIONS group -> value-set concept
CONDITION_CONCEPTS: dict[str, str] = {
    "diabetes_t2": "diabetes",
    "diabetes_t2_hyper": "diabetes",
    "diabetes_t1": "diabetes",
    "hypertension": "essential_hypertension",
    "hyperlipidemia": "hyperlipidemia",
    "depression": "depression",
    "bipolar": "bipolar_disorder",
    "asthma": "asthma",
    "copd": "copd",
    "obesity": "obesity",
    "ckd3": "chronic_kidney_disease_stage_3",
    "esrd": "end_stage_renal_disease",
    "palliative": "palliative_care",
    "frailty": "frailty",
    "heart_failure": "advanced_illness",
    "alzheimers": "advanced_illness",
    "metastatic_cancer": "advanced_illness",
    "colorectal_cancer": "colorectal_cancer",
    "pregnancy": "pregnancy",
    "absent_breast_right": "absence_of_right_breast",
    "absent_breast_left": "absence_of_left_breast",
    "absent_breast_bilateral": "history_of_bilateral_mastectomy",
    "absent_cervix": "absence_of_cervix",
    "uri": "acute_upper_respiratory_infection",
    "back_pain": "low_back_pain",
    "adult_exam": "general_medical_examination",
    "child_exam": "general_medical_examination",
    "sinusitis": "acute_sinusitis",
    "uti": "urinary_tract_infection",
    "otitis_media": "otitis_media",
    "colorectal_screening": "colorectal_cancer_screening_encounter",
    "anxiety": "anxiety_disorder",
}

# codes.OBSERVATIONS kind -> concept
OBSERVATION_CONCEPTS: dict[str, str] = {
    "bp": "blood_pressure_panel",
    "bmi": "bmi",
    "weight": "body_weight",
    "height": "body_height",
    "hba1c": "hba1c_lab_test",
    "phq_adult": "adult_depression_screening",
    "phq_adolescent": "adolescent_depression_screening",
    "tobacco": "tobacco_use_screening",
}
# the blood-pressure components the generator writes into every BP panel
BP_COMPONENT_CONCEPTS: dict[str, str] = {
    codes.BP_SYSTOLIC_LOINC: "systolic_blood_pressure",
    codes.BP_DIASTOLIC_LOINC: "diastolic_blood_pressure",
}
TOBACCO_ANSWER_CONCEPTS: dict[str, str] = {
    "current": "tobacco_user",
    "former": "tobacco_non_user",
    "never": "tobacco_non_user",
}
DEPRESSION_ANSWER_CONCEPTS: dict[bool, str] = {
    True: "depression_screening_positive",
    False: "depression_screening_negative",
}

# codes.PROCEDURES kind -> concept
PROCEDURE_CONCEPTS: dict[str, str] = {
    "mammogram": "mammography",
    "colonoscopy": "colonoscopy",
    "fit": "fecal_occult_blood_test",
    "fit_dna": "fit_dna",
    "ct_colonography": "ct_colonography",
    "flex_sig": "flexible_sigmoidoscopy",
    "cervical_cytology": "cervical_cytology",
    "hpv_test": "hpv_test",
    "mastectomy": "unilateral_mastectomy",
    "colectomy": "total_colectomy",
    "hysterectomy": "hysterectomy_no_residual_cervix",
    "dialysis": "dialysis_services",
    "hospice": "hospice_care",
    "depression_followup": "depression_follow_up",
    "bmi_followup": "bmi_follow_up",
    "tobacco_counseling": "tobacco_cessation_counseling",
}

# codes.VACCINES group -> concept (the CVX code and the CPT vaccine product code both map to it)
VACCINE_CONCEPTS: dict[str, str] = {
    "DTaP": "dtap_vaccine",
    "IPV": "ipv_vaccine",
    "MMR": "mmr_vaccine",
    "Hib": "hib_vaccine",
    "HepB": "hepatitis_b_vaccine",
    "VZV": "varicella_vaccine",
    "PCV": "pneumococcal_conjugate_vaccine",
    "HepA": "hepatitis_a_vaccine",
    "RV": "rotavirus_vaccine",
    "Influenza": "influenza_vaccine",
}

# codes.MEDICATIONS group -> concept
MEDICATION_CONCEPTS: dict[str, str] = {
    "metformin": "diabetes_medication",
    "lisinopril": "antihypertensive_medication",
    "atorvastatin": "statin_medication",
    "sertraline": "antidepressant_medication",
    "donepezil": "dementia_medication",
    "varenicline": "tobacco_cessation_medication",
    "albuterol": "asthma_reliever_medication",
    "amoxicillin": "antibiotic_medication",
}

ALLERGY_CONCEPT = "allergy_substance"

# Billing codes of codes.FEES that no other table above names: code -> (concept, system, display).
FEE_CODE_CONCEPTS: dict[str, tuple[str, str, str]] = {
    **{c: ("office_visit", "CPT", "Office or other outpatient visit, new patient")
       for c in ("99202", "99203", "99204", "99205")},
    **{c: ("office_visit", "CPT", "Office or other outpatient visit, established patient")
       for c in ("99211", "99212", "99213", "99214", "99215")},
    **{c: ("preventive_care_new_patient", "CPT", "Initial comprehensive preventive medicine evaluation and management")
       for c in ("99381", "99382", "99383", "99384", "99385", "99386", "99387")},
    **{c: ("preventive_care_established_patient", "CPT",
           "Periodic comprehensive preventive medicine reevaluation and management")
       for c in ("99391", "99392", "99393", "99394", "99395", "99396", "99397")},
    "90471": ("immunization_administration", "CPT", "Immunization administration; 1 vaccine"),
    "90472": ("immunization_administration", "CPT", "Immunization administration; each additional vaccine"),
    "83036": ("hba1c_lab_test", "CPT", "Hemoglobin; glycosylated (A1C)"),
    "36415": ("venipuncture", "CPT", "Collection of venous blood by venipuncture"),
    "G0444": ("depression_screening_service", "HCPCS", "Annual depression screening, 5 to 15 minutes"),
}

NOT_DENIAL_CATEGORY = "not_denial"


class UnmappedCodeError(LookupError):
    """codes.py has a group, kind or fee code this module gives no concept (decide one, then add it to the CSV)."""


@dataclass(frozen=True)
class ValueSetRow:
    """One row of ``value_sets.csv``: a code that belongs to a concept."""

    concept: str
    code: str
    code_system: str  # normalised: icd-10-cm, snomed-ct, loinc, cpt, hcpcs, cvx, rxnorm
    display: str


@dataclass(frozen=True)
class CarcRow:
    """One row of ``carc_categories.csv`` (the columns the generator determines)."""

    carc: str
    denial_category: str
    is_denial: bool
    is_avoidable: bool


@dataclass(frozen=True)
class KickCodeRow:
    """One row of ``kick_codes.csv`` (the columns the generator determines)."""

    kick_code: str
    kick_reason_name: str
    kick_category: str
    is_denial: bool
    next_claim_status: str


def _concept(mapping: dict, key: object, what: str) -> str:
    try:
        return mapping[key]
    except KeyError:
        raise UnmappedCodeError(f"codes.py {what} {key!r} has no value-set concept in sandbox/seeds.py") from None


def _system(name: str) -> str:
    try:
        return CODE_SYSTEMS[name]
    except KeyError:
        raise UnmappedCodeError(f"codes.py code system {name!r} has no normalised seed name") from None


def value_set_rows() -> list[ValueSetRow]:
    """Every code the generator can plant, with its concept (deduplicated, in codes.py order)."""
    rows: list[ValueSetRow] = []
    for group, (icd10, snomed, description) in codes.CONDITIONS.items():
        concept = _concept(CONDITION_CONCEPTS, group, "condition group")
        rows.append(ValueSetRow(concept, icd10, "icd-10-cm", description))
        if snomed:
            rows.append(ValueSetRow(concept, snomed, "snomed-ct", description))
    for kind, (loinc, display, _category, _unit) in codes.OBSERVATIONS.items():
        rows.append(ValueSetRow(_concept(OBSERVATION_CONCEPTS, kind, "observation kind"), loinc, "loinc", display))
    rows.append(ValueSetRow(BP_COMPONENT_CONCEPTS[codes.BP_SYSTOLIC_LOINC], codes.BP_SYSTOLIC_LOINC, "loinc",
                            "Systolic blood pressure"))
    rows.append(ValueSetRow(BP_COMPONENT_CONCEPTS[codes.BP_DIASTOLIC_LOINC], codes.BP_DIASTOLIC_LOINC, "loinc",
                            "Diastolic blood pressure"))
    for answer, (code, display) in codes.TOBACCO_ANSWERS.items():
        rows.append(ValueSetRow(_concept(TOBACCO_ANSWER_CONCEPTS, answer, "tobacco answer"), code, "snomed-ct", display))
    for positive, (code, display) in codes.DEPRESSION_SCREEN_ANSWERS.items():
        rows.append(ValueSetRow(_concept(DEPRESSION_ANSWER_CONCEPTS, positive, "depression answer"), code,
                                "snomed-ct", display))
    for kind, (system, code, display) in codes.PROCEDURES.items():
        rows.append(ValueSetRow(_concept(PROCEDURE_CONCEPTS, kind, "procedure kind"), code, _system(system), display))
    for group, (cvx, display, cpt) in codes.VACCINES.items():
        concept = _concept(VACCINE_CONCEPTS, group, "vaccine group")
        rows.append(ValueSetRow(concept, cvx, "cvx", display))
        rows.append(ValueSetRow(concept, cpt, "cpt", f"{display} vaccine product"))
    for group, (rxnorm, display) in codes.MEDICATIONS.items():
        rows.append(ValueSetRow(_concept(MEDICATION_CONCEPTS, group, "medication group"), rxnorm, "rxnorm", display))
    for system, code, display in codes.ALLERGIES:
        rows.append(ValueSetRow(ALLERGY_CONCEPT, code, _system(system), display))

    named = {(r.code_system, r.code) for r in rows}
    for code in codes.FEES:
        if ("cpt", code) in named or ("hcpcs", code) in named:
            continue
        concept, system, display = _concept(FEE_CODE_CONCEPTS, code, "fee schedule code")
        rows.append(ValueSetRow(concept, code, _system(system), display))

    unique: dict[tuple[str, str, str], ValueSetRow] = {}
    for row in rows:
        unique.setdefault((row.concept, row.code_system, row.code), row)
    return list(unique.values())


def carc_rows() -> list[CarcRow]:
    """Every CARC codes.py names: denial CARCs by category, and the cost-share / contractual ones."""
    rows = [CarcRow(carc, category, True, bool(spec["avoidable"]))
            for category, spec in codes.DENIAL_CATEGORIES.items() for carc in spec["carcs"]]
    for carc in (codes.CARC_CONTRACTUAL, codes.CARC_DEDUCTIBLE, codes.CARC_COINSURANCE, codes.CARC_COPAY):
        rows.append(CarcRow(carc, NOT_DENIAL_CATEGORY, False, False))
    return rows


def kick_code_rows() -> list[KickCodeRow]:
    """The kick reasons the generator writes to KICKREASON: one denial kick per category, plus workflow kicks."""
    rows = [KickCodeRow(spec["kick"], spec["name"] + " denial", category, True, "HOLD")
            for category, spec in codes.DENIAL_CATEGORIES.items()]
    rows += [KickCodeRow(code, name, category, False, status) for code, name, category, status in codes.WORKFLOW_KICKS]
    return rows


def generator_seed_rows() -> dict[str, list[dict[str, object]]]:
    """Seed name -> the rows (as dicts, CSV column names) that seed must contain for the sandbox to be measured."""
    return {
        "value_sets": [asdict(r) for r in value_set_rows()],
        "carc_categories": [asdict(r) for r in carc_rows()],
        "kick_codes": [asdict(r) for r in kick_code_rows()],
    }
