"""Conditions, screenings, appointments, encounters, observations, procedures, immunizations,
medications and allergies, all vectorised over patients/encounters (no per-record Python loops)."""

from __future__ import annotations

import numpy as np
import polars as pl

from athena_pipeline.sandbox import codes, rates
from athena_pipeline.sandbox.gen.ctx import (DAY, Ctx, age_years, at_time, band_lookup, choice_weighted, days,
                                              to_weekday, uniform_dates)

NAT = np.datetime64("NaT")
MANAGED_GROUPS = {"diabetes_t2", "diabetes_t2_hyper", "diabetes_t1", "hypertension", "hyperlipidemia",
                  "depression", "bipolar", "asthma", "copd", "obesity", "ckd3", "esrd", "frailty",
                  "heart_failure", "alzheimers", "metastatic_cancer", "colorectal_cancer", "pregnancy",
                  "anxiety"}


class Patients:
    """Patient-level numpy arrays used by every clinical builder."""

    def __init__(self, ctx: Ctx, patients: pl.DataFrame):
        self.n = patients.height
        self.pid = patients["patient_id"].to_numpy()
        self.dob = patients["dob"].to_numpy().astype("datetime64[D]")
        self.female = patients["sex"].to_numpy() == "F"
        reg = patients["registered_date"].to_numpy().astype("datetime64[D]")
        death = patients["deceased_date"].to_numpy().astype("datetime64[D]")
        self.created_at = patients["created_at"].to_numpy().astype("datetime64[ms]")
        self.active_from = np.maximum(reg + DAY, ctx.start)
        self.active_to = np.where(np.isnat(death), ctx.horizon, np.minimum(death, ctx.horizon))
        self.active_to = np.maximum(self.active_to, self.active_from)
        self.age_end = age_years(self.dob, ctx.end)
        self.provider = patients["primary_provider_id"].to_numpy()
        self.department = patients["department_id"].to_numpy()
        self.years_active = (self.active_to - self.active_from).astype(int) / 365.25


def _rows(pid, group, onset, abatement=None, category="problem-list-item") -> pl.DataFrame:
    n = len(pid)
    return pl.DataFrame({
        "patient_id": pid, "condition_group": np.full(n, group), "onset_date": onset.astype("datetime64[D]"),
        "abatement_date": (abatement if abatement is not None else np.full(n, NAT)).astype("datetime64[D]"),
        "category": np.full(n, category),
    })


