"""athenaOne v1 REST read endpoints of the emulator, answered from the world's Data View file.

Endpoints (``{practiceid}`` is the world's practice; every one needs a bearer token with the
v1 scope ``athena/service/Athenanet.MDP.*`` unless the emulator runs in open mode):

- ``GET /v1/{practiceid}/patients/{id}``             -> ``[patient]`` (a one-element array)
- ``GET /v1/{practiceid}/patients?departmentid=``    -> paged ``patients``
- ``GET /v1/{practiceid}/appointments/{id}``         -> ``[appointment]``
- ``GET /v1/{practiceid}/appointments/booked?departmentid=&startdate=&enddate=``
  (+ optional ``providerid``, ``patientid``, ``appointmenttypeid``, ``showcancelled``,
  ``startlastmodified``, ``endlastmodified``)            -> paged ``appointments``
- ``GET /v1/{practiceid}/providers``, ``GET /v1/{practiceid}/departments``  -> paged lists
- anything else under ``/v1/`` -> 404 ``text/plain`` "Service not registered with API gateway."
  (athena's gateway errors carry no JSON)

Conventions copied from athena (spec ``athenahealth-api.md`` §5 and the response samples in
go-athenahealth): lowercase run-together keys; ids mostly as strings; dates ``MM/DD/YYYY``,
datetimes ``MM/DD/YYYY HH:MM:SS``, start times ``HH:MM``; absent values are left out rather
than sent as null. Lists page with ``limit`` (default 1500, clamped to 5000) and 0-based
``offset`` and answer ``{"totalcount", "next", "previous", "<name>": [...]}``, where ``next``
and ``previous`` are relative ``/v1/...`` URLs and ``next`` is absent on the last page.

Soft-deleted Data View rows (``DELETEDDATETIME`` set) do not exist for v1: a read answers 404
and lists leave them out. The JSON of every row is built in DuckDB (``json_object`` wrapped in
``json_merge_patch('{}', ...)``, which drops null members), so pages never loop in Python.

Quota headers, ``X-Request-Id``, the per-second limit, the ``fhir_429``/``slow_fhir`` faults and
the one-line request log (by route template, never ids) come from ``app.py`` as for ping.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from athena_pipeline.sandbox.emulator.config import V1_SCOPE
from athena_pipeline.sandbox.emulator.dataview_store import DataViewUnavailable, JsonPage, table

if TYPE_CHECKING:
    from athena_pipeline.sandbox.emulator.app import Emulator

DEFAULT_LIMIT = 1500
MAX_LIMIT = 5000
GATEWAY_NOT_FOUND = "Service not registered with API gateway."

_DATE = "'%m/%d/%Y'"
_DATETIME = "'%m/%d/%Y %H:%M:%S'"
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _fmt_date(expr: str) -> str:
    return f"strftime({expr}, {_DATE})"


def _fmt_datetime(expr: str) -> str:
    return f"strftime({expr}, {_DATETIME})"


def _text(expr: str) -> str:
    return f"CAST({expr} AS VARCHAR)"


def _object(*pairs: str) -> str:
    """A JSON object without null members (RFC 7396 merge patch drops them)."""
    return "json_merge_patch('{}', json_object(" + ", ".join(pairs) + "))"


# --- the shapes athena answers with ------------------------------------------------------------
_PATIENT_JSON = _object(
    f"'patientid', {_text('p.PATIENTID')}",
    "'firstname', p.FIRSTNAME", "'lastname', p.LASTNAME",
    f"'dob', {_fmt_date('p.DOB')}", "'sex', p.SEX",
    "'address1', p.ADDRESS", "'city', p.CITY", "'state', p.STATE", "'zip', p.ZIP",
    "'homephone', p.PATIENTHOMEPHONE",
    f"'departmentid', {_text('p.CURRENTDEPARTMENTID')}",
    f"'primarydepartmentid', {_text('p.CURRENTDEPARTMENTID')}",
    f"'primaryproviderid', {_text('p.PRIMARYPROVIDERID')}",
    # athena's patient status is active | inactive | prospective; deceased patients are inactive.
    "'status', CASE p.PATIENTSTATUS WHEN 'a' THEN 'active' WHEN 'p' THEN 'prospective' "
    "ELSE 'inactive' END",
    f"'deceaseddate', {_fmt_date('p.DECEASEDDATE')}",
    f"'registrationdate', {_fmt_date('p.REGISTRATIONDATE')}",
    "'race', CASE WHEN p.CDCRACECODE IS NOT NULL THEN json_array(p.CDCRACECODE) END",
    "'racename', p.RACE", "'ethnicitycode', p.CDCETHNICITYCODE", "'language', p.LANGUAGE",
    f"'lastupdated', {_fmt_datetime('p.LASTUPDATED')}",
)
_PATIENT_FROM = f"FROM {table('PATIENT')} p WHERE p.CONTEXTID = ? AND p.DELETEDDATETIME IS NULL"

_APPOINTMENT_JSON = _object(
    f"'appointmentid', {_text('a.APPOINTMENTID')}",
    f"'patientid', {_text('a.PATIENTID')}",
    f"'providerid', {_text('a.PROVIDERID')}",
    f"'departmentid', {_text('a.DEPARTMENTID')}",
    f"'appointmenttypeid', {_text('a.APPOINTMENTTYPEID')}",
    "'appointmenttype', t.APPOINTMENTTYPENAME",
    "'patientappointmenttypename', t.APPOINTMENTTYPENAME",
    f"'date', {_fmt_date('a.APPOINTMENTDATE')}",
    "'starttime', strftime(a.APPOINTMENTSTARTTIME, '%H:%M')",
    "'duration', a.APPOINTMENTDURATION",
    "'appointmentstatus', a.APPOINTMENTSTATUS",
    f"'scheduleddatetime', {_fmt_datetime('a.APPOINTMENTSCHEDULEDDATETIME')}",
    f"'checkindatetime', {_fmt_datetime('a.APPOINTMENTCHECKINDATETIME')}",
    f"'checkoutdatetime', {_fmt_datetime('a.APPOINTMENTCHECKOUTDATETIME')}",
    f"'cancelleddatetime', {_fmt_datetime('a.APPOINTMENTCANCELLEDDATETIME')}",
    "'cancelreasonname', a.APPOINTMENTCANCELREASON",
    f"'rescheduledappointmentid', {_text('a.RESCHEDULEDAPPOINTMENTID')}",
    f"'lastmodified', {_fmt_datetime('a.LASTUPDATED')}",
)
_APPOINTMENT_FROM = (
    f"FROM {table('APPOINTMENT')} a LEFT JOIN {table('APPOINTMENTTYPE')} t "
    "ON t.CONTEXTID = a.CONTEXTID AND t.APPOINTMENTTYPEID = a.APPOINTMENTTYPEID "
    "AND t.DELETEDDATETIME IS NULL "
    "WHERE a.CONTEXTID = ? AND a.DELETEDDATETIME IS NULL")
_APPOINTMENT_ORDER = "a.APPOINTMENTDATE, a.APPOINTMENTSTARTTIME, a.APPOINTMENTID"

_PROVIDER_TYPES = {"MD": "MEDICAL DOCTOR", "DO": "DOCTOR OF OSTEOPATHY",
                   "NP": "NURSE PRACTITIONER", "PA": "PHYSICIAN ASSISTANT"}
_PROVIDER_TYPE_SQL = ("CASE pr.PROVIDERTYPE "
                      + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in _PROVIDER_TYPES.items())
                      + " ELSE pr.PROVIDERTYPE END")
_PROVIDER_JSON = _object(
    "'providerid', pr.PROVIDERID",
    "'firstname', pr.PROVIDERFIRSTNAME", "'lastname', pr.PROVIDERLASTNAME",
    "'displayname', pr.PROVIDERFIRSTNAME || ' ' || pr.PROVIDERLASTNAME || ', ' || pr.PROVIDERTYPE",
    "'schedulingname', pr.PROVIDERLASTNAME || '_' || pr.PROVIDERFIRSTNAME",
    "'npi', TRY_CAST(pr.PROVIDERNPINUMBER AS BIGINT)",
    "'providertypeid', pr.PROVIDERTYPE", f"'providertype', {_PROVIDER_TYPE_SQL}",
    "'specialty', pr.SPECIALTY", "'sex', pr.PROVIDERSEX",
    "'billable', pr.BILLABLEYN = 'Y'", "'entitytype', 'Person'",
    "'supervisingproviderid', pr.SUPERVISINGPROVIDERID",
)
_PROVIDER_FROM = f"FROM {table('PROVIDER')} pr WHERE pr.CONTEXTID = ? AND pr.DELETEDDATETIME IS NULL"

_DEPARTMENT_JSON = _object(
    f"'departmentid', {_text('d.DEPARTMENTID')}",
    "'name', d.DEPARTMENTNAME", "'patientdepartmentname', d.DEPARTMENTNAME",
    "'address', d.DEPARTMENTADDRESS", "'city', d.DEPARTMENTCITY", "'state', d.DEPARTMENTSTATE",
    "'zip', d.DEPARTMENTZIP", "'phone', d.DEPARTMENTPHONE",
    "'placeofservicetypeid', d.PLACEOFSERVICECODE",
    f"'providergroupid', {_text('d.PROVIDERGROUPID')}",
    f"'chartsharinggroupid', {_text('d.CHARTSHARINGGROUPID')}",
    "'servicedepartment', true",
)
_DEPARTMENT_FROM = (f"FROM {table('DEPARTMENT')} d WHERE d.CONTEXTID = ? "
                    "AND d.DELETEDDATETIME IS NULL")


# --- request parsing -----------------------------------------------------------------------------
class BadRequest(Exception):
    """A v1 request athena would refuse with 400; ``body`` is the JSON it answers."""

    def __init__(self, body: dict) -> None:
        super().__init__(body.get("error", "bad request"))
        self.body = body


def _invalid(name: str, expected: str) -> BadRequest:
    return BadRequest({"error": f"Invalid value for {name}.",
                       "detailedmessage": f"{name} must be {expected}."})


def _int(value: str, name: str, *, minimum: int = 0) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise _invalid(name, "an integer") from None
    if n < minimum:
        raise _invalid(name, f"an integer >= {minimum}")
    return n


def _ids(value: str, name: str) -> list[int]:
    """A comma-separated id list (athena accepts several department/provider ids at once)."""
    parts = [p for p in (s.strip() for s in value.split(",")) if p]
    if not parts:
        raise _invalid(name, "one or more comma-separated ids")
    return [_int(p, name, minimum=1) for p in parts]


def _date(value: str, name: str) -> dt.date:
    try:
        return dt.datetime.strptime(value.strip(), "%m/%d/%Y").date()
    except ValueError:
        raise _invalid(name, "a date as MM/DD/YYYY") from None


def _datetime(value: str, name: str) -> dt.datetime:
    text = value.strip()
    for form in ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y"):
        try:
            return dt.datetime.strptime(text, form)
        except ValueError:
            continue
    raise _invalid(name, "a datetime as MM/DD/YYYY HH:MM:SS")


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "y", "yes")


def paging(request: Request) -> tuple[int, int]:
    """(limit, offset) of a list request: limit defaults to 1500 and is clamped to 5000."""
    q = request.query_params
    limit = _int(q["limit"], "limit", minimum=1) if q.get("limit", "").strip() else DEFAULT_LIMIT
    offset = _int(q["offset"], "offset") if q.get("offset", "").strip() else 0
    return min(limit, MAX_LIMIT), offset


def page_links(request: Request, limit: int, offset: int, total: int) -> dict[str, str]:
    """``next`` (unless this is the last page) and ``previous`` (unless the first) as athena
    gives them: relative ``/v1/...`` URLs keeping every other query parameter."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("limit", "offset")]

    def link(at: int) -> str:
        query = urlencode([*kept, ("limit", limit), ("offset", at)], safe="/:")
        return f"{request.url.path}?{query}"

    links: dict[str, str] = {}
    if offset + limit < total:
        links["next"] = link(offset + limit)
    if offset > 0:
        links["previous"] = link(max(0, offset - limit))
    return links


