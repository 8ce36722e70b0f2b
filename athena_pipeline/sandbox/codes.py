"""Real codes from public code systems that the sandbox plants, grouped the way the marts need them.

The dbt seeds (value sets, CARC crosswalk, kick codes) are written from the same catalogue in a later
issue, so the generator and the marts can never drift apart. Sources: ICD-10-CM (CDC/CMS), SNOMED CT
(NLM browser), LOINC (loinc.org), CPT/HCPCS (AMA/CMS public fee schedules), CVX (CDC), RxNorm (NLM),
X12 CARC list (WPC), and ``../shared/specs/metrics.md`` for the measure value-set membership.
"""

from __future__ import annotations

# condition_group -> (icd10, snomed, description)
CONDITIONS: dict[str, tuple[str, str | None, str]] = {
    "diabetes_t2": ("E11.9", "44054006", "Type 2 diabetes mellitus without complications"),
    "diabetes_t2_hyper": ("E11.65", "44054006", "Type 2 diabetes mellitus with hyperglycemia"),
    "diabetes_t1": ("E10.9", "46635009", "Type 1 diabetes mellitus without complications"),
    "hypertension": ("I10", "59621000", "Essential (primary) hypertension"),
    "hyperlipidemia": ("E78.5", "55822004", "Hyperlipidemia, unspecified"),
    "depression": ("F32.9", "35489007", "Major depressive disorder, single episode, unspecified"),
    "bipolar": ("F31.9", "13746004", "Bipolar disorder, unspecified"),
    "asthma": ("J45.909", "195967001", "Unspecified asthma, uncomplicated"),
    "copd": ("J44.9", "13645005", "Chronic obstructive pulmonary disease, unspecified"),
    "obesity": ("E66.9", "414916001", "Obesity, unspecified"),
    "ckd3": ("N18.30", "433144002", "Chronic kidney disease, stage 3 unspecified"),
    "esrd": ("N18.6", "46177005", "End stage renal disease"),
    "palliative": ("Z51.5", "103735009", "Encounter for palliative care"),
    "frailty": ("R54", "248279007", "Age-related physical debility"),
    "heart_failure": ("I50.9", "84114007", "Heart failure, unspecified"),
    "alzheimers": ("G30.9", "26929004", "Alzheimer's disease, unspecified"),
    "metastatic_cancer": ("C78.00", "94391008", "Secondary malignant neoplasm of unspecified lung"),
    "colorectal_cancer": ("C18.9", "363406005", "Malignant neoplasm of colon, unspecified"),
    "pregnancy": ("Z34.90", "77386006", "Encounter for supervision of normal pregnancy, unspecified"),
    "absent_breast_right": ("Z90.11", "429242008", "Acquired absence of right breast and nipple"),
    "absent_breast_left": ("Z90.12", "429009003", "Acquired absence of left breast and nipple"),
    "absent_breast_bilateral": ("Z90.13", "136071000119101", "Acquired absence of bilateral breasts and nipples"),
    "absent_cervix": ("Z90.710", "428078001", "Acquired absence of both cervix and uterus"),
    # acute / visit reasons used as encounter diagnoses
    "uri": ("J06.9", "54150009", "Acute upper respiratory infection, unspecified"),
    "back_pain": ("M54.50", "279039007", "Low back pain, unspecified"),
    "adult_exam": ("Z00.00", "410620009", "Encounter for general adult medical examination without abnormal findings"),
    "child_exam": ("Z00.129", "410620009", "Encounter for routine child health examination without abnormal findings"),
    "sinusitis": ("J01.90", "36971009", "Acute sinusitis, unspecified"),
    "uti": ("N39.0", "68566005", "Urinary tract infection, site not specified"),
    "otitis_media": ("H66.90", "65363002", "Otitis media, unspecified, unspecified ear"),
    "colorectal_screening": ("Z12.11", "275978004", "Encounter for screening for malignant neoplasm of colon"),
    "anxiety": ("F41.1", "21897009", "Generalized anxiety disorder"),
}

# Vital signs, labs, surveys: kind -> (loinc, display, category, unit)
OBSERVATIONS: dict[str, tuple[str, str, str, str | None]] = {
    "bp": ("85354-9", "Blood pressure panel with all children optional", "vital-signs", "mm[Hg]"),
    "bmi": ("39156-5", "Body mass index (BMI) [Ratio]", "vital-signs", "kg/m2"),
    "weight": ("29463-7", "Body weight", "vital-signs", "kg"),
    "height": ("8302-2", "Body height", "vital-signs", "cm"),
    "hba1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "laboratory", "%"),
    "phq_adult": ("73832-8", "Adult depression screening assessment", "survey", None),
    "phq_adolescent": ("73831-0", "Adolescent depression screening assessment", "survey", None),
    "tobacco": ("72166-2", "Tobacco smoking status", "social-history", None),
}
BP_SYSTOLIC_LOINC = "8480-6"
BP_DIASTOLIC_LOINC = "8462-4"

