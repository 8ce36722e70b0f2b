"""Near-real-time appointment sync: changed appointment ids -> athenaOne v1 reads -> a Caspio table.

What it is for: an ``Appointment.*`` event (schedule, cancel, check-in, ...) names only the
appointment id (id-only notifications, spec ``athenahealth-api.md`` §3.3). The Dagster sensor
hands the ids of a batch of events to :func:`sync_appointments`, which

1. **reads each appointment** with ``GET /v1/{practiceid}/appointments/{id}`` (the fetch endpoint
   §3.4 names for the Appointment topics), ``concurrency`` at a time through the shared
   :class:`~athena_pipeline.athena.client.AthenaClient` (token cache, rate limit, retries).
   A **404 means the appointment is gone** (athena answers 404 for a deleted appointment; a
   cancelled one is still there, with status ``x``), so it is deleted from Caspio. Before acting on
   a 404, one ``ping`` of the practice proves the 404 is about the appointment and not a wrong
   practice or gateway path (which would otherwise delete every synced row);
2. **maps** the v1 objects to the table's fields in DuckDB (dates parsed, ids typed, a status
   name next to athena's one-letter code) with a ``row_hash`` of the mapped values;
3. **compares with Caspio**: one read of ``appointment_id, row_hash`` for the ids concerned
   (an ``IN`` list per request, URI-sized), so a row whose hash is unchanged costs no write. The
   same ids synced twice write nothing the second time, whoever wrote the first time;
4. **upserts**: updates for keys Caspio has, inserts for the others (``appointment_id`` is a
   Unique field: an insert Caspio refuses as a duplicate, e.g. a concurrent sync got there first,
   becomes an update; an update that finds no row, deleted by hand, becomes an insert), deletes
   for the 404s.

Why compare with Caspio and not a state table in the warehouse: the warehouse is DuckDB, whose
single writer lock the nightly loads and dbt hold for minutes; a sync that must land within a
minute cannot wait for it. Reading back only the affected keys is one call per ~150 ids.

The table, ``{CASPIO_TABLE_PREFIX}appointments``, is created by
:func:`~athena_pipeline.caspio.specs.ensure_table`. It holds **no patient identifier** unless
``patient_level=True`` (``CASPIO_PUBLISH_PATIENT_LEVEL=true``), in line with the publisher's rule
for patient-level marts. Nothing here logs an id or a value: only counts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pyarrow.compute as pc

from athena_pipeline.athena.client import AthenaClient
from athena_pipeline.caspio.client import CaspioClient
from athena_pipeline.caspio.specs import FieldSpec, TableSpec, caspio_table_name, ensure_table
from athena_pipeline.caspio.where import MAX_URI, in_clauses
from athena_pipeline.http import ApiError

log = logging.getLogger("athena_pipeline.events.appointments")

#: Table name after the prefix: ``ap_appointments`` with the default prefix.
TABLE = "appointments"
KEY = "appointment_id"
HASH_FIELD = "row_hash"
#: Part of every row hash: bump it when the mapping changes, so every row is rewritten once.
MAPPING_VERSION = "1"
#: The athenaOne v1 scope; the only one this sync needs.
V1_SCOPE = "athena/service/Athenanet.MDP.*"
DEFAULT_CONCURRENCY = 4
#: Page size of the read-back of existing rows (ids per request are bounded by the URI anyway).
_READ_PAGE = 1000

#: athenaOne APPOINTMENTSTATUS codes (see the appointment_utilization mart's documentation).
STATUS_NAMES: dict[str, str] = {
    "f": "Future", "o": "Open", "2": "Checked in", "3": "Checked out", "4": "Charge entered",
    "x": "Cancelled",
}

_V1_DATE = "%m/%d/%Y"
_V1_DATETIME = "%m/%d/%Y %H:%M:%S"


# --- the table ----------------------------------------------------------------------------------
def appointments_table_name(prefix: str) -> str:
    """``{prefix}appointments``, made a valid Caspio name."""
    return caspio_table_name(prefix, TABLE)


def appointment_table_spec(prefix: str = "ap_", *, patient_level: bool = False) -> TableSpec:
    """The Caspio table of synced appointments; ``patient_id`` only when ``patient_level``."""
    fields = [
        FieldSpec(KEY, "STRING", unique=True, label="Appointment ID",
                  description="athenaOne appointment id (APPOINTMENTID); the table's unique key."),
        FieldSpec("context_id", "INTEGER", label="Practice", description="athenaOne practice (CONTEXTID)."),
        FieldSpec("appointment_date", "DATE/TIME", label="Date", description="Appointment date."),
        FieldSpec("start_time", "STRING", label="Start time", description="Start time, HH:MM (practice local)."),
        FieldSpec("duration_minutes", "INTEGER", label="Duration (min)"),
        FieldSpec("status", "STRING", label="Status code",
                  description="athenaOne APPOINTMENTSTATUS: f future, o open (no-show once past), "
                              "2 checked in, 3 checked out, 4 charge entered, x cancelled."),
        FieldSpec("status_name", "STRING", label="Status"),
        FieldSpec("appointment_type_id", "INTEGER", label="Type ID"),
        FieldSpec("appointment_type", "STRING", label="Type"),
        FieldSpec("provider_id", "INTEGER", label="Provider ID"),
        FieldSpec("department_id", "INTEGER", label="Department ID"),
        FieldSpec("scheduled_at", "DATE/TIME", label="Booked at"),
        FieldSpec("checked_in_at", "DATE/TIME", label="Checked in at"),
        FieldSpec("checked_out_at", "DATE/TIME", label="Checked out at"),
        FieldSpec("cancelled_at", "DATE/TIME", label="Cancelled at"),
        FieldSpec("cancel_reason", "STRING", label="Cancel reason"),
        FieldSpec("rescheduled_appointment_id", "STRING", label="Rescheduled to"),
        FieldSpec("updated_at", "DATE/TIME", label="Updated at",
                  description="athenaOne's last modification of the appointment (LASTMODIFIED)."),
    ]
    if patient_level:
        fields.append(FieldSpec("patient_id", "STRING", label="Patient ID",
                                description="athenaOne patient id (PHI: published because "
                                            "CASPIO_PUBLISH_PATIENT_LEVEL=true)."))
    fields.append(FieldSpec(HASH_FIELD, "STRING", label="Row hash",
                            description="md5 of the synced values; an unchanged hash is never rewritten."))
    return TableSpec(name=appointments_table_name(prefix), key=KEY, fields=tuple(fields),
                     description="athenaOne appointments kept in sync by Event Subscriptions "
                                 "(athena_events_sensor -> appointment_sync_job).",
                     meta={"contains_phi": patient_level})


# --- mapping (DuckDB) ----------------------------------------------------------------------------
def _select_sql(patient_level: bool) -> str:
    """v1 appointment JSON (column ``doc``) -> the table's fields, plus ``row_hash``."""

    def s(key: str) -> str:
        return f"json_extract_string(doc, '$.{key}')"

    def ts(key: str) -> str:
        return f"try_strptime({s(key)}, '{_V1_DATETIME}')"

    status_case = "CASE " + s("appointmentstatus") + " " + " ".join(
        f"WHEN '{code}' THEN '{name}'" for code, name in STATUS_NAMES.items()) + " END"
    cols = [
        (KEY, s("appointmentid")),
        ("context_id", "CAST($practice AS INTEGER)"),
        ("appointment_date", f"CAST(try_strptime({s('date')}, '{_V1_DATE}') AS DATE)"),
        ("start_time", s("starttime")),
        ("duration_minutes", f"TRY_CAST({s('duration')} AS INTEGER)"),
        ("status", s("appointmentstatus")),
        ("status_name", status_case),
        ("appointment_type_id", f"TRY_CAST({s('appointmenttypeid')} AS INTEGER)"),
        ("appointment_type", s("appointmenttype")),
        ("provider_id", f"TRY_CAST({s('providerid')} AS INTEGER)"),
        ("department_id", f"TRY_CAST({s('departmentid')} AS INTEGER)"),
        ("scheduled_at", ts("scheduleddatetime")),
        ("checked_in_at", ts("checkindatetime")),
        ("checked_out_at", ts("checkoutdatetime")),
        ("cancelled_at", ts("cancelleddatetime")),
        ("cancel_reason", s("cancelreasonname")),
        ("rescheduled_appointment_id", s("rescheduledappointmentid")),
        ("updated_at", ts("lastmodified")),
    ]
    if patient_level:
        cols.append(("patient_id", s("patientid")))
    inner = ",\n       ".join(f"{expr} AS {name}" for name, expr in cols)
    packed = ", ".join(f"{name} := {name}" for name, _ in cols)
    return (f"SELECT *, md5('{MAPPING_VERSION}|' || to_json(struct_pack({packed}))::VARCHAR) AS {HASH_FIELD}\n"
            f"FROM (SELECT {inner}\n      FROM docs) ORDER BY {KEY}")


