"""Quality marts on a generated sandbox practice: the care gaps the generator planted come back.

Loads a world's FHIR rendering (exported as a bulk-export NDJSON folder) and its Data View rendering into a
temp ``warehouse.duckdb`` with the project's loaders, runs the real
``dbt build --select +quality_care_gaps +quality_measure_performance`` (models, seeds, data, singular and
unit tests) at the world's clock, and compares every measure's denominator / exclusions / numerator with the
world's ``ground_truth.json``. Only ``as_of_date`` is passed: the default measurement period is the calendar
year of the clock (ages on Dec 31), which is what the ground truth counts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest

from athena_pipeline.athena.dataview import DuckDBDataViewSource
from athena_pipeline.athena.dataview_catalog import CATALOG
from athena_pipeline.sandbox.generate import generate_world
from athena_pipeline.sandbox.world import World, WorldOptions
from athena_pipeline.warehouse.connection import connect
from athena_pipeline.warehouse.dataview_loader import load_dataview_batches
from athena_pipeline.warehouse.fhir_loader import load_fhir_directory
from tests.dbt.test_staging import export_fhir_ndjson, run_dbt

MEASURES = ["CMS122", "CMS165", "CMS125", "CMS130", "CMS124", "CMS117", "CMS2", "CMS138", "CMS69"]
SELECT = ["+quality_care_gaps", "+quality_measure_performance"]


def _fid(world: World, patient_id: int) -> str:
    """The FHIR Patient id the sandbox gives a facts patient (athena style)."""
    return f"a-{world.practice_id}.E-{patient_id}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    # 1,500 patients give every measure a non-trivial denominator (CMS117, children turning 2, has ~10).
    return generate_world(tmp_path_factory.mktemp("quality-world") / "world", WorldOptions(providers=1, patients=1500))


@pytest.fixture(scope="module")
def built(world: World, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("quality-marts")
    export_fhir_ndjson(world, work / "export")
    warehouse = work / "warehouse.duckdb"
    with connect(warehouse) as con:
        load_fhir_directory(con, work / "export")
        with DuckDBDataViewSource(world.dataview_path) as source:
            for entry in CATALOG:
                load_dataview_batches(con, entry.name, source.fetch(entry.name), window=(None, None), run_id="test")
    dbt_vars = json.dumps({"as_of_date": world.current_date.isoformat()})
    # cautious: tests that also need a model outside this selection are left out (a fresh warehouse lacks it)
    result = run_dbt(warehouse, "build", "--select", *SELECT, "--indirect-selection", "cautious", "--vars", dbt_vars)
    assert result.returncode == 0, f"dbt build failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert "assert_quality_numerator_within_denominator" in result.stdout
    return warehouse, json.loads(world.ground_truth_path.read_text()), result.stdout


def _counts(warehouse: Path) -> dict[str, tuple[int, int, int]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("""
            SELECT measure_id, count(*) FILTER (WHERE in_denominator), count(*) FILTER (WHERE is_excluded),
                   count(*) FILTER (WHERE in_numerator)
            FROM marts.quality_care_gaps GROUP BY 1""").fetchall()
    return {m: (d, e, n) for m, d, e, n in rows}


@pytest.mark.parametrize("measure_id", MEASURES)
def test_denominator_exclusions_numerator_match_the_planted_truth(built, measure_id):
    warehouse, truth, _ = built
    expected = truth["measures"][measure_id]
    got = _counts(warehouse).get(measure_id, (0, 0, 0))
    assert got == (expected["denominator"], expected["exclusions"], expected["numerator"]), measure_id
    assert expected["denominator"] > 0, "the world is big enough for every measure to have patients"


def test_practice_performance_rates_and_open_gaps_match_the_truth(built):
    warehouse, truth, _ = built
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("""
            SELECT measure_id, is_inverse, performance_rate, open_gaps FROM marts.quality_measure_performance
            WHERE reporting_level = 'practice'""").fetchall()
        provider_gaps = dict(con.execute("""
            SELECT measure_id, sum(open_gaps) FROM marts.quality_measure_performance
            WHERE reporting_level = 'provider_department' GROUP BY 1""").fetchall())
    assert {m for m, *_ in rows} == set(MEASURES)
    for measure_id, is_inverse, rate, open_gaps in rows:
        expected = truth["measures"][measure_id]
        assert is_inverse == expected["is_inverse"], measure_id
        assert open_gaps == expected["open_gaps"] == provider_gaps[measure_id], measure_id
        assert rate == pytest.approx(expected["performance_rate"], abs=1e-6), measure_id


def test_inverse_hba1c_gap_includes_patients_with_no_test(built):
    warehouse, *_ = built
    with duckdb.connect(str(warehouse), read_only=True) as con:
        no_test, high, controlled_gaps = con.execute("""
            SELECT count(*) FILTER (WHERE is_gap AND last_evidence_date IS NULL),
                   count(*) FILTER (WHERE is_gap AND last_evidence_date IS NOT NULL),
                   count(*) FILTER (WHERE is_gap AND NOT in_numerator)
            FROM marts.quality_care_gaps WHERE measure_id = 'CMS122'""").fetchone()
    assert no_test > 0 and high > 0, "both kinds of CMS122 gap are planted"
    assert controlled_gaps == 0


def test_a_colonoscopy_only_billing_knows_closes_the_colorectal_gap(built, world):
    """Colonoscopies the chart never recorded (only a claim line has them) still count for CMS130."""
    warehouse, *_ = built
    with duckdb.connect(str(world.facts_path), read_only=True) as facts:
        billed_only = [_fid(world, pid) for (pid,) in facts.execute("""
            SELECT DISTINCT p.patient_id FROM procedures p JOIN claims c ON c.encounter_id = p.encounter_id
            WHERE p.kind = 'colonoscopy' AND NOT p.in_fhir AND p.billed AND p.deleted_at IS NULL
              AND c.deleted_at IS NULL""").fetchall()]
    assert billed_only, "the generator plants colonoscopies known only to billing"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        sources = dict(con.execute("""
            SELECT patient_id, bool_or(source = 'claim') FROM int_procedures
            WHERE concept = 'colonoscopy' AND list_contains(?, patient_id) GROUP BY 1""", [billed_only]).fetchall())
        cms130 = con.execute("""
            SELECT patient_id, in_numerator, is_excluded FROM marts.quality_care_gaps
            WHERE measure_id = 'CMS130' AND list_contains(?, patient_id)""", [billed_only]).fetchall()
    assert [p for p in billed_only if not sources.get(p)] == [], "a billed-only colonoscopy is missing its claim source"
    assert cms130, "some of them are in the CMS130 denominator"
    assert [p for p, in_numerator, excluded in cms130 if not (in_numerator or excluded)] == []


def test_gaps_are_attributed_to_the_patients_primary_provider_and_department(built, world):
    warehouse, *_ = built
    with duckdb.connect(str(world.facts_path), read_only=True) as facts:
        expected = {_fid(world, pid): (prov, dept) for pid, prov, dept in facts.execute(
            "SELECT patient_id, primary_provider_id, department_id FROM patients WHERE deleted_at IS NULL").fetchall()}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT DISTINCT patient_id, provider_id, department_id FROM marts.quality_care_gaps").fetchall()
    assert rows
    assert all(expected[p] == (prov, dept) for p, prov, dept in rows)


def test_care_gap_list_is_marked_as_phi_and_due_dates_follow_the_rules(built):
    warehouse, _, _ = built
    manifest = json.loads((warehouse.parent / "dbt_target" / "manifest.json").read_text())
    node = manifest["nodes"]["model.athena_pipeline.quality_care_gaps"]
    assert node["config"]["meta"].get("contains_phi") is True or node["meta"].get("contains_phi") is True
    with duckdb.connect(str(warehouse), read_only=True) as con:
        gap_due, excluded_due, lookback_due = con.execute("""
            SELECT count(*) FILTER (WHERE is_gap AND due_date <> period_end
                                    AND measure_id IN ('CMS122', 'CMS165', 'CMS125', 'CMS130', 'CMS124')),
                   count(*) FILTER (WHERE is_excluded AND due_date IS NOT NULL),
                   count(*) FILTER (WHERE measure_id = 'CMS130' AND in_numerator AND due_date < period_end)
            FROM marts.quality_care_gaps""").fetchone()
    assert (gap_due, excluded_due, lookback_due) == (0, 0, 0)


def test_quality_unit_tests_pass(built):
    """The build ran every unit test of the quality lineage (dbt build = dbt test + run, unit tests first)."""
    _, _, stdout = built
    ran = re.findall(r"PASS (\S+)::(\w+)", stdout)
    assert len(ran) >= 15, ran
    for name in ("cms122_no_hba1c_or_high_last_result_is_poor_control",
                 "cms122_inverse_gap_is_the_numerator_unless_excluded",
                 "cms165_lowest_of_each_on_the_last_reading_day",
                 "cms125_mammogram_26_months_back_counts_28_does_not",
                 "cms125_two_unilateral_mastectomies_exclude_as_bilateral",
                 "cms130_colonoscopy_9_years_back_counts_11_does_not",
                 "shared_exclusions_frailty_needs_advanced_illness_or_dementia_medication",
                 "quality_performance_rate_excludes_exclusions_and_handles_inverse_measures"):
        assert name in {n for _, n in ran}, name