def build_conditions(ctx: Ctx, P: Patients) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """Problem-list conditions with US prevalence by age, plus per-patient flags other builders use."""
    rng = ctx.rng("conditions")
    n = P.n
    a = P.age_end
    adult_from = P.dob + days(18 * 365.25)

    def chronic_onset(eligible_from):
        before = rng.random(n) < 0.7
        early = np.maximum(eligible_from, ctx.start - days(rng.integers(30, 3650, n)))
        later = uniform_dates(rng, np.maximum(P.active_from, eligible_from), np.maximum(P.active_to, eligible_from))
        return np.where(before, early, later)

    parts: list[pl.DataFrame] = []
    flags: dict[str, np.ndarray] = {}

    def add(mask, group, onset, abatement=None):
        parts.append(_rows(P.pid[mask], group, onset[mask], None if abatement is None else abatement[mask]))

    diabetic = rng.random(n) < band_lookup(a, rates.DIABETES_BY_AGE)
    t1 = diabetic & (rng.random(n) < rates.DIABETES_TYPE1_SHARE)
    poor = diabetic & (rng.random(n) < rates.HBA1C_POOR_CONTROL_SHARE)
    onset = chronic_onset(adult_from)
    add(t1, "diabetes_t1", onset)
    add(diabetic & ~t1 & poor & (rng.random(n) < 0.5), "diabetes_t2_hyper", onset)
    add(diabetic & ~t1 & ~(poor & (rng.random(n) < 0.5)), "diabetes_t2", onset)
    flags["diabetic"], flags["a1c_poor"] = diabetic, poor

    htn = rng.random(n) < band_lookup(a, rates.HYPERTENSION_BY_AGE)
    add(htn, "hypertension", chronic_onset(adult_from))
    flags["htn"] = htn
    flags["bp_controlled"] = rng.random(n) < rates.BP_CONTROLLED_SHARE
    add(rng.random(n) < band_lookup(a, rates.HYPERLIPIDEMIA_BY_AGE), "hyperlipidemia", chronic_onset(adult_from))
    adult = a >= 18
    dep = adult & (rng.random(n) < rates.DEPRESSION_ADULT)
    add(dep, "depression", chronic_onset(adult_from))
    flags["depression"] = dep
    add(adult & (rng.random(n) < rates.BIPOLAR_ADULT), "bipolar", chronic_onset(adult_from))
    asthma = rng.random(n) < rates.ASTHMA_ALL
    add(asthma, "asthma", chronic_onset(P.dob + days(730)))
    flags["asthma"] = asthma
    add((a >= 40) & (rng.random(n) < rates.COPD_40PLUS), "copd", chronic_onset(adult_from))
    add(adult & (rng.random(n) < rates.ANXIETY_ADULT), "anxiety", chronic_onset(adult_from))
    add((a >= 60) & (rng.random(n) < rates.CKD3_60PLUS), "ckd3", chronic_onset(adult_from))
    esrd = adult & (rng.random(n) < rates.ESRD_ALL_ADULTS)
    add(esrd, "esrd", chronic_onset(adult_from))
    flags["esrd"] = esrd
    # BMI class (adults); obesity on the problem list for ~60% of the obese
    bmi_class = choice_weighted(rng, n, [s for _, s in rates.BMI_SHARES])
    flags["bmi_class"] = bmi_class
    add(adult & (bmi_class == 3) & (rng.random(n) < 0.6), "obesity", chronic_onset(adult_from))
    # Smoking status (adults): 0 never, 1 former, 2 current
    u = rng.random(n)
    flags["smoker"] = np.where(~adult, 0, np.where(u < rates.CURRENT_SMOKER_ADULT, 2,
                                                    np.where(u < rates.CURRENT_SMOKER_ADULT + rates.FORMER_SMOKER_ADULT, 1, 0)))

    # Measure exclusions among the old: frailty, advanced illness (and dementia), palliative, hospice.
    old = a >= 66
    frail = old & (rng.random(n) < rates.FRAILTY_66PLUS)
    flags["frail"] = frail
    frail_onset = uniform_dates(rng, np.maximum(P.active_from, ctx.end - days(400)), np.maximum(P.active_to, ctx.end - days(400)))
    add(frail, "frailty", frail_onset)
    second = frail & (rng.random(n) < 0.6)
    add(second, "frailty", np.minimum(frail_onset + days(rng.integers(20, 200, n)), P.active_to))
    adv_p = np.where(frail, rates.ADVANCED_ILLNESS_GIVEN_FRAILTY, rates.ADVANCED_ILLNESS_66PLUS * 0.6)
    adv = old & (rng.random(n) < adv_p)
    kind = rng.integers(0, 3, n)
    adv_onset = chronic_onset(adult_from)
    for k, g in enumerate(["heart_failure", "alzheimers", "metastatic_cancer"]):
        add(adv & (kind == k), g, adv_onset)
    flags["alzheimers"] = adv & (kind == 1)

    # Year-by-year events: palliative care encounters, pregnancy.
    y0 = int(str(ctx.start)[:4])
    y1 = int(str(ctx.horizon)[:4])
    for y in range(y0, y1 + 1):
        jan1, dec31 = np.datetime64(f"{y}-01-01"), np.datetime64(f"{y}-12-31")
        lo = np.maximum(P.active_from, jan1)
        hi = np.minimum(P.active_to, dec31)
        alive = hi >= lo
        age_y = age_years(P.dob, dec31)
        pall = alive & (age_y >= 65) & (rng.random(n) < rates.PALLIATIVE_65PLUS_PER_YEAR)
        add(pall, "palliative", uniform_dates(rng, lo, np.maximum(hi, lo)))
        preg = alive & P.female & (age_y >= 18) & (age_y <= 44) & (rng.random(n) < rates.PREGNANT_18_44_WOMEN_PER_YEAR)
        p_on = uniform_dates(rng, lo, np.maximum(hi, lo))
        add(preg, "pregnancy", p_on, p_on + days(np.full(n, 270)))

    # Surgical history (documented as acquired-absence problems, dated before the window).
    hist = ctx.start - days(rng.integers(400, 5000, n))
    w50 = P.female & (a >= 50)
    bil = w50 & (rng.random(n) < rates.MASTECTOMY_BILATERAL_WOMEN_50PLUS)
    right = w50 & ~bil & (rng.random(n) < rates.MASTECTOMY_UNILATERAL_WOMEN_50PLUS)
    left = w50 & ~bil & (rng.random(n) < rates.MASTECTOMY_UNILATERAL_WOMEN_50PLUS)
    add(bil, "absent_breast_bilateral", hist)
    add(right, "absent_breast_right", hist)
    add(left, "absent_breast_left", hist + days(rng.integers(30, 900, n)))
    flags["mastectomy_bilateral"] = bil
    flags["mastectomy_right"], flags["mastectomy_left"] = right, left
    hyst = P.female & (a >= 40) & (rng.random(n) < rates.HYSTERECTOMY_WOMEN_40PLUS)
    add(hyst, "absent_cervix", hist)
    flags["hysterectomy"], flags["hysterectomy_date"] = hyst, hist
    crc = (a >= 50) & (rng.random(n) < rates.COLORECTAL_CANCER_50PLUS)
    add(crc, "colorectal_cancer", chronic_onset(adult_from))
    flags["colectomy"] = (a >= 45) & (rng.random(n) < rates.COLECTOMY_45PLUS)
    flags["colectomy_date"] = ctx.start - days(rng.integers(400, 5000, n))

    return pl.concat(parts), flags


def _poisson_explode(rng, pid_idx: np.ndarray, lam: np.ndarray) -> np.ndarray:
    counts = rng.poisson(np.maximum(lam, 0))
    return np.repeat(pid_idx, counts)


