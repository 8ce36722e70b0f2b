"""The rates the synthetic practice is drawn from, each with the public figure it approximates.

Figures are rounded published US benchmarks; where a benchmark is a range we picked a value inside
it. The realism tests (tests/sandbox/test_realism.py) check the generated world lands in the bands
given here (``*_BAND``), so changing a rate means changing a documented number, not a magic constant.
"""

from __future__ import annotations

# --- Panel -------------------------------------------------------------------------------------
# ~1,650 patients per primary-care physician: MGMA/AAFP panel-size surveys put 1,500-2,500.
PATIENTS_PER_PROVIDER = 1650

# Age at the world's end date. US Census 2020 (ACS): 0-17 22%, 18-44 36%, 45-64 25%, 65+ 17%;
# primary care skews slightly older (NAMCS 2019 visit shares), so 65+ gets 20%.
AGE_BANDS = [  # (min_age, max_age_exclusive, share)
    (0, 2, 0.025), (2, 12, 0.095), (12, 18, 0.07), (18, 45, 0.33), (45, 65, 0.28), (65, 76, 0.13), (76, 95, 0.07),
]
FEMALE_SHARE = 0.53  # women use primary care more (NAMCS: ~57% of visits)

# Visits per patient per year: NAMCS 2019 ~3.2 office visits/person/year overall; higher with age
# and chronic disease. Base by age + per chronic condition.
VISITS_BASE_BY_AGE = [(0, 2, 6.0), (2, 18, 1.6), (18, 45, 1.6), (45, 65, 2.4), (65, 120, 3.2)]
VISITS_PER_CHRONIC_CONDITION = 0.7
ANNUAL_PREVENTIVE_SHARE = 0.55  # adults with a yearly physical (CDC NHIS: ~ half to two-thirds)

# --- Appointment outcomes (MGMA Stat polls / AAFP: no-shows 5-7% in primary care) ---------------
NO_SHOW_RATE = 0.06
CANCEL_RATE = 0.10            # of booked appointments
LATE_CANCEL_SHARE = 0.30      # of cancellations, within 24 h of the slot
RESCHEDULE_SHARE = 0.55       # of cancellations, rebooked 1-21 days later
TELEHEALTH_SHARE = 0.08       # of completed visits (post-2022 steady state, ~5-10%)
NO_SHOW_BAND = (0.04, 0.09)

# --- Chronic disease prevalence (diagnosed), by age band ---------------------------------------
# CDC National Diabetes Statistics Report 2023: diagnosed 18-44 3.0%, 45-64 13.8%, 65+ 24.4%.
DIABETES_BY_AGE = [(18, 45, 0.03), (45, 65, 0.138), (65, 120, 0.244)]
DIABETES_TYPE1_SHARE = 0.06
# HEDIS CDC HbA1c poor control (>9%) ~ 20-35% of diabetics depending on line of business.
HBA1C_POOR_CONTROL_SHARE = 0.22
HBA1C_POOR_BAND = (0.15, 0.40)
# CDC hypertension (diagnosed, on treatment) 18-39 ~8%, 40-59 ~33%, 60+ ~60%.
HYPERTENSION_BY_AGE = [(18, 40, 0.08), (40, 60, 0.33), (60, 120, 0.60)]
BP_CONTROLLED_SHARE = 0.62     # HEDIS CBP ~60-65%
HYPERLIPIDEMIA_BY_AGE = [(18, 45, 0.06), (45, 65, 0.25), (65, 120, 0.40)]
DEPRESSION_ADULT = 0.08        # NIMH: 8.3% adults with a major depressive episode
BIPOLAR_ADULT = 0.012
ASTHMA_ALL = 0.08              # CDC 7.7%
COPD_40PLUS = 0.06
ANXIETY_ADULT = 0.06
CKD3_60PLUS = 0.08
CURRENT_SMOKER_ADULT = 0.115   # CDC 2021: 11.5% adults smoke cigarettes
FORMER_SMOKER_ADULT = 0.22
# Adult BMI (CDC NHANES 2017-2020): obese 42%, overweight 31%, normal ~25%, underweight ~2%.
BMI_SHARES = [("under", 0.02), ("normal", 0.25), ("over", 0.31), ("obese", 0.42)]

# --- Measure exclusion conditions ---------------------------------------------------------------
HOSPICE_65PLUS_PER_YEAR = 0.012      # ~1.5M hospice patients/year among ~55M Medicare beneficiaries
PALLIATIVE_65PLUS_PER_YEAR = 0.012
FRAILTY_66PLUS = 0.14                # frailty dx among community-dwelling 66+ (published 10-15%)
ADVANCED_ILLNESS_66PLUS = 0.09       # heart failure, dementia, metastatic cancer...
ADVANCED_ILLNESS_GIVEN_FRAILTY = 0.45
ESRD_ALL_ADULTS = 0.003              # USRDS: ~0.25% of adults
PREGNANT_18_44_WOMEN_PER_YEAR = 0.055
MASTECTOMY_UNILATERAL_WOMEN_50PLUS = 0.012   # per side
MASTECTOMY_BILATERAL_WOMEN_50PLUS = 0.005
COLECTOMY_45PLUS = 0.002
COLORECTAL_CANCER_50PLUS = 0.004
HYSTERECTOMY_WOMEN_40PLUS = 0.17            # ~1 in 3 US women by 60; lower for 40-64 average

