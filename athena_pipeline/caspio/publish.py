"""Publish the marts into Caspio: plan (keyed diff), budget, then write only what changed.

The shape of one publish, and why (design.md: the network part must not hold the warehouse):

1. **One short warehouse step** (:func:`plan_publish`): fold journals a killed run left behind into
   ``publish.caspio_state``, then, per mart, stage the mart in payload shape with row hashes
   (:mod:`athena_pipeline.caspio.diff`) and diff it against the state. The plan (counts, calls
   needed) and the payloads go into Arrow tables, and the connection is closed.
2. **Budget**: when the calls planned exceed ``CASPIO_CALL_BUDGET``, stop with the numbers (unless
   ``force``). Patient-level marts (dbt ``meta.contains_phi: true``) are skipped unless
   ``CASPIO_PUBLISH_PATIENT_LEVEL=true``.
3. **Caspio, warehouse closed**: schema first (only when the spec changed or on the first publish),
   then deletes, updates and inserts, in chunks. Every write Caspio confirms goes to the table's
   journal (:class:`athena_pipeline.caspio.state.Journal`) at once. An insert Caspio refuses because
   the Unique row key is already there (a killed run's insert landed, its confirmation did not) is
   looked up and turned into an update: "already there", never a duplicate. An update that finds
   no row (deleted by hand) becomes an insert.
4. **One short warehouse step**: fold the journals into the state, record the run and the API calls
   (``audit.api_calls``, system ``caspio``).

**Reconciliation** (``reconcile=True``, every ``CASPIO_RECONCILE_EVERY`` publishes of a table, and on
the first publish of a table from this warehouse) reads the table back in step 3 and diffs the mart
against what Caspio really holds (:mod:`athena_pipeline.caspio.reconcile`), repairing rows edited,
deleted or added by hand; the result reports what it fixed.

An unchanged mart costs nothing: no schema call, no read, no write, no token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from athena_pipeline.caspio import state as state_mod
from athena_pipeline.caspio.diff import (
    PublishedField,
    checksum,
    count,
    diff_sql,
    fetch_arrow,
    quote_ident,
    stage_mart,
)
from athena_pipeline.caspio.errors import CaspioBudgetExceeded, CaspioError
from athena_pipeline.caspio.reconcile import ReconcilePlan, caspio_content, plan_reconcile, rows_to_arrow
from athena_pipeline.caspio.specs import (
    DEFAULT_MARTS_DIR,
    DEFAULT_SCHEMA,
    MartDoc,
    TableSpec,
    caspio_table_name,
    ensure_table,
    load_mart_docs,
    row_key_sql,
    table_spec_for_mart,
)
from athena_pipeline.caspio.where import MAX_URI, in_clauses
from athena_pipeline.settings import Settings
from athena_pipeline.warehouse.audit import ensure_tables, record_api_calls
from athena_pipeline.warehouse.connection import connect

log = logging.getLogger("athena_pipeline.caspio.publish")

#: Rows handed to the client per batch of write calls; each batch is journaled when it returns. A
#: batch is this many rounds of ``concurrency`` parallel calls: enough that the wait for a batch's
#: slowest call costs little throughput, few enough that a kill loses little confirmation.
CHUNK_ROUNDS = 25
CHUNK_MIN_ROWS = 50
#: Caspio answers at most this many rows per read call.
PAGE_SIZE = 1000
#: v4 bulk insert takes at most this many rows per call.
BULK_ROWS = 1000
#: How long a warehouse step waits for another process's lock (a dbt run, a loader) before failing.
WAREHOUSE_WAIT_SECONDS = 120.0
#: Room kept in a read URI for ``q.select``/``q.pageSize``/``q.pageNumber``/``q.orderBy`` besides ``q.where``.
_READ_QUERY_ROOM = 160

ConFactory = Callable[..., AbstractContextManager[duckdb.DuckDBPyConnection]]


class PublishError(RuntimeError):
    """Publishing could not run or finish; ``transient`` says whether a later run may succeed."""

    def __init__(self, message: str, *, transient: bool = False, results: list | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.results = results or []


class PublishBudgetExceeded(PublishError):
    """The plan needs more Caspio calls than ``CASPIO_CALL_BUDGET`` allows; nothing was written."""

    def __init__(self, planned: int, budget: int, plans: Sequence[TablePlan], *, spent: int = 0) -> None:
        parts = [f"{p.table} {p.calls.total:,} ({p.calls.describe()})" for p in plans
                 if p.skipped is None and p.calls.total]
        already = f"{spent:,} call(s) already spent this run plus " if spent else ""
        super().__init__(
            f"publishing needs {already}{planned:,} Caspio API call(s), over the budget of {budget:,} "
            f"(CASPIO_CALL_BUDGET): {'; '.join(parts) or 'no table'}. Nothing more was written. Publish "
            "fewer tables (--tables), raise CASPIO_CALL_BUDGET, or pass --force to spend them anyway.")
        self.planned = planned
        self.budget = budget


# --- which marts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MartInfo:
    """A mart the project builds (a model under ``dbt_project/models/marts/``) and its publishing facts."""

    name: str
    contains_phi: bool
    grain: tuple[str, ...]
    doc: MartDoc
    #: ``meta.caspio_publish_last``: published after every other mart (``mart_status``, whose
    #: "data as of" must not move ahead of the tables it describes).
    publish_last: bool = False


def mart_catalog(marts_dir: Path | str | None = None) -> dict[str, MartInfo]:
    """Every model under the dbt marts folder (``*.sql``), with its YAML docs, sorted by name.

    ``meta.contains_phi: true`` marks a patient-level mart (published only when
    ``CASPIO_PUBLISH_PATIENT_LEVEL`` is true); ``meta.caspio_publish_last: true`` sorts a mart after
    all the others.
    """
    folder = Path(marts_dir) if marts_dir is not None else DEFAULT_MARTS_DIR
    docs: dict[str, MartDoc] = {}
    for path in sorted([*folder.rglob("*.yml"), *folder.rglob("*.yaml")]):
        try:  # file by file: one broken YAML must not stop every other mart from publishing
            docs.update(load_mart_docs(path))
        except Exception as exc:  # noqa: BLE001 - yaml's errors share no useful base class
            log.warning("dbt YAML %s cannot be read (%s); its marts have no grain and are skipped",
                        path.name, type(exc).__name__)
    names = sorted({p.stem for p in folder.rglob("*.sql")})
    infos = []
    for name in names:
        doc = docs.get(name) or MartDoc(name)
        meta = doc.meta or {}
        infos.append(MartInfo(name, bool(meta.get("contains_phi")), tuple(doc.grain), doc,
                              publish_last=bool(meta.get("caspio_publish_last"))))
    return {i.name: i for i in sorted(infos, key=lambda i: (i.publish_last, i.name))}


def select_marts(catalog: Mapping[str, MartInfo], wanted: Sequence[str] | None) -> list[MartInfo]:
    """The marts to publish: ``wanted`` (mart names, any case) or all of them.

    An unknown name is a ValueError listing the known ones.
    """
    if not wanted:
        return list(catalog.values())
    out = []
    for name in dict.fromkeys(wanted):
        info = catalog.get(name) or next((m for m in catalog.values() if m.name.lower() == name.lower()), None)
        if info is None:
            raise ValueError(f"no mart called {name!r}; the marts are: {', '.join(catalog) or 'none'}")
        out.append(info)
    return out


# --- the plan ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallEstimate:
    """Caspio calls a table's publish needs, by kind (token excluded: one per run, see :func:`total_calls`)."""

    schema: int = 0
    reads: int = 0
    inserts: int = 0
    updates: int = 0
    deletes: int = 0

    @property
    def writes(self) -> int:
        return self.inserts + self.updates + self.deletes

    @property
    def total(self) -> int:
        return self.schema + self.reads + self.writes

    def describe(self) -> str:
        parts = [f"{n:,} {name}" for name, n in (("insert", self.inserts), ("update", self.updates),
                                                 ("delete", self.deletes), ("read", self.reads),
                                                 ("schema", self.schema)) if n]
        return ", ".join(parts) or "none"