def build_screening_history(ctx: Ctx, P: Patients, flags) -> pl.DataFrame:
    """Screenings and surgeries documented as procedures (mostly done elsewhere: no encounter).

    Returns procedure rows with a ``billed_here`` flag: those become procedure appointments and claim
    lines (colonoscopies by the practice's proceduralists)."""
    rng = ctx.rng("screenings")
    n = P.n
    a = P.age_end
    out = []

    def add(mask, kind, date, billed_here=None, in_fhir=None):
        m = mask & (date >= P.dob)
        k = int(m.sum())
        out.append(pl.DataFrame({
            "patient_id": P.pid[m], "kind": np.full(k, kind), "performed_date": date[m].astype("datetime64[D]"),
            "billed_here": np.zeros(k, bool) if billed_here is None else billed_here[m],
            "in_fhir": np.ones(k, bool) if in_fhir is None else in_fhir[m],
        }))

    end = ctx.end
    # Mammography: women 40-74; up to date = within 27 months.
    w = P.female & (a >= 40) & (a <= 76) & ~flags["mastectomy_bilateral"]
    ok = rng.random(n) < rates.MAMMOGRAM_UP_TO_DATE
    last = np.where(ok, end - days(rng.random(n) * 820), end - days(835 + rng.random(n) * 900))
    never = ~ok & (rng.random(n) < 0.4)
    add(w & ~never, "mammogram", last)
    prev = last - days(330 + rng.random(n) * 400)
    add(w & ~never & (rng.random(n) < 0.7), "mammogram", prev)

    # Colorectal: 45-75, modality-specific look-backs (10/1/3/5/5 years).
    c = (a >= 45) & (a <= 77) & ~flags["colectomy"]
    ok = rng.random(n) < rates.COLORECTAL_UP_TO_DATE
    mod = choice_weighted(rng, n, [m for _, m in rates.COLORECTAL_MODALITY])
    mp_start = np.datetime64(f"{str(end)[:4]}-01-01")
    ytd = max(int((end - mp_start) / DAY), 1)
    lookback_days = np.array([3650, ytd, 3 * 365, 5 * 365, 5 * 365])[mod]
    last = np.where(ok, end - days(rng.random(n) * lookback_days),
                    end - days(lookback_days + 30 + rng.random(n) * 1500))
    never = ~ok & (rng.random(n) < 0.45)
    colo = c & ~never & (mod == 0)
    in_window = (last >= P.active_from) & (last <= end)
    billed_here = colo & in_window & (rng.random(n) < rates.COLONOSCOPY_BILLED_HERE)
    in_fhir = ~(billed_here & (rng.random(n) < rates.COLONOSCOPY_FHIR_MISSING_WHEN_BILLED))
    add(colo, "colonoscopy", last, billed_here, in_fhir)
    for k, kind in enumerate(["fit", "fit_dna", "ct_colonography", "flex_sig"], start=1):
        add(c & ~never & (mod == k), kind, last)
    add(flags["colectomy"], "colectomy", flags["colectomy_date"])

    # Cervical: women 21-64 with a cervix: cytology every 3 y, HPV co-test every 5 y from 30.
    cv = P.female & (a >= 21) & (a <= 66) & ~flags["hysterectomy"]
    ok = rng.random(n) < rates.CERVICAL_UP_TO_DATE
    hpv = ok & (a >= 31) & (rng.random(n) < 0.5)
    cyt_last = np.where(ok & ~hpv, end - days(rng.random(n) * 1000), end - days(1150 + rng.random(n) * 800))
    hpv_last = end - days(rng.random(n) * 1700)
    never = ~ok & (rng.random(n) < 0.5)
    add(cv & ~never & ~hpv, "cervical_cytology", cyt_last)
    add(cv & hpv, "hpv_test", hpv_last)
    add(cv & hpv, "cervical_cytology", hpv_last)
    add(flags["hysterectomy"], "hysterectomy", flags["hysterectomy_date"])
    bil = flags["mastectomy_bilateral"]
    add(bil, "mastectomy", ctx.start - days(rng.integers(400, 5000, n)))

    # Hospice enrolment (65+) in any window year; dialysis for ESRD.
    y0, y1 = int(str(ctx.start)[:4]), int(str(ctx.horizon)[:4])
    for y in range(y0, y1 + 1):
        lo = np.maximum(P.active_from, np.datetime64(f"{y}-01-01"))
        hi = np.minimum(P.active_to, np.datetime64(f"{y}-12-31"))
        m = (hi >= lo) & (age_years(P.dob, np.datetime64(f"{y}-12-31")) >= 65) & (
            rng.random(n) < rates.HOSPICE_65PLUS_PER_YEAR)
        add(m, "hospice", uniform_dates(rng, lo, np.maximum(lo, hi)))
        add(flags["esrd"] & (hi >= lo), "dialysis", uniform_dates(rng, lo, np.maximum(lo, hi)))
    return pl.concat(out)


