"""The dbt seeds and the sandbox generator use the same codes, with the same meaning.

If they drifted, a measure would silently count nothing in the sandbox (a planted mammogram
that no value set knows) and a denial would land in the wrong category. Two checks, both
against the committed CSVs in ``dbt_project/seeds/``:

* every row ``athena_pipeline.sandbox.seeds`` renders from ``codes.py`` is in the CSV with the
  same concept / category;
* every code a freshly generated world actually plants (read back from its facts, so codes
  hard-coded outside ``codes.py`` are caught too) is in the CSV under the concept the marts use.
"""

from __future__ import annotations

import csv
from itertools import pairwise
from pathlib import Path

import duckdb
import pytest

from athena_pipeline.sandbox import codes, seeds
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.world import WorldOptions

SEEDS_DIR = Path(__file__).resolve().parents[2] / "dbt_project" / "seeds"
CODE_SYSTEMS = {"icd-10-cm", "snomed-ct", "loinc", "cpt", "hcpcs", "cvx", "rxnorm"}


def _read(name: str) -> list[dict[str, str]]:
    with open(SEEDS_DIR / f"{name}.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _bool(text: str) -> bool:
    assert text in ("true", "false"), f"seed booleans are written true/false, got {text!r}"
    return text == "true"


@pytest.fixture(scope="module")
def value_set_keys() -> set[tuple[str, str, str]]:
    return {(r["concept"], r["code_system"], r["code"]) for r in _read("value_sets")}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    """The facts of a small generated world: what the generator really plants."""
    world = generate_world(tmp_path_factory.mktemp("seed-world") / "world", WorldOptions(providers=1, patients=250))
    con = duckdb.connect(str(world.facts_path), read_only=True)
    yield con
    con.close()


def test_every_generator_code_is_in_the_value_set_seed_with_its_concept(value_set_keys):
    rows = seeds.value_set_rows()
    assert len(rows) > 100  # conditions, observations, procedures, vaccines, medications, fee codes
    missing = [r for r in rows if (r.concept, r.code_system, r.code) not in value_set_keys]
    assert not missing, f"add these rows to dbt_project/seeds/value_sets.csv: {missing}"


def test_every_generator_carc_and_kick_code_is_categorised_the_same_way():
    carcs = {r["carc"]: r for r in _read("carc_categories")}
    for row in seeds.carc_rows():
        seed = carcs.get(row.carc)
        assert seed is not None, f"CARC {row.carc} is missing from carc_categories.csv"
        assert (seed["denial_category"], _bool(seed["is_denial"]), _bool(seed["is_avoidable"])) == (
            row.denial_category, row.is_denial, row.is_avoidable), f"CARC {row.carc} is categorised differently"
    kicks = {r["kick_code"]: r for r in _read("kick_codes")}
    for row in seeds.kick_code_rows():
        seed = kicks.get(row.kick_code)
        assert seed is not None, f"kick code {row.kick_code} is missing from kick_codes.csv"
        assert (seed["kick_reason_name"], seed["kick_category"], _bool(seed["is_denial"]), seed["next_claim_status"]) == (
            row.kick_reason_name, row.kick_category, row.is_denial, row.next_claim_status)
        if row.is_denial:
            assert seed["denial_category"] == row.kick_category


def test_a_new_generator_code_without_a_concept_is_refused(monkeypatch):
    monkeypatch.setitem(codes.CONDITIONS, "gout", ("M10.9", "90560007", "Gout, unspecified"))
    with pytest.raises(seeds.UnmappedCodeError, match="gout"):
        seeds.value_set_rows()
    monkeypatch.setitem(codes.FEES, "99999", 10.0)
    monkeypatch.delitem(codes.CONDITIONS, "gout")
    with pytest.raises(seeds.UnmappedCodeError, match="99999"):
        seeds.value_set_rows()


def test_codes_planted_in_a_generated_world_match_the_value_sets(planted, value_set_keys):
    con = planted
    checks = {
        "condition (ICD-10-CM)": ("SELECT DISTINCT condition_group, 'icd-10-cm', icd10_code FROM conditions",
                                  seeds.CONDITION_CONCEPTS),
        "condition (SNOMED CT)": (("SELECT DISTINCT condition_group, 'snomed-ct', snomed_code FROM conditions "
                                   "WHERE snomed_code IS NOT NULL"), seeds.CONDITION_CONCEPTS),
        "observation": ("SELECT DISTINCT kind, 'loinc', loinc FROM observations", seeds.OBSERVATION_CONCEPTS),
        "immunization": ("SELECT DISTINCT vaccine_group, 'cvx', cvx FROM immunizations", seeds.VACCINE_CONCEPTS),
        "medication": ("SELECT DISTINCT med_group, 'rxnorm', rxnorm FROM medication_requests", seeds.MEDICATION_CONCEPTS),
    }
    seen = 0
    for what, (sql, concepts) in checks.items():
        for group, system, code in con.execute(sql).fetchall():
            seen += 1
            assert group in concepts, f"the generator plants {what} group {group!r}, which seeds.py does not map"
            assert (concepts[group], system, code) in value_set_keys, f"{what} {code} ({group}) is not in value_sets.csv"
    for kind, system, code in con.execute("SELECT DISTINCT kind, code_system, code FROM procedures").fetchall():
        seen += 1
        key = (seeds.PROCEDURE_CONCEPTS[kind], seeds.CODE_SYSTEMS[system], code)
        assert key in value_set_keys, f"procedure {code} ({kind}) is not in value_sets.csv"
    answers = {code: seeds.TOBACCO_ANSWER_CONCEPTS[answer] for answer, (code, _) in codes.TOBACCO_ANSWERS.items()}
    answers |= {code: seeds.DEPRESSION_ANSWER_CONCEPTS[pos] for pos, (code, _) in codes.DEPRESSION_SCREEN_ANSWERS.items()}
    for (code,) in con.execute("SELECT DISTINCT value_code FROM observations WHERE value_code IS NOT NULL").fetchall():
        assert (answers[code], "snomed-ct", code) in value_set_keys
    assert seen > 60, "the world planted suspiciously few codes"

    # Every billed code (claim lines, visit codes) means something to the marts.
    billed_codes = {code for _, system, code in value_set_keys if system in ("cpt", "hcpcs")}
    billed = {c for (c,) in con.execute("SELECT DISTINCT procedure_code FROM claim_lines UNION "
                                        "SELECT DISTINCT visit_cpt FROM encounters").fetchall()}
    assert billed and billed <= billed_codes, f"billed codes missing from value_sets.csv: {sorted(billed - billed_codes)}"
    visit_concepts = {concept for concept, system, code in value_set_keys
                      if (system, code) in {("cpt", c) for (c,) in con.execute(
                          "SELECT DISTINCT visit_cpt FROM encounters WHERE encounter_type <> 'PROCEDURE'").fetchall()}}
    assert visit_concepts <= {"office_visit", "preventive_care_new_patient", "preventive_care_established_patient"}


def test_remittance_codes_planted_in_a_generated_world_are_categorised(planted):
    con = planted
    carcs = {r["carc"]: r for r in _read("carc_categories")}
    groups = {r["group_code"] for r in _read("group_codes")}
    kicks = {r["kick_code"]: r for r in _read("kick_codes")}
    adjustments = con.execute("SELECT DISTINCT group_code, carc, kick_code FROM remittance_adjustments").fetchall()
    assert adjustments
    for group, carc, kick in adjustments:
        assert group in groups, f"group code {group} is not in group_codes.csv"
        assert carc in carcs, f"CARC {carc} (group {group}) is not in carc_categories.csv"
        if kick is not None:  # a denial: the kick code and the CARC agree on the category
            assert _bool(carcs[carc]["is_denial"]), f"CARC {carc} carries denial kick {kick} but is not a denial"
            assert kicks[kick]["denial_category"] == carcs[carc]["denial_category"]
    # the CARC the generator marks as a denial (is_denial remits) is a denial in the seed
    denial_carcs = {c for (c,) in con.execute(
        "SELECT DISTINCT a.carc FROM remittance_adjustments a JOIN remittances r USING (remittance_id) "
        "WHERE r.is_denial AND a.group_code <> 'CR' AND a.kick_code IS NOT NULL").fetchall()}
    assert denial_carcs and all(_bool(carcs[c]["is_denial"]) for c in denial_carcs)
    planted_kicks = {k for (k,) in con.execute(
        "SELECT kick_code FROM kick_reasons UNION SELECT kick_code FROM claim_events WHERE kick_code IS NOT NULL"
    ).fetchall()}
    assert planted_kicks <= set(kicks), f"kick codes missing from kick_codes.csv: {sorted(planted_kicks - set(kicks))}"


def test_seed_files_are_consistent(value_set_keys):
    assert len(value_set_keys) == len(_read("value_sets")), "value_sets.csv has duplicate (concept, code_system, code)"
    assert {s for _, s, _ in value_set_keys} <= CODE_SYSTEMS
    concepts = {c for c, _, _ in value_set_keys}
    measures = {r["measure_id"]: r for r in _read("measures")}
    assert set(measures) == {"CMS122", "CMS165", "CMS125", "CMS130", "CMS124", "CMS117", "CMS2", "CMS138", "CMS69"}
    assert [m for m, r in measures.items() if _bool(r["is_inverse"])] == ["CMS122"]
    used = _read("measure_concepts")
    assert {r["measure_id"] for r in used} == set(measures), "every measure has its concepts"
    unknown = {r["concept"] for r in used} - concepts
    assert not unknown, f"measure_concepts.csv names concepts value_sets.csv does not have: {unknown}"
    # the spec's named codes (metrics.md §3) are there
    for key in [("hba1c_lab_test", "loinc", "4549-2"), ("hba1c_lab_test", "loinc", "17855-8"),
                ("mammography", "cpt", "77065"), ("mammography", "cpt", "77066"), ("colonoscopy", "hcpcs", "G0105"),
                ("colonoscopy", "hcpcs", "G0121"), ("mmr_vaccine", "cvx", "94"), ("bp_control_cpt2", "hcpcs", "G8752")]:
        assert key in value_set_keys, key
    buckets = _read("aging_buckets")
    bounds = [(int(b["min_days"]), int(b["max_days"]) if b["max_days"] else None) for b in buckets]
    assert bounds[0][0] == 0 and bounds[-1][1] is None
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in pairwise(bounds)), "buckets must not overlap or gap"
