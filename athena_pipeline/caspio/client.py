"""``CaspioClient``: Caspio's REST API (v3, optional v4 bulk insert) behind the project's HTTP policy.

Why it looks like this:

- **Same policy as athenahealth** (:class:`athena_pipeline.http.HttpPolicy`): explicit timeouts,
  retries with jittered backoff on 429/5xx/transport errors (``Retry-After`` honoured when sent;
  Caspio documents none), a client-side rate limiter, one re-authentication on 401, and a
  :class:`CallRecord` per attempt for ``audit.api_calls`` (system ``caspio``).
- **Every call costs money** on the account's meter, so every attempt (token calls and retries
  included) is counted in :attr:`CaspioClient.calls_made`, and with a ``budget`` the call that
  would exceed it is refused *before* it is sent (:class:`CaspioBudgetExceeded`).
- **Caspio's quirks are handled here, once**: reads page with ``q.orderBy=PK_ID`` and
  ``q.pageSize`` (never ``q.limit``, which mixed with paging loses and duplicates rows) and stop on
  a short page; v3 inserts are one object per POST (an array is a 400), run in parallel up to
  ``concurrency``; PUT/DELETE are set-based with ``q.where`` (literals escaped, IN-lists split so
  the URI stays within 2047 characters); a stale token can come back as 400
  ``IncorrectQueryParameter`` instead of 401, so that too gets one refresh and one retry; v3 may
  answer a bad value with 500 ``InvalidInputValue``, which is not retried (it would fail 8 times).
- **Errors name the call, table and field**, carry Caspio's ``Code``/``Message``/``RequestId``,
  and never a value: record values and where literals are scrubbed from Caspio's message.

Path templates in call records keep table and field names (our own schema, never PHI) and
nothing else; query values never leave the process except on the wire.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from athena_pipeline.caspio.auth import CaspioAuth, token_url_for
from athena_pipeline.caspio.errors import (
    CaspioAuthError,
    CaspioBudgetExceeded,
    CaspioError,
    CaspioRetryExhausted,
    describe_caspio_error,
    error_body,
    field_named,
    scrub,
)
from athena_pipeline.caspio.specs import CASPIO_TYPES, FieldSpec
from athena_pipeline.caspio.where import MAX_URI, check_field, equals, in_clauses
from athena_pipeline.http import (
    DEFAULT_TIMEOUT,
    ApiError,
    AuthError,
    CallRecord,
    HttpPolicy,
    RateLimiter,
    RetryExhausted,
    RetryPolicy,
)

log = logging.getLogger("athena_pipeline.caspio")

SYSTEM = "caspio"
API_VERSIONS = ("v3", "v4")
MAX_PAGE_SIZE = 1000
MIN_PAGE_SIZE = 5
MAX_BULK_ROWS = 1000
#: 500 answers that are Caspio's verdict on the request, not a hiccup: never retried.
DETERMINISTIC_500_CODES = frozenset({"InvalidInputValue", "FieldNotFound", "IncorrectBodyParameter",
                                     "IncorrectQueryParameter", "SqlServerError"})
_NOT_SENT = "NotAttempted"
_TABLE_OK = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


# --- results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaspioField:
    """A field as Caspio describes it (``GET /tables/{t}/fields``)."""

    name: str
    type: str
    unique: bool = False
    length: int | None = None
    label: str | None = None
    description: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CaspioField:
        length = d.get("Length")
        return cls(name=str(d.get("Name") or ""), type=str(d.get("Type") or ""),
                   unique=bool(d.get("Unique")),
                   length=int(length) if isinstance(length, (int, float)) else None,
                   label=d.get("Label") or None, description=d.get("Description") or None,
                   raw=dict(d))


@dataclass
class InsertResult:
    """Outcome of :meth:`CaspioClient.insert_many`.

    ``failed`` lists ``(index, code, message)`` for each row Caspio refused (messages scrubbed of
    values); every other row was inserted. ``duplicates`` are the indexes among them refused
    because a unique value (the row key) already exists: after a crash, a retried 5xx or a
    hand-made row, they are in Caspio already and need an update, not an insert.
    """

    inserted: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)

    def failed_indexes(self) -> set[int]:
        return {i for i, _, _ in self.failed}


@dataclass
class WriteResult:
    """What a keyed batch write completed before it stopped (``CaspioError.partial``)."""

    affected: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)


# --- the call gate: budget + pacing ---------------------------------------------------------------
class _CallGate:
    """Stands in the policy's rate-limiter slot: runs before *every* attempt, token calls included.

    That is the one place that sees each attempt before it is sent, so it both counts calls and
    refuses the one that would exceed the budget, then paces with the real limiter.
    """

    def __init__(self, budget: int | None, limiter: RateLimiter | None) -> None:
        self.budget = budget
        self.limiter = limiter
        self.made = 0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        with self._lock:
            if self.budget is not None and self.made >= self.budget:
                raise CaspioBudgetExceeded(self.made, self.budget)
            self.made += 1
        return self.limiter.acquire() if self.limiter is not None else 0.0


# --- values ---------------------------------------------------------------------------------------
def encode_value(value: Any) -> Any:
    """A Python/DuckDB/numpy value as Caspio's JSON takes it.

    Dates become ``YYYY-MM-DDT00:00:00``, datetimes ``YYYY-MM-DDTHH:MM:SS`` (aware ones in UTC,
    zone dropped: Caspio stores wall time), Decimals and numpy numbers JSON numbers, NaN and
    infinities null (Caspio has no NaN), times and UUIDs text. Raises TypeError for anything else.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return f"{value.isoformat()}T00:00:00"
    if isinstance(value, (dt.time, uuid.UUID)):  # published as text (STRING fields)
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return encode_value(item())
    raise TypeError(f"a {type(value).__name__} cannot be sent to Caspio")