def build_appointments(ctx: Ctx, P: Patients, n_chronic: np.ndarray, procedure_visits: pl.DataFrame,
                       providers: pl.DataFrame) -> pl.DataFrame:
    """Bookings: preventive visits on schedule, problem visits (Poisson by age and chronic burden),
    procedure slots for billed colonoscopies, then outcomes (completed / no-show / cancelled /
    rescheduled)."""
    rng = ctx.rng("appointments")
    n = P.n
    idx = np.arange(n)
    a = P.age_end
    # Problem visits
    lam = band_lookup(a, [(0, 2, 1.5), (2, 18, 1.0), (18, 45, 1.0), (45, 65, 1.5), (65, 200, 2.2)])
    lam = (lam + rates.VISITS_PER_CHRONIC_CONDITION * n_chronic) * P.years_active
    prob_i = _poisson_explode(rng, idx, lam)
    prob_date = uniform_dates(rng, P.active_from[prob_i], P.active_to[prob_i])
    prob_type = np.where(rng.random(len(prob_i)) < 0.5, "Office Visit", "Follow Up")
    # Preventive: adults with the habit yearly; children yearly; infants on the well-child schedule.
    habit = rng.random(n) < rates.ANNUAL_PREVENTIVE_SHARE
    prev_i, prev_date = [], []
    y0, y1 = int(str(ctx.start)[:4]), int(str(ctx.horizon)[:4])
    for y in range(y0, y1 + 1):
        lo = np.maximum(P.active_from, np.datetime64(f"{y}-01-01"))
        hi = np.minimum(P.active_to, np.datetime64(f"{y}-12-31"))
        age_y = age_years(P.dob, np.datetime64(f"{y}-12-31"))
        m = (hi >= lo) & (((age_y >= 18) & habit) | ((age_y >= 3) & (age_y < 18) & (rng.random(n) < 0.75)))
        prev_i.append(idx[m])
        prev_date.append(uniform_dates(rng, lo[m], hi[m]))
    for months in [1, 2, 4, 6, 9, 12, 15, 18, 24, 30]:
        d = P.dob + days(months * 30.44) + days(rng.integers(0, 21, n))
        m = (d >= P.active_from) & (d <= P.active_to) & (rng.random(n) < 0.92)
        prev_i.append(idx[m])
        prev_date.append(d[m])
    prev_i = np.concatenate(prev_i)
    prev_date = np.concatenate(prev_date)
    prev_type = np.where(age_years(P.dob[prev_i], prev_date) < 18, "Well Child", "Annual Physical")
    # Procedure slots
    proc_pid = procedure_visits["patient_id"].to_numpy()
    proc_i = np.searchsorted(P.pid, proc_pid)
    proc_date = procedure_visits["performed_date"].to_numpy().astype("datetime64[D]")

    pi = np.concatenate([prob_i, prev_i, proc_i])
    date = to_weekday(np.concatenate([prob_date, prev_date, proc_date]).astype("datetime64[D]"))
    date = np.clip(date, P.active_from[pi], ctx.horizon)
    atype = np.concatenate([prob_type, prev_type, np.full(len(proc_i), "Procedure")])
    m = len(pi)
    # New-patient visit: the first visit of a patient who registered during the window.
    order = np.lexsort((date, pi))
    first = np.zeros(m, bool)
    first[order[np.r_[True, pi[order][1:] != pi[order][:-1]]]] = True
    new_pt = first & (P.active_from[pi] > ctx.start) & (atype != "Procedure")
    atype = np.where(new_pt, "New Patient", atype)
    # Provider: usually the PCP, otherwise a colleague in the same department.
    prov_ids = providers["provider_id"].to_numpy()
    prov_dept = providers["department_id"].to_numpy()
    provider = P.provider[pi].copy()
    other = rng.random(m) < 0.2
    for d in np.unique(prov_dept):
        mm = other & (P.department[pi] == d)
        provider[mm] = rng.choice(prov_ids[prov_dept == d], int(mm.sum()))
    duration = np.where(np.isin(atype, ["Annual Physical", "New Patient", "Procedure"]), 40, 20)
    slot = rng.integers(0, 26, m)  # 08:00 .. 16:20 in 20-minute slots
    start_time = at_time(date, 8 * 3600 + slot * 1200)
    lead_days = np.where(np.isin(atype, ["Annual Physical", "Well Child", "Procedure"]),
                         rng.integers(10, 75, m), rng.integers(0, 12, m))
    booked_at = start_time - days(lead_days) - np.timedelta64(1, "h") * rng.integers(1, 8, m)
    booked_at = np.maximum(booked_at, P.created_at[pi] + np.timedelta64(1, "h"))
    # Outcomes
    u = rng.random(m)
    cancelled = u < rates.CANCEL_RATE
    no_show = ~cancelled & (u < rates.CANCEL_RATE + rates.NO_SHOW_RATE)
    late = cancelled & (rng.random(m) < rates.LATE_CANCEL_SHARE)
    window_s = np.maximum((start_time - booked_at) / np.timedelta64(1, "s"), 3600.0)
    frac = np.where(late, 1 - np.minimum(0.99, rng.random(m) * 86_000 / window_s), rng.random(m) * 0.85)
    cancelled_at = booked_at + (window_s * frac).astype(np.int64).astype("timedelta64[s]")
    resched = cancelled & (rng.random(m) < rates.RESCHEDULE_SHARE)
    telehealth = (atype == "Office Visit") & (rng.random(m) < rates.TELEHEALTH_SHARE / 0.5)
    atype = np.where(telehealth, "Telehealth", atype)
    reasons = np.array(["PATIENT CANCELLED", "PROVIDER UNAVAILABLE", "PATIENT ILL", "SCHEDULING ERROR"])
    cancel_reason = np.where(resched, "RESCHEDULED", reasons[choice_weighted(rng, m, [0.6, 0.15, 0.2, 0.05])])
    base = pl.DataFrame({
        "patient_idx": pi, "patient_id": P.pid[pi], "provider_id": provider,
        "department_id": P.department[pi], "appointment_type": atype, "appointment_date": date,
        "start_time": start_time, "duration_minutes": duration.astype(np.int32), "booked_at": booked_at,
        "is_no_show": no_show, "is_cancelled": cancelled,
        "cancelled_at": np.where(cancelled, cancelled_at, np.datetime64("NaT", "ms")),
        "cancel_reason": pl.Series(np.where(cancelled, cancel_reason, None).tolist(), dtype=pl.Utf8),
        "rescheduled": resched,
    })
    # Rebookings of rescheduled appointments: 1-21 days later, booked when the original was cancelled.
    rs = base.filter(pl.col("rescheduled"))
    k = rs.height
    shift = days(rng.integers(1, 22, k))
    new_date = to_weekday(rs["appointment_date"].to_numpy().astype("datetime64[D]") + shift)
    new_start = at_time(new_date, 8 * 3600 + rng.integers(0, 26, k) * 1200)
    rs_booked = rs["cancelled_at"].to_numpy().astype("datetime64[ms]")
    new_start = np.maximum(new_start, rs_booked + np.timedelta64(2, "h"))
    new_date = new_start.astype("datetime64[D]")
    rebook = rs.with_columns(
        pl.Series("appointment_date", new_date), pl.Series("start_time", new_start),
        pl.Series("booked_at", rs_booked), pl.lit(False).alias("is_cancelled"),
        pl.lit(None, pl.Datetime("us")).alias("cancelled_at"), pl.lit(None, pl.Utf8).alias("cancel_reason"),
        pl.Series("is_no_show", rng.random(k) < rates.NO_SHOW_RATE), pl.lit(False).alias("rescheduled"),
        pl.arange(0, k).alias("_rs_src"),
    ).filter(pl.col("appointment_date") <= ctx.horizon)
    base = base.with_columns(pl.lit(None, pl.Int64).alias("_rs_src"))
    rs_pos = np.flatnonzero(base["rescheduled"].to_numpy())
    allx = pl.concat([base.with_columns(pl.Series("_row", np.arange(base.height))),
                      rebook.with_columns((pl.lit(base.height) + pl.arange(0, rebook.height)).alias("_row"))],
                     how="vertical_relaxed")
    allx = allx.with_columns(pl.col("start_time").cast(pl.Datetime("us")), pl.col("booked_at").cast(pl.Datetime("us")))
    allx = allx.sort(["start_time", "patient_id", "_row"])
    allx = allx.with_columns(pl.Series("appointment_id", ctx.ids.take("appointment_id", allx.height, 1_000_000)))
    # Link originals <-> rebookings via _row
    id_by_row = np.empty(allx.height, dtype=np.int64)
    id_by_row[allx["_row"].to_numpy()] = allx["appointment_id"].to_numpy()
    rebook_rows = base.height + np.arange(rebook.height)
    src_rows = rs_pos[rebook["_rs_src"].to_numpy()]
    to_id = np.full(allx.height, -1, dtype=np.int64)
    from_id = np.full(allx.height, -1, dtype=np.int64)
    to_id[src_rows] = id_by_row[rebook_rows]
    from_id[rebook_rows] = id_by_row[src_rows]
    rows = allx["_row"].to_numpy()
    allx = allx.with_columns(
        pl.Series("rescheduled_to_appointment_id", to_id[rows]).replace(-1, None),
        pl.Series("rescheduled_from_appointment_id", from_id[rows]).replace(-1, None),
    )
    st = allx["start_time"].to_numpy().astype("datetime64[ms]")
    dur = allx["duration_minutes"].to_numpy().astype(np.int64)
    done = ~allx["is_cancelled"].to_numpy() & ~allx["is_no_show"].to_numpy()
    checkin = np.where(done, st - np.timedelta64(1, "m") * rng.integers(3, 20, allx.height), np.datetime64("NaT", "ms"))
    checkout = np.where(done, st + np.timedelta64(1, "m") * (dur + rng.integers(0, 25, allx.height)),
                        np.datetime64("NaT", "ms"))
    # ~0.4% of cancelled bookings are later deleted as entered in error.
    canc = allx["is_cancelled"].to_numpy()
    ca = allx["cancelled_at"].to_numpy().astype("datetime64[ms]")
    t_del = np.where(canc & (rng.random(allx.height) < 0.04), ca + np.timedelta64(1, "D") * rng.integers(1, 5, allx.height),
                     np.datetime64("NaT", "ms"))
    return allx.with_columns(
        pl.Series("checkin_at", checkin), pl.Series("checkout_at", checkout), pl.Series("t_deleted_at", t_del),
    ).drop(["_row", "_rs_src", "rescheduled"])