@dataclass
class TablePlan:
    """What publishing one mart will do, computed in the warehouse and held in Arrow.

    ``inserts``/``updates`` are payload rows (``row_key``, ``row_hash``, then the Caspio fields);
    ``deletes`` row keys. ``full`` (the whole staged mart) and ``state`` (the stored state) are
    loaded when the publish reads Caspio back or checks the schema. ``skipped`` says why a mart is
    not published (patient-level, not built, no grain), in which case nothing else is set.
    """

    mart: str
    table: str
    skipped: str | None = None
    spec: TableSpec | None = None
    fields: tuple[PublishedField, ...] = ()
    rows: int = 0
    inserts: pa.Table | None = None
    updates: pa.Table | None = None
    deletes: list[str] = field(default_factory=list)
    unchanged: int = 0
    state_rows: int = 0
    reconcile: bool = False
    reconcile_reason: str | None = None
    check_schema: bool = False
    spec_hash: str | None = None
    calls: CallEstimate = CallEstimate()
    checksum: str = ""
    full: pa.Table | None = None
    state: pa.Table | None = None
    api_version: str = "v3"
    concurrency: int = 4

    @property
    def n_inserts(self) -> int:
        return self.inserts.num_rows if self.inserts is not None else 0

    @property
    def n_updates(self) -> int:
        return self.updates.num_rows if self.updates is not None else 0

    @property
    def rounds(self) -> int:
        """Calls one after another at the configured concurrency (bulk v4 inserts are one each)."""
        return math.ceil(self.calls.total / max(self.concurrency, 1))


