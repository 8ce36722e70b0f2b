"""Practice, departments, providers, payers, patients and their insurance."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from athena_pipeline.sandbox import codes, rates
from athena_pipeline.sandbox.gen.ctx import (DAY, Ctx, age_years, at_time, choice_weighted, days,
                                              uniform_dates)

FIRST_F = ("Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty "
           "Sandra Margaret Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah Stephanie "
           "Rebecca Laura Sharon Cynthia Kathleen Amy Angela Shirley Anna Brenda Pamela Emma Nicole Helen "
           "Samantha Katherine Christine Debra Rachel Carolyn Janet Maria Olivia Sophia Isabella Ava Mia "
           "Camila Luna Aaliyah Grace Chloe Priya Mei Fatima Ana Lucia Sofia Valentina Gabriela").split()
FIRST_M = ("James Robert John Michael David William Richard Joseph Thomas Christopher Charles Daniel "
           "Matthew Anthony Mark Donald Steven Andrew Paul Joshua Kenneth Kevin Brian George Timothy Ronald "
           "Jason Edward Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon "
           "Benjamin Samuel Gregory Alexander Patrick Frank Raymond Jack Dennis Jerry Liam Noah Oliver Elijah "
           "Lucas Mateo Diego Carlos Luis Jose Wei Arjun Mohammed Omar Kwame Hiroshi").split()
LAST = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
        "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark "
        "Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams "
        "Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker "
        "Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper "
        "Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James "
        "Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez "
        "OBrien Sullivan Murray Chen Wang Silva Costa Pereira Santos Okafor Mensah Tanaka Haddad").split()
STREETS = ("Main St|Elm St|Maple Ave|Oak St|Washington St|Pleasant St|Park Ave|Highland Ave|Summer St|"
           "Center St|School St|Prospect St|Chestnut St|Walnut St|Cedar St|Lincoln St|Union St|Spring St|"
           "Winter St|Franklin St|Beacon St|Harvard St|Common St|River Rd|Forest Ave").split("|")
# (city, zip) in eastern Massachusetts: the practice's catchment area.
TOWNS = [("Watertown", "02472"), ("Waltham", "02451"), ("Newton", "02458"), ("Belmont", "02478"),
         ("Arlington", "02474"), ("Cambridge", "02138"), ("Somerville", "02143"), ("Medford", "02155"),
         ("Lexington", "02421"), ("Brookline", "02445"), ("Quincy", "02169"), ("Framingham", "01702")]
RACES = [("2106-3", 0.62), ("2054-5", 0.10), ("2028-9", 0.08), ("1002-5", 0.01), ("2076-8", 0.002),
         ("2131-1", 0.188)]
LANGS = [("en", 0.84), ("es", 0.09), ("pt", 0.03), ("zh", 0.02), ("ht", 0.02)]
DEPT_SPECIALTIES = ["Family Medicine", "Pediatrics", "Internal Medicine"]
TAXONOMY = {"Family Medicine": "207Q00000X", "Internal Medicine": "207R00000X", "Pediatrics": "208000000X",
            "NP": "363L00000X", "PA": "363A00000X"}


def _npi(base9: int) -> str:
    """NPI with a valid Luhn check digit (computed over the 80840 prefix, per CMS)."""
    digits = [int(c) for c in "80840" + f"{base9:09d}"]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return f"{base9:09d}{(10 - total % 10) % 10}"


def build_reference(ctx: Ctx) -> dict[str, pl.DataFrame]:
    """Practice, departments, providers and insurance packages: small, so plain Python is fine."""
    o = ctx.options
    rng = ctx.rng("reference")
    created = at_time(np.array([ctx.start - 3650 * DAY]), 9 * 3600)[0].astype("datetime64[us]").item()
    practice = pl.DataFrame({
        "practice_id": [o.practice_id], "name": ["Riverside Community Health Partners"],
        "parent_context_id": [1], "created_at": [created], "updated_at": [created],
    })
    n_depts = 1 if o.providers < 3 else max(3, math.ceil(o.providers / 4))
    specs = ["Family Medicine"] if n_depts == 1 else [DEPT_SPECIALTIES[i % 3] for i in range(n_depts)]
    towns = [TOWNS[i % len(TOWNS)] for i in range(n_depts)]
    departments = pl.DataFrame({
        "department_id": list(range(1, n_depts + 1)),
        "name": [f"{t[0]} {s}" for t, s in zip(towns, specs)],
        "billing_name": [f"RCHP {t[0].upper()} {s.upper()}" for t, s in zip(towns, specs)],
        "specialty": specs,
        "address": [f"{100 + 17 * i} {STREETS[i % len(STREETS)]}" for i in range(n_depts)],
        "city": [t[0] for t in towns], "state": ["MA"] * n_depts, "zip": [t[1] for t in towns],
        "phone": [f"617555{1000 + i:04d}" for i in range(n_depts)],
        "place_of_service_code": ["11"] * n_depts,
        "created_at": [created] * n_depts, "updated_at": [created] * n_depts, "deleted_at": [None] * n_depts,
    }).with_columns(pl.col("deleted_at").cast(pl.Datetime("us")))
    n = o.providers
    prov_dept = np.array([(i % n_depts) + 1 for i in range(n)])
    ptype = choice_weighted(rng, n, [0.70, 0.10, 0.12, 0.08])
    ptype_s = np.array(["MD", "DO", "NP", "PA"])[ptype]
    sex = np.where(rng.random(n) < 0.55, "F", "M")
    first = np.where(sex == "F", rng.choice(FIRST_F, n), rng.choice(FIRST_M, n))
    spec = [specs[d - 1] for d in prov_dept]
    providers = pl.DataFrame({
        "provider_id": list(range(101, 101 + n)),
        "npi": [_npi(int(x)) for x in rng.integers(100_000_000, 999_999_999, n)],
        "first_name": first.tolist(), "last_name": rng.choice(LAST, n).tolist(), "sex": sex.tolist(),
        "provider_type": ptype_s.tolist(), "specialty": spec,
        "taxonomy_code": [TAXONOMY[t] if t in ("NP", "PA") else TAXONOMY[s] for t, s in zip(ptype_s, spec)],
        "department_id": prov_dept.tolist(), "billable": [True] * n,
        "created_at": [created] * n, "updated_at": [created] * n, "deleted_at": [None] * n,
    }).with_columns(pl.col("deleted_at").cast(pl.Datetime("us")))
    p = rates.PAYERS
    packages = pl.DataFrame({
        "insurance_package_id": [1001 + i for i in range(len(p))],
        "name": [r[0] for r in p], "payer_name": [r[1] for r in p], "package_type": [r[2] for r in p],
        "product_type": [r[3] for r in p], "reporting_category": [r[4] for r in p], "payer_id": [r[5] for r in p],
        "created_at": [created] * len(p), "updated_at": [created] * len(p), "deleted_at": [None] * len(p),
    }).with_columns(pl.col("deleted_at").cast(pl.Datetime("us")))
    kicks = [(c["kick"], c["name"] + " denial", cat, "HOLD") for cat, c in codes.DENIAL_CATEGORIES.items()]
    kicks += codes.WORKFLOW_KICKS
    kick_reasons = pl.DataFrame({
        "kick_reason_id": list(range(1, len(kicks) + 1)), "kick_code": [k[0] for k in kicks],
        "name": [k[1] for k in kicks], "category": [k[2] for k in kicks], "next_claim_status": [k[3] for k in kicks],
    })
    return {"practice": practice, "departments": departments, "providers": providers,
            "insurance_packages": packages, "kick_reasons": kick_reasons}


def build_patients(ctx: Ctx, ref: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    rng = ctx.rng("patients")
    n = ctx.shard_patients
    pid = ctx.patient_offset + np.arange(1, n + 1, dtype=np.int64)
    band = choice_weighted(rng, n, [b[2] for b in rates.AGE_BANDS])
    lo = np.array([b[0] for b in rates.AGE_BANDS])[band]
    hi = np.array([b[1] for b in rates.AGE_BANDS])[band]
    age_days = ((lo + rng.random(n) * (hi - lo)) * 365.25).astype(int)
    dob = ctx.end - days(age_days)
    sex = np.where(rng.random(n) < rates.FEMALE_SHARE, "F", "M")
    # Registration: most patients were on the panel before the window; ~7%/yr join during it.
    window_days = int((ctx.horizon - ctx.start) / DAY)
    joined_in_window = rng.random(n) < 0.07 * window_days / 365
    reg = np.where(joined_in_window,
                   ctx.start + days(rng.random(n) * window_days),
                   ctx.start - days(30 + rng.random(n) * 3650))
    reg = np.maximum(reg, dob)
    # Deaths during the window among the old.
    age_end = age_years(dob, ctx.end)
    p_death = np.where(age_end >= 76, 0.03, np.where(age_end >= 65, 0.01, 0.0005)) * window_days / 365
    dies = rng.random(n) < p_death
    death = np.where(dies, uniform_dates(rng, np.maximum(reg, ctx.start), np.full(n, ctx.horizon)),
                     np.datetime64("NaT"))
    # Department and primary provider: children to pediatrics where the practice has it.
    depts = ref["departments"]
    provs = ref["providers"]
    peds_depts = depts.filter(pl.col("specialty") == "Pediatrics")["department_id"].to_numpy()
    adult_depts = depts.filter(pl.col("specialty") != "Pediatrics")["department_id"].to_numpy()
    prov_ids = provs["provider_id"].to_numpy()
    prov_dept = provs["department_id"].to_numpy()
    is_child = age_end < 18
    dept = np.where(is_child & (len(peds_depts) > 0),
                    rng.choice(peds_depts if len(peds_depts) else adult_depts, n),
                    rng.choice(adult_depts, n))
    # provider within department: random rank among that department's providers
    primary_provider = np.empty(n, dtype=np.int64)
    for d in np.unique(dept):  # loop over departments (a handful), not patients
        m = dept == d
        primary_provider[m] = rng.choice(prov_ids[prov_dept == d], int(m.sum()))
    town = rng.integers(0, len(TOWNS), n)
    created_at = at_time(reg, 8 * 3600 + rng.integers(0, 9 * 3600, n))
    # ~5% get a demographic update (new phone) at some point in the window.
    updated = rng.random(n) < 0.05
    t_update_at = np.where(updated, at_time(uniform_dates(rng, np.maximum(reg, ctx.start), np.full(n, ctx.horizon)),
                                            10 * 3600 + rng.integers(0, 7 * 3600, n)), np.datetime64("NaT"))
    t_update_at = np.where(updated & (t_update_at > created_at), t_update_at, np.datetime64("NaT"))
    phone = np.char.add("617", rng.integers(2_000_000, 9_999_999, n).astype(str))
    phone_old = np.where(~np.isnat(t_update_at), np.char.add("781", rng.integers(2_000_000, 9_999_999, n).astype(str)),
                         phone)
    first = np.where(sex == "F", rng.choice(FIRST_F, n), rng.choice(FIRST_M, n))
    patients = pl.DataFrame({
        "patient_id": pid, "enterprise_id": pid + 9_000_000,
        "first_name": first, "last_name": rng.choice(LAST, n), "sex": sex, "dob": dob,
        "address": np.char.add(np.char.add(rng.integers(1, 400, n).astype(str), " "), rng.choice(STREETS, n)),
        "city": np.array([t[0] for t in TOWNS])[town], "state": np.full(n, "MA"),
        "zip": np.array([t[1] for t in TOWNS])[town], "phone": phone,
        "race": np.array([r[0] for r in RACES])[choice_weighted(rng, n, [r[1] for r in RACES])],
        "ethnicity": np.where(rng.random(n) < 0.14, "2135-2", "2186-5"),
        "language": np.array([x[0] for x in LANGS])[choice_weighted(rng, n, [x[1] for x in LANGS])],
        "status": np.full(n, "a"), "deceased_date": death,
        "primary_provider_id": primary_provider, "department_id": dept, "registered_date": reg,
        "created_at": created_at, "updated_at": created_at,
        "t_update_at": t_update_at, "phone_old": phone_old,
    })
    # Insurance: payer mix by age; Medicare patients often carry a secondary.
    mix = np.where(age_end[:, None] >= 65, np.array(rates.PAYER_MIX_65PLUS)[None, :],
                   np.where(age_end[:, None] < 18, np.array(rates.PAYER_MIX_CHILD)[None, :],
                            np.array(rates.PAYER_MIX_ADULT)[None, :]))
    cum = np.cumsum(mix, axis=1)
    u = rng.random(n)[:, None]
    pkg_idx = (u > cum).sum(axis=1)
    pkg_id = 1001 + pkg_idx
    has_secondary = (pkg_idx == 0) & (rng.random(n) < rates.SECONDARY_FOR_MEDICARE)
    sec_pkg = 1001 + np.array(rates.SECONDARY_PAYERS)[rng.integers(0, len(rates.SECONDARY_PAYERS), n)]
    issue = np.minimum(reg, ctx.start) - days(rng.integers(0, 700, n))
    ins_created = at_time(reg, 8 * 3600 + 600)
    prim = pl.DataFrame({
        "patient_insurance_id": pid * 10 + 1, "patient_id": pid, "insurance_package_id": pkg_id,
        "sequence_number": np.ones(n, dtype=np.int32),
        "member_id": np.char.add("M", rng.integers(10**8, 10**9, n).astype(str)),
        "issue_date": issue, "created_at": ins_created,
    })
    sec_m = has_secondary
    sec = pl.DataFrame({
        "patient_insurance_id": pid[sec_m] * 10 + 2, "patient_id": pid[sec_m],
        "insurance_package_id": sec_pkg[sec_m], "sequence_number": np.full(int(sec_m.sum()), 2, dtype=np.int32),
        "member_id": np.char.add("S", rng.integers(10**8, 10**9, int(sec_m.sum())).astype(str)),
        "issue_date": issue[sec_m], "created_at": ins_created[sec_m],
    })
    insurance = pl.concat([prim, sec]).with_columns(
        pl.lit(None, pl.Date).alias("expiration_date"), pl.lit(None, pl.Date).alias("cancellation_date"),
        pl.col("created_at").alias("updated_at"),
    ).sort("patient_insurance_id")
    return {"patients": patients, "patient_insurance": insurance}
