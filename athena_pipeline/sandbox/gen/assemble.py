"""Assemble the builders' frames into the timeline tables (facts columns + ``t_*`` columns).

Ids are assigned here, in a deterministic order (time, then patient), so the same options always
give the same ids.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from athena_pipeline.sandbox import codes
from athena_pipeline.sandbox.gen import billing, clinical, people
from athena_pipeline.sandbox.gen.ctx import Ctx


def _codes_frame(table: dict, key: str, cols: list[str]) -> pl.DataFrame:
    return pl.DataFrame({key: list(table), **{c: [v[i] for v in table.values()] for i, c in enumerate(cols)}})


COND_CODES = _codes_frame(codes.CONDITIONS, "condition_group", ["icd10_code", "snomed_code", "description"])
PROC_CODES = _codes_frame(codes.PROCEDURES, "kind", ["code_system", "code", "display"])
VAX_CODES = _codes_frame(codes.VACCINES, "vaccine_group", ["cvx", "display", "vaccine_cpt"])
MED_CODES = _codes_frame(codes.MEDICATIONS, "med_group", ["rxnorm", "display"])


def _with_ids(ctx: Ctx, df: pl.DataFrame, name: str, base: int, order: list[str]) -> pl.DataFrame:
    df = df.sort(order)
    return df.with_columns(pl.Series(name, ctx.ids.take(name, df.height, base)))


def build_timeline(ctx: Ctx, ref: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """One shard's timeline (patients ``ctx.patient_offset + 1 ..``), given the practice's reference data."""
    pp = people.build_patients(ctx, ref)
    patients, insurance = pp["patients"], pp["patient_insurance"]
    P = clinical.Patients(ctx, patients)
    cond, flags = clinical.build_conditions(ctx, P)
    screens = clinical.build_screening_history(ctx, P, flags)
    chronic_counts = (cond.filter(pl.col("condition_group").is_in(list(clinical.MANAGED_GROUPS)))
                      .group_by("patient_id").len())
    n_chronic = np.zeros(P.n)
    n_chronic[np.searchsorted(P.pid, chronic_counts["patient_id"].to_numpy())] = chronic_counts["len"].to_numpy()
    proc_visits = screens.filter(pl.col("billed_here"))
    appts = clinical.build_appointments(ctx, P, n_chronic, proc_visits, ref["providers"])
    enc = clinical.build_encounters(ctx, P, appts)
    ec = clinical.build_encounter_clinical(ctx, P, flags, enc)
    edx = clinical.build_encounter_diagnoses(ctx, enc, cond)
    imms = clinical.build_immunizations(ctx, P)
    meds = clinical.build_medications(ctx, cond, flags, P)
    allergies = clinical.build_allergies(ctx, P)
    lines = billing.build_claim_lines(enc, ec["observations"], ec["procedures"])
    sim = billing.simulate_claims(ctx, enc, lines, insurance)
    rng = ctx.rng("assemble")

    pat_created = patients.select("patient_id", pl.col("created_at").alias("_pc"), pl.col("dob").alias("_dob"))
    enc_key = enc.with_row_index("encounter_idx").select(
        pl.col("encounter_idx").cast(pl.Int64), "encounter_id", "patient_id", "provider_id", "start_at", "encounter_date")

    # --- conditions: problem list + encounter diagnoses ---------------------------------------
    problems = (cond.join(pat_created, on="patient_id")
                .with_columns(pl.max_horizontal("onset_date", "_dob").alias("onset_date"))
                .with_columns(pl.max_horizontal(pl.col("onset_date").cast(pl.Datetime("us")) + pl.duration(hours=10),
                                                pl.col("_pc") + pl.duration(hours=1)).alias("created_at"),
                              pl.lit(None, pl.Int64).alias("encounter_id")))
    enc_dx = (edx.with_columns(pl.col("encounter_idx").cast(pl.Int64)).join(enc_key, on="encounter_idx")
              .select("patient_id", "condition_group", "encounter_id",
                      pl.col("encounter_date").alias("onset_date"), pl.lit(None, pl.Date).alias("abatement_date"),
                      pl.lit("encounter-diagnosis").alias("category"),
                      (pl.col("start_at") + pl.duration(minutes=15)).alias("created_at"), "seq"))
    conditions = pl.concat([problems.select(enc_dx.columns[:-1]), enc_dx.drop("seq")], how="vertical_relaxed")
    conditions = conditions.join(COND_CODES, on="condition_group", how="left")
    conditions = _with_ids(ctx, conditions, "condition_id", 0, ["created_at", "patient_id", "condition_group", "category"])
    n = conditions.height
    deleted = (rng.random(n) < 0.004) & (conditions["category"].to_numpy() == "problem-list-item")
    t_del = conditions["created_at"].to_numpy() + np.timedelta64(1, "D") * rng.integers(1, 30, n)
    conditions = conditions.with_columns(pl.Series("t_deleted_at", np.where(deleted, t_del, np.datetime64("NaT"))))
    claim_dx = enc_dx.select("encounter_id", "condition_group", "seq")

    # --- observations ------------------------------------------------------------------------
    obs = (ec["observations"].with_columns(pl.col("encounter_idx").cast(pl.Int64))
           .join(enc_key.select("encounter_idx", "encounter_id", "patient_id"), on="encounter_idx"))
    obs = obs.with_columns(
        pl.when(pl.col("category") == "laboratory").then(pl.col("effective_at") + pl.duration(hours=20))
        .otherwise(pl.col("effective_at") + pl.duration(minutes=2)).alias("created_at"))
    obs = _with_ids(ctx, obs, "observation_id", 0, ["created_at", "patient_id", "kind", "effective_at"])
    n = obs.height
    amended = rng.random(n) < 0.003
    t_upd = obs["created_at"].to_numpy() + np.timedelta64(1, "D") * rng.integers(1, 10, n)
    obs = obs.with_columns(pl.Series("t_update_at", np.where(amended, t_upd, np.datetime64("NaT"))))

    # --- procedures (history/outside + at encounters) ------------------------------------------
    outside = screens.filter(~pl.col("billed_here")).select(
        "patient_id", "kind", "performed_date", "in_fhir", pl.lit(False).alias("billed"),
        pl.lit(None, pl.Int64).alias("encounter_id"))
    billed_here = (screens.filter(pl.col("billed_here"))
                   .join(enc.filter(pl.col("encounter_type") == "PROCEDURE")
                         .select("patient_id", "encounter_id", pl.col("encounter_date").alias("performed_date")),
                         on=["patient_id"], how="inner")
                   .sort(["patient_id", "encounter_id"])
                   .unique(subset=["patient_id", "encounter_id"], keep="first", maintain_order=True)
                   .select("patient_id", "kind", "performed_date", "in_fhir", pl.lit(True).alias("billed"), "encounter_id"))
    at_enc = (ec["procedures"].with_columns(pl.col("encounter_idx").cast(pl.Int64)).join(enc_key, on="encounter_idx")
              .select("patient_id", "kind", pl.col("encounter_date").alias("performed_date"), pl.lit(True).alias("in_fhir"),
                      pl.lit(True).alias("billed"), "encounter_id"))
    procs = pl.concat([outside, billed_here, at_enc], how="vertical_relaxed").join(PROC_CODES, on="kind", how="left")
    procs = procs.join(pat_created, on="patient_id").with_columns(
        pl.max_horizontal(pl.col("performed_date").cast(pl.Datetime("us")) + pl.duration(hours=16),
                          pl.col("_pc") + pl.duration(hours=2)).alias("created_at")).drop("_pc", "_dob")
    procs = _with_ids(ctx, procs, "procedure_id", 0, ["created_at", "patient_id", "kind", "performed_date"])

    # --- immunizations, medications, allergies -------------------------------------------------
    imms = imms.join(VAX_CODES, on="vaccine_group").join(pat_created, on="patient_id").with_columns(
        pl.col("occurrence_date").cast(pl.Date),
        pl.max_horizontal(pl.col("occurrence_date").cast(pl.Datetime("us")) + pl.duration(hours=11),
                          pl.col("_pc") + pl.duration(hours=2)).alias("created_at")).drop("_pc", "_dob")
    imms = _with_ids(ctx, imms, "immunization_id", 0, ["created_at", "patient_id", "vaccine_group"])
    meds = meds.join(MED_CODES, on="med_group").join(pat_created, on="patient_id").join(
        patients.select("patient_id", "primary_provider_id"), on="patient_id").with_columns(
        pl.max_horizontal(pl.col("authored_on").cast(pl.Date), pl.col("_pc").cast(pl.Date)).alias("authored_on"))
    meds = meds.with_columns(pl.max_horizontal(pl.col("authored_on").cast(pl.Datetime("us")) + pl.duration(hours=12),
                                               pl.col("_pc") + pl.duration(hours=2)).alias("created_at")).drop("_pc", "_dob")
    meds = _with_ids(ctx, meds, "medication_request_id", 0, ["created_at", "patient_id", "med_group"])
    alg = pl.DataFrame({"allergy_idx": list(range(len(codes.ALLERGIES))),
                        "code_system": [a[0] for a in codes.ALLERGIES], "code": [a[1] for a in codes.ALLERGIES],
                        "display": [a[2] for a in codes.ALLERGIES]})
    allergies = allergies.join(alg, on="allergy_idx").rename({"recorded_at": "created_at"})
    allergies = _with_ids(ctx, allergies, "allergy_id", 0, ["created_at", "patient_id"])

    # --- claims --------------------------------------------------------------------------------
    cl = sim["claims"].with_columns(pl.col("ci").cast(pl.Int64)).join(
        enc.with_row_index("ci").with_columns(pl.col("ci").cast(pl.Int64)).select(
            "ci", "encounter_id", "appointment_id", "patient_id", "provider_id", "department_id", "encounter_date"),
        on="ci")
    cl = cl.sort(["created_date", "ci"])
    cl = cl.with_columns(pl.Series("claim_id", ctx.ids.take("claim_id", cl.height, 2_000_000)))
    ci_to_claim = cl.select("ci", "claim_id")
    claim_lines = (lines.with_columns(pl.col("encounter_idx").cast(pl.Int64).alias("ci"))
                   .join(ci_to_claim, on="ci").join(cl.select("claim_id", "created_date"), on="claim_id"))
    claim_lines = claim_lines.sort(["claim_id", "line_number"])
    claim_lines = claim_lines.with_columns(pl.Series("charge_id", ctx.ids.take("charge_id", claim_lines.height, 10_000_000)))
    claim_diag = (claim_dx.join(cl.select("encounter_id", "claim_id", "created_date"), on="encounter_id")
                  .join(COND_CODES.select("condition_group", "icd10_code"), on="condition_group")
                  .sort(["claim_id", "seq"]).unique(["claim_id", "icd10_code"], keep="first", maintain_order=True))
    claim_diag = claim_diag.with_columns(pl.col("seq").rank("ordinal").over("claim_id").cast(pl.Int32).alias("sequence_number"))
    claim_diag = claim_diag.filter(pl.col("sequence_number") <= 8)
    claim_diag = claim_diag.with_columns(
        pl.Series("claim_diagnosis_id", ctx.ids.take("claim_diagnosis_id", claim_diag.height, 3_000_000)))
    # remit keys are 3 * claim index (+0/+1/+2): make them unique across shards
    key_base = 3 * int(ctx.ids.take("claim_index", enc.height, 0)[0] - 1) if enc.height else 0
    ledger = sim["ledger"].with_columns(pl.col("ci").cast(pl.Int64)).join(ci_to_claim, on="ci", maintain_order="left")
    ledger = ledger.with_columns(
        pl.when(pl.col("remit_ref") >= 0).then(pl.col("remit_ref") + key_base).otherwise(-1).alias("remit_ref"),
        pl.Series("ledger_seq", ctx.ids.take("ledger_seq", ledger.height, 0)))
    remits = (sim["remits"].with_columns(pl.col("ci").cast(pl.Int64), pl.col("remit_key") + key_base)
              .join(ci_to_claim, on="ci"))
    remits = remits.sort(["remit_date", "claim_id", "remit_key"])
    remits = remits.with_columns(pl.Series("remittance_id", ctx.ids.take("remittance_id", remits.height, 6_000_000)))
    radj = (sim["remit_adjustments"].with_columns(pl.col("ci").cast(pl.Int64), pl.col("remit_key") + key_base)
            .join(ci_to_claim, on="ci").join(remits.select("remit_key", "remittance_id", "remit_date"), on="remit_key"))
    radj = radj.sort(["remittance_id", "group_code", "carc"])
    radj = radj.with_columns(pl.Series("remittance_adjustment_id",
                                       ctx.ids.take("remittance_adjustment_id", radj.height, 7_000_000)))
    events = sim["claim_events"].with_columns(pl.col("ci").cast(pl.Int64)).join(ci_to_claim, on="ci")
    order = {"CREATED": 0, "SCRUB_HOLD": 1, "SUBMITTED": 2, "DENIED": 3, "APPEALED": 4, "PAID": 5,
             "TRANSFERRED": 6, "WRITTEN_OFF": 7, "CLOSED": 8}
    events = events.with_columns(pl.col("event_type").replace_strict(order, return_dtype=pl.Int32).alias("_o"))
    events = events.sort(["event_date", "claim_id", "_o", "payer_role"]).drop("_o")
    events = events.with_columns(pl.Series("claim_event_id", ctx.ids.take("claim_event_id", events.height, 8_000_000)))

    return {
        "patients": patients, "patient_insurance": insurance,
        "appointments": appts.drop("patient_idx"), "encounters": enc.drop(["patient_idx", "age"]),
        "conditions": conditions, "observations": obs.drop("encounter_idx"), "procedures": procs,
        "immunizations": imms, "medication_requests": meds, "allergies": allergies,
        "claims": cl, "claim_lines": claim_lines, "claim_diagnoses": claim_diag, "ledger": ledger,
        "remittances": remits, "remittance_adjustments": radj, "claim_events": events,
    }