def spec_hash(spec: TableSpec) -> str:
    """What makes two specs need the same Caspio schema: key, grain, field names, types, Unique."""
    body = {"key": spec.key, "grain": list(spec.grain),
            "fields": [[f.name, f.type, bool(f.unique)] for f in spec.fields]}
    return hashlib.md5(json.dumps(body, sort_keys=True).encode()).hexdigest()


def published_fields(spec: TableSpec) -> tuple[PublishedField, ...]:
    """The spec's fields filled from mart columns (everything but the row key), in spec order."""
    return tuple(PublishedField(f.name, f.type, quote_ident(f.source)) for f in spec.fields
                 if f.source is not None and f.name.lower() != spec.key.lower())


def estimate_calls(*, inserts: int, updates: int, deletes: Sequence[str], key_field: str, table: str,
                   base_url: str, api_version: str, schema: int = 0, reads: int = 0) -> CallEstimate:
    """Calls for a set of writes: v3 one POST per insert (v4 one per 1,000), one PUT per update, and
    as many DELETEs as IN-lists it takes to stay under Caspio's 2047-character URI."""
    delete_calls = 0
    if deletes:
        delete_calls = len(in_clauses(key_field, list(deletes), MAX_URI,
                                      prefix_length=len(_records_url(base_url, api_version, table)) + 10))
    insert_calls = inserts if api_version == "v3" else math.ceil(inserts / BULK_ROWS)
    return CallEstimate(schema=schema, reads=reads, inserts=insert_calls, updates=updates, deletes=delete_calls)


def _records_url(base_url: str, api_version: str, table: str) -> str:
    return f"{base_url.rstrip('/')}/integrations/rest/{api_version}/tables/{table}/records?q.where="


def _reads_for(rows: int) -> int:
    """Read calls to page through ``rows`` rows (a short last page ends it, so a full one needs one more)."""
    return rows // PAGE_SIZE + 1


def plan_publish(con: duckdb.DuckDBPyConnection, marts: Sequence[str] | None, settings: Settings, *,
                 reconcile: bool = False, journal_dir: Path | None = None, read_only: bool = False,
                 marts_dir: Path | str | None = None, schema: str = DEFAULT_SCHEMA) -> list[TablePlan]:
    """The plan of every selected mart (all of them when ``marts`` is empty), from the warehouse.

    ``read_only`` (a dry run) writes nothing: a journal left by a killed run is laid over the state
    in a temp table instead of being folded in. Otherwise the journals are folded in first.
    """
    catalog = mart_catalog(marts_dir)
    selected = select_marts(catalog, marts)
    journal_dir = Path(journal_dir) if journal_dir is not None else state_mod.journal_dir_for(settings.warehouse_path)
    if not read_only:
        state_mod.ensure_state_tables(con)
        tables = [caspio_table_name(settings.caspio_table_prefix, m.name) for m in selected]
        state_mod.apply_pending_journals(con, journal_dir, tables)
    docs = {m.name: m.doc for m in catalog.values()}
    return [_plan_one(con, info, settings, docs, reconcile=reconcile, journal_dir=journal_dir,
                      read_only=read_only, schema=schema) for info in selected]


def _mart_exists(con: duckdb.DuckDBPyConnection, schema: str, mart: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
                            "AND table_name = ?", [schema, mart]).fetchall()[0][0])