def appointment_rows(docs: Sequence[str], practice_id: str | int, *,
                     patient_level: bool = False) -> pa.Table:
    """The Caspio rows (an Arrow table in field order, ``row_hash`` last) of v1 appointment JSON texts.

    Parsing runs in DuckDB over the JSON texts as one column, never field by field in Python.
    Rows without an ``appointmentid`` are dropped.
    """
    source = pa.table({"doc": pa.array(list(docs), type=pa.string())})
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET threads = 1")
        con.register("docs", source)
        table = con.sql(_select_sql(patient_level), params={"practice": str(practice_id)}).to_arrow_table()
    finally:
        con.close()
    return table.filter(pc.is_valid(table.column(KEY)))


# --- results --------------------------------------------------------------------------------------
@dataclass
class SyncResult:
    """What one sync did (counts only: no ids, no values)."""

    table: str
    requested: int = 0
    invalid_ids: int = 0
    fetched: int = 0
    not_found: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    athena_calls: int = 0
    caspio_calls: int = 0
    schema_created: bool = False
    fields_added: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def written(self) -> int:
        """Rows changed in Caspio (inserted + updated + deleted)."""
        return self.inserted + self.updated + self.deleted

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["written"] = self.written
        return out


class AppointmentSyncError(RuntimeError):
    """The sync could not be trusted to continue (the message holds no id and no value)."""


