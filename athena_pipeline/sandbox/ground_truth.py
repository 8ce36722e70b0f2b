"""Headline figures the generator planted, computed from the facts with the generator's own rules.

Why: the marts (dbt) must reproduce these numbers from the raw extracts. The rules below are
written out in ``DEFINITIONS`` and copied into ``ground_truth.json`` so a reader can see exactly
what was counted; where the marts deliberately differ they must say so in their YAML.

Measurement period (MP) = the calendar year of the world's current date; data is as of the clock.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb

from athena_pipeline.sandbox.world import World

DEFINITIONS = {
    "common": "MP = calendar year of current_date; ages are completed years on MP end (Dec 31) unless said; "
              "a qualifying visit is a live encounter of type VISIT, PREVENTIVE or TELEHEALTH dated in the MP; "
              "soft-deleted rows never count; procedures count whether FHIR has them or only a claim line does.",
    "shared_exclusions": "hospice procedure in MP; palliative-care condition with onset in MP; age >= 66 with a "
                         "frailty condition recorded in MP AND (an advanced-illness condition [heart failure, "
                         "Alzheimer's, metastatic cancer] recorded on or before MP end and not resolved before the "
                         "prior year, or a dementia medication authored on or before MP end)",
    "CMS122": "denominator: age 18-75, diabetes (E10/E11) active in MP, a visit; excl: shared; numerator (inverse): "
              "most recent HbA1c (4548-4) in MP > 9.0, or no HbA1c in MP",
    "CMS165": "denominator: age 18-85, essential hypertension with onset before Jul 1 of MP and active in MP, a visit; "
              "excl: shared, ESRD or dialysis on or before MP end, pregnancy overlapping MP, age >= 81 with frailty in "
              "MP; numerator: on the most recent BP day in MP, lowest systolic < 140 and lowest diastolic < 90",
    "CMS125": "denominator: women 52-74, a visit; excl: shared, bilateral mastectomy (Z90.13) or both right and left "
              "(Z90.11 + Z90.12) on or before MP end; numerator: mammogram from Oct 1 two years before MP through MP end",
    "CMS130": "denominator: age 46-75, a visit; excl: shared, colorectal cancer or total colectomy on or before MP end; "
              "numerator: FIT in MP, FIT-DNA in MP or 2 years before, CT colonography or flexible sigmoidoscopy in MP "
              "or 4 years before, colonoscopy in MP or 9 years before",
    "CMS124": "denominator: women 24-64, a visit; excl: hysterectomy/absent cervix on or before MP end, hospice or "
              "palliative in MP; numerator: cervical cytology in MP or 2 years before at age >= 21, or HPV test in MP "
              "or 4 years before at age >= 30",
    "CMS117": "denominator: children whose 2nd birthday is in the MP, a visit; excl: hospice in MP; numerator: by the "
              "2nd birthday DTaP>=4, IPV>=3, MMR>=1, Hib>=3, HepB>=3, VZV>=1, PCV>=4, HepA>=1, RV>=2, Influenza>=2 "
              "(distinct dates)",
    "CMS2": "denominator: age >= 12 on MP start, a visit; excl: bipolar disorder on or before MP end; numerator: a "
            "depression screening (73832-8/73831-0) in MP and, if the most recent one is positive, a follow-up plan "
            "(G8431) on that day or up to 2 days after",
    "CMS138": "denominator: age >= 18 on MP start, >= 2 visits or >= 1 preventive visit in MP; excl: hospice in MP; "
              "numerator: tobacco status (72166-2) in MP and, if the most recent says current smoker, cessation "
              "counseling (99406) or varenicline from Jul 1 of the prior year through MP end",
    "CMS69": "denominator: age >= 18 on MP start, an in-person visit (VISIT/PREVENTIVE) in MP; excl: pregnancy "
             "overlapping MP, hospice or palliative in MP; numerator: a BMI in MP and, if the most recent BMI is "
             "< 18.5 or >= 25, a follow-up plan (G8417) in MP",
    "initial_denial_rate_by_payer": "per primary insurance package, over all claims with a first primary remit by "
                                    "the clock: claims whose first primary remit is a denial / those claims",
    "ar_by_bucket": "open balance per claim and responsible party (primary, secondary, patient) as of the clock, "
                    "positive balances only, aged by date of service: 0-30, 31-60, 61-90, 91-120, 120+ days; "
                    "credit balances (negative patient balances) reported separately",
    "days_in_ar": "A/R (positive balances, credits excluded) / (gross charges posted in the last 90 days / 90)",
    "no_show_rate": "appointments dated on or before the clock, not deleted, not cancelled: no-shows / all of them",
}

INVERSE = {"CMS122"}

_PATIENT_AGE = "date_diff('year', p.dob, {end}) - CASE WHEN strftime(p.dob, '%m%d') > strftime({end}, '%m%d') THEN 1 ELSE 0 END"


def _measures_sql(y: int) -> str:
    s, e = f"DATE '{y}-01-01'", f"DATE '{y}-12-31'"
    age_end = _PATIENT_AGE.format(end=e)
    age_start = _PATIENT_AGE.format(end=s)
    return f"""
