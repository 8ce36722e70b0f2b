"""The Caspio REST API emulator as a Starlette (ASGI) app, mounted at ``/caspio``.

Paths, relative to the mount (the account's Integration URL, ``CASPIO_BASE_URL``):

- ``POST /oauth/token``                                     client credentials / refresh token
- ``/integrations/rest/v3/tables`` ``GET`` list, ``POST`` create (``{Name, Fields}``)
- ``/integrations/rest/v3/tables/{table}`` ``GET`` (``{Name, Note}``), ``DELETE``
- ``/integrations/rest/v3/tables/{table}/fields`` ``GET``, ``POST``; ``…/fields/{field}``
  ``GET``, ``PUT``, ``DELETE``
- ``/integrations/rest/v3/tables/{table}/records`` ``GET`` (``q.select``, ``q.where``,
  ``q.groupBy``, ``q.orderBy``, ``q.limit``, ``q.pageNumber``, ``q.pageSize``), ``POST`` one
  object, ``PUT``/``DELETE`` with ``q.where`` (or ``where``)
- ``/integrations/rest/v3/views`` ``GET``; ``…/views/{view}``, ``…/views/{view}/fields`` and
  ``…/views/{view}/records`` ``GET`` (read-only; ``PK_ID`` is the source PK_IDs joined by commas)
- ``/integrations/rest/v3/outgoingWebhooks[/{id}[/events[/{eventId}]]]``: webhook CRUD;
  REST writes then POST the §11 payload to subscribers (``webhooks.py``)
- the same under ``/rest/v2`` (table creation takes ``Columns``, field PUT ``New*`` names)
- ``GET /integrations/rest/v4/tables``, ``POST /integrations/rest/v4/tables/{tableId}/records/bulk``
- ``/_emulator/`` (HTML view), ``/_emulator/stats``, ``/_emulator/faults``,
  ``/_emulator/config``, ``/_emulator/reset``, ``/_emulator/views`` (define views, which Caspio
  makes in its UI), ``/_emulator/webhooks`` (delivery log): sandbox control, no token needed

Every response carries ``X-Caspio-Request-ID``; every error the body
``{"Code","Message","Resource","RequestId"}``. The order of checks on a REST call: URI length
(414), route (404/405), latency, bearer token (401), throttle (429), the monthly meter, faults,
then the call itself. Each request is logged as one line on ``athena_pipeline.sandbox.caspio``
with the route *template* and status, never a query string or value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Receive, Scope, Send

from athena_pipeline.sandbox.caspio.auth import TokenService
from athena_pipeline.sandbox.caspio.config import CaspioConfig, apply_knobs, config_snapshot
from athena_pipeline.sandbox.caspio.errors import CaspioApiError, bad_body, bad_query
from athena_pipeline.sandbox.caspio.faults import CaspioFaults
from athena_pipeline.sandbox.caspio.html_view import index_page, table_page
from athena_pipeline.sandbox.caspio.meter import CallMeter, RequestStats, Throttle
from athena_pipeline.sandbox.caspio.schema import check_name, parse_field_def
from athena_pipeline.sandbox.caspio.store import CaspioStore, ReadQuery, WriteOptions
from athena_pipeline.sandbox.caspio.webhooks import WebhookService
from athena_pipeline.sandbox.caspio.where import (
    parse_group_by,
    parse_order_by,
    parse_select,
    parse_where,
)
from athena_pipeline.sandbox.common.asgi import (
    FaultControl,
    RequestObserver,
    control_error,
    read_json_object,
    read_token_form,
)

log = logging.getLogger("athena_pipeline.sandbox.caspio")

REQUEST_ID_HEADER = "X-Caspio-Request-ID"
_RID = "caspio.request_id"
_CLIENT = "caspio.client"
_ALL_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
V4_DOCS = "https://howto.caspio.com/integrate-your-apps/web-services-api/"

Handler = Callable[[Request], Awaitable[Response]]


def route_path(scope: Scope) -> str:
    """The request path relative to where the app is mounted (``/caspio`` on the sandbox)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def resource_of(path: str) -> str:
    """Caspio's ``Resource``: the path below ``/integrations/rest`` (``/v3/tables/X/records``)."""
    if path.startswith("/integrations/rest/"):
        return path[len("/integrations/rest"):]
    if path.startswith("/rest/"):
        return path[len("/rest"):]
    return path