# Coded answers (SNOMED CT)
TOBACCO_ANSWERS = {
    "current": ("449868002", "Smokes tobacco daily"),
    "former": ("8517006", "Ex-smoker"),
    "never": ("266919005", "Never smoked tobacco"),
}
DEPRESSION_SCREEN_ANSWERS = {
    True: ("428171000124102", "Depression screening positive"),
    False: ("428181000124104", "Depression screening negative"),
}

# Procedures: kind -> (code_system, code, display)
PROCEDURES: dict[str, tuple[str, str, str]] = {
    "mammogram": ("CPT", "77067", "Screening mammography, bilateral, including CAD"),
    "colonoscopy": ("CPT", "45378", "Colonoscopy, flexible; diagnostic"),
    "fit": ("CPT", "82274", "Blood, occult, by fecal hemoglobin determination by immunoassay"),
    "fit_dna": ("CPT", "81528", "Oncology (colorectal) screening, multitarget stool DNA and FIT"),
    "ct_colonography": ("CPT", "74263", "Computed tomographic (CT) colonography, screening"),
    "flex_sig": ("CPT", "45330", "Sigmoidoscopy, flexible; diagnostic"),
    "cervical_cytology": ("CPT", "88175", "Cytopathology, cervical or vaginal, automated thin layer"),
    "hpv_test": ("CPT", "87624", "Human Papillomavirus (HPV), high-risk types, amplified probe"),
    "mastectomy": ("CPT", "19303", "Mastectomy, simple, complete"),
    "colectomy": ("CPT", "44150", "Colectomy, total, abdominal, without proctectomy; with ileostomy"),
    "hysterectomy": ("CPT", "58150", "Total abdominal hysterectomy, with or without removal of tube(s)/ovary(s)"),
    "dialysis": ("CPT", "90935", "Hemodialysis procedure with single evaluation"),
    "hospice": ("SNOMED", "385763009", "Hospice care"),
    "depression_followup": ("HCPCS", "G8431", "Screening for depression documented as positive and follow-up plan documented"),
    "bmi_followup": ("HCPCS", "G8417", "BMI documented above normal parameters and a follow-up plan documented"),
    "tobacco_counseling": ("CPT", "99406", "Smoking and tobacco use cessation counseling visit; 3-10 minutes"),
}

# Vaccines: group -> (cvx, display, cpt for the vaccine product)
VACCINES: dict[str, tuple[str, str, str]] = {
    "DTaP": ("20", "DTaP", "90700"),
    "IPV": ("10", "IPV", "90713"),
    "MMR": ("03", "MMR", "90707"),
    "Hib": ("49", "Hib (PRP-OMP)", "90647"),
    "HepB": ("08", "Hep B, adolescent or pediatric", "90744"),
    "VZV": ("21", "varicella", "90716"),
    "PCV": ("133", "Pneumococcal conjugate PCV 13", "90670"),
    "HepA": ("83", "Hep A, ped/adol, 2 dose", "90633"),
    "RV": ("119", "rotavirus, monovalent", "90681"),
    "Influenza": ("150", "Influenza, injectable, quadrivalent, preservative free", "90686"),
}
# CMS117 doses by the 2nd birthday, and the usual ages (months) they are given at.
CHILDHOOD_SCHEDULE: dict[str, list[int]] = {
    "DTaP": [2, 4, 6, 15],
    "IPV": [2, 4, 6],
    "MMR": [12],
    "Hib": [2, 4, 12],
    "HepB": [0, 1, 6],
    "VZV": [12],
    "PCV": [2, 4, 6, 12],
    "HepA": [12],
    "RV": [2, 4],
    "Influenza": [6, 7],
}

