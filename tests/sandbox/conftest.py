"""Fixtures for the athenahealth emulator tests: a small FHIR world and live servers on loopback.

``fhir_world`` builds a deterministic world directory (``world.json`` + ``fhir.duckdb`` with a
few hundred resources of every served type, references between them, last_updated spread over
three years and a few deletions). Set ``ATHENA_TEST_FHIR_WORLD=/path/to/world`` to run the same
tests against a generated world instead; the tests derive their expectations from the world's
own ``fhir.duckdb``, never from constants of this builder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import duckdb
import httpx
import pytest

from athena_pipeline.sandbox.emulator.config import EmulatorConfig
from athena_pipeline.sandbox.emulator.faults import FaultInjector
from athena_pipeline.sandbox.emulator.fhir_store import open_snapshot
from athena_pipeline.sandbox.server import RunningServer, run_in_thread
from athena_pipeline.sandbox.world import World, WorldOptions

PRACTICE_ID = 195900
CURRENT_DATE = dt.date(2026, 11, 23)
WORLD_ENV = "ATHENA_TEST_FHIR_WORLD"


# --- the fixture world ---------------------------------------------------------------------------
def _stamp(i: int, salt: int) -> dt.datetime:
    """A deterministic last_updated between 2023-12-01 and the world clock."""
    span = (dt.datetime.combine(CURRENT_DATE, dt.time(23, 59, 59)) - dt.datetime(2023, 12, 1))
    seconds = ((salt + 1) * 2_654_435_761 + i * 40_503) % int(span.total_seconds())
    return dt.datetime(2023, 12, 1) + dt.timedelta(seconds=seconds)


def _meta(ts: dt.datetime) -> dict:
    return {"lastUpdated": ts.isoformat() + "Z", "versionId": "1"}


def _resources(pid: int) -> list[tuple[str, str, str | None, dt.datetime, dict]]:
    """(type, id, patient_id, last_updated, resource) rows of the fixture world."""
    rows: list[tuple[str, str, str | None, dt.datetime, dict]] = []
    org_id = f"a-1.Practice-{pid}"

    def add(rtype: str, rid: str, patient: str | None, n: int, body: dict) -> None:
        ts = _stamp(n, len(rows))
        rows.append((rtype, rid, patient,
                     ts, {"resourceType": rtype, "id": rid, "meta": _meta(ts), **body}))

    add("Organization", org_id, None, 1, {"name": "Riverside Family Medicine", "active": True})
    for n in range(1, 3):
        add("Location", f"a-{pid}.Department-{n}", None, n,
            {"name": f"Riverside Clinic {n}", "managingOrganization": {"reference": f"Organization/{org_id}"}})
    for n in range(1, 5):
        add("Practitioner", f"a-{pid}.Provider-{n}", None, n,
            {"name": [{"family": f"Osei{n}", "given": ["Ama"]}],
             "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": f"123456789{n}"}]})
    given = ["Zoë", "José", "Ana", "Li", "Noah", "Maya", "Ravi", "Ines"]
    for n in range(1, 41):
        pat = f"a-{pid}.E-{1000 + n}"
        add("Patient", pat, pat, n,
            {"name": [{"family": f"Doe{n}", "given": [given[n % len(given)]]}],
             "gender": "female" if n % 2 else "male", "birthDate": f"{1940 + n}-0{1 + n % 9}-15",
             "generalPractitioner": [{"reference": f"Practitioner/a-{pid}.Provider-{1 + n % 4}"}],
             "managingOrganization": {"reference": f"Organization/{org_id}"}})
    patients = [f"a-{pid}.E-{1000 + n}" for n in range(1, 41)]

    def subject(k: int) -> tuple[str, dict]:
        pat = patients[k % len(patients)]
        return pat, {"subject": {"reference": f"Patient/{pat}"}}

    for n in range(1, 81):
        pat, subj = subject(n)
        add("Encounter", f"a-{pid}.encounter-{n}", pat, n,
            {"status": "finished", "class": {"code": "AMB"}, **subj,
             "participant": [{"individual": {"reference": f"Practitioner/a-{pid}.Provider-{1 + n % 4}"}}],
             "location": [{"location": {"reference": f"Location/a-{pid}.Department-{1 + n % 2}"}}]})
    simple = [
        ("Condition", 60, {"code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]}}),
        ("Observation", 120, {"status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                              "valueQuantity": {"value": 7.1, "unit": "%"}}),
        ("Procedure", 30, {"status": "completed"}),
        ("Immunization", 20, {"status": "completed"}),
        ("MedicationRequest", 25, {"status": "active", "intent": "order"}),
        ("AllergyIntolerance", 15, {"code": {"text": "Penicillin"}}),
        ("DiagnosticReport", 20, {"status": "final"}),
        ("DocumentReference", 10, {"status": "current"}),
        ("Coverage", 40, {"status": "active", "payor": [{"display": "Medicare Part B"}]}),
        ("Appointment", 50, {"status": "booked"}),
    ]
    for rtype, count, body in simple:
        for n in range(1, count + 1):
            pat, subj = subject(n * 3)
            if rtype in ("Coverage",):
                subj = {"beneficiary": subj["subject"]}
            elif rtype in ("Appointment",):
                subj = {"participant": [{"actor": subj["subject"], "status": "accepted"}]}
            elif rtype in ("Immunization", "AllergyIntolerance"):
                subj = {"patient": subj["subject"]}
            extra = {}
            if rtype in ("Condition", "Observation", "Procedure", "DiagnosticReport"):
                extra = {"encounter": {"reference": f"Encounter/a-{pid}.encounter-{1 + n % 80}"}}
            add(rtype, f"a-{pid}.{rtype.lower()}-{n}", pat, n, {**body, **subj, **extra})
    return rows


def build_fhir_world(root: Path, *, practice_id: int = PRACTICE_ID,
                     current_date: dt.date = CURRENT_DATE) -> Path:
    """Create a small deterministic world at ``root`` (world.json + fhir.duckdb); returns root."""
    World(root=root, options=WorldOptions(providers=4, patients=40, practice_id=practice_id),
          current_date=current_date).save()
    rows = _resources(practice_id)
    clock = dt.datetime.combine(current_date, dt.time(23, 59, 59))
    deletions = [
        ("Encounter", f"a-{practice_id}.encounter-9001", dt.datetime(2025, 1, 10, 8, 0)),
        ("Observation", f"a-{practice_id}.observation-9002", dt.datetime(2026, 6, 1, 12, 30)),
        ("Condition", f"a-{practice_id}.condition-9003", dt.datetime(2026, 11, 20, 9, 15)),
    ]
    tmp = root / "fhir.duckdb.tmp"
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.execute("""
            CREATE TABLE resources (resource_type VARCHAR, id VARCHAR, patient_id VARCHAR,
                                    last_updated TIMESTAMP, resource VARCHAR);
            CREATE TABLE deletions (resource_type VARCHAR, id VARCHAR, deleted_at TIMESTAMP);
            CREATE TABLE world_meta (key VARCHAR, value VARCHAR);
        """)
        con.executemany("INSERT INTO resources VALUES (?, ?, ?, ?, ?)",
                        [(t, i, p, ts, json.dumps(r, separators=(",", ":"), ensure_ascii=False))
                         for t, i, p, ts, r in rows])
        con.executemany("INSERT INTO deletions VALUES (?, ?, ?)", deletions)
        con.executemany("INSERT INTO world_meta VALUES (?, ?)",
                        [("practice_id", str(practice_id)), ("clock", clock.isoformat()),
                         ("current_date", current_date.isoformat())])
    finally:
        con.close()
    os.replace(tmp, root / "fhir.duckdb")
    return root


def query(world: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Run a query against a world's fhir.duckdb (attached read-only as ``fhir``)."""
    con = open_snapshot(world / "fhir.duckdb")
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def practice_of(server: RunningServer) -> str:
    """The practice id the server's world was rendered for."""
    return server.emulator.store.snapshot().practice_id