WITH pt AS (SELECT p.*, {age_end} AS age_end, {age_start} AS age_start FROM patients p WHERE p.deleted_at IS NULL),
cond AS (SELECT * FROM conditions WHERE deleted_at IS NULL),
visits AS (SELECT patient_id, count(*) AS n, count(*) FILTER (WHERE encounter_type = 'PREVENTIVE') AS n_prev,
                  count(*) FILTER (WHERE encounter_type IN ('VISIT', 'PREVENTIVE')) AS n_in_person
           FROM encounters WHERE deleted_at IS NULL AND encounter_type IN ('VISIT', 'PREVENTIVE', 'TELEHEALTH')
             AND encounter_date BETWEEN {s} AND {e} GROUP BY 1),
proc AS (SELECT * FROM procedures WHERE deleted_at IS NULL),
has AS (
  SELECT pt.patient_id,
    bool_or(c.condition_group LIKE 'diabetes%' AND c.onset_date <= {e} AND (c.abatement_date IS NULL OR c.abatement_date >= {s})) AS diabetes,
    bool_or(c.condition_group = 'hypertension' AND c.onset_date < DATE '{y}-07-01' AND (c.abatement_date IS NULL OR c.abatement_date >= {s})) AS htn,
    bool_or(c.condition_group = 'palliative' AND c.onset_date BETWEEN {s} AND {e}) AS palliative,
    bool_or(c.condition_group = 'frailty' AND c.onset_date BETWEEN {s} AND {e}) AS frailty,
    bool_or(c.condition_group IN ('heart_failure', 'alzheimers', 'metastatic_cancer') AND c.onset_date <= {e}
            AND (c.abatement_date IS NULL OR c.abatement_date >= DATE '{y - 1}-01-01')) AS adv_illness,
    bool_or(c.condition_group = 'esrd' AND c.onset_date <= {e}) AS esrd,
    bool_or(c.condition_group = 'pregnancy' AND c.onset_date <= {e} AND coalesce(c.abatement_date, DATE '9999-12-31') >= {s}) AS pregnant,
    bool_or(c.condition_group = 'absent_breast_bilateral' AND c.onset_date <= {e}) AS mast_bil,
    bool_or(c.condition_group = 'absent_breast_right' AND c.onset_date <= {e}) AS mast_r,
    bool_or(c.condition_group = 'absent_breast_left' AND c.onset_date <= {e}) AS mast_l,
    bool_or(c.condition_group = 'colorectal_cancer' AND c.onset_date <= {e}) AS crc,
    bool_or(c.condition_group = 'absent_cervix' AND c.onset_date <= {e}) AS no_cervix,
    bool_or(c.condition_group = 'bipolar' AND c.onset_date <= {e}) AS bipolar
  FROM pt LEFT JOIN cond c USING (patient_id) GROUP BY 1),