# --- athenahealth reads ----------------------------------------------------------------------------
def _clean_ids(ids: Iterable[object]) -> tuple[list[str], int]:
    """Distinct appointment ids as digit strings, in first-seen order, and how many were not ids."""
    out: dict[str, None] = {}
    bad = 0
    for raw in ids:
        text = str(raw).strip() if raw is not None else ""
        if text.isdigit():
            out[str(int(text))] = None
        else:
            bad += 1
    return list(out), bad


def _v1(client: AthenaClient, path: str, template: str) -> tuple[str, str]:
    """(url, path template) of ``/v1/{practiceid}/{path}`` on ``client``; the template names the
    call in logs and call records without the id."""
    if client.practice_id is None:
        raise ValueError("the appointment sync needs the athenahealth client's practice id")
    return f"{client.v1_base_url}/{client.practice_id}/{path}", f"/v1/{{practiceid}}/{template}"


def _accept_found_or_gone(response: httpx.Response) -> bool:
    return response.is_success or response.status_code == 404


def fetch_appointment(client: AthenaClient, appointment_id: str) -> str | None:
    """The v1 JSON text of one appointment, or None when athenahealth answers 404.

    athena answers a one-element array; an empty array is treated like a 404.
    """
    url, template = _v1(client, f"appointments/{appointment_id}", "appointments/{id}")
    response = client.request("GET", url, path_template=template, accept=_accept_found_or_gone,
                              headers={"Accept": "application/json"})
    if response.status_code == 404:
        return None
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(f"athena GET {template} -> {response.status_code}: the body is not JSON",
                       system="athena", method="GET", path_template=template,
                       status=response.status_code) from None
    if isinstance(body, list):
        body = body[0] if body else None
    if body is None:
        return None
    if not isinstance(body, dict):
        raise ApiError(f"athena GET {template}: not an appointment object", system="athena",
                       method="GET", path_template=template, status=response.status_code)
    return json.dumps(body, separators=(",", ":"))