def _plan_one(con: duckdb.DuckDBPyConnection, info: MartInfo, settings: Settings, docs: Mapping[str, MartDoc],
              *, reconcile: bool, journal_dir: Path, read_only: bool, schema: str) -> TablePlan:
    table = caspio_table_name(settings.caspio_table_prefix, info.name)
    base = {"mart": info.name, "table": table, "api_version": settings.caspio_api_version,
            "concurrency": settings.caspio_concurrency}
    if info.contains_phi and not settings.caspio_publish_patient_level:
        return TablePlan(**base, skipped="patient-level (meta.contains_phi): published only when "
                                         "CASPIO_PUBLISH_PATIENT_LEVEL=true")
    if not _mart_exists(con, schema, info.name):
        return TablePlan(**base, skipped=f"not built: {schema}.{info.name} is not in the warehouse (run dbt first)")
    try:
        spec = table_spec_for_mart(con, info.name, docs, settings.caspio_table_prefix, schema=schema)
    except ValueError as exc:
        return TablePlan(**base, skipped=str(exc))
    fields = published_fields(spec)
    staged = "_caspio_src"
    rows = stage_mart(con, f"{quote_ident(schema)}.{quote_ident(info.name)}", row_key_sql(spec.grain), fields,
                      staged, table=table)
    # the state of this table, as a temp table (a dry run lays an unapplied journal over it)
    target = "_caspio_target"
    if read_only:
        state_mod.journal_overlay(con, table, state_mod.journal_path(journal_dir, table), target)
    else:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT row_key, row_hash "
                    f"FROM {state_mod.STATE_TABLE} WHERE table_name = ?", [table])
    table_info = state_mod.table_info(con, table)
    s_hash = spec_hash(spec)
    check_schema = table_info is None or table_info.get("spec_hash") != s_hash
    reason = None
    if reconcile:
        reason = "asked"
    elif table_info is None:
        reason = "first publish of this table from this warehouse"
    elif settings.caspio_reconcile_every and \
            (table_info.get("publishes_since_reconcile") or 0) + 1 >= settings.caspio_reconcile_every:
        reason = f"every {settings.caspio_reconcile_every} publishes (CASPIO_RECONCILE_EVERY)"

    sets = diff_sql(staged, target)
    state_rows = count(con, f"SELECT * FROM {target}")
    renamed = f"SELECT * RENAME (row_key AS {quote_ident(spec.key)}) FROM "
    inserts = fetch_arrow(con, renamed + f"({sets['inserts']}) ORDER BY 1")
    updates = fetch_arrow(con, renamed + f"({sets['updates']}) ORDER BY 1")
    deletes = [r[0] for r in con.execute(sets["deletes"] + " ORDER BY 1").fetchall()]
    unchanged = count(con, sets["unchanged"])
    _, digest = checksum(con, staged)
    full = state = None
    if reason or check_schema:
        full = fetch_arrow(con, f"SELECT * RENAME (row_key AS {quote_ident(spec.key)}) FROM {staged} ORDER BY 1")
        state = fetch_arrow(con, f"SELECT row_key, row_hash FROM {target}")
    for temp in (staged, target):
        con.execute(f"DROP TABLE IF EXISTS {temp}")

    # describe, then create (first publish) or, typically, one added field (changed spec)
    schema_calls = 2 if check_schema else 0
    calls = estimate_calls(inserts=inserts.num_rows, updates=updates.num_rows, deletes=deletes, key_field=spec.key,
                           table=table, base_url=settings.caspio_base_url, api_version=settings.caspio_api_version,
                           schema=schema_calls, reads=_reads_for(state_rows) if reason else 0)
    return TablePlan(**base, spec=spec, fields=fields, rows=rows, inserts=inserts, updates=updates, deletes=deletes,
                     unchanged=unchanged, state_rows=state_rows, reconcile=reason is not None,
                     reconcile_reason=reason, check_schema=check_schema, spec_hash=s_hash, calls=calls,
                     checksum=digest, full=full, state=state)


def total_calls(plans: Sequence[TablePlan]) -> int:
    """Calls the plans need, plus the one token call a run with any call makes."""
    n = sum(p.calls.total for p in plans if p.skipped is None)
    return n + 1 if n else 0


# --- results -------------------------------------------------------------------------------------------
@dataclass
class TableResult:
    """What publishing one mart did (or, for a dry run, would do)."""

    mart: str
    table: str
    status: str                  # published | unchanged | dry_run | skipped | failed
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    rows: int = 0
    planned_calls: int = 0
    calls: int = 0
    reconciled: bool = False
    reconcile_reason: str | None = None
    drift: dict[str, int] = field(default_factory=dict)
    drift_fixed: int = 0
    caspio_rows: int | None = None
    schema_created: bool = False
    fields_added: tuple[str, ...] = ()
    unresolved: int = 0
    duration_s: float = 0.0
    message: str | None = None
    checksum: str = ""
    plan: TablePlan | None = field(default=None, repr=False)

    @property
    def writes(self) -> int:
        return self.inserted + self.updated + self.deleted

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (counts only: no keys, no values, no PHI)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if k != "plan"}


def _planned_result(plan: TablePlan, status: str) -> TableResult:
    return TableResult(mart=plan.mart, table=plan.table, status=status, inserted=plan.n_inserts,
                       updated=plan.n_updates, deleted=len(plan.deletes), unchanged=plan.unchanged, rows=plan.rows,
                       planned_calls=plan.calls.total, reconciled=plan.reconcile,
                       reconcile_reason=plan.reconcile_reason, message=plan.skipped, checksum=plan.checksum,
                       plan=plan)