def version_of(path: str) -> str:
    for v in ("v2", "v3", "v4"):
        if f"/{v}/" in path or path.endswith(f"/{v}"):
            return v
    return ""


def error_response(scope: Scope, exc: CaspioApiError) -> JSONResponse:
    """Caspio's error body for ``exc`` (v4 adds ``DocumentationUrl`` and ``Hint``)."""
    path = route_path(scope)
    body: dict[str, Any] = {"Code": exc.code, "Message": exc.message,
                            "Resource": resource_of(path), "RequestId": scope.get(_RID, "")}
    if version_of(path) == "v4":
        body["DocumentationUrl"] = V4_DOCS
        body["Hint"] = exc.message
    return JSONResponse(body, status_code=exc.status, headers=exc.headers or None)


def _params(request: Request) -> dict[str, str]:
    """Query parameters with lower-cased names (Caspio's are case-insensitive); first wins."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key.lower(), value)
    return out


def _int_param(params: dict[str, str], name: str, display: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise bad_query(f"{display} must be an integer.") from None


class CaspioEmulator(FaultControl):
    """All state of one emulated Caspio account, and its request handlers.

    ``faults_get``/``faults_post`` (``/_emulator/faults``) come from :class:`FaultControl`.
    """

    faults: CaspioFaults

    def __init__(self, state_dir: Path | str, config: CaspioConfig | None = None,
                 faults: CaspioFaults | str | None = None) -> None:
        self.config = config or CaspioConfig()
        self.faults = faults if isinstance(faults, CaspioFaults) else CaspioFaults(faults,
                                                                              seed=self.config.seed)
        self.store = CaspioStore(state_dir, seed=self.config.seed, clock=self._clock)
        self.tokens = TokenService(self.store, lambda: self.config)
        self.meter = CallMeter(self.store, lambda: self.config)
        self.throttle = Throttle()
        self.stats = RequestStats()
        self.webhooks = WebhookService(self.store, lambda: self.config, self.meter)
        self._rng = random.Random(self.config.seed)

    def _clock(self) -> float:
        return self.config.wall_clock()

    @property
    def state_path(self) -> Path:
        return self.store.path

    def write_options(self) -> WriteOptions:
        return WriteOptions(invalid_status=self.config.invalid_input_status,
                            currency_decimals=self.config.currency_decimals)

    def close(self) -> None:
        self.meter.flush()
        self.store.close()

    # --- the prelude of every REST call --------------------------------------------------------
    async def _prelude(self, request: Request) -> None:
        """Latency, auth, throttle, meter and faults; raises CaspioApiError to answer early."""
        cfg = self.config
        delay = cfg.latency_seconds
        if cfg.latency_jitter_seconds:
            delay += self._rng.random() * cfg.latency_jitter_seconds
        slow = self.faults.take("slow")
        if slow is not None and slow.arg:
            delay += slow.arg
        if delay > 0:
            await asyncio.sleep(delay)

        authorization = request.headers.get("authorization")
        client, reason = self.tokens.check(authorization)
        if client is None:
            if reason == "expired" and cfg.stale_token_400:
                raise bad_query("Invalid or expired access token.")
            raise CaspioApiError(401, "Unauthorized", {
                "missing": "Authorization has been denied for this request: no bearer token.",
                "invalid": "Authorization has been denied for this request: invalid token.",
                "expired": "Authorization has been denied for this request: the token has expired.",
            }[reason], headers={"WWW-Authenticate": 'Bearer error="invalid_token"'
                                if reason != "missing" else "Bearer"})
        request.scope[_CLIENT] = client
        for fault, status in (("expire_token", 401), ("stale_token", 400)):
            if self.faults.take(fault) is not None:
                self.tokens.revoke(authorization)
                if status == 400:
                    raise bad_query("Invalid or expired access token.")
                raise CaspioApiError(401, "Unauthorized", "Authorization has been denied for "
                                     "this request: the token has expired.",
                                     headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

        # real time, not the (possibly frozen) wall clock: a bucket must refill
        wait = self.throttle.take(client, cfg.rate_limit_per_second, cfg.rate_limit_burst,
                                  time.monotonic())
        if wait == 0 and self.faults.take("throttle") is not None:
            wait = 1.0
        if wait > 0:
            raise self._too_many(wait, "Too many requests: rate limit exceeded.")

        calls = self.meter.count(1)
        if cfg.over_allowance == "throttle" and calls > cfg.monthly_allowance:
            raise self._too_many(60.0, "The monthly API call allowance is used up.")

        failure = self.faults.take("server_error")
        if failure is not None:
            status = int(failure.arg or 500)
            raise CaspioApiError(status, "InternalError",
                                 "An internal server error occurred (emulated fault).")

    def _too_many(self, wait: float, message: str) -> CaspioApiError:
        headers = {"Retry-After": str(max(1, math.ceil(wait)))} if self.config.retry_after_header else {}
        return CaspioApiError(429, "TooManyRequests", message, headers=headers)

    def api(self, handler: Handler, *, write: bool = False) -> Handler:
        """Wrap a REST handler: prelude, Caspio error bodies, the ``error_after_write`` fault."""
        async def wrapped(request: Request) -> Response:
            try:
                await self._prelude(request)
                response = await handler(request)
            except CaspioApiError as exc:
                return error_response(request.scope, exc)
            except Exception:  # a bug of ours: still answer in Caspio's shape, and say so
                log.exception("Caspio emulator: unexpected error in %s", handler.__name__)
                return error_response(request.scope, CaspioApiError(
                    500, "InternalError", "An unexpected error occurred."))
            if write and response.status_code < 300 and self.faults.take("error_after_write"):
                return error_response(request.scope, CaspioApiError(
                    500, "InternalError", "An internal server error occurred (emulated fault)."))
            return response
        wrapped.__name__ = handler.__name__
        return wrapped

    # --- OAuth ----------------------------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        fault = self.faults.take("token_error")
        if fault is not None:
            return error_response(request.scope, CaspioApiError(
                int(fault.arg or 500), "InternalError", "Token service unavailable (emulated fault)."))
        data = await read_token_form(request)
        if isinstance(data, Response):
            return data
        outcome = self.tokens.token_request(data, request.headers.get("authorization"))
        if outcome.client_id:
            request.scope[_CLIENT] = outcome.client_id
        return JSONResponse(outcome.body, status_code=outcome.status, headers=outcome.headers,
                            media_type="application/json")

    # --- bodies ---------------------------------------------------------------------------------
    async def _json_body(self, request: Request) -> Any:
        ctype = request.headers.get("content-type", "")
        raw = await request.body()
        if self.config.require_json_content_type and "json" not in ctype.lower():
            raise CaspioApiError(415, "UnsupportedMediaType",
                                 "The request body must be sent as application/json.")
        if not raw.strip():
            raise bad_body("The request body is empty.")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_body("The request body is not valid JSON.") from None

    async def _object_body(self, request: Request, what: str) -> dict[str, Any]:
        body = await self._json_body(request)
        if isinstance(body, list):
            raise bad_body(f"The request body must be a single JSON object, not an array: {what}.")
        if not isinstance(body, dict):
            raise bad_body(f"The request body must be a JSON object: {what}.")
        return body

    # --- tables ---------------------------------------------------------------------------------
    async def tables_list(self, request: Request) -> Response:
        return JSONResponse({"Result": self.store.table_names()})

    async def table_get(self, request: Request) -> Response:
        info = self.store.table(request.path_params["table"])
        return JSONResponse({"Result": {"Name": info.name, "Note": info.note}})

    async def table_create(self, request: Request) -> Response:
        v2 = version_of(route_path(request.scope)) == "v2"
        body = await self._object_body(request, "one table definition")
        if not v2 and "Columns" in body:
            raise bad_body("'Columns' is not a v3 property: send the table's fields as 'Fields'.")
        name = check_name(body.get("Name"), "Table", self.config.max_table_name_length)
        note = body.get("Note") or ""
        if not isinstance(note, str):
            raise bad_body("'Note' must be a string.")
        key = "Columns" if v2 else "Fields"
        defs = body.get(key)
        if v2 and defs is None and "Fields" in body:
            defs = []  # the v2 quirk: 'Fields' is ignored and an empty table is created
        if not isinstance(defs, list):
            raise bad_body(f"'{key}' must be an array of field definitions.")
        fields = [parse_field_def(d, display_order=i + 1,
                                  max_name_length=self.config.max_field_name_length)
                  for i, d in enumerate(defs)]
        self.store.create_table(name, note, fields)
        return Response(status_code=201)

    async def table_delete(self, request: Request) -> Response:
        self.store.delete_table(request.path_params["table"])
        return Response(status_code=200)

    # --- fields ---------------------------------------------------------------------------------
    async def fields_list(self, request: Request) -> Response:
        info = self.store.table(request.path_params["table"])
        return JSONResponse({"Result": [f.to_json() for f in info.fields]})

    def _field(self, request: Request):
        info = self.store.table(request.path_params["table"])
        name = request.path_params["field"]
        f = info.field(name)
        if f is None:
            raise CaspioApiError(404, "FieldNotFound",
                                 f"Field '{name}' does not exist in table '{info.name}'.")
        return info, f

    async def field_get(self, request: Request) -> Response:
        _, f = self._field(request)
        return JSONResponse({"Result": f.to_json()})

    async def field_add(self, request: Request) -> Response:
        info = self.store.table(request.path_params["table"])
        body = await self._object_body(request, "one field definition")
        f = parse_field_def(body, display_order=len(info.fields) + 1,
                            max_name_length=self.config.max_field_name_length)
        self.store.add_field(info.name, f)
        return Response(status_code=201)

    async def field_update(self, request: Request) -> Response:
        info, old = self._field(request)
        body = await self._object_body(request, "one field definition")
        if version_of(route_path(request.scope)) == "v2":  # v2 prefixes every property: NewName
            body = {k.removeprefix("New"): v for k, v in body.items()}
        new = parse_field_def(body, display_order=old.display_order,
                              max_name_length=self.config.max_field_name_length, base=old)
        self.store.update_field(info.name, old.name, new, self.write_options())
        return Response(status_code=200)

    async def field_delete(self, request: Request) -> Response:
        info, f = self._field(request)
        self.store.delete_field(info.name, f.name)
        return Response(status_code=200)

    # --- records --------------------------------------------------------------------------------
    def _read_query(self, params: dict[str, str]) -> ReadQuery:
        cfg = self.config
        select = parse_select(params["q.select"]) if "q.select" in params else None
        where = parse_where(params["q.where"]) if "q.where" in params else None
        group_by = parse_group_by(params["q.groupby"]) if "q.groupby" in params else None
        order_by = parse_order_by(params["q.orderby"]) if "q.orderby" in params else None
        limit = _int_param(params, "q.limit", "q.limit")
        page_number = _int_param(params, "q.pagenumber", "q.pageNumber")
        page_size = _int_param(params, "q.pagesize", "q.pageSize")
        if page_number is not None or page_size is not None:  # paging: q.limit is ignored
            size = cfg.default_page_size if page_size is None else page_size
            number = 1 if page_number is None else page_number
            if not cfg.min_page_size <= size <= cfg.max_records_per_call:
                raise bad_query(f"q.pageSize must be between {cfg.min_page_size} and "
                                f"{cfg.max_records_per_call}.")
            if number < 1:
                raise bad_query("q.pageNumber must be 1 or more.")
            scramble = number if order_by is None and cfg.unordered_paging == "scrambled" else None
            return ReadQuery(select, where, group_by, order_by, limit=size,
                             offset=(number - 1) * size, scramble=scramble,
                             unknown_select_status=cfg.unknown_select_field_status)
        if limit is None:
            limit = cfg.default_limit
        elif limit < 1:
            raise bad_query("q.limit must be 1 or more.")
        return ReadQuery(select, where, group_by, order_by,
                         limit=min(limit, cfg.max_records_per_call),
                         unknown_select_status=cfg.unknown_select_field_status)

    async def records_get(self, request: Request) -> Response:
        query = self._read_query(_params(request))
        rows = self.store.select(request.path_params["table"], query)
        return JSONResponse({"Result": rows})

    def _write_where(self, params: dict[str, str]) -> Any:
        text = params.get("q.where", params.get("where"))
        if text is None or not text.strip():
            if self.config.require_where_for_writes:
                raise bad_query("q.where is required to update or delete records.")
            return None
        return parse_where(text)

    async def records_post(self, request: Request) -> Response:
        table = request.path_params["table"]
        info = self.store.table(table)
        body = await self._object_body(request, "this API inserts one record per call")
        pk = self.store.insert(info.name, body, self.write_options())
        params = _params(request)
        want_rows = params.get("response", "").lower() == "rows"
        hooked = self.webhooks.wants(info.name, "table.recordInsert")
        rows = self.store.rows_by_pk(info, [pk]) if want_rows or hooked else []
        if hooked:
            self.webhooks.fire(info.name, "table.recordInsert", rows)
        if want_rows:
            return JSONResponse({"Result": rows}, status_code=201)
        headers = {}
        if self.config.location_header:
            headers["Location"] = str(request.url.replace(query=""))
        return Response(status_code=201, headers=headers)

    async def records_put(self, request: Request) -> Response:
        info = self.store.table(request.path_params["table"])
        params = _params(request)
        where = self._write_where(params)
        body = await self._object_body(request, "the field values to set")
        hooked = self.webhooks.wants(info.name, "table.recordUpdate")
        pks, before, after = self.store.update(info.name, where, body, self.write_options(),
                                               capture=hooked)
        if hooked and after:
            keys = [k for k in after[0] if k.lower() in {b.lower() for b in body}]
            changed = [{k.lower() for k in keys if old.get(k) != new.get(k)}
                       for old, new in zip(before, after)]
            self.webhooks.fire(info.name, "table.recordUpdate", after, changed)
        if params.get("response", "").lower() == "rows":
            rows = after if hooked else self.store.rows_by_pk(info, pks)
        else:
            rows = []
        return JSONResponse({"RecordsAffected": len(pks), "Result": rows})

    async def records_delete(self, request: Request) -> Response:
        info = self.store.table(request.path_params["table"])
        where = self._write_where(_params(request))
        hooked = self.webhooks.wants(info.name, "table.recordDelete")
        count, rows = self.store.delete(info.name, where, capture=hooked)
        if rows:
            self.webhooks.fire(info.name, "table.recordDelete", rows)
        return JSONResponse({"RecordsAffected": count})

    # --- views (read-only) -----------------------------------------------------------------------
    async def views_list(self, request: Request) -> Response:
        return JSONResponse({"Result": self.store.view_names()})

    async def view_get(self, request: Request) -> Response:
        info = self.store.view(request.path_params["view"])
        return JSONResponse({"Result": {"Name": info.name, "Note": info.note}})

    async def view_fields(self, request: Request) -> Response:
        info = self.store.view(request.path_params["view"])
        return JSONResponse({"Result": [f.to_json() for f in info.fields]})

    async def view_records(self, request: Request) -> Response:
        query = self._read_query(_params(request))
        return JSONResponse({"Result": self.store.select_view(request.path_params["view"], query)})

    # --- outgoing webhooks ----------------------------------------------------------------------
    async def webhooks_list(self, request: Request) -> Response:
        return JSONResponse({"Result": self.webhooks.list_webhooks()})

    async def webhook_create(self, request: Request) -> Response:
        body = await self._object_body(request, "one outgoing webhook")
        return JSONResponse(self.webhooks.create_webhook(body), status_code=201)

    async def webhook_get(self, request: Request) -> Response:
        return JSONResponse({"Result": self.webhooks.get_webhook(request.path_params["hook"])})

    async def webhook_update(self, request: Request) -> Response:
        body = await self._object_body(request, "one outgoing webhook")
        self.webhooks.update_webhook(request.path_params["hook"], body)
        return Response(status_code=200)

    async def webhook_delete(self, request: Request) -> Response:
        self.webhooks.delete_webhook(request.path_params["hook"])
        return Response(status_code=200)

    async def events_list(self, request: Request) -> Response:
        return JSONResponse({"Result": self.webhooks.list_events(request.path_params["hook"])})

    async def event_create(self, request: Request) -> Response:
        body = await self._object_body(request, "one webhook event")
        return JSONResponse(self.webhooks.create_event(request.path_params["hook"], body),
                            status_code=201)

    async def event_get(self, request: Request) -> Response:
        p = request.path_params
        return JSONResponse({"Result": self.webhooks.get_event(p["hook"], p["event"])})

    async def event_update(self, request: Request) -> Response:
        body = await self._object_body(request, "one webhook event")
        self.webhooks.update_event(request.path_params["hook"], request.path_params["event"], body)
        return Response(status_code=200)

    async def event_delete(self, request: Request) -> Response:
        self.webhooks.delete_event(request.path_params["hook"], request.path_params["event"])
        return Response(status_code=200)

    # --- v4 -------------------------------------------------------------------------------------
    async def v4_tables(self, request: Request) -> Response:
        data = [{"tableId": t.id, "name": t.name, "note": t.note} for t in self.store.tables()]
        return JSONResponse({"data": data, "pagination": {
            "page": 1, "pageSize": len(data), "totalRecords": len(data), "totalPages": 1}})

    async def v4_bulk(self, request: Request) -> Response:
        info = self.store.table_by_id(request.path_params["table_id"])
        rows = await self._json_body(request)
        if not isinstance(rows, list):
            raise bad_body("The bulk request body must be a JSON array of records.")
        if not rows:
            raise bad_body("The bulk request body is an empty array.")
        if len(rows) > self.config.max_bulk_rows:
            raise bad_body(f"At most {self.config.max_bulk_rows} records per bulk call.")
        results = self.store.insert_many(info, rows, self.write_options())
        inserted = [r.pk_id for r in results if r.pk_id is not None]
        if inserted and self.webhooks.wants(info.name, "table.recordInsert"):
            self.webhooks.fire(info.name, "table.recordInsert", self.store.rows_by_pk(info, inserted))
        if all(r.error is None for r in results):
            return JSONResponse({"PK_ID": [r.pk_id for r in results]}, status_code=201)
        return JSONResponse({"data": [
            {"status": r.status, "PK_ID": r.pk_id,
             "error": None if r.error is None else {"Code": r.error.code, "Message": r.error.message}}
            for r in results]}, status_code=207)

    # --- sandbox control ------------------------------------------------------------------------
    def _control_base(self, request: Request) -> str:
        return request.scope.get("root_path", "") + "/_emulator"

    async def html_index(self, request: Request) -> Response:
        return HTMLResponse(index_page(self.store, self._control_base(request)))

    async def html_table(self, request: Request) -> Response:
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            page = 1
        try:
            text = table_page(self.store, self._control_base(request),
                              request.path_params["table"], page)
        except CaspioApiError as exc:
            return HTMLResponse(f"<p>{exc.message.replace('<', '&lt;')}</p>", status_code=exc.status)
        return HTMLResponse(text)

    def stats_snapshot(self) -> dict:
        return {**self.stats.snapshot(), "meter": self.meter.snapshot(),
                "faults": self.faults.snapshot()["fired"]}

    async def stats_get(self, request: Request) -> Response:
        return JSONResponse(self.stats_snapshot())

    async def config_get(self, request: Request) -> Response:
        return JSONResponse(config_snapshot(self.config))

    async def config_post(self, request: Request) -> Response:
        try:
            self.config = apply_knobs(self.config, await read_json_object(request))
        except (ValueError, TypeError) as exc:
            return control_error(exc)
        return JSONResponse(config_snapshot(self.config))

    async def views_define(self, request: Request) -> Response:
        """Define a view (Caspio's are made in its UI): ``{"Name", "Note", "Tables": [...],
        "Joins": [{"Left": "T.f", "Right": "U.g", "Type": "INNER"|"LEFT"}], "Fields": [...]}``."""
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise bad_body("The body must be a JSON object.")
            name = check_name(body.get("Name"), "View", self.config.max_table_name_length)
            info = self.store.create_view(name, str(body.get("Note") or ""),
                                          list(body.get("Tables") or []),
                                          list(body.get("Joins") or []), body.get("Fields"))
        except CaspioApiError as exc:
            return error_response(request.scope, exc)
        except (ValueError, TypeError) as exc:
            return error_response(request.scope, bad_body(str(exc)))
        return JSONResponse({"Name": info.name, "Fields": [f.name for f in info.fields]},
                            status_code=201)

    async def views_drop(self, request: Request) -> Response:
        try:
            self.store.delete_view(request.path_params["view"])
        except CaspioApiError as exc:
            return error_response(request.scope, exc)
        return Response(status_code=200)

    async def webhook_log(self, request: Request) -> Response:
        """Every delivery attempt so far, and how many messages are still in flight."""
        return JSONResponse({"pending": self.webhooks.pending,
                             "attempts": self.webhooks.delivery_log()})

    async def reset(self, request: Request) -> Response:
        """Zero the request counters, disarm faults, reset throttle, meter and the webhook log;
        with ``{"data": true}`` also drop every table, view and webhook."""
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        self.stats.reset()
        self.faults.reset()
        self.throttle.reset()
        self.meter.reset()
        self.webhooks.reset_log()
        if isinstance(body, dict) and body.get("data"):
            self.store.reset_data()
            self.webhooks.reset_all()
        return JSONResponse(self.stats_snapshot())


# --- routing and the outer middleware --------------------------------------------------------------
def _rest_routes(emu: CaspioEmulator, prefix: str) -> list[BaseRoute]:
    a = emu.api
    t = f"{prefix}/tables"
    return [
        Route(t, a(emu.tables_list), methods=["GET"]),
        Route(t, a(emu.table_create), methods=["POST"]),
        Route(t + "/{table}", a(emu.table_get), methods=["GET"]),
        Route(t + "/{table}", a(emu.table_delete, write=True), methods=["DELETE"]),
        Route(t + "/{table}/fields", a(emu.fields_list), methods=["GET"]),
        Route(t + "/{table}/fields", a(emu.field_add, write=True), methods=["POST"]),
        Route(t + "/{table}/fields/{field}", a(emu.field_get), methods=["GET"]),
        Route(t + "/{table}/fields/{field}", a(emu.field_update, write=True), methods=["PUT"]),
        Route(t + "/{table}/fields/{field}", a(emu.field_delete, write=True), methods=["DELETE"]),
        Route(t + "/{table}/records", a(emu.records_get), methods=["GET"]),
        Route(t + "/{table}/records", a(emu.records_post, write=True), methods=["POST"]),
        Route(t + "/{table}/records", a(emu.records_put, write=True), methods=["PUT"]),
        Route(t + "/{table}/records", a(emu.records_delete, write=True), methods=["DELETE"]),
        Route(f"{prefix}/views", a(emu.views_list), methods=["GET"]),
        Route(prefix + "/views/{view}", a(emu.view_get), methods=["GET"]),
        Route(prefix + "/views/{view}/records", a(emu.view_records), methods=["GET"]),
        Route(f"{prefix}/outgoingWebhooks", a(emu.webhooks_list), methods=["GET"]),
        Route(f"{prefix}/outgoingWebhooks", a(emu.webhook_create, write=True), methods=["POST"]),
        Route(prefix + "/outgoingWebhooks/{hook}", a(emu.webhook_get), methods=["GET"]),
        Route(prefix + "/outgoingWebhooks/{hook}", a(emu.webhook_update, write=True), methods=["PUT"]),
        Route(prefix + "/outgoingWebhooks/{hook}", a(emu.webhook_delete, write=True),
              methods=["DELETE"]),
        Route(prefix + "/outgoingWebhooks/{hook}/events", a(emu.events_list), methods=["GET"]),
        Route(prefix + "/outgoingWebhooks/{hook}/events", a(emu.event_create, write=True),
              methods=["POST"]),
        Route(prefix + "/outgoingWebhooks/{hook}/events/{event}", a(emu.event_get), methods=["GET"]),
        Route(prefix + "/outgoingWebhooks/{hook}/events/{event}", a(emu.event_update, write=True),
              methods=["PUT"]),
        Route(prefix + "/outgoingWebhooks/{hook}/events/{event}", a(emu.event_delete, write=True),
              methods=["DELETE"]),
    ]


class _Observe(RequestObserver):
    """Pure-ASGI middleware: request id header, the 414 check, counters, one log line."""

    log: logging.Logger = log  # this module's logger, not the shared module's
    emulator: CaspioEmulator

    def request_id(self, scope: Scope) -> str:
        rid = str(uuid.uuid4())
        scope[_RID] = rid  # error bodies carry it as RequestId
        return rid

    def response_headers(self, scope: Scope, rid: str) -> list[tuple[bytes, bytes]]:
        return [(REQUEST_ID_HEADER.lower().encode("latin-1"), rid.encode("latin-1"))]

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _uri_length(scope) > self.emulator.config.max_uri_length:
            exc = CaspioApiError(414, "RequestUriTooLong", "The request URI is longer than "
                                 f"{self.emulator.config.max_uri_length} characters.")
            await error_response(scope, exc)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def finished(self, scope: Scope, template: str, status: int, elapsed_ms: float,
                 rid: str) -> None:
        if not route_path(scope).startswith("/_emulator"):
            self.emulator.stats.record(scope["method"], template, status)
        super().finished(scope, template, status, elapsed_ms, rid)


def _uri_length(scope: Scope) -> int:
    """Length of the request target as sent (percent-encoded path and query), without the
    sandbox's mount prefix, i.e. what follows the host in a real Caspio URL."""
    raw = scope.get("raw_path") or scope["path"].encode()
    root = scope.get("root_path", "").encode()
    if root and raw.startswith(root):
        raw = raw[len(root):]
    query = scope.get("query_string", b"")
    return len(raw) + (len(query) + 1 if query else 0)


