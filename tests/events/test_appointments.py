"""Near-real-time appointment sync against the real athenahealth and Caspio emulators on loopback.

The world is a small generated one (facts + Data View). Changes are made the way ``sandbox
advance`` makes them: the Data View file is rewritten aside and swapped in with ``os.replace``, and
the emulator's v1 API answers from the new file. Expected values always come from the file itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from athena_pipeline.athena.client import AthenaClient
from athena_pipeline.caspio.client import CaspioClient
from athena_pipeline.events.appointments import (
    V1_SCOPE,
    AppointmentSyncError,
    appointments_table_name,
    sync_appointments,
)
from athena_pipeline.sandbox.caspio.config import CaspioConfig
from athena_pipeline.sandbox.caspio.server import run_caspio_in_thread
from athena_pipeline.sandbox.server import run_in_thread
from athena_pipeline.sandbox.world import World
from tests.sandbox.test_emulator_v1 import build_dataview_world

WRITE_METHODS = ("POST", "PUT", "DELETE")


@pytest.fixture(scope="module")
def base_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataview_world(tmp_path_factory.mktemp("appt_world"), patients=60)


def dv(world: Path, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(world / "dataview.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def edit_dataview(world: Path, sql: str, params: list | None = None) -> None:
    """Change the Data View the way ``sandbox advance`` does: write a copy, then swap it in."""
    path = world / "dataview.duckdb"
    scratch = world / "dataview.duckdb.edit"
    shutil.copyfile(path, scratch)
    with duckdb.connect(str(scratch)) as con:
        con.execute(sql, params or [])
        con.execute("CHECKPOINT")
    os.replace(scratch, path)


@dataclass
class Env:
    world: Path
    practice: str
    athena: AthenaClient
    caspio: CaspioClient

    def rows(self, prefix: str = "ap_") -> dict[str, dict]:
        table = appointments_table_name(prefix)
        return {r["appointment_id"]: r for page in self.caspio.iter_records(table) for r in page}

    def writes(self) -> int:
        """Record writes (POST/PUT/DELETE on .../records) since the last call."""
        return sum(1 for c in self.caspio.call_records()
                   if c.method in WRITE_METHODS and c.path_template.endswith("/records"))


@pytest.fixture
def env(base_world: Path, tmp_path: Path) -> Iterator[Env]:
    world = tmp_path / "world"
    shutil.copytree(base_world, world, ignore=shutil.ignore_patterns("emulator", "*.sqlite*"))
    practice = str(World.load(world).practice_id)
    with run_in_thread(world) as emu, run_caspio_in_thread(tmp_path / "caspio") as cas:
        profile = CaspioConfig().clients[0]
        athena = AthenaClient.create(emu.fhir_base, token_url=emu.token_url, client_id="sandbox-client",
                                     client_secret="sandbox-secret", scopes=V1_SCOPE, practice_id=practice,
                                     requests_per_second=None)
        caspio = CaspioClient(cas.base_url, profile.client_id, profile.secret)
        try:
            yield Env(world, practice, athena, caspio)
        finally:
            athena.close()
            caspio.close()


def live_ids(world: Path, n: int) -> list[str]:
    return [str(r[0]) for r in dv(world, "SELECT APPOINTMENTID FROM ATHENAONE.APPOINTMENT "
                                         "WHERE DELETEDDATETIME IS NULL ORDER BY APPOINTMENTID LIMIT ?", [n])]


def test_new_appointments_land_with_athena_values_and_a_second_run_writes_nothing(env: Env) -> None:
    ids = live_ids(env.world, 12)
    first = sync_appointments(ids, env.athena, env.caspio)
    assert (first.requested, first.fetched, first.inserted, first.updated, first.deleted) == (12, 12, 12, 0, 0)
    assert first.schema_created

    rows = env.rows()
    assert set(rows) == set(ids)
    expected = dv(env.world, """SELECT CAST(APPOINTMENTID AS VARCHAR), APPOINTMENTSTATUS, PROVIDERID, DEPARTMENTID,
            strftime(APPOINTMENTDATE, '%Y-%m-%dT00:00:00'), strftime(APPOINTMENTSTARTTIME, '%H:%M'),
            strftime(LASTUPDATED, '%Y-%m-%dT%H:%M:%S')
        FROM ATHENAONE.APPOINTMENT WHERE list_contains(?, APPOINTMENTID)""", [[int(i) for i in ids]])
    for aid, status, provider, dept, date, start, updated in expected:
        row = rows[aid]
        assert (row["status"], row["provider_id"], row["department_id"]) == (status, provider, dept)
        assert (row["appointment_date"], row["start_time"], row["updated_at"]) == (date, start, updated)
        assert row["context_id"] == int(env.practice)
        assert row["status_name"]

    env.writes()
    again = sync_appointments(ids, env.athena, env.caspio)
    assert (again.inserted, again.updated, again.deleted, again.unchanged) == (0, 0, 0, 12)
    assert env.writes() == 0
    assert {k: r["PK_ID"] for k, r in env.rows().items()} == {k: r["PK_ID"] for k, r in rows.items()}


def test_a_changed_appointment_is_updated_and_only_it_is_written(env: Env) -> None:
    ids = live_ids(env.world, 8)
    sync_appointments(ids, env.athena, env.caspio)
    target = ids[3]
    edit_dataview(env.world, """UPDATE ATHENAONE.APPOINTMENT SET APPOINTMENTSTATUS = 'x',
            APPOINTMENTCANCELLEDDATETIME = TIMESTAMP '2026-11-24 09:15:00',
            APPOINTMENTCANCELREASON = 'PATIENT CANCELLED', LASTUPDATED = TIMESTAMP '2026-11-24 09:15:00'
        WHERE APPOINTMENTID = ?""", [int(target)])
    env.writes()

    result = sync_appointments(ids, env.athena, env.caspio)

    assert (result.updated, result.inserted, result.deleted, result.unchanged) == (1, 0, 0, 7)
    assert env.writes() == 1
    row = env.rows()[target]
    assert (row["status"], row["status_name"]) == ("x", "Cancelled")
    assert row["cancelled_at"] == "2026-11-24T09:15:00"
    assert row["cancel_reason"] == "PATIENT CANCELLED"
    assert row["updated_at"] == "2026-11-24T09:15:00"


def test_a_new_appointment_booked_later_is_inserted(env: Env) -> None:
    ids = live_ids(env.world, 3)
    sync_appointments(ids, env.athena, env.caspio)
    new_id = int(dv(env.world, "SELECT max(APPOINTMENTID) + 1000 FROM ATHENAONE.APPOINTMENT")[0][0])
    edit_dataview(env.world, """INSERT INTO ATHENAONE.APPOINTMENT
        SELECT * REPLACE (? AS APPOINTMENTID, 'f' AS APPOINTMENTSTATUS,
                          DATE '2026-12-01' AS APPOINTMENTDATE, TIMESTAMP '2026-11-24 10:00:00' AS LASTUPDATED,
                          NULL AS APPOINTMENTCHECKINDATETIME, NULL AS APPOINTMENTCHECKOUTDATETIME,
                          NULL AS APPOINTMENTCANCELLEDDATETIME)
        FROM ATHENAONE.APPOINTMENT WHERE APPOINTMENTID = ?""", [new_id, int(ids[0])])

    result = sync_appointments([str(new_id), *ids], env.athena, env.caspio)

    assert (result.inserted, result.updated, result.unchanged) == (1, 0, 3)
    row = env.rows()[str(new_id)]
    assert (row["status"], row["status_name"], row["appointment_date"]) == ("f", "Future", "2026-12-01T00:00:00")
    assert row["checked_in_at"] is None


def test_a_deleted_appointment_is_removed_from_caspio(env: Env) -> None:
    ids = live_ids(env.world, 6)
    sync_appointments(ids, env.athena, env.caspio)
    gone = ids[2]
    edit_dataview(env.world, "UPDATE ATHENAONE.APPOINTMENT SET DELETEDDATETIME = TIMESTAMP '2026-11-24 08:00:00' "
                             "WHERE APPOINTMENTID = ?", [int(gone)])
    never_synced = str(int(dv(env.world, "SELECT max(APPOINTMENTID) FROM ATHENAONE.APPOINTMENT")[0][0]) + 77)

    result = sync_appointments([*ids, never_synced], env.athena, env.caspio)

    assert (result.not_found, result.deleted, result.unchanged) == (2, 1, 5)
    assert set(env.rows()) == set(ids) - {gone}
    again = sync_appointments([*ids, never_synced], env.athena, env.caspio)
    assert again.written == 0


def test_no_patient_identifier_unless_patient_level_publishing_is_enabled(env: Env) -> None:
    ids = live_ids(env.world, 4)
    sync_appointments(ids, env.athena, env.caspio)
    fields = {f.name for f in env.caspio.describe_table(appointments_table_name("ap_")) or []}
    assert "patient_id" not in fields
    assert all("patient_id" not in row for row in env.rows().values())

    sync_appointments(ids, env.athena, env.caspio, table_prefix="phi_", patient_level=True)
    patients = dict(dv(env.world, "SELECT CAST(APPOINTMENTID AS VARCHAR), CAST(PATIENTID AS VARCHAR) "
                                  "FROM ATHENAONE.APPOINTMENT WHERE list_contains(?, APPOINTMENTID)",
                       [[int(i) for i in ids]]))
    assert {k: r["patient_id"] for k, r in env.rows("phi_").items()} == patients


def test_a_wrong_practice_is_an_error_and_never_deletes_rows(env: Env) -> None:
    ids = live_ids(env.world, 3)
    sync_appointments(ids, env.athena, env.caspio)
    wrong = AthenaClient(env.athena.fhir_base_url, env.athena.auth, env.athena.policy, practice_id="999")

    with pytest.raises(AppointmentSyncError, match="nothing was deleted"):
        sync_appointments(ids, wrong, env.caspio)

    assert set(env.rows()) == set(ids)


def test_ids_that_are_not_appointment_ids_are_ignored(env: Env) -> None:
    ids = live_ids(env.world, 2)
    result = sync_appointments([*ids, "", "abc", None, ids[0]], env.athena, env.caspio)
    assert (result.requested, result.invalid_ids, result.inserted) == (2, 3, 2)
    assert sync_appointments([], env.athena, env.caspio).written == 0


def test_a_busy_day_of_appointment_ids_reads_caspio_within_the_uri_limit(env: Env) -> None:
    """A day can bring over a thousand appointment events: the read-back of stored hashes splits
    its IN-lists so every request stays under Caspio's 2047-character URI limit (a 414 otherwise)."""
    from athena_pipeline.caspio.specs import ensure_table
    from athena_pipeline.events.appointments import appointment_table_spec, existing_hashes

    spec = appointment_table_spec("ap_")
    ensure_table(env.caspio, spec)
    stored = live_ids(env.world, 3)
    sync_appointments(stored, env.athena, env.caspio)
    many = [str(9_000_000 + i) for i in range(1500)] + stored
    hashes = existing_hashes(env.caspio, appointments_table_name("ap_"), many)
    assert set(hashes) == set(stored)
    assert all(len(h or "") > 0 for h in hashes.values())