def build_encounters(ctx: Ctx, P: Patients, appts: pl.DataFrame) -> pl.DataFrame:
    """One encounter per attended appointment, with the billed visit code."""
    rng = ctx.rng("encounters")
    e = appts.filter(~pl.col("is_cancelled") & ~pl.col("is_no_show"))
    m = e.height
    pi = e["patient_idx"].to_numpy()
    date = e["appointment_date"].to_numpy().astype("datetime64[D]")
    age = age_years(P.dob[pi], date)
    atype = e["appointment_type"].to_numpy()
    prev_codes = np.array(["99391", "99392", "99393", "99394", "99395", "99396", "99397"])
    prev_band = np.digitize(age, [1, 5, 12, 18, 40, 65])
    est = np.array(["99212", "99213", "99214", "99215"])[choice_weighted(rng, m, [0.15, 0.45, 0.33, 0.07])]
    new = np.where(rng.random(m) < 0.6, "99203", "99204")
    cpt = np.where(np.isin(atype, ["Annual Physical", "Well Child"]), prev_codes[prev_band],
                   np.where(atype == "New Patient", new, np.where(atype == "Procedure", "45378", est)))
    etype = np.where(np.isin(atype, ["Annual Physical", "Well Child"]), "PREVENTIVE",
                     np.where(atype == "Telehealth", "TELEHEALTH", np.where(atype == "Procedure", "PROCEDURE", "VISIT")))
    checkout = e["checkout_at"].to_numpy().astype("datetime64[ms]")
    slow = rng.random(m) < 0.04
    close_delay_h = np.where(slow, rng.integers(72, 480, m), rng.integers(1, 30, m))
    closed_at = checkout + np.timedelta64(1, "h") * close_delay_h
    return pl.DataFrame({
        "encounter_id": e["appointment_id"].to_numpy() + 4_000_000,
        "appointment_id": e["appointment_id"].to_numpy(), "patient_idx": pi,
        "patient_id": e["patient_id"].to_numpy(), "provider_id": e["provider_id"].to_numpy(),
        "department_id": e["department_id"].to_numpy(), "encounter_date": date,
        "start_at": e["checkin_at"].to_numpy(), "end_at": checkout, "encounter_type": etype, "visit_cpt": cpt,
        "closed_at": closed_at, "created_at": e["checkin_at"].to_numpy(), "age": age,
    })