pr AS (
  SELECT pt.patient_id,
    bool_or(x.kind = 'hospice' AND x.performed_date BETWEEN {s} AND {e}) AS hospice,
    bool_or(x.kind = 'dialysis' AND x.performed_date <= {e}) AS dialysis,
    bool_or(x.kind = 'colectomy' AND x.performed_date <= {e}) AS colectomy,
    bool_or(x.kind = 'hysterectomy' AND x.performed_date <= {e}) AS hysterectomy,
    bool_or(x.kind = 'mammogram' AND x.performed_date BETWEEN DATE '{y - 2}-10-01' AND {e}) AS mammo,
    bool_or((x.kind = 'fit' AND x.performed_date BETWEEN {s} AND {e})
         OR (x.kind = 'fit_dna' AND x.performed_date BETWEEN DATE '{y - 2}-01-01' AND {e})
         OR (x.kind IN ('ct_colonography', 'flex_sig') AND x.performed_date BETWEEN DATE '{y - 4}-01-01' AND {e})
         OR (x.kind = 'colonoscopy' AND x.performed_date BETWEEN DATE '{y - 9}-01-01' AND {e})) AS crc_screen,
    bool_or((x.kind = 'cervical_cytology' AND x.performed_date BETWEEN DATE '{y - 2}-01-01' AND {e}
             AND x.performed_date >= pt.dob + INTERVAL 21 YEAR)
         OR (x.kind = 'hpv_test' AND x.performed_date BETWEEN DATE '{y - 4}-01-01' AND {e}
             AND x.performed_date >= pt.dob + INTERVAL 30 YEAR)) AS cervical,
    bool_or(x.kind = 'bmi_followup' AND x.performed_date BETWEEN {s} AND {e}) AS bmi_fu,
    bool_or(x.kind = 'tobacco_counseling' AND x.performed_date BETWEEN DATE '{y - 1}-07-01' AND {e}) AS cessation_proc
  FROM pt LEFT JOIN proc x USING (patient_id) GROUP BY 1),
meds AS (
  SELECT patient_id,
    bool_or(med_group = 'donepezil' AND authored_on <= {e}) AS dementia_med,
    bool_or(med_group = 'varenicline' AND authored_on BETWEEN DATE '{y - 1}-07-01' AND {e}) AS cessation_med
  FROM medication_requests WHERE deleted_at IS NULL GROUP BY 1),
obs AS (SELECT * FROM observations WHERE deleted_at IS NULL AND effective_at::DATE BETWEEN {s} AND {e}),
a1c AS (SELECT patient_id, arg_max(value, effective_at) AS last_a1c FROM obs WHERE kind = 'hba1c' GROUP BY 1),
bp_day AS (SELECT patient_id, max(effective_at::DATE) AS d FROM obs WHERE kind = 'bp' GROUP BY 1),
bp AS (SELECT o.patient_id, min(o.value) AS sbp, min(o.value2) AS dbp FROM obs o JOIN bp_day b
         ON o.patient_id = b.patient_id AND o.effective_at::DATE = b.d WHERE o.kind = 'bp' GROUP BY 1),
dep AS (SELECT patient_id, arg_max(value_code, effective_at) AS last_code, max(effective_at)::DATE AS last_date
        FROM obs WHERE kind IN ('phq_adult', 'phq_adolescent') GROUP BY 1),
dep_fu AS (SELECT d.patient_id, bool_or(x.kind = 'depression_followup' AND x.performed_date BETWEEN d.last_date AND d.last_date + 2) AS fu
           FROM dep d JOIN proc x USING (patient_id) GROUP BY 1),
tob AS (SELECT patient_id, arg_max(value_code, effective_at) AS last_code FROM obs WHERE kind = 'tobacco' GROUP BY 1),
bmi AS (SELECT patient_id, arg_max(value, effective_at) AS last_bmi FROM obs WHERE kind = 'bmi' GROUP BY 1),
imm AS (SELECT i.patient_id, i.vaccine_group, count(DISTINCT i.occurrence_date) AS n FROM immunizations i
        JOIN pt USING (patient_id) WHERE i.deleted_at IS NULL AND i.status = 'completed'
        AND i.occurrence_date <= pt.dob + INTERVAL 2 YEAR GROUP BY 1, 2),