# Medications: group -> (rxnorm, display)
MEDICATIONS: dict[str, tuple[str, str]] = {
    "metformin": ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    "lisinopril": ("314076", "lisinopril 10 MG Oral Tablet"),
    "atorvastatin": ("617310", "atorvastatin 20 MG Oral Tablet"),
    "sertraline": ("312940", "sertraline 50 MG Oral Tablet"),
    "donepezil": ("997223", "donepezil hydrochloride 10 MG Oral Tablet"),  # dementia medication
    "varenicline": ("636676", "varenicline 1 MG Oral Tablet"),  # tobacco cessation
    "albuterol": ("745752", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    "amoxicillin": ("308182", "amoxicillin 500 MG Oral Capsule"),
}

ALLERGIES: list[tuple[str, str, str]] = [  # (code_system, code, display)
    ("RXNORM", "7980", "Penicillin G"),
    ("RXNORM", "10180", "Sulfamethoxazole"),
    ("SNOMED", "762952008", "Peanut (substance)"),
    ("RXNORM", "1191", "Aspirin"),
    ("SNOMED", "227493005", "Cashew nut (substance)"),
]

# Visit codes and the practice's fee schedule (charge master, USD).
FEES: dict[str, float] = {
    "99202": 120.0, "99203": 180.0, "99204": 270.0,
    "99212": 95.0, "99213": 150.0, "99214": 220.0, "99215": 300.0,
    "99381": 230.0, "99382": 240.0, "99383": 240.0, "99384": 260.0, "99385": 260.0,
    "99391": 200.0, "99392": 210.0, "99393": 210.0, "99394": 230.0, "99395": 240.0,
    "99396": 260.0, "99397": 280.0,
    "90471": 30.0, "90472": 20.0, "83036": 45.0, "36415": 15.0, "99406": 40.0, "G0444": 25.0,
    "45378": 1250.0, "G8431": 0.0, "G8417": 0.0,
    **{cpt: fee for cpt, fee in [("90700", 45.0), ("90713", 50.0), ("90707", 95.0), ("90647", 40.0),
                                 ("90744", 35.0), ("90716", 160.0), ("90670", 230.0), ("90633", 45.0),
                                 ("90681", 120.0), ("90686", 40.0)]},
}

# X12 claim adjustment reason codes used for initial denials, with our denial category
# (category assignments per ../shared/specs/metrics.md §2.2 [G]) and the athenaOne-style kick code
# the payer code is mapped to (kick code names are our guess: athenaOne's list is not public).
DENIAL_CATEGORIES: dict[str, dict] = {
    "eligibility": {"carcs": ["27", "31", "22", "109"], "kick": "ELIGDENY", "avoidable": True,
                    "name": "Eligibility / registration / COB"},
    "authorization": {"carcs": ["197", "15", "288"], "kick": "AUTHDENY", "avoidable": True,
                      "name": "Authorization / referral"},
    "coding": {"carcs": ["4", "11", "181"], "kick": "CODEDENY", "avoidable": True, "name": "Coding"},
    "bundling": {"carcs": ["97", "234"], "kick": "BUNDLE", "avoidable": True, "name": "Bundling / NCCI"},
    "medical_necessity": {"carcs": ["50", "96", "204"], "kick": "MEDNEC", "avoidable": False,
                          "name": "Medical necessity / coverage"},
    "missing_info": {"carcs": ["16", "252"], "kick": "NEEDINFO", "avoidable": True,
                     "name": "Missing information / documentation"},
    "timely_filing": {"carcs": ["29", "18"], "kick": "TIMELY", "avoidable": True,
                      "name": "Timely filing / duplicate"},
    "credentialing": {"carcs": ["170", "185"], "kick": "CREDENT", "avoidable": True,
                      "name": "Credentialing / enrollment"},
}
# Non-denial adjustment CARCs
CARC_CONTRACTUAL = "45"   # CO-45 charge exceeds fee schedule
CARC_DEDUCTIBLE = "1"     # PR-1
CARC_COINSURANCE = "2"    # PR-2
CARC_COPAY = "3"          # PR-3
CARC_PRIOR_PAYER = "23"   # OA-23 impact of prior payer adjudication (secondary)

# Kick reasons as athenaOne lists them (reference table KICKREASON): denial kicks + workflow kicks.
WORKFLOW_KICKS: list[tuple[str, str, str, str]] = [  # (kick_code, name, category, next status)
    ("CIP", "Claim in process", "workflow", "BILLED"),
    ("AIP", "Appeal in process", "workflow", "APPEALED"),
    ("RECONSIDERATION", "Reconsideration requested", "workflow", "APPEALED"),
    ("INFORM", "Informational note", "workflow", "BILLED"),
    ("CONTRACT", "Contractual adjustment", "adjustment", "CLOSED"),
    ("BADDEBT", "Bad debt write-off", "adjustment", "CLOSED"),
    ("DRPPATIENT", "Drop to patient", "workflow", "CLOSED"),
    ("SCRUBHOLD", "Claim rule hold (scrubber)", "scrub", "HOLD"),
]