@pytest.fixture(scope="session")
def fhir_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world directory with a FHIR rendering (built once per session, or $ATHENA_TEST_FHIR_WORLD)."""
    given = os.environ.get(WORLD_ENV)
    if given:
        return Path(given)
    return build_fhir_world(tmp_path_factory.mktemp("fhir_world"))


@pytest.fixture
def own_world(fhir_world: Path, tmp_path: Path) -> Path:
    """A private copy of ``fhir_world`` that a test may modify (e.g. replace fhir.duckdb)."""
    root = tmp_path / "world"
    root.mkdir()
    shutil.copy2(fhir_world / "world.json", root / "world.json")
    shutil.copy2(fhir_world / "fhir.duckdb", root / "fhir.duckdb")
    return root


@pytest.fixture(scope="session")
def resources_per_file(fhir_world: Path) -> int:
    """Small enough that the biggest type spans several files, whatever the world's size."""
    biggest = query(fhir_world, "SELECT max(n) FROM (SELECT count(*) n FROM fhir.resources GROUP BY resource_type)")
    return max(25, -(-int(biggest[0][0] or 0) // 4))


# --- servers -----------------------------------------------------------------------------------------
@pytest.fixture
def test_config(resources_per_file: int) -> EmulatorConfig:
    """Fast settings: short processing delay, small files, generous token limit."""
    return EmulatorConfig(
        resources_per_file=resources_per_file,
        export_processing_delay_seconds=0.3,
        poll_retry_after_seconds=1,
        file_expiry_seconds=600,
        token_rate_limit_per_minute=1000,
    )


StartEmulator = Callable[..., RunningServer]


@pytest.fixture
def start_emulator(fhir_world: Path, test_config: EmulatorConfig) -> Iterator[StartEmulator]:
    """Factory: ``start_emulator(world=None, faults=None, **config_overrides)``; stopped after."""
    running: list[RunningServer] = []

    def start(world: Path | None = None, faults: FaultInjector | str | None = None,
              **overrides) -> RunningServer:
        server = run_in_thread(world or fhir_world, faults=faults,
                               config=replace(test_config, **overrides))
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def emulator(start_emulator: StartEmulator) -> RunningServer:
    return start_emulator()


@pytest.fixture
def client(emulator: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, timeout=httpx.Timeout(10.0)) as c:
        yield c


def get_token(server: RunningServer, scope: str | None = None, *,
              client_id: str = "sandbox-client", secret: str = "sandbox-secret") -> str:
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    r = httpx.post(server.token_url, data=data, auth=(client_id, secret), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


@pytest.fixture
def auth(emulator: RunningServer) -> dict[str, str]:
    """Authorization header with a token carrying every FHIR read scope and the v1 scope."""
    return {"Authorization": f"Bearer {get_token(emulator)}"}