imm_ok AS (SELECT patient_id,
    coalesce(max(n) FILTER (WHERE vaccine_group = 'DTaP'), 0) >= 4 AND coalesce(max(n) FILTER (WHERE vaccine_group = 'IPV'), 0) >= 3
    AND coalesce(max(n) FILTER (WHERE vaccine_group = 'MMR'), 0) >= 1 AND coalesce(max(n) FILTER (WHERE vaccine_group = 'Hib'), 0) >= 3
    AND coalesce(max(n) FILTER (WHERE vaccine_group = 'HepB'), 0) >= 3 AND coalesce(max(n) FILTER (WHERE vaccine_group = 'VZV'), 0) >= 1
    AND coalesce(max(n) FILTER (WHERE vaccine_group = 'PCV'), 0) >= 4 AND coalesce(max(n) FILTER (WHERE vaccine_group = 'HepA'), 0) >= 1
    AND coalesce(max(n) FILTER (WHERE vaccine_group = 'RV'), 0) >= 2 AND coalesce(max(n) FILTER (WHERE vaccine_group = 'Influenza'), 0) >= 2
    AS complete FROM imm GROUP BY 1),
base AS (
  SELECT pt.*, coalesce(v.n, 0) AS n_visits, coalesce(v.n_prev, 0) AS n_prev, coalesce(v.n_in_person, 0) AS n_in_person,
         h.*, r.*, coalesce(m.dementia_med, FALSE) AS dementia_med, coalesce(m.cessation_med, FALSE) AS cessation_med,
         (coalesce(r.hospice, FALSE) OR coalesce(h.palliative, FALSE)
          OR (pt.age_end >= 66 AND coalesce(h.frailty, FALSE) AND (coalesce(h.adv_illness, FALSE) OR coalesce(m.dementia_med, FALSE)))) AS shared_excl
  FROM pt LEFT JOIN visits v USING (patient_id) LEFT JOIN has h USING (patient_id) LEFT JOIN pr r USING (patient_id)
  LEFT JOIN meds m USING (patient_id)),
m AS (
  SELECT 'CMS122' AS measure_id, b.patient_id, (age_end BETWEEN 18 AND 75 AND diabetes AND n_visits > 0) AS den,
         shared_excl AS excl, (a.last_a1c IS NULL OR a.last_a1c > 9.0) AS num
  FROM base b LEFT JOIN a1c a USING (patient_id)
  UNION ALL
  SELECT 'CMS165', b.patient_id, (age_end BETWEEN 18 AND 85 AND htn AND n_visits > 0),
         shared_excl OR esrd OR dialysis OR pregnant OR (age_end >= 81 AND frailty),
         coalesce(bp.sbp < 140 AND bp.dbp < 90, FALSE)
  FROM base b LEFT JOIN bp USING (patient_id)
  UNION ALL
  SELECT 'CMS125', patient_id, (sex = 'F' AND age_end BETWEEN 52 AND 74 AND n_visits > 0),
         shared_excl OR mast_bil OR (mast_r AND mast_l), mammo FROM base
  UNION ALL
  SELECT 'CMS130', patient_id, (age_end BETWEEN 46 AND 75 AND n_visits > 0), shared_excl OR crc OR colectomy, crc_screen FROM base
  UNION ALL
  SELECT 'CMS124', patient_id, (sex = 'F' AND age_end BETWEEN 24 AND 64 AND n_visits > 0),
         no_cervix OR hysterectomy OR hospice OR palliative, cervical FROM base
  UNION ALL
  SELECT 'CMS117', b.patient_id, (b.dob + INTERVAL 2 YEAR BETWEEN {s} AND {e} AND n_visits > 0), hospice,
         coalesce(i.complete, FALSE) FROM base b LEFT JOIN imm_ok i USING (patient_id)
  UNION ALL
  SELECT 'CMS2', b.patient_id, (age_start >= 12 AND n_visits > 0), bipolar,
         d.last_code IS NOT NULL AND (d.last_code = '428181000124104' OR coalesce(f.fu, FALSE))
  FROM base b LEFT JOIN dep d USING (patient_id) LEFT JOIN dep_fu f USING (patient_id)
  UNION ALL
  SELECT 'CMS138', b.patient_id, (age_start >= 18 AND (n_visits >= 2 OR n_prev >= 1)), hospice,
         t.last_code IS NOT NULL AND (t.last_code <> '449868002' OR cessation_proc OR cessation_med)
  FROM base b LEFT JOIN tob t USING (patient_id)
  UNION ALL
  SELECT 'CMS69', b.patient_id, (age_start >= 18 AND n_in_person > 0), pregnant OR hospice OR palliative,
         x.last_bmi IS NOT NULL AND ((x.last_bmi >= 18.5 AND x.last_bmi < 25) OR bmi_fu)
  FROM base b LEFT JOIN bmi x USING (patient_id))