def _first_in_year(enc: pl.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Boolean: the patient's first encounter of the calendar year among ``mask``."""
    df = pl.DataFrame({"i": np.arange(enc.height), "pid": enc["patient_id"].to_numpy(),
                       "d": enc["encounter_date"].to_numpy(), "m": mask})
    firsts = (df.filter(pl.col("m")).sort(["pid", "d", "i"])
              .group_by([pl.col("pid"), pl.col("d").dt.year().alias("y")], maintain_order=True)
              .agg(pl.col("i").first())["i"].to_numpy())
    out = np.zeros(enc.height, bool)
    out[firsts] = True
    return out


def build_encounter_clinical(ctx: Ctx, P: Patients, flags, enc: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Vitals, labs, screenings and follow-ups recorded at encounters."""
    rng = ctx.rng("encounter_clinical")
    m = enc.height
    pi = enc["patient_idx"].to_numpy()
    age = enc["age"].to_numpy()
    etype = enc["encounter_type"].to_numpy()
    in_person = np.isin(etype, ["VISIT", "PREVENTIVE"])
    adult = age >= 18
    t0 = enc["start_at"].to_numpy().astype("datetime64[ms]") + np.timedelta64(8, "m")
    obs = []

    def add_obs(mask, kind, value=None, value2=None, code=None, code_display=None, at=None):
        k = int(mask.sum())
        loinc, display, category, unit = codes.OBSERVATIONS[kind]
        obs.append(pl.DataFrame({
            "encounter_idx": np.flatnonzero(mask), "kind": np.full(k, kind), "loinc": np.full(k, loinc),
            "display": np.full(k, display), "category": np.full(k, category),
            "value": (np.full(m, np.nan) if value is None else value)[mask].astype(float),
            "value2": (np.full(m, np.nan) if value2 is None else value2)[mask].astype(float),
            "value_code": pl.Series([None] * k if code is None else code[mask].tolist(), dtype=pl.Utf8),
            "value_display": pl.Series([None] * k if code_display is None else code_display[mask].tolist(),
                                       dtype=pl.Utf8),
            "unit": pl.Series([unit] * k, dtype=pl.Utf8), "effective_at": (t0 if at is None else at)[mask],
        }))

    # Blood pressure (adults, in person); hypertensives controlled or not per patient.
    htn, ctl = flags["htn"][pi], flags["bp_controlled"][pi]
    sys_mu = np.where(htn & ctl, 127, np.where(htn, 149, 117))
    dia_mu = np.where(htn & ctl, 78, np.where(htn, 91, 74))
    sbp = np.round(rng.normal(sys_mu, 9))
    dbp = np.round(rng.normal(dia_mu, 7))
    bp = adult & in_person
    add_obs(bp, "bp", sbp, dbp)
    again = bp & (rng.random(m) < rates.SECOND_BP_SAME_DAY + 0.2 * (sbp >= 140))
    add_obs(again, "bp", np.round(sbp - rng.uniform(0, 14, m)), np.round(dbp - rng.uniform(0, 8, m)),
            at=t0 + np.timedelta64(25, "m"))
    # BMI, weight, height
    bclass = flags["bmi_class"][pi]
    bmi = np.round(np.array([17.5, 22.0, 27.5, 34.0])[bclass] + rng.normal(0, 1.2, m), 1)
    bmi = np.where(bclass == 1, np.clip(bmi, 18.6, 24.9), np.where(bclass == 2, np.clip(bmi, 25.0, 29.9),
                   np.where(bclass == 3, np.maximum(bmi, 30.0), np.minimum(bmi, 18.4))))
    height = np.where(P.female[pi], 162.0, 176.0) + rng.normal(0, 4, m)
    height = np.where(age < 18, np.minimum(height, 50 + age * 6.5), height)
    weight = np.where(adult, bmi * (height / 100) ** 2, 3.5 + age * 3.0)
    meas = in_person & (rng.random(m) < rates.BMI_DOCUMENTED_PER_VISIT)
    add_obs(meas & adult, "bmi", bmi)
    add_obs(meas, "weight", np.round(weight, 1))
    add_obs(meas, "height", np.round(height, 1))
    # HbA1c: diabetics at about half their visits; a few non-diabetic screens.
    poor = flags["a1c_poor"][pi]
    diab = flags["diabetic"][pi]
    a1c = np.where(poor, rng.normal(10.1, 1.0, m), rng.normal(7.0, 0.7, m))
    a1c = np.where(poor & (rng.random(m) < 0.12), rng.normal(8.3, 0.4, m), a1c)
    a1c = np.where(~poor & (rng.random(m) < 0.04), rng.normal(9.6, 0.4, m), a1c)
    a1c = np.where(diab, a1c, rng.normal(5.6, 0.35, m))
    lab = (diab & in_person & (rng.random(m) < 0.55)) | (~diab & adult & (age >= 45) & in_person & (rng.random(m) < 0.04))
    add_obs(lab, "hba1c", np.round(np.clip(a1c, 4.2, 15.0), 1), at=t0 + np.timedelta64(30, "m"))
    # Depression screening once a year (12+), positive more often with depression.
    first = _first_in_year(enc, in_person & (age >= 12))
    screened = first & (rng.random(m) < rates.DEPRESSION_SCREENED_PER_YEAR)
    pos = rng.random(m) < np.where(flags["depression"][pi], 0.35, rates.DEPRESSION_SCREEN_POSITIVE)
    dcode = np.where(pos, codes.DEPRESSION_SCREEN_ANSWERS[True][0], codes.DEPRESSION_SCREEN_ANSWERS[False][0])
    ddisp = np.where(pos, codes.DEPRESSION_SCREEN_ANSWERS[True][1], codes.DEPRESSION_SCREEN_ANSWERS[False][1])
    add_obs(screened & adult, "phq_adult", code=dcode, code_display=ddisp)
    add_obs(screened & ~adult, "phq_adolescent", code=dcode, code_display=ddisp)
    # Tobacco status once a year (adults).
    tfirst = _first_in_year(enc, in_person & adult)
    tscreen = tfirst & (rng.random(m) < rates.TOBACCO_SCREENED_PER_YEAR)
    smoker = flags["smoker"][pi]
    keys = np.array(["never", "former", "current"])[smoker]
    tcode = np.array([codes.TOBACCO_ANSWERS[k][0] for k in ["never", "former", "current"]])[smoker]
    tdisp = np.array([codes.TOBACCO_ANSWERS[k][1] for k in ["never", "former", "current"]])[smoker]
    del keys
    add_obs(tscreen, "tobacco", code=tcode, code_display=tdisp)
    observations = pl.concat(obs)

    # Follow-ups documented as procedures at the encounter (and billed as quality codes / counseling).
    procs = []

    def add_proc(mask, kind):
        procs.append(pl.DataFrame({"encounter_idx": np.flatnonzero(mask), "kind": np.full(int(mask.sum()), kind)}))

    add_proc(screened & pos & (rng.random(m) < rates.DEPRESSION_FOLLOWUP_DOCUMENTED), "depression_followup")
    add_proc(tscreen & (smoker == 2) & (rng.random(m) < rates.TOBACCO_CESSATION_INTERVENTION), "tobacco_counseling")
    bfirst = _first_in_year(enc, meas & adult)
    abnormal = (bmi < 18.5) | (bmi >= 25)
    add_proc(bfirst & abnormal & (rng.random(m) < rates.BMI_FOLLOWUP_DOCUMENTED), "bmi_followup")
    return {"observations": observations, "procedures": pl.concat(procs)}


def build_encounter_diagnoses(ctx: Ctx, enc: pl.DataFrame, cond: pl.DataFrame) -> pl.DataFrame:
    """Each encounter's diagnoses: the reason for the visit plus up to two managed chronic problems."""
    rng = ctx.rng("encounter_dx")
    m = enc.height
    managed = cond.filter(pl.col("condition_group").is_in(list(MANAGED_GROUPS))).select(
        "patient_id", "condition_group", "onset_date", "abatement_date")
    e = pl.DataFrame({"encounter_idx": np.arange(m), "patient_id": enc["patient_id"].to_numpy(),
                      "d": enc["encounter_date"].to_numpy(), "etype": enc["encounter_type"].to_numpy(),
                      "age": enc["age"].to_numpy()})
    j = (e.join(managed, on="patient_id")
         .filter((pl.col("onset_date") <= pl.col("d")) &
                 (pl.col("abatement_date").is_null() | (pl.col("abatement_date") >= pl.col("d"))) &
                 (pl.col("etype") != "PROCEDURE")))
    j = j.with_columns(pl.Series("r", rng.random(j.height))).sort(["encounter_idx", "r"])
    j = j.with_columns(pl.col("r").rank("ordinal").over("encounter_idx").alias("k")).filter(pl.col("k") <= 2)
    chronic = j.select("encounter_idx", "condition_group", (pl.col("k") + 1).alias("seq"))
    # Reason for visit
    acute = np.array(["uri", "back_pain", "sinusitis", "uti", "anxiety"])
    kid_acute = np.array(["uri", "otitis_media", "sinusitis"])
    age = e["age"].to_numpy()
    etype = e["etype"].to_numpy()
    reason = np.where(age < 18, kid_acute[rng.integers(0, 3, m)], acute[rng.integers(0, 5, m)])
    reason = np.where(etype == "PREVENTIVE", np.where(age < 18, "child_exam", "adult_exam"), reason)
    reason = np.where(etype == "PROCEDURE", "colorectal_screening", reason)
    has_chronic = np.zeros(m, bool)
    has_chronic[chronic["encounter_idx"].to_numpy()] = True
    visit_for_chronic = has_chronic & (etype != "PREVENTIVE") & (rng.random(m) < 0.65)
    first = pl.DataFrame({"encounter_idx": np.arange(m), "condition_group": reason, "seq": np.ones(m, np.int64)})
    first = first.filter(~pl.Series(visit_for_chronic))
    vfc = visit_for_chronic[chronic["encounter_idx"].to_numpy()]
    chronic = chronic.with_columns(pl.Series("seq", chronic["seq"].to_numpy() - vfc.astype(np.int64)))
    return pl.concat([first, chronic.select(first.columns)]).sort(["encounter_idx", "seq"])


def build_immunizations(ctx: Ctx, P: Patients) -> pl.DataFrame:
    """Childhood series on the CDC schedule (per-child compliance) and seasonal adult flu."""
    rng = ctx.rng("immunizations")
    n = P.n
    # Most families follow the schedule closely; a minority skip or delay doses (CMS117 ~ 35-50%).
    propensity = np.where(rng.random(n) < rates.CHILD_SCHEDULE_ADHERENT_SHARE, 0.999, rng.beta(6, 1.5, n))
    parts = []
    for group, months in codes.CHILDHOOD_SCHEDULE.items():
        for mo in months:
            d = P.dob + days(mo * 30.44 + rng.gamma(2.0, 10.0, n))
            ok = (rng.random(n) < propensity) & (
                d <= P.active_to) & (d >= P.dob) & (P.age_end < 19)
            parts.append(pl.DataFrame({"patient_id": P.pid[ok], "vaccine_group": np.full(int(ok.sum()), group),
                                       "occurrence_date": d[ok]}))
    y0, y1 = int(str(ctx.start)[:4]) - 1, int(str(ctx.horizon)[:4])
    for y in range(y0, y1 + 1):
        d = np.datetime64(f"{y}-09-15") + days(rng.integers(0, 90, n))
        age = age_years(P.dob, d)
        p = np.where(age >= 65, 0.68, np.where(age >= 18, rates.ADULT_FLU_SHARE, 0.0))
        ok = (rng.random(n) < p) & (d >= P.active_from) & (d <= P.active_to)
        parts.append(pl.DataFrame({"patient_id": P.pid[ok], "vaccine_group": np.full(int(ok.sum()), "Influenza"),
                                   "occurrence_date": d[ok]}))
    return pl.concat(parts)


def build_medications(ctx: Ctx, cond: pl.DataFrame, flags, P: Patients) -> pl.DataFrame:
    rng = ctx.rng("medications")
    pairs = [("diabetes_t2", "metformin", 0.85), ("diabetes_t2_hyper", "metformin", 0.9),
             ("hypertension", "lisinopril", 0.8), ("hyperlipidemia", "atorvastatin", 0.7),
             ("depression", "sertraline", 0.6), ("alzheimers", "donepezil", 0.7), ("asthma", "albuterol", 0.8)]
    parts = []
    for group, med, p in pairs:
        c = cond.filter(pl.col("condition_group") == group)
        keep = rng.random(c.height) < p
        c = c.filter(pl.Series(keep))
        parts.append(c.select("patient_id", (pl.col("onset_date") + pl.duration(days=7)).alias("authored_on"))
                     .with_columns(pl.lit(med).alias("med_group")))
    sm = (flags["smoker"] == 2) & (rng.random(P.n) < 0.15)
    parts.append(pl.DataFrame({"patient_id": P.pid[sm], "authored_on": uniform_dates(rng, P.active_from[sm], P.active_to[sm]),
                               "med_group": np.full(int(sm.sum()), "varenicline")}))
    return pl.concat(parts, how="vertical_relaxed")


def build_allergies(ctx: Ctx, P: Patients) -> pl.DataFrame:
    rng = ctx.rng("allergies")
    m = rng.random(P.n) < rates.ALLERGY_SHARE
    k = int(m.sum())
    which = rng.integers(0, len(codes.ALLERGIES), k)
    return pl.DataFrame({
        "patient_id": P.pid[m], "allergy_idx": which,
        "criticality": np.where(rng.random(k) < 0.2, "high", "low"),
        "recorded_at": P.created_at[m] + np.timedelta64(30, "m"),
    })