def check_practice(client: AthenaClient) -> None:
    """``GET /v1/{practiceid}/ping`` must answer pong: a 404 elsewhere is then about the object.

    Raises :class:`AppointmentSyncError` otherwise (a wrong practice id or v1 base URL must never
    be read as "every appointment was deleted").
    """
    url, template = _v1(client, "ping", "ping")
    try:
        response = client.request("GET", url, path_template=template,
                                  headers={"Accept": "application/json"})
        pong = json.loads(response.content).get("pong") in ("true", True)
    except (ApiError, ValueError, AttributeError) as exc:
        raise AppointmentSyncError(
            "athenahealth answered 404 for appointments and the practice's v1 ping failed "
            f"({type(exc).__name__}): check ATHENA_PRACTICE_ID and the athenaOne API scope; "
            "nothing was deleted") from None
    if not pong:
        raise AppointmentSyncError("athenahealth's v1 ping did not answer pong; nothing was deleted")


def fetch_appointments(client: AthenaClient, ids: Sequence[str], *,
                       concurrency: int = DEFAULT_CONCURRENCY) -> tuple[list[str], list[str]]:
    """(JSON texts of the appointments found, ids athenahealth answered 404 for).

    ``concurrency`` reads run at once (the client's rate limit still applies across them). The
    first failure other than a 404 (retries exhausted, credentials) is raised.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if not ids:
        return [], []
    with ThreadPoolExecutor(max_workers=min(concurrency, len(ids)),
                            thread_name_prefix="appointment-fetch") as pool:
        docs = list(pool.map(lambda i: fetch_appointment(client, i), ids))
    found = [d for d in docs if d is not None]
    missing = [i for i, d in zip(ids, docs, strict=True) if d is None]
    return found, missing


# --- Caspio ---------------------------------------------------------------------------------------
def existing_hashes(caspio: CaspioClient, table: str, keys: Sequence[str]) -> dict[str, str | None]:
    """``appointment_id -> row_hash`` of the rows Caspio holds among ``keys`` (URI-sized IN lists)."""
    if not keys:
        return {}
    # Measure the prefix as httpx will send it (the comma in q.select goes out as %2C); the
    # q.where value is measured encoded by in_clauses. pageNumber gets 4 digits of headroom.
    url = httpx.URL(f"{caspio.v3}/tables/{table}/records", params={
        "q.select": f"{KEY},{HASH_FIELD}", "q.orderBy": "PK_ID", "q.pageSize": "1000", "q.pageNumber": "9999"})
    prefix = len(str(url)) + len("&q.where=")
    out: dict[str, str | None] = {}
    for clause in in_clauses(KEY, list(keys), MAX_URI, prefix_length=prefix):
        for page in caspio.iter_records(table, select=[KEY, HASH_FIELD], where=clause,
                                        page_size=_READ_PAGE):
            for row in page:
                out[str(row.get(KEY))] = row.get(HASH_FIELD)
    return out


def _upsert(caspio: CaspioClient, table: str, inserts: list[dict], updates: list[dict],
            result: SyncResult) -> None:
    """Updates (keys Caspio holds) then inserts; duplicates become updates and vice versa."""
    if updates:
        gone: list = []
        result.updated += caspio.update_many(table, KEY, updates, missing=gone)
        if gone:  # deleted in Caspio by hand since the read: insert them instead
            wanted = {str(k) for k in gone}
            inserts = inserts + [r for r in updates if r[KEY] in wanted]
    if inserts:
        outcome = caspio.insert_many(table, inserts)
        result.inserted += outcome.inserted
        dupes = set(outcome.duplicates)
        if dupes:
            result.updated += caspio.update_many(table, KEY, [inserts[i] for i in sorted(dupes)])
        result.failed += len(outcome.failed_indexes() - dupes)


def sync_appointments(ids: Iterable[object], athena_client: AthenaClient, caspio_client: CaspioClient, *,
                      table_prefix: str = "ap_", patient_level: bool = False,
                      concurrency: int = DEFAULT_CONCURRENCY) -> SyncResult:
    """Bring Caspio's appointments table in line with athenahealth for ``ids``; returns counts.

    Idempotent: rows whose mapped values are unchanged are not written, so the same ids twice
    write nothing the second time. Non-numeric ids are ignored (counted in ``invalid_ids``).
    Raises :class:`AppointmentSyncError` when a 404 cannot be proven to mean "deleted", and the
    clients' errors (:class:`~athena_pipeline.http.ApiError` subclasses) on failed calls; what
    Caspio confirmed before a failure stays written, and a re-run finishes the rest.
    """
    started = time.perf_counter()
    calls_before = caspio_client.calls_made
    clean, bad = _clean_ids(ids)
    spec = appointment_table_spec(table_prefix, patient_level=patient_level)
    result = SyncResult(table=spec.name, requested=len(clean), invalid_ids=bad)
    try:
        if not clean:
            return result
        docs, missing = fetch_appointments(athena_client, clean, concurrency=concurrency)
        result.athena_calls = len(clean)
        if missing:
            check_practice(athena_client)
            result.athena_calls += 1
        result.fetched, result.not_found = len(docs), len(missing)

        rows = appointment_rows(docs, athena_client.practice_id or "", patient_level=patient_level)
        change = ensure_table(caspio_client, spec)
        result.schema_created, result.fields_added = change.created, list(change.added if not change.created else [])
        have = existing_hashes(caspio_client, spec.name, clean) if not change.created else {}

        records = rows.to_pylist()
        inserts = [r for r in records if r[KEY] not in have]
        updates = [r for r in records if r[KEY] in have and have[r[KEY]] != r[HASH_FIELD]]
        result.unchanged = len(records) - len(inserts) - len(updates)
        gone = [k for k in missing if k in have]
        if gone:
            result.deleted = caspio_client.delete_keys(spec.name, KEY, gone)
        _upsert(caspio_client, spec.name, inserts, updates, result)
        return result
    finally:
        result.caspio_calls = caspio_client.calls_made - calls_before
        result.duration_s = round(time.perf_counter() - started, 3)
        log.info("appointment sync %s: %d requested, %d fetched, %d not found; %d inserted, "
                 "%d updated, %d deleted, %d unchanged, %d failed; %d athena + %d caspio calls in %.2fs",
                 result.table, result.requested, result.fetched, result.not_found, result.inserted,
                 result.updated, result.deleted, result.unchanged, result.failed,
                 result.athena_calls, result.caspio_calls, result.duration_s)


def athena_client_for_sync(settings: Any, **overrides: Any) -> AthenaClient:
    """An AthenaClient for the sync: the settings' credentials with only the v1 scope."""
    return AthenaClient.from_settings(settings, **{"scopes": V1_SCOPE, **overrides})


def sync_from_settings(ids: Iterable[object], settings: Any, *,
                       caspio_overrides: Mapping[str, Any] | None = None) -> SyncResult:
    """:func:`sync_appointments` with clients built from :class:`~athena_pipeline.settings.Settings`."""
    with athena_client_for_sync(settings) as athena, \
            CaspioClient.from_settings(settings, **dict(caspio_overrides or {})) as caspio:
        return sync_appointments(ids, athena, caspio, table_prefix=settings.caspio_table_prefix,
                                 patient_level=settings.caspio_publish_patient_level)