# --- the network part ----------------------------------------------------------------------------------
def _records(rows: pa.Table, key_field: str, fields: Sequence[PublishedField]) -> list[dict[str, Any]]:
    """Payload rows as the dicts the client posts: the key and every field (NULLs included, so an
    update clears a value that became empty)."""
    return rows.select([key_field] + [f.name for f in fields]).to_pylist()


def _keys(rows: pa.Table, key_field: str) -> list[str]:
    return rows.column(key_field).to_pylist()


def _hashes(rows: pa.Table) -> list[str]:
    return rows.column("row_hash").to_pylist()


def _filter_keys(rows: pa.Table, key_field: str, keys: Sequence[str], keep: bool = True) -> pa.Table:
    mask = pc.is_in(rows.column(key_field), value_set=pa.array(list(keys), type=pa.string()))
    return rows.filter(mask if keep else pc.invert(mask))


class _Writer:
    """Runs one table's writes through the client, journaling each batch Caspio confirms."""

    def __init__(self, client: Any, plan: TablePlan, journal: state_mod.Journal, *, chunk_rows: int,
                 base_url: str) -> None:
        self.client = client
        self.plan = plan
        self.spec = plan.spec
        self.key = plan.spec.key
        self.table = plan.table
        self.journal = journal
        self.chunk = chunk_rows
        self.base_url = base_url
        self.inserted = self.updated = self.deleted = 0
        self.unresolved: list[str] = []

    # -- lookups ------------------------------------------------------------------------------
    def existing_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` Caspio holds (read calls, IN-lists sized to the URI limit)."""
        found: set[str] = set()
        prefix = len(_records_url(self.base_url, self.plan.api_version, self.table)) + _READ_QUERY_ROOM
        for clause in in_clauses(self.key, list(keys), MAX_URI, prefix_length=prefix):
            for page in self.client.iter_records(self.table, select=[self.key], where=clause, page_size=PAGE_SIZE):
                found.update(_case_get(row, self.key) for row in page)
        return found

    # -- writes -------------------------------------------------------------------------------
    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), max(self.chunk * 5, 1)):
            part = list(keys[start:start + self.chunk * 5])
            self.client.delete_keys(self.table, self.key, part)
            self.journal.deleted(part)
            self.deleted += len(part)

    def delete_pk_ids(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), max(self.chunk * 5, 1)):
            self.client.delete_keys(self.table, "PK_ID", list(ids[start:start + self.chunk * 5]))

    def update(self, rows: pa.Table, *, fallback: bool = True) -> None:
        """Keyed PUTs; rows Caspio does not hold (deleted by hand) are inserted instead."""
        for start in range(0, rows.num_rows, self.chunk):
            part = rows.slice(start, self.chunk)
            missing: list[str] = []
            try:
                self.client.update_many(self.table, self.key, _records(part, self.key, self.plan.fields),
                                        missing=missing)
            except CaspioError as exc:
                partial = getattr(exc, "partial", None)
                if partial is not None:  # rows whose PUT returned are known; the rest stay unconfirmed
                    done = [i for i in range(part.num_rows) if i not in {f[0] for f in partial.failed}]
                    self._confirm_updates(part.take(pa.array(done, type=pa.int64())), missing)
                raise
            gone = self._confirm_updates(part, missing)
            if gone.num_rows and fallback:
                log.info("%s: %d row(s) to update were not in Caspio; inserting them", self.table, gone.num_rows)
                self.insert(gone, fallback=False)
            elif gone.num_rows:
                self.unresolved.extend(_keys(gone, self.key))

    def _confirm_updates(self, part: pa.Table, missing: Sequence[str]) -> pa.Table:
        """Journal the rows a PUT matched; return those it did not (no such row in Caspio)."""
        there = _filter_keys(part, self.key, missing, keep=False) if missing else part
        self.journal.upserted(_keys(there, self.key), _hashes(there))
        self.updated += there.num_rows
        return _filter_keys(part, self.key, missing) if missing else part.slice(0, 0)

    def insert(self, rows: pa.Table, *, fallback: bool = True) -> None:
        """Inserts (concurrent POSTs on v3, bulk on v4); a row refused because its key is already
        there (a killed run's insert landed unconfirmed) is updated instead."""
        duplicates: list[int] = []
        refused: list[int] = []
        codes: dict[str, int] = {}
        for start in range(0, rows.num_rows, self.chunk):
            part = rows.slice(start, self.chunk)
            try:
                result = self.client.insert_many(self.table, _records(part, self.key, self.plan.fields))
            except CaspioError as exc:
                partial = getattr(exc, "partial", None)
                if partial is not None:  # every row not listed as failed is in Caspio
                    self._confirm_inserts(part, partial, start, duplicates, refused, codes)
                raise
            self._confirm_inserts(part, result, start, duplicates, refused, codes)
        if duplicates:
            # the Unique row key was already there: "already there", so make sure it holds these values
            log.info("%s: %d insert(s) found their row key already in Caspio; updating those rows instead",
                     self.table, len(duplicates))
            self.update(rows.take(pa.array(duplicates, type=pa.int64())), fallback=False)
        if not refused:
            return
        failed_rows = rows.take(pa.array(refused, type=pa.int64()))
        present = self.existing_keys(_keys(failed_rows, self.key)) if fallback else set()
        there = _filter_keys(failed_rows, self.key, list(present))
        if there.num_rows:  # refused for a reason we could not read, yet the key is there
            self.update(there, fallback=False)
        missing = _filter_keys(failed_rows, self.key, list(present), keep=False)
        if missing.num_rows:
            self.unresolved.extend(_keys(missing, self.key))
            log.warning("%s: %d row(s) could not be inserted (Caspio codes: %s)", self.table, missing.num_rows,
                        ", ".join(f"{c} x{n}" for c, n in sorted(codes.items())) or "unknown")

    def _confirm_inserts(self, part: pa.Table, result: Any, offset: int, duplicates: list[int],
                         refused: list[int], codes: dict[str, int]) -> None:
        failed = {f[0]: f[1] for f in result.failed}
        dup = set(getattr(result, "duplicates", []) or [])
        ok = [i for i in range(part.num_rows) if i not in failed]
        landed = part.take(pa.array(ok, type=pa.int64()))
        self.journal.upserted(_keys(landed, self.key), _hashes(landed))
        self.inserted += landed.num_rows
        for i, code in sorted(failed.items()):
            if code == "NotAttempted":
                continue  # never sent (the batch stopped): simply not published yet
            if i in dup:
                duplicates.append(offset + i)
            else:
                refused.append(offset + i)
                codes[str(code)] = codes.get(str(code), 0) + 1


def _case_get(row: Mapping[str, Any], name: str) -> Any:
    if name in row:
        return row[name]
    low = name.lower()
    return next((v for k, v in row.items() if k.lower() == low), None)


def _read_back(client: Any, plan: TablePlan) -> pa.Table:
    """Every row of the Caspio table (PK_ID, key, fields), payload-shaped."""
    return rows_to_arrow(client.iter_records(plan.table, page_size=PAGE_SIZE), plan.fields, plan.spec.key)


def _run_table(client: Any, plan: TablePlan, journal: state_mod.Journal, *, force: bool, budget: int,
               spent_before: int, chunk_rows: int, base_url: str) -> TableResult:
    """Step 3 for one table: schema, optional read-back, then deletes, updates, inserts."""
    t0 = time.monotonic()
    calls0 = client.calls_made
    result = _planned_result(plan, "published")
    inserts, updates, deletes = plan.inserts, plan.updates, list(plan.deletes)
    stray: list[int] = []
    created = False
    if plan.check_schema or plan.reconcile:
        change = ensure_table(client, plan.spec)
        created = change.created
        result.schema_created = change.created
        result.fields_added = tuple(change.added) if not change.created else ()
    if (plan.reconcile and not created) or (created and plan.state_rows):
        # the truth is Caspio's: a table just re-created is empty (the state was wrong), else read it back
        caspio = rows_to_arrow([], plan.fields, plan.spec.key) if created else _read_back(client, plan)
        rp: ReconcilePlan = plan_reconcile(plan.full, caspio, plan.state, plan.fields, plan.spec.key)
        inserts, updates, deletes, stray = rp.inserts, rp.updates, rp.deletes, rp.stray_pk_ids
        journal.upserted(rp.verified.column("row_key").to_pylist(), rp.verified.column("row_hash").to_pylist())
        journal.deleted(rp.forget)
        result.reconciled = plan.reconcile and not created  # a table just created had nothing to read
        if not created:
            result.drift = rp.drift
            result.caspio_rows = rp.caspio_rows
        result.inserted, result.updated, result.deleted = inserts.num_rows, updates.num_rows, len(deletes)
        result.unchanged = plan.rows - inserts.num_rows - updates.num_rows
        needed = estimate_calls(inserts=inserts.num_rows, updates=updates.num_rows, deletes=deletes,
                                key_field=plan.spec.key, table=plan.table, base_url=base_url,
                                api_version=plan.api_version).total + (1 if stray else 0)
        spent = spent_before + (client.calls_made - calls0)
        if not force and spent + needed > budget:
            raise PublishBudgetExceeded(needed, budget, [plan], spent=spent)
    writer = _Writer(client, plan, journal, chunk_rows=chunk_rows, base_url=base_url)
    if stray:
        writer.delete_pk_ids(stray)
    if deletes:
        writer.delete(deletes)
    if updates is not None and updates.num_rows:
        writer.update(updates)
    if inserts is not None and inserts.num_rows:
        writer.insert(inserts)
    result.inserted, result.updated, result.deleted = writer.inserted, writer.updated, writer.deleted + len(stray)
    if plan.reconcile:
        result.drift_fixed = sum(result.drift.values())
    result.unresolved = len(writer.unresolved)
    result.calls = client.calls_made - calls0
    result.duration_s = time.monotonic() - t0
    if result.unresolved:
        result.status = "failed"
        result.message = (f"{result.unresolved} row(s) were refused by Caspio and are not published; "
                          "see the log for Caspio's error codes")
    elif not result.writes and not result.schema_created and not result.fields_added:
        result.status = "unchanged"
    return result


def chunk_rows_for(api_version: str, concurrency: int) -> int:
    """Rows per journaled batch: :data:`CHUNK_ROUNDS` rounds of parallel calls (v4: whole bulk calls)."""
    if api_version == "v4":
        return BULK_ROWS * max(concurrency, 1)
    return max(CHUNK_MIN_ROWS, CHUNK_ROUNDS * max(concurrency, 1))


def client_for(settings: Settings, *, force: bool = False, **overrides: Any) -> Any:
    """A :class:`CaspioClient` for ``settings`` whose hard stop is the call budget (none when ``force``)."""
    from athena_pipeline.caspio.client import CaspioClient

    overrides.setdefault("budget", None if force else settings.caspio_call_budget)
    return CaspioClient.from_settings(settings, **overrides)


def warehouse_factory(settings: Settings, wait_seconds: float = WAREHOUSE_WAIT_SECONDS) -> ConFactory:
    """``con_factory`` for :func:`publish`: short connections to ``WAREHOUSE_PATH``, waiting for the lock."""
    def factory(read_only: bool = False) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        return connect(settings.warehouse_path, read_only=read_only, wait_seconds=wait_seconds,
                       memory_limit=settings.warehouse_memory_limit)
    return factory


def publish(con_factory: ConFactory, client: Any, marts: Sequence[str] | None = None, *,
            settings: Settings | None = None, dry_run: bool = False, reconcile: bool = False, force: bool = False,
            journal_dir: Path | None = None, marts_dir: Path | str | None = None, chunk_rows: int | None = None,
            run_id: str | None = None, on_progress: Callable[[str], None] | None = None) -> list[TableResult]:
    """Publish ``marts`` (all when empty) into Caspio; see the module docstring for the steps.

    ``con_factory(read_only=...)`` opens the warehouse (a context manager); it is called twice, for
    short steps, never while Caspio is being called. ``client`` is a :class:`CaspioClient`.
    Raises :class:`PublishBudgetExceeded` before any write when the plan is over budget (unless
    ``force``), and :class:`PublishError` when a table failed (after recording what did land).
    """
    settings = settings or Settings.from_env()
    chunk_rows = chunk_rows or chunk_rows_for(settings.caspio_api_version, settings.caspio_concurrency)
    run_id = run_id or uuid.uuid4().hex[:12]
    say = on_progress or (lambda _msg: None)
    journal_dir = Path(journal_dir) if journal_dir is not None else state_mod.journal_dir_for(settings.warehouse_path)
    started = dt.datetime.now(dt.UTC)

    with con_factory(read_only=dry_run) as con:  # step 1: short, then closed
        plans = plan_publish(con, marts, settings, reconcile=reconcile, journal_dir=journal_dir, read_only=dry_run,
                             marts_dir=marts_dir)
    planned = total_calls(plans)
    budget = settings.caspio_call_budget
    if dry_run:
        return [_planned_result(p, "skipped" if p.skipped else "dry_run") for p in plans]
    if planned > budget and not force:
        raise PublishBudgetExceeded(planned, budget, plans)

    results: list[TableResult] = []
    error: BaseException | None = None
    calls_start = client.calls_made
    for plan in plans:
        if plan.skipped is not None:
            results.append(_planned_result(plan, "skipped"))
            say(f"{plan.table}: skipped ({plan.skipped})")
            continue
        if not plan.calls.total:
            res = _planned_result(plan, "unchanged")
            results.append(res)
            say(f"{plan.table}: unchanged ({plan.rows:,} rows), no call")
            continue
        say(f"{plan.table}: {plan.n_inserts:,} insert(s), {plan.n_updates:,} update(s), {len(plan.deletes):,} "
            f"delete(s){', reconciling' if plan.reconcile else ''}")
        table_calls0 = client.calls_made
        try:
            with state_mod.Journal(state_mod.journal_path(journal_dir, plan.table)) as journal:
                res = _run_table(client, plan, journal, force=force, budget=budget,
                                 spent_before=client.calls_made - calls_start, chunk_rows=chunk_rows,
                                 base_url=settings.caspio_base_url)
        except Exception as exc:  # noqa: BLE001 - record what landed, then stop (a kill leaves the journal)
            error = exc
            res = _planned_result(plan, "failed")
            res.message = _safe_message(exc)
            res.calls = client.calls_made - table_calls0
        results.append(res)
        if error is not None:
            break
        say(f"{plan.table}: {res.status}; {res.inserted:,} inserted, {res.updated:,} updated, {res.deleted:,} "
            f"deleted, {res.calls:,} call(s)")

    # step 4: short, fold the journals into the state, record the run
    with con_factory() as con:
        state_mod.apply_pending_journals(con, journal_dir, [r.table for r in results])
        finished = dt.datetime.now(dt.UTC)
        for res in results:
            if res.status in ("skipped",):
                continue
            plan = res.plan
            if res.status != "failed" and plan is not None:
                state_mod.record_table(con, res.table, res.mart,
                                       plan.spec_hash if (plan.check_schema or plan.reconcile) else None,
                                       reconciled=res.reconciled or res.schema_created, published=True)
            state_mod.record_run(con, {
                "run_id": run_id, "table_name": res.table, "mart": res.mart, "started_at": started,
                "finished_at": finished, "inserted": res.inserted, "updated": res.updated, "deleted": res.deleted,
                "unchanged": res.unchanged, "drift_fixed": res.drift_fixed, "calls": res.calls,
                "reconciled": res.reconciled, "status": res.status})
        ensure_tables(con)
        record_api_calls(con, _audit_rows(client.call_records()), run_id)
    if error is not None:
        transient = bool(getattr(error, "transient", False))
        if isinstance(error, PublishError):
            error.results = results
            raise error
        if isinstance(error, CaspioBudgetExceeded):
            raise PublishError(f"{error}", results=results) from error
        if isinstance(error, Exception):
            raise PublishError(f"publishing {results[-1].table} failed: {_safe_message(error)}. What Caspio "
                               "confirmed is recorded; run again to finish.", transient=transient,
                               results=results) from error
        raise error
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise PublishError("; ".join(f"{r.table}: {r.message}" for r in failed), results=results)
    return results


def _audit_rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Call records as ``audit.api_calls`` rows (``ts`` parsed: the records carry ISO text)."""
    rows = []
    for record in records:
        row = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        if isinstance(row.get("ts"), str):
            row["ts"] = dt.datetime.fromisoformat(row["ts"])
        rows.append(row)
    return rows


def _safe_message(exc: BaseException) -> str:
    """The first line of an error (client errors carry no values or keys by construction)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- verification (the Dagster asset check) ---------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    """Caspio's table compared with the mart: row counts and content checksums (key + row hash)."""

    table: str
    mart_rows: int
    caspio_rows: int
    duplicate_or_keyless: int
    mart_checksum: str
    caspio_checksum: str

    @property
    def matches(self) -> bool:
        return (self.mart_rows == self.caspio_rows and self.duplicate_or_keyless == 0
                and self.mart_checksum == self.caspio_checksum)


def verify(con_factory: ConFactory, client: Any, mart: str, settings: Settings, *,
           marts_dir: Path | str | None = None, schema: str = DEFAULT_SCHEMA) -> Verification:
    """Read the mart's checksum (short read-only warehouse step), then Caspio's table (network only)."""
    catalog = mart_catalog(marts_dir)
    info = select_marts(catalog, [mart])[0]
    with con_factory(read_only=True) as con:
        spec = table_spec_for_mart(con, info.name, {m.name: m.doc for m in catalog.values()},
                                   settings.caspio_table_prefix, schema=schema)
        fields = published_fields(spec)
        rows = stage_mart(con, f"{quote_ident(schema)}.{quote_ident(info.name)}", row_key_sql(spec.grain), fields,
                          "_caspio_verify", table=spec.name)
        _, digest = checksum(con, "_caspio_verify")
        con.execute("DROP TABLE IF EXISTS _caspio_verify")
    if client.describe_table(spec.name) is None:
        return Verification(spec.name, rows, 0, 0, digest, "")
    caspio = rows_to_arrow(client.iter_records(spec.name, page_size=PAGE_SIZE), fields, spec.key)
    n, bad, caspio_digest = caspio_content(caspio, fields, spec.key)
    return Verification(spec.name, rows, n, bad, digest, caspio_digest)

