"""Claims and their whole revenue-cycle life: submission, adjudication (paid or denied), appeals,
secondary billing, patient collections, write-offs, bad debt and refunds.

Everything is simulated per claim with numpy masks, as claim-level events; ``timeline.py`` then
spreads claim-level money over the claim's charge lines in SQL. Events after the world clock stay in
the timeline and surface when ``sandbox advance`` moves the clock past them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from athena_pipeline.sandbox import codes, rates
from athena_pipeline.sandbox.gen.ctx import Ctx, choice_weighted, days, money

PAYER_IDX = {r[0]: i for i, r in enumerate(rates.PAYERS)}
SELF_PAY = PAYER_IDX["Self Pay"]


class Events:
    """Column-wise accumulator of claim-level rows (one list of arrays per column)."""

    def __init__(self, *cols: str):
        self.cols = cols
        self.parts: dict[str, list[np.ndarray]] = {c: [] for c in cols}

    def add(self, mask: np.ndarray, **values) -> None:
        k = int(mask.sum())
        for c in self.cols:
            v = values.get(c)
            if isinstance(v, np.ndarray) and v.shape == mask.shape:
                self.parts[c].append(v[mask])
            else:
                self.parts[c].append(np.full(k, v, dtype=object if v is None or isinstance(v, str) else None))

    def frame(self) -> pl.DataFrame:
        cols = {}
        for c in self.cols:
            arr = np.concatenate(self.parts[c]) if self.parts[c] else np.array([])
            if arr.dtype == object:
                cols[c] = pl.Series(c, arr.tolist(), dtype=pl.Utf8)
            else:
                cols[c] = pl.Series(c, arr)
        return pl.DataFrame(cols)


def build_claim_lines(enc: pl.DataFrame, enc_obs: pl.DataFrame, enc_procs: pl.DataFrame) -> pl.DataFrame:
    """Charge lines per encounter: the visit code, in-office labs, counseling and quality codes."""
    m = enc.height
    lines = [pl.DataFrame({"encounter_idx": np.arange(m), "procedure_code": enc["visit_cpt"].to_numpy(),
                           "line_order": np.zeros(m, np.int64)})]
    a1c = enc_obs.filter(pl.col("kind") == "hba1c")["encounter_idx"].unique().to_numpy()
    lines.append(pl.DataFrame({"encounter_idx": a1c, "procedure_code": np.full(len(a1c), "83036"),
                               "line_order": np.full(len(a1c), 1)}))
    lines.append(pl.DataFrame({"encounter_idx": a1c, "procedure_code": np.full(len(a1c), "36415"),
                               "line_order": np.full(len(a1c), 2)}))
    code_of = {"tobacco_counseling": "99406", "depression_followup": "G8431", "bmi_followup": "G8417"}
    for kind, cpt in code_of.items():
        e = enc_procs.filter(pl.col("kind") == kind)["encounter_idx"].unique().to_numpy()
        lines.append(pl.DataFrame({"encounter_idx": e, "procedure_code": np.full(len(e), cpt),
                                   "line_order": np.full(len(e), 3)}))
    out = pl.concat(lines).sort(["encounter_idx", "line_order", "procedure_code"])
    fees = pl.DataFrame({"procedure_code": list(codes.FEES), "amount": list(codes.FEES.values())})
    out = out.join(fees, on="procedure_code", how="left").with_columns(pl.col("amount").fill_null(100.0))
    return out.with_columns(pl.col("procedure_code").cum_count().over("encounter_idx").alias("line_number"))


def simulate_claims(ctx: Ctx, enc: pl.DataFrame, lines: pl.DataFrame, insurance: pl.DataFrame) -> dict[str, pl.DataFrame]:
    rng = ctx.rng("claims")
    m = enc.height
    totals = lines.group_by("encounter_idx").agg(pl.col("amount").sum()).sort("encounter_idx")
    C = np.zeros(m)
    C[totals["encounter_idx"].to_numpy()] = totals["amount"].to_numpy()
    service = enc["encounter_date"].to_numpy().astype("datetime64[D]")
    cpt = enc["visit_cpt"].to_numpy()
    em_visit = np.char.startswith(cpt.astype(str), "992")
    # Coverage per encounter's patient
    prim = insurance.filter(pl.col("sequence_number") == 1).select("patient_id", "patient_insurance_id", "insurance_package_id")
    sec = insurance.filter(pl.col("sequence_number") == 2).select(
        "patient_id", pl.col("patient_insurance_id").alias("sec_pi"), pl.col("insurance_package_id").alias("sec_pkg"))
    cov = (pl.DataFrame({"patient_id": enc["patient_id"].to_numpy()}).with_row_index("i")
           .join(prim, on="patient_id", how="left").join(sec, on="patient_id", how="left").sort("i"))
    pkg = cov["insurance_package_id"].to_numpy()
    payer = pkg - 1001
    has_sec = ~cov["sec_pkg"].is_null().to_numpy()
    sec_pkg = cov["sec_pkg"].fill_null(0).to_numpy()
    self_pay = payer == SELF_PAY
    ins = ~self_pay
    ratio = np.array([p[6] for p in rates.PAYERS])[payer]
    denial_rate = np.array([p[7] for p in rates.PAYERS])[payer]
    lag_med = np.array([p[8] for p in rates.PAYERS])[payer]

    created = service + days(rng.integers(rates.CHARGE_LAG_DAYS[0], rates.CHARGE_LAG_DAYS[1] + 1, m))
    hold = ins & (rng.random(m) < rates.SCRUB_HOLD_RATE)
    submitted = created + days(np.where(hold, rng.integers(2, 8, m), rng.integers(0, 2, m)))
    r1 = submitted + days(np.maximum(3, np.round(lag_med * rng.lognormal(0, 0.3, m))))
    denied = ins & (rng.random(m) < denial_rate)
    cat_names = [c for c, _ in rates.DENIAL_CATEGORY_MIX]
    cat = choice_weighted(rng, m, [w for _, w in rates.DENIAL_CATEGORY_MIX])
    carc_choice = rng.integers(0, 10, m)
    carcs_by_cat = [codes.DENIAL_CATEGORIES[c]["carcs"] for c in cat_names]
    carc = np.empty(m, dtype=object)
    for ci, cl in enumerate(carcs_by_cat):  # per category (8), not per claim
        mm = cat == ci
        carc[mm] = np.array(cl, dtype=object)[carc_choice[mm] % len(cl)]
    kick = np.array([codes.DENIAL_CATEGORIES[c]["kick"] for c in cat_names], dtype=object)[cat]
    avoidable = np.array([codes.DENIAL_CATEGORIES[c]["avoidable"] for c in cat_names])[cat]
    group = np.where(np.isin(carc, ["50", "96", "204"]) & (rng.random(m) < 0.3), "PR",
                     np.where(np.isin(carc, ["97", "234"]) & (payer != 0) & (rng.random(m) < 0.3), "PI", "CO"))
    appealed = denied & (rng.random(m) < np.where(avoidable, rates.APPEAL_SHARE_AVOIDABLE, rates.APPEAL_SHARE_CLINICAL))
    appeal_date = r1 + days(rng.integers(5, 31, m))
    r2 = appeal_date + days(np.maximum(5, np.round(lag_med * 1.3 * rng.lognormal(0, 0.3, m))))
    overturned = appealed & (rng.random(m) < rates.APPEAL_OVERTURN)
    upheld = appealed & ~overturned
    not_appealed = denied & ~appealed
    to_patient = not_appealed & (rng.random(m) < 0.2)
    wo_now = not_appealed & ~to_patient
    wo_date = np.where(upheld, r2 + days(rng.integers(3, 21, m)), r1 + days(rng.integers(20, 61, m)))
    drop_date = r1 + days(rng.integers(10, 31, m))

    paid_path = ins & (~denied | overturned)
    R = np.where(overturned, r2, r1)
    A = money(np.minimum(C, C * ratio * rng.uniform(0.92, 1.05, m)))
    contractual = money(C - A)
    preventive = ~em_visit | np.char.startswith(cpt.astype(str), "9939") | np.char.startswith(cpt.astype(str), "9938")
    office_em = em_visit & ~preventive
    medicare_b = payer == PAYER_IDX["Medicare Part B"]
    ma = payer == PAYER_IDX["Humana Medicare Advantage"]
    commercial = np.isin(payer, [3, 4, 5, 6])
    copay_due = np.where(commercial & office_em, rates.COPAY_COMMERCIAL, np.where(ma & office_em, 20.0, 0.0))
    deductible = np.where(commercial & (rng.random(m) < rates.DEDUCTIBLE_SHARE), money(rng.uniform(40, 250, m)), 0.0)
    coins = np.where(medicare_b, money(A * rates.MEDICARE_COINSURANCE), 0.0)
    pr_copay = np.minimum(copay_due, A)
    pr_ded = np.minimum(deductible, A - pr_copay)
    pr_coins = np.minimum(coins, A - pr_copay - pr_ded)
    PR = money(pr_copay + pr_ded + pr_coins)
    paid = money(A - PR)
    to_sec = paid_path & (PR > 0) & has_sec
    rs = R + days(rng.integers(10, 26, m))
    sec_pays = to_sec & (rng.random(m) < 0.95)
    sec_paid = np.where(sec_pays, PR, 0.0)
    # Patient side
    copay_at_visit = np.where(commercial & office_em & (rng.random(m) < 0.92), rates.COPAY_COMMERCIAL,
                              np.where(commercial & preventive & (rng.random(m) < 0.08), rates.COPAY_COMMERCIAL, 0.0))
    pat_transfer_date = np.where(self_pay, created, np.where(to_patient, drop_date, np.where(to_sec, rs, R)))
    pat_in = np.where(self_pay, C, np.where(to_patient, C, np.where(paid_path, np.where(to_sec, PR - sec_paid, PR), 0.0)))
    self_disc = np.where(self_pay, money(C * rates.SELF_PAY_DISCOUNT), 0.0)
    pat_due = money(pat_in - self_disc - copay_at_visit)
    # When does the patient's balance settle?
    t = choice_weighted(rng, m, [w for _, w in rates.PATIENT_PAY_TIMING])
    lo = np.array([r[0][0] if r[0] else 0 for r in rates.PATIENT_PAY_TIMING])[t]
    hi = np.array([r[0][1] if r[0] else 1 for r in rates.PATIENT_PAY_TIMING])[t]
    never = np.array([r[0] is None for r in rates.PATIENT_PAY_TIMING])[t]
    settle_date = pat_transfer_date + days(lo + rng.random(m) * (hi - lo))
    pays = (pat_due > 0) & ~never
    bad_debt = (pat_due > 0) & never
    bad_debt_date = pat_transfer_date + days(rates.BAD_DEBT_AFTER_DAYS)
    refund = pat_due < 0
    refund_date = pat_transfer_date + days(rng.integers(*rates.REFUND_DAYS, m))

    # ---- claim-level ledger events --------------------------------------------------------
    tx = Events("ci", "transaction_type", "transaction_reason", "transfer_type", "pkg", "amount", "post_date", "remit_ref")
    ones = np.ones(m, bool)
    ci = np.arange(m)
    tx.add(ones, ci=ci, transaction_type="CHARGE", transaction_reason=None,
           transfer_type=np.where(self_pay, "Patient", "Primary"), pkg=np.where(self_pay, 0, pkg), amount=C,
           post_date=created, remit_ref=-1)
    tx.add(copay_at_visit > 0, ci=ci, transaction_type="PAYMENT", transaction_reason="COPAY", transfer_type="Patient",
           pkg=0, amount=-copay_at_visit, post_date=created, remit_ref=-1)  # applied at charge entry
    tx.add(self_pay, ci=ci, transaction_type="ADJUSTMENT", transaction_reason="SELF PAY DISCOUNT",
           transfer_type="Patient", pkg=0, amount=-self_disc, post_date=created, remit_ref=-1)
    remit_ref_paid = np.where(overturned, ci * 3 + 1, ci * 3)  # remit keys: 3*ci (+0 first, +1 second, +2 secondary)
    tx.add(paid_path & (paid > 0), ci=ci, transaction_type="PAYMENT", transaction_reason="INSURANCE PAYMENT",
           transfer_type="Primary", pkg=pkg, amount=-paid, post_date=R, remit_ref=remit_ref_paid)
    tx.add(paid_path & (contractual > 0), ci=ci, transaction_type="ADJUSTMENT", transaction_reason="CONTRACTUAL",
           transfer_type="Primary", pkg=pkg, amount=-contractual, post_date=R, remit_ref=remit_ref_paid)
    pr_target = np.where(to_sec, "Secondary", "Patient")
    tx.add(paid_path & (PR > 0), ci=ci, transaction_type="TRANSFEROUT", transaction_reason="PATIENT RESPONSIBILITY",
           transfer_type="Primary", pkg=pkg, amount=-PR, post_date=R, remit_ref=remit_ref_paid)
    tx.add(paid_path & (PR > 0), ci=ci, transaction_type="TRANSFERIN", transaction_reason="PATIENT RESPONSIBILITY",
           transfer_type=pr_target, pkg=np.where(to_sec, sec_pkg, 0), amount=PR, post_date=R, remit_ref=remit_ref_paid)
    tx.add(sec_pays, ci=ci, transaction_type="PAYMENT", transaction_reason="INSURANCE PAYMENT", transfer_type="Secondary",
           pkg=sec_pkg, amount=-sec_paid, post_date=rs, remit_ref=ci * 3 + 2)
    sec_left = to_sec & ~sec_pays
    tx.add(sec_left, ci=ci, transaction_type="TRANSFEROUT", transaction_reason="SECONDARY DENIED", transfer_type="Secondary",
           pkg=sec_pkg, amount=-PR, post_date=rs, remit_ref=ci * 3 + 2)
    tx.add(sec_left, ci=ci, transaction_type="TRANSFERIN", transaction_reason="SECONDARY DENIED", transfer_type="Patient",
           pkg=0, amount=PR, post_date=rs, remit_ref=ci * 3 + 2)
    tx.add(wo_now | upheld, ci=ci, transaction_type="ADJUSTMENT", transaction_reason="DENIAL WRITE OFF",
           transfer_type="Primary", pkg=pkg, amount=-C, post_date=wo_date, remit_ref=-1)
    tx.add(to_patient, ci=ci, transaction_type="TRANSFEROUT", transaction_reason="DENIED TO PATIENT",
           transfer_type="Primary", pkg=pkg, amount=-C, post_date=drop_date, remit_ref=-1)
    tx.add(to_patient, ci=ci, transaction_type="TRANSFERIN", transaction_reason="DENIED TO PATIENT",
           transfer_type="Patient", pkg=0, amount=C, post_date=drop_date, remit_ref=-1)
    tx.add(pays, ci=ci, transaction_type="PAYMENT", transaction_reason="PATIENT PAYMENT", transfer_type="Patient",
           pkg=0, amount=-pat_due, post_date=settle_date, remit_ref=-1)
    tx.add(bad_debt, ci=ci, transaction_type="ADJUSTMENT", transaction_reason="BAD DEBT", transfer_type="Patient",
           pkg=0, amount=-pat_due, post_date=bad_debt_date, remit_ref=-1)
    tx.add(refund, ci=ci, transaction_type="PAYMENT", transaction_reason="REFUND", transfer_type="Patient",
           pkg=0, amount=-pat_due, post_date=refund_date, remit_ref=-1)

    # ---- remittances (835) and their CAS adjustments ----------------------------------------
    rm = Events("remit_key", "ci", "pkg", "payer_role", "remit_date", "remit_sequence", "billed_amount",
                "allowed_amount", "paid_amount", "patient_responsibility", "is_denial")
    rm.add(denied, remit_key=ci * 3, ci=ci, pkg=pkg, payer_role="Primary", remit_date=r1, remit_sequence=1,
           billed_amount=C, allowed_amount=0.0, paid_amount=0.0, patient_responsibility=0.0, is_denial=True)
    rm.add(appealed, remit_key=ci * 3 + 1, ci=ci, pkg=pkg, payer_role="Primary", remit_date=r2, remit_sequence=2,
           billed_amount=C, allowed_amount=np.where(overturned, A, 0.0), paid_amount=np.where(overturned, paid, 0.0),
           patient_responsibility=np.where(overturned, PR, 0.0), is_denial=upheld)
    rm.add(paid_path & ~overturned, remit_key=ci * 3, ci=ci, pkg=pkg, payer_role="Primary", remit_date=r1,
           remit_sequence=1, billed_amount=C, allowed_amount=A, paid_amount=paid, patient_responsibility=PR,
           is_denial=False)
    rm.add(to_sec, remit_key=ci * 3 + 2, ci=ci, pkg=sec_pkg, payer_role="Secondary", remit_date=rs, remit_sequence=1,
           billed_amount=PR, allowed_amount=PR, paid_amount=sec_paid, patient_responsibility=PR - sec_paid,
           is_denial=False)
    adj = Events("remit_key", "ci", "group_code", "carc", "amount", "kick_code")
    adj.add(denied, remit_key=ci * 3, ci=ci, group_code=group, carc=carc, amount=C, kick_code=kick)
    adj.add(upheld, remit_key=ci * 3 + 1, ci=ci, group_code=group, carc=carc, amount=C, kick_code=kick)
    # An overturned appeal is reprocessed: the payer's second 835 reverses the original denial
    # adjustment with group code CR (correction/reversal, CLP02 = 22) before paying.
    adj.add(overturned, remit_key=ci * 3 + 1, ci=ci, group_code="CR", carc=carc, amount=-C, kick_code=None)
    first_paid_key = np.where(overturned, ci * 3 + 1, ci * 3)
    adj.add(paid_path & (contractual > 0), remit_key=first_paid_key, ci=ci, group_code="CO",
            carc=codes.CARC_CONTRACTUAL, amount=contractual, kick_code=None)
    adj.add(paid_path & (pr_copay > 0), remit_key=first_paid_key, ci=ci, group_code="PR", carc=codes.CARC_COPAY,
            amount=pr_copay, kick_code=None)
    adj.add(paid_path & (pr_ded > 0), remit_key=first_paid_key, ci=ci, group_code="PR", carc=codes.CARC_DEDUCTIBLE,
            amount=pr_ded, kick_code=None)
    adj.add(paid_path & (pr_coins > 0), remit_key=first_paid_key, ci=ci, group_code="PR",
            carc=codes.CARC_COINSURANCE, amount=pr_coins, kick_code=None)
    adj.add(sec_left, remit_key=ci * 3 + 2, ci=ci, group_code="OA", carc=codes.CARC_PRIOR_PAYER, amount=PR,
            kick_code=None)

    # ---- workflow events (CLAIMNOTE) with the claim status after each -------------------------
    ev = Events("ci", "event_type", "event_date", "payer_role", "kick_code", "claim_status", "note")
    ev.add(ones, ci=ci, event_type="CREATED", event_date=created, payer_role=np.where(self_pay, "Patient", "Primary"),
           kick_code=None, claim_status=np.where(self_pay, "BILLED", "HOLD"), note="Charge entered")
    ev.add(hold, ci=ci, event_type="SCRUB_HOLD", event_date=created, payer_role="Primary", kick_code="SCRUBHOLD",
           claim_status="HOLD", note="Held by claim rule")
    ev.add(ins, ci=ci, event_type="SUBMITTED", event_date=submitted, payer_role="Primary", kick_code="CIP",
           claim_status="BILLED", note="Submitted to payer")
    ev.add(denied, ci=ci, event_type="DENIED", event_date=r1, payer_role="Primary", kick_code=kick, claim_status="HOLD",
           note="Denied by payer")
    ev.add(appealed, ci=ci, event_type="APPEALED", event_date=appeal_date, payer_role="Primary", kick_code="AIP",
           claim_status="APPEALED", note="Appeal submitted")
    ev.add(upheld, ci=ci, event_type="DENIED", event_date=r2, payer_role="Primary", kick_code=kick, claim_status="HOLD",
           note="Appeal denied")
    ev.add(paid_path, ci=ci, event_type="PAID", event_date=R, payer_role="Primary", kick_code=None,
           claim_status="CLOSED", note="Paid by payer")
    ev.add(wo_now | upheld, ci=ci, event_type="WRITTEN_OFF", event_date=wo_date, payer_role="Primary",
           kick_code=None, claim_status="CLOSED", note="Denial written off")
    ev.add(to_patient, ci=ci, event_type="TRANSFERRED", event_date=drop_date, payer_role="Primary",
           kick_code="DRPPATIENT", claim_status="CLOSED", note="Balance moved to patient")
    ev.add(to_sec, ci=ci, event_type="TRANSFERRED", event_date=R, payer_role="Secondary", kick_code=None,
           claim_status="BILLED", note="Crossed over to secondary")
    ev.add(to_sec, ci=ci, event_type="PAID", event_date=rs, payer_role="Secondary", kick_code=None,
           claim_status="CLOSED", note="Secondary adjudicated")
    pat_open = pat_in > 0
    ev.add(pat_open & ~self_pay, ci=ci, event_type="TRANSFERRED", event_date=pat_transfer_date, payer_role="Patient",
           kick_code=None, claim_status="BILLED", note="Patient statement")
    settle = np.where(pays, settle_date, np.where(bad_debt, bad_debt_date, refund_date))
    ev.add(pays | bad_debt | refund, ci=ci, event_type=np.where(bad_debt, "WRITTEN_OFF", "CLOSED"), event_date=settle,
           payer_role="Patient", kick_code=np.where(bad_debt, "BADDEBT", None), claim_status="CLOSED",
           note=np.where(bad_debt, "Bad debt", np.where(refund, "Credit refunded", "Patient paid")))

    claims = pl.DataFrame({
        "ci": ci, "created_date": created, "submitted_date": np.where(ins, submitted, np.datetime64("NaT", "D")),
        "primary_pkg": np.where(self_pay, -1, pkg), "secondary_pkg": np.where(has_sec & ins, sec_pkg, -1),
        "primary_pi": np.where(self_pay, -1, cov["patient_insurance_id"].fill_null(-1).to_numpy()),
        "secondary_pi": np.where(has_sec & ins, cov["sec_pi"].fill_null(-1).to_numpy(), -1),
        "total_charge": C, "scrub_hold": hold,
    })
    return {"claims": claims, "ledger": tx.frame(), "remits": rm.frame(), "remit_adjustments": adj.frame(),
            "claim_events": ev.frame()}