def encode_record(record: Mapping[str, Any], table: str) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        try:
            out[key] = encode_value(value)
        except TypeError as exc:
            raise TypeError(f"Caspio table {table}, field {key}: {exc}") from None
    return out


# --- the client -------------------------------------------------------------------------------------
class CaspioClient:
    """Authenticated, budgeted, retried access to one Caspio account. Thread-safe; close it."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, *, api_version: str = "v3",
                 concurrency: int = 4, requests_per_second: float | None = None,
                 retry: RetryPolicy | None = None, timeout: float | httpx.Timeout | None = None,
                 budget: int | None = None, credentials: str = "body") -> None:
        if api_version not in API_VERSIONS:
            raise ValueError(f"api_version must be one of {', '.join(API_VERSIONS)}")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if budget is not None and budget < 0:
            raise ValueError("budget must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.concurrency = concurrency
        self._records: list[CallRecord] = []
        self._records_lock = threading.Lock()
        self.policy = HttpPolicy(
            SYSTEM, timeout=timeout if timeout is not None else DEFAULT_TIMEOUT, retry=retry,
            on_call=self._on_call, headers={"Accept": "application/json"},
            max_connections=concurrency + 2, describe_error=describe_caspio_error)
        limiter = RateLimiter(requests_per_second) if requests_per_second else None
        self._gate = _CallGate(budget, limiter)
        self.policy.limiter = self._gate  # every attempt passes the gate (see _CallGate)
        self.auth = CaspioAuth(token_url_for(self.base_url), client_id, client_secret,
                               policy=self.policy, credentials=credentials)
        base_path = urlsplit(self.base_url).path.rstrip("/")
        self.v3 = f"{self.base_url}/integrations/rest/v3"
        self.v3_path = f"{base_path}/integrations/rest/v3"
        self.v4 = f"{self.base_url}/integrations/rest/v4"
        self.v4_path = f"{base_path}/integrations/rest/v4"
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._table_ids: dict[str, str] = {}
        self._aggregate_count = True

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> CaspioClient:
        """A client configured from :class:`athena_pipeline.settings.Settings` (``overrides`` win)."""
        kwargs: dict[str, Any] = {
            "api_version": settings.caspio_api_version, "concurrency": settings.caspio_concurrency,
            "requests_per_second": settings.caspio_requests_per_second or None,
            "budget": settings.caspio_call_budget}
        kwargs.update(overrides)
        return cls(settings.caspio_base_url, settings.caspio_client_id,
                   settings.caspio_client_secret or "", **kwargs)

    def __repr__(self) -> str:
        return f"CaspioClient(base_url={self.base_url!r}, api_version={self.api_version!r})"

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
        self.policy.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- accounting ---------------------------------------------------------------------------
    @property
    def calls_made(self) -> int:
        """HTTP calls sent so far (token calls and retries included)."""
        return self._gate.made

    @property
    def budget(self) -> int | None:
        return self._gate.budget

    @property
    def budget_left(self) -> int | None:
        return None if self._gate.budget is None else max(0, self._gate.budget - self._gate.made)

    def _on_call(self, record: CallRecord) -> None:
        with self._records_lock:
            self._records.append(record)

    def call_records(self) -> list[CallRecord]:
        """The calls recorded since the last drain (for ``audit.record_api_calls``); drains them."""
        with self._records_lock:
            out, self._records = self._records, []
        return out

    # --- table design -------------------------------------------------------------------------
    def list_tables(self) -> list[str]:
        """Names of every table the profile can see."""
        body = self._json(self._call("GET", "/tables", "/tables"), "GET", "/tables")
        return [str(t) for t in _result(body, list, "GET /tables")]

    def describe_table(self, table: str) -> list[CaspioField] | None:
        """The table's fields (``PK_ID`` is not among them), or None if it does not exist."""
        path = f"/tables/{_table(table)}/fields"
        try:
            response = self._call("GET", path, path, table=table)
        except CaspioError as exc:
            if exc.status == 404 and exc.code in (None, "ObjectNotFound", "TableNotFound"):
                return None
            raise
        body = self._json(response, "GET", path, table)
        return [CaspioField.from_json(f) for f in _result(body, list, f"GET {path}")
                if isinstance(f, Mapping)]

    def create_table(self, table: str, fields: Sequence[FieldSpec]) -> None:
        """``POST /tables`` with ``{Name, Fields}`` (v3's shape; ``Columns`` is v2's)."""
        if not fields:
            raise ValueError(f"Caspio table {table}: at least one field is needed")
        self._call("POST", "/tables", "/tables", table=_table(table),
                   json_body={"Name": table, "Fields": [f.definition() for f in fields]},
                   field_names=[f.name for f in fields])
        log.info("caspio table %s created with %d field(s)", table, len(fields))

    def add_field(self, table: str, field: FieldSpec) -> None:
        """``POST /tables/{t}/fields`` with one fieldDef."""
        path = f"/tables/{_table(table)}/fields"
        self._call("POST", path, path, table=table, json_body=field.definition(),
                   field_names=[field.name], field=field.name)
        log.info("caspio table %s: field %s (%s) added", table, field.name, field.type)

    # --- reads --------------------------------------------------------------------------------
    def iter_records(self, table: str, *, select: Sequence[str] | None = None, where: str | None = None,
                     page_size: int = MAX_PAGE_SIZE) -> Iterator[list[dict]]:
        """Every matching row, one page (a list of dicts with ``PK_ID``) at a time.

        Pages are ``q.orderBy=PK_ID`` + ``q.pageSize`` + ``q.pageNumber`` and never ``q.limit``;
        reading stops on a short page (Caspio sends no total or next link).
        """
        if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be within {MIN_PAGE_SIZE}..{MAX_PAGE_SIZE}")
        path = f"/tables/{_table(table)}/records"
        params: dict[str, str] = {}
        if select:
            params["q.select"] = ",".join(check_field(f) for f in select)
        if where:
            params["q.where"] = where
        params["q.orderBy"] = "PK_ID"
        params["q.pageSize"] = str(page_size)
        page = 1
        while True:
            params["q.pageNumber"] = str(page)
            response = self._call("GET", path, path, table=table, params=params,
                                  count=_result_count, field_names=select or ())
            rows = _result(self._json(response, "GET", path, table), list, f"GET {path}")
            if len(rows) > page_size:
                raise CaspioError(f"caspio GET {self.v3_path}{path}: page {page} has {len(rows)} rows, "
                                  f"more than the {page_size} asked for", table=table, status=200)
            if rows:
                yield rows
            if len(rows) < page_size:
                return
            page += 1

    def count_records(self, table: str) -> int:
        """Rows in ``table``: one ``COUNT`` call where Caspio takes it, else a ``PK_ID``-only scan."""
        path = f"/tables/{_table(table)}/records"
        if self._aggregate_count:
            try:
                response = self._call("GET", path, path, table=table,
                                      params={"q.select": "COUNT(PK_ID) AS row_count"})
                rows = _result(self._json(response, "GET", path, table), list, f"GET {path}")
                if len(rows) == 1 and isinstance(rows[0], Mapping):
                    value = next(iter(rows[0].values()), None)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        return int(value)
            except CaspioError as exc:
                if exc.transient or exc.status is None or exc.status in (401, 403, 404):
                    raise
            self._aggregate_count = False  # not supported here: scan from now on
            log.info("caspio: COUNT in q.select not supported, counting rows by paging")
        return sum(len(page) for page in self.iter_records(table, select=["PK_ID"]))

    # --- writes -------------------------------------------------------------------------------
    def insert(self, table: str, record: Mapping) -> None:
        """``POST /tables/{t}/records`` with one object (201, empty body)."""
        path = f"/tables/{_table(table)}/records"
        body = encode_record(record, table)
        self._call("POST", path, path, table=table, json_body=body, field_names=list(body),
                   values=body.values())

    def insert_many(self, table: str, records: Sequence[Mapping]) -> InsertResult:
        """Insert ``records``; a row Caspio refuses is reported in the result, not raised.

        v3: one POST per row, ``concurrency`` at a time. v4: bulk POSTs of up to 1000 rows; a 207
        answer is read row by row. A failure that is not about a row (credentials, the budget,
        a missing table, retries exhausted) stops the batch and raises, with ``partial`` holding
        the result so far (rows never sent are listed as failed with code ``NotAttempted``).
        """
        _table(table)
        encoded = [encode_record(r, table) for r in records]
        if not encoded:
            return InsertResult()
        if self.api_version == "v4":
            result = self._insert_bulk(table, encoded)
        else:
            result = self._insert_singles(table, encoded)
        log.info("caspio insert %s: %d inserted, %d refused (%d duplicate keys)", table,
                 result.inserted, len(result.failed), len(result.duplicates))
        return result

    def _insert_singles(self, table: str, rows: list[dict[str, Any]]) -> InsertResult:
        path = f"/tables/{table}/records"

        def one(row: dict[str, Any]) -> None:
            self._call("POST", path, path, table=table, json_body=row, field_names=list(row),
                       values=row.values())

        outcomes = self._parallel(one, rows)
        result = InsertResult()
        fatal: CaspioError | None = None
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                result.inserted += 1
            elif outcome is _NOT_SENT:
                result.failed.append((i, _NOT_SENT, "not sent: the batch stopped"))
            elif _row_level(outcome):
                result.failed.append((i, outcome.code or str(outcome.status), outcome.message or ""))
                if _is_duplicate(outcome):
                    result.duplicates.append(i)
            else:
                fatal = fatal or outcome
                result.failed.append((i, outcome.code or str(outcome.status), outcome.message or ""))
        if fatal is not None:
            fatal.partial = result
            raise fatal
        return result

    def update_where(self, table: str, where: str, values: Mapping) -> int:
        """``PUT /tables/{t}/records?q.where=…`` with ``values``; returns ``RecordsAffected``."""
        if not where or not where.strip():
            raise ValueError(f"Caspio table {table}: an update needs a where clause (it would change every row)")
        if not values:
            raise ValueError(f"Caspio table {table}: nothing to update")
        path = f"/tables/{_table(table)}/records"
        body = encode_record(values, table)
        response = self._call("PUT", path, path, table=table, params={"q.where": where}, json_body=body,
                              field_names=list(body), values=body.values())
        return _affected(self._json(response, "PUT", path, table), table)

    def delete_where(self, table: str, where: str) -> int:
        """``DELETE /tables/{t}/records?q.where=…``; returns ``RecordsAffected``."""
        if not where or not where.strip():
            raise ValueError(f"Caspio table {table}: a delete needs a where clause (it would empty the table)")
        path = f"/tables/{_table(table)}/records"
        response = self._call("DELETE", path, path, table=table, params={"q.where": where})
        return _affected(self._json(response, "DELETE", path, table), table)

    def update_many(self, table: str, key_field: str, rows: Sequence[Mapping], *,
                    missing: list | None = None) -> int:
        """One keyed PUT per row (``key_field = value``), ``concurrency`` at a time.

        Returns the total ``RecordsAffected``. Keys that matched no row (deleted in Caspio by
        hand) are appended to ``missing`` when given, so the caller can insert them instead. A
        row Caspio refuses, or a failure that stops the batch, raises after the rows in flight
        finish, with ``partial`` a :class:`WriteResult`.
        """
        path = f"/tables/{_table(table)}/records"
        check_field(key_field)
        jobs = []
        for row in rows:
            if key_field not in row or row[key_field] is None:
                raise ValueError(f"Caspio table {table}: a row to update has no {key_field}")
            body = encode_record({k: v for k, v in row.items() if k != key_field}, table)
            if not body:
                raise ValueError(f"Caspio table {table}: a row to update has no field besides {key_field}")
            jobs.append((row[key_field], body))

        def one(job: tuple[Any, dict[str, Any]]) -> int:
            key, body = job
            response = self._call("PUT", path, path, table=table, params={"q.where": equals(key_field, key)},
                                  json_body=body, field_names=[key_field, *body],
                                  values=[key, *body.values()])
            return _affected(self._json(response, "PUT", path, table), table)

        return self._keyed_batch(table, "update", one, jobs, missing,
                                 keys=[key for key, _ in jobs])

    def delete_keys(self, table: str, key_field: str, keys: Sequence) -> int:
        """Delete the rows whose ``key_field`` is in ``keys``: ``IN (…)`` clauses, each URI ≤ 2047.

        Returns the total ``RecordsAffected``.
        """
        path = f"/tables/{_table(table)}/records"
        check_field(key_field)
        if not keys:
            return 0
        prefix = len(str(httpx.URL(self.v3 + path))) + len("?q.where=")
        clauses = in_clauses(key_field, list(keys), MAX_URI, prefix_length=prefix)
        key_values = list(keys)

        def one(clause: str) -> int:
            response = self._call("DELETE", path, path, table=table, params={"q.where": clause},
                                  field_names=[key_field], values=key_values)
            return _affected(self._json(response, "DELETE", path, table), table)

        return self._keyed_batch(table, "delete", one, clauses, None, keys=None)

    # --- v4 bulk ------------------------------------------------------------------------------
    def _table_id(self, table: str) -> str:
        """v4 addresses tables by a short ``tableId``: look it up once per table name."""
        low = table.lower()
        if low in self._table_ids:
            return self._table_ids[low]
        response = self._call("GET", "/tables", "/tables", table=table, version="v4")
        body = self._json(response, "GET", "/tables", table, version="v4")
        items = body.get("data") if isinstance(body.get("data"), list) else body.get("Result")
        for item in items or []:
            if not isinstance(item, Mapping):
                continue
            name = item.get("name") or item.get("Name") or item.get("tableName")
            tid = item.get("tableId") or item.get("id") or item.get("TableId")
            if isinstance(name, str) and tid is not None:
                self._table_ids[name.lower()] = str(tid)
        if low not in self._table_ids:
            raise CaspioError(f"caspio v4: table {table} is not in GET /tables", table=table,
                              code="ObjectNotFound", status=404)
        return self._table_ids[low]

    def _insert_bulk(self, table: str, rows: list[dict[str, Any]]) -> InsertResult:
        tid = self._table_id(table)
        path = f"/tables/{tid}/records/bulk"
        template = f"/tables/{table}/records/bulk"  # the tableId, named by its table
        chunks = [(start, rows[start:start + MAX_BULK_ROWS]) for start in range(0, len(rows), MAX_BULK_ROWS)]

        def one(chunk: tuple[int, list[dict[str, Any]]]) -> list[tuple[int, str, str] | None]:
            start, batch = chunk
            values = [v for row in batch for v in row.values()]
            fields = sorted({k for row in batch for k in row})
            response = self._call("POST", path, template, table=table, json_body=batch, version="v4",
                                  field_names=fields, values=values, count=_fixed_count(len(batch)))
            return _bulk_outcomes(response, batch, start, fields, values)

        outcomes = self._parallel(one, chunks)
        result = InsertResult()
        fatal: CaspioError | None = None
        for (start, batch), outcome in zip(chunks, outcomes, strict=True):
            if isinstance(outcome, list):
                for i, failure in enumerate(outcome):
                    if failure is None:
                        result.inserted += 1
                    else:
                        result.failed.append(failure)
                        if "duplicate" in failure[2].lower() or "unique" in failure[2].lower():
                            result.duplicates.append(failure[0])
                continue
            if isinstance(outcome, CaspioError) and not _row_level(outcome):
                fatal = fatal or outcome
            code = _NOT_SENT if outcome is _NOT_SENT else (outcome.code or str(outcome.status))
            message = "not sent: the batch stopped" if outcome is _NOT_SENT else (outcome.message or "")
            result.failed.extend((start + i, code, message) for i in range(len(batch)))
        if fatal is not None:
            if fatal.status == 404 and fatal.code == "ObjectNotFound":
                self._table_ids.pop(table.lower(), None)  # re-created table: look its id up again
            fatal.partial = result
            raise fatal
        return result

    # --- batches ------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                                thread_name_prefix="caspio")
            return self._pool

    def _parallel(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``fn`` over ``items``, ``concurrency`` at a time; each outcome is fn's result, a
        :class:`CaspioError`, or ``_NOT_SENT`` once a non-row failure stopped the batch."""
        stop = threading.Event()

        def run(item: Any) -> Any:
            if stop.is_set():
                return _NOT_SENT
            try:
                return fn(item)
            except CaspioError as exc:
                if not _row_level(exc):
                    stop.set()
                return exc

        if self.concurrency == 1 or len(items) == 1:
            return [run(item) for item in items]
        return list(self._executor().map(run, items))

    def _keyed_batch(self, table: str, what: str, fn: Callable[[Any], int], jobs: Sequence[Any],
                     missing: list | None, *, keys: Sequence[Any] | None) -> int:
        outcomes = self._parallel(fn, jobs)
        result = WriteResult()
        fatal: CaspioError | None = None
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, int):
                result.affected += outcome
                if outcome == 0 and missing is not None and keys is not None:
                    missing.append(keys[i])
            elif outcome is _NOT_SENT:
                result.failed.append((i, _NOT_SENT, "not sent: the batch stopped"))
            else:
                fatal = fatal or outcome
                result.failed.append((i, outcome.code or str(outcome.status), outcome.message or ""))
        if fatal is not None:
            if _row_level(fatal):
                fatal = CaspioError(
                    f"caspio {what} {table}: {len(result.failed)} of {len(jobs)} call(s) failed; first: "
                    f"{fatal}", code=fatal.code, caspio_message=fatal.message,
                    caspio_request_id=fatal.caspio_request_id, table=table, field=fatal.field,
                    status=fatal.status, method=fatal.method, path_template=fatal.path_template,
                    request_id=fatal.request_id, transient=False)
            fatal.partial = result
            raise fatal
        return result.affected

    # --- one call -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, template: str, *, table: str | None = None,
              params: Mapping[str, str] | None = None, json_body: Any = None, version: str = "v3",
              field_names: Sequence[str] = (), field: str | None = None,
              values: Any = (), count: Callable[[httpx.Response], int | None] | None = None
              ) -> httpx.Response:
        """One logical call: policy retries, plus one token refresh on the stale-token 400."""
        base, base_path = (self.v3, self.v3_path) if version == "v3" else (self.v4, self.v4_path)
        url = base + path
        full_template = base_path + template
        if params:
            length = len(str(httpx.URL(url, params=params)))
            if length > MAX_URI:
                raise CaspioError(
                    f"caspio {method} {full_template}: the request URI would be {length} characters, over "
                    f"Caspio's {MAX_URI}; split the where clause (where.in_clauses)", table=table,
                    code="UriTooLong", method=method, path_template=full_template, transient=False)
        headers = {"Content-Type": "application/json"} if json_body is not None else None
        refreshed = False
        while True:
            try:
                response = self.policy.request(
                    method, url, path_template=full_template, params=params, json=json_body,
                    headers=headers, auth=self.auth, accept=_accept, count_resources=count)
            except ApiError as exc:
                raise self._wrap(exc, table, field) from None
            if response.is_success:
                return response
            body = error_body(response)
            if (response.status_code == 400 and body.get("Code") == "IncorrectQueryParameter"
                    and not refreshed):
                # Caspio sometimes says this instead of 401 for a stale token: refresh, retry once.
                refreshed = True
                self.auth.invalidate({"Authorization": response.request.headers.get("Authorization", "")})
                log.info("caspio %s %s: 400 IncorrectQueryParameter, refreshing the token once",
                         method, full_template)
                continue
            raise self._response_error(response, body, method, full_template, table, field,
                                       field_names, values)

    def _response_error(self, response: httpx.Response, body: Mapping[str, Any], method: str,
                        template: str, table: str | None, field: str | None,
                        field_names: Sequence[str], values: Any) -> CaspioError:
        status = response.status_code
        code = body.get("Code")
        raw_message = body.get("Message")
        keep = [*field_names, *(x for x in (table,) if x), *CASPIO_TYPES]
        message = scrub(raw_message, _flat(values), keep=keep)
        field = field or field_named(raw_message, field_names)
        rid = body.get("RequestId") or response.headers.get("X-Caspio-Request-ID")
        text = f"caspio {method} {template} -> {status}"
        if code:
            text += f" {code}"
        if message:
            text += f": {message}"
        where = ", ".join(x for x in (f"table {table}" if table else "", f"field {field}" if field else "") if x)
        if where:
            text += f" [{where}]"
        text += f" (RequestId {rid or '-'}, X-Request-Id {response.request.headers.get('X-Request-Id', '-')})"
        cls = CaspioAuthError if status in (401, 403) else CaspioError
        return cls(text, code=code, caspio_message=message, caspio_request_id=rid, table=table, field=field,
                   method=method, url=f"{template}", path_template=template, status=status,
                   detail=f"{code}: {message}" if code else message,
                   request_id=response.request.headers.get("X-Request-Id"), transient=False)

    def _wrap(self, exc: ApiError, table: str | None, field: str | None) -> CaspioError:
        """An error raised inside the policy, as a :class:`CaspioError` naming the table."""
        if isinstance(exc, CaspioError):
            exc.table = exc.table or table
            exc.field = exc.field or field
            return exc
        cls = (CaspioAuthError if isinstance(exc, AuthError)
               else CaspioRetryExhausted if isinstance(exc, RetryExhausted) else CaspioError)
        text = str(exc) + (f" [table {table}]" if table else "")
        code, _, message = (exc.detail or "").partition(": ")
        return cls(text, code=code or None, caspio_message=message or None, table=table, field=field,
                   system=exc.system, method=exc.method, url=exc.url, path_template=exc.path_template,
                   status=exc.status, detail=exc.detail, request_id=exc.request_id,
                   transient=exc.transient)

    def _json(self, response: httpx.Response, method: str, path: str, table: str | None = None, *,
              version: str = "v3") -> dict[str, Any]:
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            base = self.v3_path if version == "v3" else self.v4_path
            raise CaspioError(f"caspio {method} {base}{path} -> {response.status_code}: the body is not a "
                              "JSON object", table=table, status=response.status_code, method=method,
                              transient=False)
        return body


# --- helpers ------------------------------------------------------------------------------------------
def _accept(response: httpx.Response) -> bool:
    """Responses the policy hands back instead of retrying: successes, and errors that are a
    verdict on the request (4xx other than 401/408/429, and 500s with a deterministic Code)."""
    status = response.status_code
    if response.is_success:
        return True
    if status in (401, 408, 429) or status >= 500:
        return status == 500 and error_body(response).get("Code") in DETERMINISTIC_500_CODES
    return True


def _table(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_OK.fullmatch(table):
        raise ValueError(f"{table!r} is not a Caspio table name this client addresses")
    return table


def _result(body: Mapping[str, Any], kind: type, what: str) -> Any:
    value = body.get("Result")
    if not isinstance(value, kind):
        raise CaspioError(f"caspio {what}: the response has no Result {kind.__name__}", transient=False)
    return value


def _fixed_count(n: int) -> Callable[[httpx.Response], int]:
    return lambda _response: n


def _result_count(response: httpx.Response) -> int | None:
    try:
        body = response.json()
    except ValueError:
        return None
    rows = body.get("Result") if isinstance(body, dict) else None
    return len(rows) if isinstance(rows, list) else None


def _affected(body: Mapping[str, Any], table: str) -> int:
    value = body.get("RecordsAffected")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CaspioError(f"caspio table {table}: the write's response has no RecordsAffected",
                          table=table, transient=False)
    return int(value)


def _row_level(exc: CaspioError) -> bool:
    """True when Caspio refused *this row* (its values), so the rest of a batch may go on."""
    if isinstance(exc, (CaspioAuthError, CaspioRetryExhausted, CaspioBudgetExceeded)) or exc.transient:
        return False
    if exc.status == 404:
        return exc.code == "FieldNotFound"
    return exc.status in (400, 409, 422) or (exc.status == 500 and exc.code in DETERMINISTIC_500_CODES)


def _is_duplicate(exc: CaspioError) -> bool:
    text = f"{exc.code or ''} {exc.message or ''}".lower()
    return "duplicate" in text or "unique" in text


def _flat(values: Any) -> list[Any]:
    return [v for v in values if isinstance(v, (str, int, float)) and not isinstance(v, bool)]


def _bulk_outcomes(response: httpx.Response, batch: list[dict[str, Any]], start: int,
                   fields: Sequence[str], values: Sequence[Any]) -> list[tuple[int, str, str] | None]:
    """Per-row outcomes of a v4 bulk POST: 201 = all in; 207 = ``data[i].status`` row by row."""
    if response.status_code != 207:
        return [None] * len(batch)
    try:
        body = response.json()
    except ValueError:
        body = None
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list) or len(items) != len(batch):
        raise CaspioError("caspio v4 bulk insert: a 207 answer without one data item per row",
                          status=207, transient=False)
    out: list[tuple[int, str, str] | None] = []
    for i, item in enumerate(items):
        status = item.get("status") if isinstance(item, Mapping) else None
        ok = (isinstance(status, int) and 200 <= status < 300) or (
            isinstance(status, str) and status.lower() in ("success", "ok", "created", "inserted"))
        if ok:
            out.append(None)
            continue
        error = item.get("error") if isinstance(item, Mapping) else None
        if isinstance(error, Mapping):
            code = str(error.get("Code") or error.get("code") or status or "Error")
            raw = error.get("Message") or error.get("message") or ""
        else:
            code, raw = str(status or "Error"), str(error or "")
        out.append((start + i, code, scrub(str(raw), _flat(values), keep=[*fields, *CASPIO_TYPES]) or ""))
    return out