SELECT measure_id,
       count(*) FILTER (WHERE den) AS denominator,
       count(*) FILTER (WHERE den AND coalesce(excl, FALSE)) AS exclusions,
       count(*) FILTER (WHERE den AND NOT coalesce(excl, FALSE) AND coalesce(num, FALSE)) AS numerator
FROM m GROUP BY 1 ORDER BY 1
"""


def compute(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> dict:
    y = as_of.year
    D = f"DATE '{as_of.isoformat()}'"
    measures = {}
    for mid, den, excl, num in con.execute(_measures_sql(y)).fetchall():
        eligible = den - excl
        measures[mid] = {"denominator": den, "exclusions": excl, "numerator": num,
                         "performance_rate": round(num / eligible, 6) if eligible else None,
                         "is_inverse": mid in INVERSE,
                         "open_gaps": num if mid in INVERSE else eligible - num}
    denial = {name: {"claims_with_first_remit": n, "initially_denied": d, "initial_denial_rate": round(d / n, 6)}
              for name, n, d in con.execute("""
        SELECT p.name, count(*), count(*) FILTER (WHERE r.is_denial)
        FROM remittances r JOIN insurance_packages p USING (insurance_package_id)
        WHERE r.payer_role = 'Primary' AND r.remit_sequence = 1 GROUP BY 1 ORDER BY 1""").fetchall()}
    buckets = {b: {"open_balance": float(v), "claim_count": int(n)} for b, v, n in con.execute(f"""
        WITH bal AS (
            SELECT claim_id, service_date, 'primary' AS party, primary_outstanding AS amt FROM claims
            UNION ALL SELECT claim_id, service_date, 'secondary', secondary_outstanding FROM claims
            UNION ALL SELECT claim_id, service_date, 'patient', patient_outstanding FROM claims),
        aged AS (SELECT *, {D} - service_date AS age FROM bal WHERE amt > 0)
        SELECT CASE WHEN age <= 30 THEN '0-30' WHEN age <= 60 THEN '31-60' WHEN age <= 90 THEN '61-90'
                    WHEN age <= 120 THEN '91-120' ELSE '120+' END AS b, sum(amt), count(DISTINCT claim_id)
        FROM aged GROUP BY 1 ORDER BY 1""").fetchall()}
    credit = con.execute("SELECT coalesce(sum(patient_outstanding), 0), count(*) FROM claims WHERE patient_outstanding < 0").fetchone()
    ar = sum(v["open_balance"] for v in buckets.values())
    charges_90 = float(con.execute(f"""SELECT coalesce(sum(amount), 0) FROM transactions
        WHERE transaction_type = 'CHARGE' AND post_date > {D} - 90 AND post_date <= {D}""").fetchone()[0])
    ns, total = con.execute(f"""SELECT count(*) FILTER (WHERE is_no_show), count(*) FROM appointments
        WHERE appointment_date <= {D} AND deleted_at IS NULL AND status <> 'x'
          AND (status <> 'f' AND start_time <= {D}::TIMESTAMP + INTERVAL 1 DAY)""").fetchone()
    return {
        "as_of": as_of.isoformat(),
        "measurement_period": {"start": f"{y}-01-01", "end": f"{y}-12-31"},
        "measures": measures,
        "initial_denial_rate_by_payer": denial,
        "ar_by_bucket": buckets,
        "ar_total": round(ar, 2),
        "credit_balances": {"amount": float(credit[0]), "claim_count": int(credit[1])},
        "avg_daily_charges_90d": round(charges_90 / 90, 2),
        "days_in_ar": round(ar / (charges_90 / 90), 2) if charges_90 else None,
        "no_show_rate": round(ns / total, 6) if total else None,
        "definitions": DEFINITIONS,
    }


def write_ground_truth(world: World) -> dict:
    con = duckdb.connect(str(world.facts_path), read_only=True)
    try:
        truth = compute(con, world.current_date)
    finally:
        con.close()
    tmp: Path = world.ground_truth_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    tmp.replace(world.ground_truth_path)
    return truth