def _list_response(request: Request, name: str, page: JsonPage, limit: int,
                   offset: int) -> Response:
    head = {"totalcount": page.total, **page_links(request, limit, offset, page.total)}
    text = json.dumps(head, separators=(",", ":"))[:-1] + f',"{name}":' + page.items + "}"
    return Response(text, media_type="application/json")


def _error(status: int, body: dict) -> JSONResponse:
    return JSONResponse(body, status_code=status)


# --- handlers --------------------------------------------------------------------------------------
class V1Api:
    """The v1 read endpoints of one emulator (shares its auth, quotas, faults and Data View)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emu = emulator
        self.store = emulator.dataview

    async def _guard(self, request: Request) -> Response | None:
        """Faults, bearer token + v1 scope, then the practice: the order ping answers in."""
        emu = self.emu
        if (resp := await emu.gate(request, "fhir")) is not None:
            return resp
        token, resp = emu.authorize(request, v1=True)
        if resp is not None:
            return resp
        if V1_SCOPE not in token.scopes:
            return _error(403, {"error": "Incorrect permissions.",
                                "detailedmessage": "The access token lacks the athenaOne API scope."})
        if request.path_params["practiceid"] != emu.practice_id():
            return _error(404, {"error": "Invalid practice.",
                                "detailedmessage": "The practice ID does not exist."})
        return None

    def _handler(self, work: Callable[[Request, list], object]) -> Callable:
        """Wrap ``work(request, base_params)`` (run in a thread) with the guard and 400/503s."""
        async def endpoint(request: Request) -> Response:
            if (resp := await self._guard(request)) is not None:
                return resp
            base = [int(request.path_params["practiceid"])]
            try:
                return await run_in_threadpool(work, request, base)
            except BadRequest as exc:
                return _error(400, exc.body)
            except DataViewUnavailable as exc:
                return _error(503, {"error": "Service temporarily unavailable.",
                                    "detailedmessage": str(exc)})
        endpoint.__name__ = work.__name__
        return endpoint

    def _one(self, object_sql: str, from_sql: str, id_column: str, raw_id: str, params: list,
             missing: str) -> Response:
        if not raw_id.isdigit():
            return _error(404, {"error": missing})
        found = self.store.one(object_sql, f"{from_sql} AND {id_column} = ?",
                               [*params, int(raw_id)])
        if found is None:
            return _error(404, {"error": missing})
        return Response("[" + found + "]", media_type="application/json")

    # --- endpoints ----------------------------------------------------------------------------
    def patient(self, request: Request, params: list) -> Response:
        return self._one(_PATIENT_JSON, _PATIENT_FROM, "p.PATIENTID", request.path_params["id"],
                         params, "The patient is not available.")

    def patients(self, request: Request, params: list) -> Response:
        limit, offset = paging(request)
        where = _PATIENT_FROM
        if (dept := request.query_params.get("departmentid", "").strip()):
            where += " AND list_contains(?, p.CURRENTDEPARTMENTID)"
            params = [*params, _ids(dept, "departmentid")]
        page = self.store.page(_PATIENT_JSON, where, params, "p.PATIENTID", limit, offset)
        return _list_response(request, "patients", page, limit, offset)

    def appointment(self, request: Request, params: list) -> Response:
        return self._one(_APPOINTMENT_JSON, _APPOINTMENT_FROM, "a.APPOINTMENTID",
                         request.path_params["id"], params, "The appointment is not available.")

    def booked(self, request: Request, params: list) -> Response:
        q = request.query_params
        required = ("departmentid", "startdate", "enddate")
        missing = [name for name in required if not q.get(name, "").strip()]
        if missing:
            raise BadRequest({"error": "Additional fields are required.", "missingfields": missing})
        limit, offset = paging(request)
        where = (_APPOINTMENT_FROM + " AND list_contains(?, a.DEPARTMENTID)"
                 " AND a.APPOINTMENTDATE BETWEEN ? AND ?")
        params = [*params, _ids(q["departmentid"], "departmentid"),
                  _date(q["startdate"], "startdate"), _date(q["enddate"], "enddate")]
        for name, column in (("providerid", "a.PROVIDERID"), ("patientid", "a.PATIENTID"),
                             ("appointmenttypeid", "a.APPOINTMENTTYPEID")):
            if (value := q.get(name, "").strip()):
                where += f" AND list_contains(?, {column})"
                params.append(_ids(value, name))
        for name, op in (("startlastmodified", ">="), ("endlastmodified", "<=")):
            if (value := q.get(name, "").strip()):
                where += f" AND a.LASTUPDATED {op} ?"
                params.append(_datetime(value, name))
        if not _bool(q.get("showcancelled")):
            where += " AND a.APPOINTMENTSTATUS <> 'x'"
        page = self.store.page(_APPOINTMENT_JSON, where, params, _APPOINTMENT_ORDER, limit, offset)
        return _list_response(request, "appointments", page, limit, offset)

    def providers(self, request: Request, params: list) -> Response:
        limit, offset = paging(request)
        page = self.store.page(_PROVIDER_JSON, _PROVIDER_FROM, params, "pr.PROVIDERID",
                               limit, offset)
        return _list_response(request, "providers", page, limit, offset)

    def departments(self, request: Request, params: list) -> Response:
        limit, offset = paging(request)
        page = self.store.page(_DEPARTMENT_JSON, _DEPARTMENT_FROM, params, "d.DEPARTMENTID",
                               limit, offset)
        return _list_response(request, "departments", page, limit, offset)


async def gateway_not_found(request: Request) -> Response:
    """What athena's API gateway says for a path no service is registered for (no JSON).

    A known path called with the wrong method (``POST .../ping``) keeps Starlette's 405 with
    ``Allow``, as before this catch-all existed: only unknown paths are the gateway's business.
    """
    for route in request.app.router.routes:
        if getattr(route, "endpoint", None) is gateway_not_found:
            continue
        match, _ = route.matches(request.scope)
        if match is Match.PARTIAL:
            allow = ", ".join(sorted(getattr(route, "methods", None) or ()))
            return Response("Method Not Allowed", status_code=405, headers={"Allow": allow},
                            media_type="text/plain")
    return Response(GATEWAY_NOT_FOUND, status_code=404, media_type="text/plain")


def v1_routes(emulator: Emulator) -> list[BaseRoute]:
    """The v1 routes, the gateway catch-all last (route order decides the match)."""
    api = V1Api(emulator)
    h = api._handler
    return [
        Route("/v1/{practiceid}/patients", h(api.patients), methods=["GET"]),
        Route("/v1/{practiceid}/patients/{id}", h(api.patient), methods=["GET"]),
        Route("/v1/{practiceid}/appointments/booked", h(api.booked), methods=["GET"]),
        Route("/v1/{practiceid}/appointments/{id}", h(api.appointment), methods=["GET"]),
        Route("/v1/{practiceid}/providers", h(api.providers), methods=["GET"]),
        Route("/v1/{practiceid}/departments", h(api.departments), methods=["GET"]),
    ]


def gateway_route() -> BaseRoute:
    """Catch-all for ``/v1/...`` paths no endpoint serves; must come after every v1 route."""
    return Route("/v1/{rest:path}", gateway_not_found, methods=_ALL_METHODS)