# --- Screening compliance (HEDIS commercial/Medicare 2022-2023) ---------------------------------
MAMMOGRAM_UP_TO_DATE = 0.72          # BCS ~70-75%
COLORECTAL_UP_TO_DATE = 0.66         # COL ~60-72%
COLORECTAL_MODALITY = [("colonoscopy", 0.62), ("fit", 0.22), ("fit_dna", 0.10),
                       ("ct_colonography", 0.03), ("flex_sig", 0.03)]
COLONOSCOPY_BILLED_HERE = 0.35       # colonoscopies done by the practice's own proceduralists
COLONOSCOPY_FHIR_MISSING_WHEN_BILLED = 0.5   # billing is the only trace for half of those
CERVICAL_UP_TO_DATE = 0.72           # CCS ~70-75%
CHILD_SCHEDULE_ADHERENT_SHARE = 0.55      # families on schedule; the rest miss doses (CMS117 ends ~35-50%)
ADULT_FLU_SHARE = 0.45               # CDC FluVaxView adults ~45-50%
DEPRESSION_SCREENED_PER_YEAR = 0.72
DEPRESSION_SCREEN_POSITIVE = 0.08
DEPRESSION_FOLLOWUP_DOCUMENTED = 0.78
TOBACCO_SCREENED_PER_YEAR = 0.90
TOBACCO_CESSATION_INTERVENTION = 0.70
BMI_DOCUMENTED_PER_VISIT = 0.93
BMI_FOLLOWUP_DOCUMENTED = 0.60
SECOND_BP_SAME_DAY = 0.06            # repeat reading when the first is high or per protocol
ALLERGY_SHARE = 0.15

# --- Payers (MGMA/AAFP primary-care payer mix) -------------------------------------------------
# (name, payer_name, package_type, product_type, reporting_category, payer_id,
#  allowed/charge ratio, initial denial rate, median days to first remit)
# Initial denial rates: industry 5-10% (AAFP), ~11% (Change Healthcare 2020 Denials Index); Medicaid
# and Medicare Advantage plans higher than traditional Medicare.
PAYERS = [
    ("Medicare Part B", "Medicare", "Medicare", "Medicare", "Medicare", "MCRB1", 0.42, 0.055, 14),
    ("Humana Medicare Advantage", "Humana", "Medicare", "Medicare Advantage", "Medicare", "61101", 0.45, 0.12, 21),
    ("MassHealth Medicaid", "MassHealth", "Medicaid", "Medicaid", "Medicaid", "DMA7384", 0.34, 0.14, 30),
    ("Blue Cross Blue Shield PPO", "Blue Cross Blue Shield", "Commercial", "PPO", "Commercial", "BCBSMA", 0.62, 0.075, 18),
    ("Aetna PPO", "Aetna", "Commercial", "PPO", "Commercial", "60054", 0.60, 0.09, 20),
    ("UnitedHealthcare Choice Plus", "UnitedHealthcare", "Commercial", "POS", "Commercial", "87726", 0.58, 0.11, 22),
    ("Cigna Open Access", "Cigna", "Commercial", "HMO", "Commercial", "62308", 0.59, 0.095, 20),
    ("Self Pay", "Self Pay", "Self-Pay", "Self-Pay", "Self-Pay", "SELF", 1.0, 0.0, 0),
]
DENIAL_RATE_BAND = (0.03, 0.20)  # any payer's realised initial denial rate should land here
# Payer mix by age: shares over PAYERS rows (index order above).
PAYER_MIX_CHILD = [0, 0, 0.42, 0.18, 0.12, 0.12, 0.10, 0.06]
PAYER_MIX_ADULT = [0, 0, 0.16, 0.24, 0.18, 0.17, 0.15, 0.10]
PAYER_MIX_65PLUS = [0.62, 0.33, 0.05, 0, 0, 0, 0, 0]
SECONDARY_FOR_MEDICARE = 0.55      # Medigap / employer secondary for Part B patients
SECONDARY_PAYERS = [3, 4]          # BCBS or Aetna as secondary

# Denial category mix (Change Healthcare Denials Index; registration/eligibility ~27%).
DENIAL_CATEGORY_MIX = [("eligibility", 0.27), ("authorization", 0.10), ("coding", 0.14),
                       ("bundling", 0.07), ("medical_necessity", 0.13), ("missing_info", 0.17),
                       ("timely_filing", 0.07), ("credentialing", 0.05)]
APPEAL_SHARE_AVOIDABLE = 0.70      # corrected/appealed when avoidable
APPEAL_SHARE_CLINICAL = 0.40
APPEAL_OVERTURN = 0.60             # ~63% of denials recoverable (Change Healthcare)
SCRUB_HOLD_RATE = 0.06             # clean claim rate ~94% (benchmark >95%)

# --- Patient responsibility and collections ------------------------------------------------------
COPAY_COMMERCIAL = 30.0
MEDICARE_COINSURANCE = 0.20
DEDUCTIBLE_SHARE = 0.15           # share of commercial claims hitting the deductible (PR-1)
SELF_PAY_DISCOUNT = 0.30
# Patient payment timing after the balance moves to them (statement cycles): paid within
# 10-40 days 55%, 40-120 days 25%, 120-240 days 10%, never (bad debt at 180 d) 10%.
PATIENT_PAY_TIMING = [((3, 40), 0.55), ((40, 120), 0.25), ((120, 240), 0.10), (None, 0.10)]
BAD_DEBT_AFTER_DAYS = 180
REFUND_DAYS = (14, 90)            # credit balances refunded after
CHARGE_LAG_DAYS = (0, 3)
DAYS_IN_AR_BAND = (25.0, 55.0)    # AAFP <50; 30-40 better
