"""The synthetic practice: determinism, integrity inside and across renderings, realism, advance."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from athena_pipeline.sandbox import rates
from athena_pipeline.sandbox.advance import advance_world
from athena_pipeline.sandbox.fingerprint import world_fingerprints
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.world import World, WorldOptions

SMALL = WorldOptions(seed=7, providers=2, patients=1500, start=dt.date(2023, 11, 24), end=dt.date(2026, 11, 23))


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> World:
    return generate_world(tmp_path_factory.mktemp("small") / "world", SMALL)


@pytest.fixture(scope="module")
def small_world_again(tmp_path_factory) -> World:
    """A second world from the same options, generated independently."""
    return generate_world(tmp_path_factory.mktemp("again") / "world", SMALL)


def _q(path, sql):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_same_seed_same_world_different_seed_different(small_world, small_world_again, tmp_path):
    again = small_world_again
    a, b = world_fingerprints(small_world.root), world_fingerprints(again.root)
    assert a == b
    assert (small_world.root / "ground_truth.json").read_bytes() == (again.root / "ground_truth.json").read_bytes()
    other = generate_world(tmp_path / "other", WorldOptions(**{**SMALL.__dict__, "seed": 8}))
    c = world_fingerprints(other.root)
    assert c["facts.duckdb:main.patients"] != a["facts.duckdb:main.patients"]
    assert c["fhir.duckdb:main.resources"] != a["fhir.duckdb:main.resources"]


def _bulk_export_bytes(world: World) -> list[tuple[str, bytes]]:
    """Run a full Bulk Data export against the emulator and return (type, file bytes) in manifest order."""
    import time

    import httpx

    from athena_pipeline.sandbox.emulator.config import EmulatorConfig
    from athena_pipeline.sandbox.server import run_in_thread

    with run_in_thread(world.root, config=EmulatorConfig(export_processing_delay_seconds=0)) as srv:
        token = httpx.post(srv.token_url, auth=("sandbox-client", "sandbox-secret"),
                           data={"grant_type": "client_credentials", "scope": "system/*.read"}).json()["access_token"]
        h = {"Authorization": f"Bearer {token}"}
        kick = httpx.get(f"{srv.fhir_base}/Group/a-1.c-{world.practice_id}/$export",
                         headers={**h, "Prefer": "respond-async", "Accept": "application/fhir+json"})
        assert kick.status_code == 202, kick.text
        for _ in range(200):
            status = httpx.get(kick.headers["Content-Location"], headers=h)
            if status.status_code == 200:
                break
            time.sleep(0.1)
        manifest = status.json()
        return [(f["type"], httpx.get(f["url"], headers=h).content) for f in manifest["output"]]


def test_same_seed_gives_byte_identical_bulk_exports(small_world, small_world_again):
    a, b = _bulk_export_bytes(small_world), _bulk_export_bytes(small_world_again)
    assert [t for t, _ in a] == [t for t, _ in b] and len(a) >= 15
    assert all(x == y for (_, x), (_, y) in zip(a, b))


def test_world_json_records_options_and_clock(small_world):
    w = World.load(small_world.root)
    assert w.options == SMALL and w.current_date == SMALL.end
    assert w.extra["horizon_end"] > SMALL.end.isoformat()


def test_facts_referential_integrity(small_world):
    f = small_world.facts_path
    orphans = {
        "appointment without patient": "SELECT count(*) FROM appointments a ANTI JOIN patients p USING (patient_id)",
        "encounter without appointment": "SELECT count(*) FROM encounters e ANTI JOIN appointments a USING (appointment_id)",
        "claim without encounter": "SELECT count(*) FROM claims c ANTI JOIN encounters e USING (encounter_id)",
        "claim without patient": "SELECT count(*) FROM claims c ANTI JOIN patients p USING (patient_id)",
        "transaction without claim": "SELECT count(*) FROM transactions t ANTI JOIN claims c USING (claim_id)",
        "transaction without charge": "SELECT count(*) FROM transactions t ANTI JOIN claim_lines l USING (charge_id)",
        "remit without claim": "SELECT count(*) FROM remittances r ANTI JOIN claims c USING (claim_id)",
        "observation without encounter": "SELECT count(*) FROM observations o ANTI JOIN encounters e USING (encounter_id)",
        "condition without patient": "SELECT count(*) FROM conditions c ANTI JOIN patients p USING (patient_id)",
        "provider outside departments": "SELECT count(*) FROM providers p ANTI JOIN departments d USING (department_id)",
    }
    for what, sql in orphans.items():
        assert _q(f, sql)[0][0] == 0, what
    # the ledger of every claim adds up to its three outstanding balances
    (bad,) = _q(f, """SELECT count(*) FROM (SELECT c.claim_id, any_value(c.primary_outstanding + c.secondary_outstanding
        + c.patient_outstanding) AS o, sum(t.amount) AS s FROM claims c JOIN transactions t USING (claim_id)
        GROUP BY 1) WHERE o <> s""")[0]
    assert bad == 0
    # money is spread over charge lines without cent drift: only claims with a credit balance
    # have a line below zero
    assert _q(f, """SELECT count(*) FROM (SELECT charge_id, any_value(claim_id) AS claim_id, sum(amount) AS s
                    FROM transactions GROUP BY 1) x JOIN claims c USING (claim_id)
                    WHERE x.s < 0 AND c.patient_outstanding >= 0""")[0][0] == 0
    # nothing dated after the world clock is visible
    assert _q(f, "SELECT count(*) FROM transactions WHERE post_date > DATE '2026-11-23'")[0][0] == 0
    assert _q(f, "SELECT count(*) FROM encounters WHERE created_at > TIMESTAMP '2026-11-23 23:59:59'")[0][0] == 0
    # future bookings exist and are in status 'f'
    assert _q(f, "SELECT count(*) FROM appointments WHERE appointment_date > DATE '2026-11-23' AND status <> 'f' "
                 "AND status <> 'x'")[0][0] == 0
    assert _q(f, "SELECT count(*) FROM appointments WHERE appointment_date > DATE '2026-11-23'")[0][0] > 0


def test_renderings_agree_about_patients_visits_and_claims(small_world):
    dv, fh, pid = small_world.dataview_path, small_world.fhir_path, small_world.practice_id
    con = duckdb.connect()
    con.execute(f"ATTACH '{dv}' AS dv (READ_ONLY)")
    con.execute(f"ATTACH '{fh}' AS fh (READ_ONLY)")
    con.execute(f"ATTACH '{small_world.facts_path}' AS f (READ_ONLY)")
    one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    # every live PATIENT row has its FHIR Patient and vice versa
    assert one(f"""SELECT count(*) FROM dv.ATHENAONE.PATIENT p WHERE p.DELETEDDATETIME IS NULL AND NOT EXISTS (
        SELECT 1 FROM fh.resources r WHERE r.resource_type = 'Patient' AND r.id = 'a-{pid}.E-' || p.PATIENTID)""") == 0
    assert one(f"""SELECT count(*) FROM fh.resources r WHERE r.resource_type = 'Patient' AND NOT EXISTS (
        SELECT 1 FROM dv.ATHENAONE.PATIENT p WHERE 'a-{pid}.E-' || p.PATIENTID = r.id)""") == 0
    # one FHIR Encounter per CLINICALENCOUNTER; every CLAIM's patient and appointment exist
    assert one("SELECT count(*) FROM fh.resources WHERE resource_type = 'Encounter'") == one(
        "SELECT count(*) FROM dv.ATHENAONE.CLINICALENCOUNTER WHERE DELETEDDATETIME IS NULL")
    assert one("""SELECT count(*) FROM dv.ATHENAONE.CLAIM c ANTI JOIN dv.ATHENAONE.PATIENT p
                  ON p.PATIENTID = c.PATIENTID AND p.CONTEXTID = c.CONTEXTID""") == 0
    assert one("""SELECT count(*) FROM dv.ATHENAONE.CLAIM c ANTI JOIN dv.ATHENAONE.APPOINTMENT a
                  ON a.APPOINTMENTID = c.CLAIMAPPOINTMENTID""") == 0
    # the same number of claims, and the same total charges, in both facts and Data View
    assert one("SELECT count(*) FROM dv.ATHENAONE.CLAIM") == one("SELECT count(*) FROM f.claims")
    assert one("SELECT sum(AMOUNT) FROM dv.ATHENAONE.\"TRANSACTION\" WHERE TRANSACTIONTYPE = 'CHARGE'") == one(
        "SELECT sum(amount) FROM f.transactions WHERE transaction_type = 'CHARGE'")


def test_fhir_references_resolve(small_world):
    from athena_pipeline.sandbox.fhir_checks import unresolved_references

    assert unresolved_references(small_world.fhir_path) == []


def test_every_resource_type_rendered(small_world):
    types = {t for (t,) in _q(small_world.fhir_path, "SELECT DISTINCT resource_type FROM resources")}
    assert types == {"Patient", "Practitioner", "Organization", "Location", "Encounter", "Condition", "Observation",
                     "Procedure", "Immunization", "MedicationRequest", "AllergyIntolerance", "DiagnosticReport",
                     "DocumentReference", "Coverage", "Appointment"}


def test_ground_truth_is_complete_and_consistent(small_world):
    truth = json.loads(small_world.ground_truth_path.read_text())
    assert set(truth["measures"]) == {"CMS122", "CMS165", "CMS125", "CMS130", "CMS124", "CMS117", "CMS2",
                                      "CMS138", "CMS69"}
    for mid, m in truth["measures"].items():
        assert 0 <= m["exclusions"] <= m["denominator"], mid
        assert 0 <= m["numerator"] <= m["denominator"] - m["exclusions"], mid
        assert truth["definitions"][mid], mid
    (ar,) = _q(small_world.facts_path, """SELECT sum(greatest(primary_outstanding, 0) + greatest(secondary_outstanding, 0)
                                         + greatest(patient_outstanding, 0)) FROM claims""")[0]
    assert sum(b["open_balance"] for b in truth["ar_by_bucket"].values()) == pytest.approx(float(ar), abs=0.01)
    assert truth["credit_balances"]["amount"] <= 0


def test_realism_bands_on_a_mid_size_practice(tmp_path):
    """Rates planted from rates.py land in their documented bands on a 4-provider, 3-year world."""
    w = generate_world(tmp_path / "mid", WorldOptions(seed=11, providers=4))
    t = json.loads(w.ground_truth_path.read_text())
    for payer, d in t["initial_denial_rate_by_payer"].items():
        assert rates.DENIAL_RATE_BAND[0] <= d["initial_denial_rate"] <= rates.DENIAL_RATE_BAND[1], payer
    rates_by_payer = {p: d["initial_denial_rate"] for p, d in t["initial_denial_rate_by_payer"].items()}
    assert rates_by_payer["MassHealth Medicaid"] > rates_by_payer["Medicare Part B"]  # payers differ realistically
    assert rates.DAYS_IN_AR_BAND[0] <= t["days_in_ar"] <= rates.DAYS_IN_AR_BAND[1]
    assert rates.NO_SHOW_BAND[0] <= t["no_show_rate"] <= rates.NO_SHOW_BAND[1]
    tail = t["ar_by_bucket"]["120+"]["open_balance"] / t["ar_total"]
    assert 0.01 < tail < 0.15  # a tail beyond 120 days, not a mountain
    m = t["measures"]
    cms122 = m["CMS122"]
    poor = cms122["numerator"] / (cms122["denominator"] - cms122["exclusions"])
    assert rates.HBA1C_POOR_BAND[0] <= poor <= rates.HBA1C_POOR_BAND[1]  # incl. "no test this year"
    bands = {"CMS165": (0.45, 0.75), "CMS125": (0.55, 0.85), "CMS130": (0.5, 0.8), "CMS124": (0.55, 0.85),
             "CMS117": (0.25, 0.65), "CMS2": (0.5, 0.85), "CMS138": (0.7, 0.97), "CMS69": (0.5, 0.85)}
    for mid, (lo, hi) in bands.items():
        assert lo <= m[mid]["performance_rate"] <= hi, (mid, m[mid])
        assert m[mid]["denominator"] > 20, mid
    con = duckdb.connect(str(w.facts_path), read_only=True)
    # ages span children to the elderly; chronic disease at US prevalence
    kids, old = con.execute("""SELECT count(*) FILTER (WHERE dob > DATE '2008-11-23'),
                                      count(*) FILTER (WHERE dob < DATE '1956-11-23') FROM patients""").fetchone()
    n = con.execute("SELECT count(*) FROM patients").fetchone()[0]
    assert 0.12 < kids / n < 0.30 and 0.10 < old / n < 0.30
    diab = con.execute("""SELECT count(DISTINCT patient_id) FROM conditions WHERE condition_group LIKE 'diabetes%'
                          AND category = 'problem-list-item'""").fetchone()[0]
    assert 0.05 < diab / n < 0.14
    con.close()


def test_advance_moves_the_practice_forward(small_world, tmp_path):
    import shutil

    root = tmp_path / "w"
    shutil.copytree(small_world.root, root)
    before = {k: v for k, v in _q(root / "fhir.duckdb", "SELECT resource_type, max(last_updated) FROM resources GROUP BY 1")}
    summary = advance_world(root, 3)
    assert summary["from"] == "2026-11-23" and summary["to"] == "2026-11-26"
    ch = summary["changes"]
    for table in ("appointments", "encounters", "observations", "claims", "transactions", "remittances"):
        assert ch.get(table, {}).get("created", 0) > 0, table
    assert ch["appointments"]["updated"] > 0  # bookings checked in/out, cancelled, no-shows
    assert ch["claims"]["updated"] > 0  # payments, denials and status changes on older claims
    w = World.load(root)
    assert w.current_date == dt.date(2026, 11, 26) and w.advanced_days == 3
    # both renderings moved: LASTUPDATED / meta.lastUpdated after the old clock
    (n_dv,) = _q(root / "dataview.duckdb", """SELECT count(*) FROM ATHENAONE.APPOINTMENT
                                              WHERE LASTUPDATED > TIMESTAMP '2026-11-23 23:59:59'""")[0]
    assert n_dv > 0
    after = {k: v for k, v in _q(root / "fhir.duckdb", "SELECT resource_type, max(last_updated) FROM resources GROUP BY 1")}
    assert after["Encounter"] > before["Encounter"] and after["Observation"] > before["Observation"]
    # advancing in two steps lands on exactly the same world as one step
    root2 = tmp_path / "w2"
    shutil.copytree(small_world.root, root2)
    advance_world(root2, 1)
    advance_world(root2, 2)
    assert world_fingerprints(root2) == world_fingerprints(root)


def test_advance_soft_deletes_some_records(small_world, tmp_path):
    import shutil

    root = tmp_path / "w"
    shutil.copytree(small_world.root, root)
    advance_world(root, 60)
    (deleted,) = _q(root / "facts.duckdb", """SELECT count(*) FROM (
        SELECT deleted_at FROM appointments UNION ALL SELECT deleted_at FROM conditions)
        WHERE deleted_at > TIMESTAMP '2026-11-23 23:59:59'""")[0]
    assert deleted > 0
    (dv_deleted,) = _q(root / "dataview.duckdb", """SELECT count(*) FROM ATHENAONE.APPOINTMENT
        WHERE DELETEDDATETIME > TIMESTAMP '2026-11-23 23:59:59'""")[0]
    assert dv_deleted > 0


def test_advance_refuses_past_the_horizon_and_bad_input(small_world):
    with pytest.raises(ValueError, match="timeline ends on"):
        advance_world(small_world.root, 10_000)
    with pytest.raises(ValueError, match="at least 1"):
        advance_world(small_world.root, 0)
    with pytest.raises(FileNotFoundError, match="not a sandbox world"):
        advance_world(small_world.root / "nope", 1)


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="--end"):
        generate_world(tmp_path / "x", WorldOptions(start=dt.date(2026, 1, 1), end=dt.date(2025, 1, 1)))
    with pytest.raises(ValueError, match="providers"):
        generate_world(tmp_path / "x", WorldOptions(providers=0))


def test_sharded_generation_keeps_ids_unique_and_ledgers_whole(tmp_path, monkeypatch):
    """Large practices are built in patient shards; ids stay unique and every claim's ledger whole."""
    import athena_pipeline.sandbox.generate as gen

    monkeypatch.setattr(gen, "PATIENTS_PER_SHARD", 400)
    w = generate_world(tmp_path / "sharded", WorldOptions(seed=5, providers=2, patients=1300))
    f = w.facts_path
    assert _q(f, "SELECT count(*), count(DISTINCT patient_id), max(patient_id) FROM timeline.patients")[0] == (
        1300, 1300, 1300)
    for table, key in [("appointments", "appointment_id"), ("claims", "claim_id"), ("transactions", "transaction_id"),
                       ("remittances", "remittance_id"), ("observations", "observation_id")]:
        n, d = _q(f, f"SELECT count(*), count(DISTINCT {key}) FROM {table}")[0]
        assert n == d and n > 0, table
    (bad,) = _q(f, """SELECT count(*) FROM (SELECT c.claim_id, any_value(c.primary_outstanding + c.secondary_outstanding
        + c.patient_outstanding) AS o, sum(t.amount) AS s FROM claims c JOIN transactions t USING (claim_id)
        GROUP BY 1) WHERE o <> s""")[0]
    assert bad == 0
    # every remittance-linked payment points at a remittance of its own claim
    assert _q(f, """SELECT count(*) FROM transactions t JOIN remittances r USING (remittance_id)
                    WHERE r.claim_id <> t.claim_id""")[0][0] == 0
    from athena_pipeline.sandbox.fhir_checks import unresolved_references

    assert unresolved_references(w.fhir_path) == []