def _fallback(routes: list[BaseRoute]) -> Handler:
    """404 ObjectNotFound for an unknown path, 405 for a known path with another method."""
    async def fallback(request: Request) -> Response:
        for route in routes:
            match, _ = route.matches(request.scope)
            if match is Match.PARTIAL:
                return error_response(request.scope, CaspioApiError(
                    405, "MethodNotAllowed",
                    f"The requested resource does not support http method '{request.method}'."))
        return error_response(request.scope, CaspioApiError(
            404, "ObjectNotFound", "The requested resource was not found."))
    return fallback


def create_caspio_app(state_dir: Path | str, config: CaspioConfig | None = None,
                      faults: CaspioFaults | str | None = None) -> Starlette:
    """The emulator (meant to be mounted at ``/caspio``) keeping its state in ``state_dir``.

    ``app.state.caspio`` holds the :class:`CaspioEmulator` (its ``faults``, ``config``, store).
    """
    emu = CaspioEmulator(state_dir, config, faults)
    routes: list[BaseRoute] = [Route("/oauth/token", emu.token, methods=["POST"])]
    routes += _rest_routes(emu, "/integrations/rest/v3")
    routes.append(Route("/integrations/rest/v3/views/{view}/fields", emu.api(emu.view_fields),
                        methods=["GET"]))  # v3 only
    if emu.config.v2_enabled:
        routes += _rest_routes(emu, "/rest/v2")
    if emu.config.v4_enabled:
        routes += [
            Route("/integrations/rest/v4/tables", emu.api(emu.v4_tables), methods=["GET"]),
            Route("/integrations/rest/v4/tables/{table_id}/records/bulk",
                  emu.api(emu.v4_bulk, write=True), methods=["POST"]),
        ]
    if emu.config.control_endpoints:
        routes += [
            Route("/_emulator/", emu.html_index, methods=["GET"]),
            Route("/_emulator", emu.html_index, methods=["GET"]),
            Route("/_emulator/tables/{table}", emu.html_table, methods=["GET"]),
            Route("/_emulator/stats", emu.stats_get, methods=["GET"]),
            Route("/_emulator/faults", emu.faults_get, methods=["GET"]),
            Route("/_emulator/faults", emu.faults_post, methods=["POST"]),
            Route("/_emulator/config", emu.config_get, methods=["GET"]),
            Route("/_emulator/config", emu.config_post, methods=["POST"]),
            Route("/_emulator/reset", emu.reset, methods=["POST"]),
            Route("/_emulator/views", emu.views_define, methods=["POST"]),
            Route("/_emulator/views/{view}", emu.views_drop, methods=["DELETE"]),
            Route("/_emulator/webhooks", emu.webhook_log, methods=["GET"]),
        ]
    known = list(routes)
    routes.append(Route("/{path:path}", _fallback(known), methods=_ALL_METHODS))
    app = Starlette(routes=routes)
    app.add_middleware(_Observe, emulator=emu, routes=known)
    app.state.caspio = emu
    return app


def mount_caspio(app: Starlette, path: str = "/caspio") -> Mount:
    """A Starlette ``Mount`` of a Caspio app at ``path`` (``/caspio`` on the sandbox server)."""
    return Mount(path, app=app)
