"""The athenahealth emulator as a Starlette (ASGI) app: OAuth, FHIR R4, Bulk Data, v1 ping.

Endpoints (paths as on api.platform.athenahealth.com):

- ``POST /oauth2/v1/token``                                   client_credentials (Basic or JWT)
- ``GET  /fhir/r4/metadata``, ``/fhir/r4/.well-known/smart-configuration``   anonymous
- ``GET  /fhir/r4/{type}/{id}``, ``GET /fhir/r4/{type}?...``   read and search (bearer + scope)
- ``GET|POST /fhir/r4/Group/a-1.c-{practiceid}/$export``      bulk kick-off
- ``GET|DELETE /bulkstatus/{job}``, ``GET /bulkfiles/{job}/{file}``   poll, cancel, download
- ``GET  /v1/{practiceid}/ping``
- ``GET  /v1/{practiceid}/patients[/{id}]``, ``/appointments/{id}``, ``/appointments/booked``,
  ``/providers``, ``/departments``   athenaOne v1 reads from the Data View file (``v1.py``);
  any other ``/v1/`` path is the gateway's plain-text 404
- ``GET|POST /_emulator/faults``, ``POST /_emulator/reset``    runtime fault control (sandbox)
- ``/fhir/r4/SubscriptionTopic``, ``/fhir/r4/Subscription[/{id}]``, ``/_emulator/events/...``
  Event Subscriptions and webhook delivery (``subscriptions.py``, ``delivery.py``)

Every response carries the quota headers and ``X-Request-Id``; every request is logged as one
line on ``athena_pipeline.sandbox.athena`` with the route *template* (never concrete ids or
query strings, which can identify patients), the status and the duration.

Open mode (``EmulatorConfig.auth_required=False``), for third-party Bulk Data clients that run
without auth as open reference servers allow: no bearer token is needed anywhere. A valid token
that is sent anyway still names the client (for quotas); anything else in ``Authorization`` is
ignored. Every caller may read everything, export manifests say ``requiresAccessToken: false``
and any caller may poll and download any job. The token endpoint keeps working.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import json
import logging
import math
import re
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from athena_pipeline.sandbox.common.asgi import (
    FaultControl,
    RequestObserver,
    read_token_form,
)
from athena_pipeline.sandbox.emulator.auth import (
    ANONYMOUS,
    AccessToken,
    TokenService,
    UsageMeter,
    scope_allows_read,
)
from athena_pipeline.sandbox.emulator.bulk import BulkExporter, ExportRequest, fhir_instant
from athena_pipeline.sandbox.emulator.config import (
    OPEN_MODE_SCOPES,
    RESOURCE_TYPES,
    V1_SCOPE,
    EmulatorConfig,
)
from athena_pipeline.sandbox.emulator.dataview_store import DataViewStore
from athena_pipeline.sandbox.emulator.delivery import DeliveryWorker
from athena_pipeline.sandbox.emulator.faults import FaultInjector
from athena_pipeline.sandbox.emulator.fhir_store import FhirStore, StoreUnavailable
from athena_pipeline.sandbox.emulator.subscriptions import control_routes, subscription_routes
from athena_pipeline.sandbox.emulator.v1 import gateway_route, v1_routes
from athena_pipeline.sandbox.world import World

log = logging.getLogger("athena_pipeline.sandbox.athena")

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
EXPORT_PARAMS = {"_type", "_since", "_outputFormat"}
_CLIENT_KEY = "athena_emulator.client"
_CHUNK = 1 << 20
_INSTANT_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_DATE_PARAM_RE = re.compile(
    r"(?P<y>\d{4})(-(?P<mo>\d{2})(-(?P<d>\d{2})(T(?P<h>\d{2}):(?P<mi>\d{2})"
    r"(:(?P<s>\d{2})(?P<frac>\.\d{1,6})?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?")


class TruncatedDownload(Exception):
    """Raised on purpose to drop a connection mid-file (fault ``truncate``)."""


class _QuietTruncation(logging.Filter):
    """Keep uvicorn from logging a traceback for a truncation we caused on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        return not isinstance(exc, TruncatedDownload)


_QUIET = _QuietTruncation()


# --- small response helpers ------------------------------------------------------------------
def operation_outcome(status: int, code: str, diagnostics: str, *, severity: str = "error",
                      headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}
    return JSONResponse(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def athena_error(status: int, error: str, detail: str,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detailedmessage": detail}, status_code=status,
                        headers=headers)


def _fhir_text(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status_code=status, headers=headers, media_type=FHIR_JSON)


def _parse_instant(value: str) -> dt.datetime | None:
    """A FHIR instant (timezone required) as naive UTC, or None when malformed."""
    value = value.strip().replace(" ", "+")  # an unencoded '+' arrives as a space
    if not _INSTANT_RE.fullmatch(value):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC).replace(tzinfo=None)


def _date_range(value: str) -> tuple[dt.datetime, dt.datetime] | None:
    """[low, high) naive-UTC range covered by a FHIR date/dateTime/instant at its precision."""
    m = _DATE_PARAM_RE.fullmatch(value.strip().replace(" ", "+"))
    if not m:
        return None
    g = m.groupdict()
    try:  # a dateTime without a zone is taken as UTC
        y = int(g["y"])
        if g["mo"] is None:
            lo = dt.datetime(y, 1, 1)
            return lo, dt.datetime(y + 1, 1, 1)
        mo = int(g["mo"])
        if g["d"] is None:
            lo = dt.datetime(y, mo, 1)
            return lo, (dt.datetime(y + 1, 1, 1) if mo == 12 else dt.datetime(y, mo + 1, 1))
        d = int(g["d"])
        if g["h"] is None:
            lo = dt.datetime(y, mo, d)
            return lo, lo + dt.timedelta(days=1)
        lo = dt.datetime(y, mo, d, int(g["h"]), int(g["mi"]), int(g["s"] or 0))
        if g["frac"]:
            lo += dt.timedelta(microseconds=int((g["frac"][1:] + "000000")[:6]))
            width = dt.timedelta(microseconds=1)
        else:
            width = dt.timedelta(seconds=1 if g["s"] is not None else 60)
        if g["tz"] and g["tz"] != "Z":
            sign = 1 if g["tz"][0] == "+" else -1
            lo -= sign * dt.timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][4:6]))
        return lo, lo + width
    except ValueError:
        return None


def _last_updated_filters(values: list[str]) -> list[tuple[str, dt.datetime]] | None:
    filters: list[tuple[str, dt.datetime]] = []
    for raw in values:
        prefix, rest = (raw[:2], raw[2:]) if raw[:2].isalpha() else ("eq", raw)
        rng = _date_range(rest)
        if rng is None:
            return None
        lo, hi = rng
        if prefix == "eq":
            filters += [(">=", lo), ("<", hi)]
        elif prefix in ("gt", "sa"):
            filters.append((">=", hi))
        elif prefix == "ge":
            filters.append((">=", lo))
        elif prefix in ("lt", "eb"):
            filters.append(("<", lo))
        elif prefix == "le":
            filters.append(("<", hi))
        else:
            return None
    return filters


def _encode_cursor(last_id: str) -> str:
    raw = json.dumps({"after": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    after = data.get("after") if isinstance(data, dict) else None
    return after if isinstance(after, str) else None


def _strip_reference(value: str, rtype: str) -> str:
    marker = f"{rtype}/"
    return value.rsplit(marker, 1)[-1] if marker in value else value


# --- the emulator ----------------------------------------------------------------------------
class Emulator(FaultControl):
    """All state of one emulator instance and its request handlers.

    ``faults_get``/``faults_post`` (``/_emulator/faults``) come from :class:`FaultControl`.
    """

    faults: FaultInjector

    def __init__(self, world_dir: Path, config: EmulatorConfig, faults: FaultInjector) -> None:
        self.world_dir = Path(world_dir)
        self.config = config
        self.faults = faults
        self.store = FhirStore(self.world_dir)
        self.meter = UsageMeter(config)
        self.tokens = TokenService(config, self.meter)
        self.exporter = BulkExporter(self.store, config)
        self.dataview = DataViewStore(self.world_dir)
        #: Event Subscriptions: store + delivery worker (started by server.py, not here).
        self.events = DeliveryWorker(self.world_dir, self.store)

    # --- shared steps ------------------------------------------------------------------------
    def base_url(self, request: Request) -> str:
        if self.config.public_base_url:
            return self.config.public_base_url.rstrip("/")
        return str(request.base_url).rstrip("/")

    def retry_after(self, seconds: float) -> str:
        return self.faults.retry_after(seconds, self.config.wall_clock())

    def practice_id(self) -> str:
        try:
            return self.store.snapshot().practice_id
        except StoreUnavailable:
            return str(World.load(self.world_dir).practice_id)

    async def gate(self, request: Request, cls: str) -> Response | None:
        """Faults that hit a request before anything else: slowness, then a 429."""
        slow = self.faults.take(f"slow_{cls}") or self.faults.take("slow")
        if slow is not None and slow.arg:
            await anyio.sleep(slow.arg)
        if self.faults.take(f"{cls}_429") is None:
            return None
        headers = {"Retry-After": self.retry_after(self.faults.retry_after_seconds)}
        if cls == "token":
            return JSONResponse({"error": "rate_limit_exceeded",
                                 "error_description": "Too many requests (emulated)."},
                                status_code=429, headers=headers)
        if request.url.path.startswith("/v1/"):
            return athena_error(429, "Too many requests.", "Rate limit exceeded (emulated).",
                                headers)
        return operation_outcome(429, "throttled", "Too many requests (emulated).",
                                 headers=headers)

    def authorize(self, request: Request, v1: bool = False
                  ) -> tuple[AccessToken | None, Response | None]:
        """Check the bearer token (and the daily/per-second allowance) of an API call."""
        def unauthorized(reason: str) -> Response:
            if v1:
                return athena_error(401, "Incorrect permissions.", "Bad auth.")
            diag = {"missing": "A bearer access token is required.",
                    "unknown": "The access token is not valid.",
                    "expired": "The access token has expired."}[reason]
            error = "" if reason == "missing" else ', error="invalid_token"'
            return operation_outcome(401, "login", diag, headers={
                "WWW-Authenticate": f'Bearer realm="athenahealth"{error}'})

        authorization = request.headers.get("authorization")
        token, reason = self.tokens.check_bearer(authorization)
        if not self.config.auth_required:  # open mode: a token only names the client
            token = AccessToken(token="", client_id=token.client_id if token else ANONYMOUS,
                                scopes=OPEN_MODE_SCOPES, expires_at=math.inf,
                                environment=self.config.environment)
        elif token is not None and self.faults.take("bearer_expired") is not None:
            token, reason = None, "expired"
        if token is None:
            return None, unauthorized(reason)
        request.scope[_CLIENT_KEY] = token.client_id
        refused = self.meter.api_call(token.client_id)
        if refused is not None:
            why, wait = refused
            headers = {"Retry-After": self.retry_after(wait)}
            text = ("Daily API quota exceeded." if why == "daily"
                    else "Too many requests per second.")
            if v1:
                return None, athena_error(429, "Too many requests.", text, headers)
            return None, operation_outcome(429, "throttled", text, headers=headers)
        return token, None

    @staticmethod
    def forbidden(what: str) -> Response:
        return operation_outcome(403, "forbidden",
                                 f"The access token lacks a scope to read {what}.")

    # --- OAuth ------------------------------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        if (resp := await self.gate(request, "token")) is not None:
            return resp
        data = await read_token_form(request)
        if isinstance(data, Response):
            return data
        outcome = self.tokens.token_request(data, request.headers.get("authorization"),
                                            self.base_url(request) + request.url.path)
        request.scope[_CLIENT_KEY] = outcome.client_id
        headers = dict(outcome.headers)
        if outcome.retry_after is not None:
            headers["Retry-After"] = self.retry_after(outcome.retry_after)
        return JSONResponse(outcome.body, status_code=outcome.status, headers=headers)

    # --- FHIR discovery -------------------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        base = self.base_url(request)
        fhir = f"{base}/fhir/r4"
        resources = [
            {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}],
             "searchParam": [{"name": "_id", "type": "token"},
                             {"name": "_lastUpdated", "type": "date"},
                             *([] if t == "Patient" else [{"name": "patient", "type": "reference"}])]}
            for t in RESOURCE_TYPES
        ]
        resources.append({"type": "Group", "operation": [
            {"name": "export", "definition": "https://fhir.athena.io/OperationDefinition/ah-group-export"}]})
        body = {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2024-01-01",
            "kind": "instance",
            "software": {"name": "athena-pipeline athenahealth emulator"},
            "implementation": {"description": "athenahealth FHIR R4 (sandbox emulator)",
                               "url": fhir},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
            "implementationGuide": [
                "http://hl7.org/fhir/uv/bulkdata/ImplementationGuide/hl7.fhir.uv.bulkdata|2.0.0",
                "http://hl7.org/fhir/uv/bulkdata/ImplementationGuide/hl7.fhir.uv.bulkdata|1.0.1"],
            "rest": [{
                "mode": "server",
                "security": {
                    "service": [{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR"}]}],
                    "extension": [{
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [{"url": "token", "valueUri": f"{base}/oauth2/v1/token"}]}],
                },
                "resource": resources,
                "operation": [{"name": "export", "definition":
                               "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}],
            }],
        }
        return JSONResponse(body, media_type=FHIR_JSON)

    async def smart_configuration(self, request: Request) -> Response:
        base = self.base_url(request)
        scopes = ["system/*.read", *(f"system/{t}.read" for t in RESOURCE_TYPES), V1_SCOPE]
        return JSONResponse({
            "issuer": base,
            "token_endpoint": f"{base}/oauth2/v1/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(self.config.jwt_algorithms),
            "scopes_supported": scopes,
            "capabilities": ["client-confidential-symmetric", "client-confidential-asymmetric",
                             "permission-v1"],
        })

    # --- FHIR read / search ---------------------------------------------------------------------
    async def read(self, request: Request) -> Response:
        if (resp := await self.gate(request, "fhir")) is not None:
            return resp
        token, resp = self.authorize(request)
        if resp is not None:
            return resp
        rtype, rid = request.path_params["type"], request.path_params["id"]
        if rtype not in RESOURCE_TYPES:
            return operation_outcome(404, "not-supported", "Unsupported resource type.")
        if not scope_allows_read(token.scopes, rtype):
            return self.forbidden(rtype)
        found = await run_in_threadpool(self.store.read, rtype, rid)
        if found.resource is None:
            if found.deleted:
                return operation_outcome(410, "deleted", "The resource has been deleted.")
            return operation_outcome(404, "not-found", "No resource with that id.")
        headers = {}
        if found.last_updated is not None:
            stamp = found.last_updated.replace(tzinfo=dt.UTC).timestamp()
            headers["Last-Modified"] = email.utils.formatdate(stamp, usegmt=True)
        return _fhir_text(200, found.resource, headers)

    async def search(self, request: Request) -> Response:
        if (resp := await self.gate(request, "fhir")) is not None:
            return resp
        token, resp = self.authorize(request)
        if resp is not None:
            return resp
        rtype = request.path_params["type"]
        if rtype not in RESOURCE_TYPES:
            return operation_outcome(404, "not-supported", "Unsupported resource type.")
        if not scope_allows_read(token.scopes, rtype):
            return self.forbidden(rtype)
        q = request.query_params

        count = self.config.search_default_count
        if "_count" in q:
            try:
                count = int(q["_count"])
            except ValueError:
                count = -1
            if count < 0:
                return operation_outcome(400, "invalid", "_count must be a non-negative integer.")
            count = min(count, self.config.search_max_count)

        def id_set(name: str, ref_type: str) -> set[str] | None:
            values = q.getlist(name)
            if not values:
                return None
            sets = [{_strip_reference(v.strip(), ref_type) for v in raw.split(",") if v.strip()}
                    for raw in values]
            return set.intersection(*sets)

        ids = id_set("_id", rtype)
        patients = id_set("patient", "Patient")
        subjects = id_set("subject", "Patient")
        if subjects is not None:
            patients = subjects if patients is None else patients & subjects
        practice = q.get("ah-practice")
        if practice is not None:
            ref = _strip_reference(practice, "Organization")
            if ref != f"a-1.Practice-{self.store.snapshot().practice_id}":
                ids = set()
        last_updated = _last_updated_filters(q.getlist("_lastUpdated"))
        if last_updated is None:
            return operation_outcome(400, "invalid", "_lastUpdated must be [prefix]date with "
                                     "prefix eq, gt, ge, lt, le, sa or eb.")
        after = None
        if "cursor" in q:
            after = _decode_cursor(q["cursor"])
            if after is None:
                return operation_outcome(400, "invalid", "The cursor is not valid.")
        page = await run_in_threadpool(
            lambda: self.store.search(
                rtype, ids=sorted(ids) if ids is not None else None,
                patients=sorted(patients) if patients is not None else None,
                last_updated=last_updated, after_id=after, count=count))

        fhir = f"{self.base_url(request)}/fhir/r4"
        kept = [(k, v) for k, v in q.multi_items() if k != "cursor"]
        self_url = f"{fhir}/{rtype}" + ("?" + request.url.query if request.url.query else "")
        links = [{"relation": "self", "url": self_url}]
        if page.has_more and page.rows:
            params = kept + [("cursor", _encode_cursor(page.rows[-1][0]))]
            links.append({"relation": "next", "url": f"{fhir}/{rtype}?{urlencode(params)}"})
        entries = ",".join(
            '{"fullUrl":' + json.dumps(f"{fhir}/{rtype}/{rid}") + ',"resource":' + text
            + ',"search":{"mode":"match"}}'
            for rid, text in page.rows)
        head = {
            "resourceType": "Bundle", "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": fhir_instant(dt.datetime.now(dt.UTC)
                                                 .replace(tzinfo=None, microsecond=0))},
            "type": "searchset", "total": page.total, "link": links,
        }
        text = json.dumps(head, separators=(",", ":"))[:-1] + ',"entry":[' + entries + "]}"
        return _fhir_text(200, text)

    # --- v1 --------------------------------------------------------------------------------------
    async def ping(self, request: Request) -> Response:
        if (resp := await self.gate(request, "fhir")) is not None:
            return resp
        token, resp = self.authorize(request, v1=True)
        if resp is not None:
            return resp
        if V1_SCOPE not in token.scopes:
            return athena_error(403, "Incorrect permissions.",
                                "The access token lacks the athenaOne API scope.")
        if request.path_params["practiceid"] != self.practice_id():
            return athena_error(404, "Invalid practice.", "The practice ID does not exist.")
        return JSONResponse({"pong": "true"})

    # --- bulk export -------------------------------------------------------------------------------
    async def _export_params(self, request: Request) -> list[tuple[str, str]] | Response:
        if request.method == "GET":
            return list(request.query_params.multi_items())
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return operation_outcome(400, "invalid", "The body must be a FHIR Parameters resource.")
        if not isinstance(body, dict) or body.get("resourceType", "Parameters") != "Parameters":
            return operation_outcome(400, "invalid", "The body must be a FHIR Parameters resource.")
        params: list[tuple[str, str]] = list(request.query_params.multi_items())
        for p in body.get("parameter") or []:
            name = p.get("name", "") if isinstance(p, dict) else ""
            value = next((v for k, v in p.items() if k.startswith("value")), "") \
                if isinstance(p, dict) else ""
            params.append((name, value if isinstance(value, str) else json.dumps(value)))
        return params

    async def kickoff(self, request: Request) -> Response:
        if (resp := await self.gate(request, "kickoff")) is not None:
            return resp
        token, resp = self.authorize(request)
        if resp is not None:
            return resp
        group_id = request.path_params["group_id"]
        practice_id = self.store.snapshot().practice_id
        if group_id != f"a-1.c-{practice_id}":
            return operation_outcome(404, "not-found", "No such Group.")

        prefer = {p.strip().lower().replace(" ", "")
                  for p in re.split(r"[,;]", request.headers.get("prefer", ""))}
        if "respond-async" not in prefer:
            return operation_outcome(400, "invalid", "The Prefer: respond-async header is required.")
        lenient = "handling=lenient" in prefer
        accept = request.headers.get("accept")
        if accept:
            kinds = {a.split(";")[0].strip().lower() for a in accept.split(",")}
            if not kinds & {"application/fhir+json", "*/*"}:
                return operation_outcome(400, "invalid", "Accept must be application/fhir+json.")

        params = await self._export_params(request)
        if isinstance(params, Response):
            return params
        unsupported = sorted({k for k, _ in params if k not in EXPORT_PARAMS})
        if unsupported and not lenient:
            return operation_outcome(400, "not-supported",
                                     f"Unsupported parameter(s): {', '.join(unsupported)}. "
                                     "Send Prefer: handling=lenient to ignore them.")
        values: dict[str, list[str]] = {}
        for k, v in params:
            values.setdefault(k, []).append(v)

        formats = values.get("_outputFormat", [])
        if len(formats) > 1 or (formats and formats[0] not in OUTPUT_FORMATS):
            return operation_outcome(400, "invalid", "_outputFormat must be application/fhir+ndjson "
                                     "(or application/ndjson, ndjson).")
        types: list[str] = []
        for raw in values.get("_type", []):
            types += [t.strip() for t in raw.split(",") if t.strip()]
        unknown = sorted(set(types) - set(RESOURCE_TYPES))
        if unknown:
            return operation_outcome(400, "not-supported",
                                     f"Unsupported resource type(s) in _type: {', '.join(unknown)}.")
        since = None
        if "_since" in values:
            if len(values["_since"]) > 1:
                return operation_outcome(400, "invalid", "_since may be given once.")
            since = _parse_instant(values["_since"][0])
            if since is None:
                return operation_outcome(400, "invalid", "_since must be a FHIR instant such as "
                                         "2024-01-01T00:00:00Z.")
        if types:
            denied = [t for t in dict.fromkeys(types) if not scope_allows_read(token.scopes, t)]
            if denied:
                return self.forbidden(", ".join(denied))
            chosen = tuple(dict.fromkeys(types))
        else:
            chosen = tuple(t for t in RESOURCE_TYPES if scope_allows_read(token.scopes, t))
            if not chosen:
                return self.forbidden("any resource type")

        running = self.exporter.running_for(group_id, token.client_id)
        if running is not None:
            wait = self.config.concurrent_export_retry_after_seconds
            return operation_outcome(429, "throttled",
                                     "An export for this group is already in progress.",
                                     headers={"Retry-After": self.retry_after(wait)})
        lines = self.faults.take("error_lines")
        base = self.base_url(request)
        request_url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        job = self.exporter.start(
            ExportRequest(group_id=group_id, client_id=token.client_id, types=chosen,
                          since=since, request_url=request_url),
            error_lines=int(lines.arg or 0) if lines is not None else 0)
        return operation_outcome(202, "informational", "Export accepted.", severity="information",
                                 headers={"Content-Location": f"{base}/bulkstatus/{job.id}"})

    def _job_for(self, job_id: str, token: AccessToken):
        job = self.exporter.get(job_id)
        owner_only = self.config.auth_required  # open mode: any caller may see any job
        if job is None or (owner_only and job.request.client_id != token.client_id):
            why = ("The export has expired; start a new one." if self.exporter.was_expired(job_id)
                   else "No such export job.")
            return None, operation_outcome(404, "not-found", why)
        return job, None

    async def _job_request(self, request: Request, kind: str):
        """Faults for ``kind``, then the bearer token, then the caller's job: (job, None) or (None, error)."""
        if (resp := await self.gate(request, kind)) is not None:
            return None, resp
        token, resp = self.authorize(request)
        if resp is not None:
            return None, resp
        return self._job_for(request.path_params["job_id"], token)

    async def status(self, request: Request) -> Response:
        job, resp = await self._job_request(request, "poll")
        if resp is not None:
            return resp
        if request.method == "DELETE":
            self.exporter.cancel(job.id)
            return operation_outcome(202, "informational", "Export cancelled.",
                                     severity="information")
        if self.faults.take("poll_500") is not None:
            return operation_outcome(500, "exception", "Internal server error (emulated).",
                                     severity="fatal")
        if self.faults.take("poll_transient") is not None:
            return operation_outcome(500, "transient", "Temporary failure; poll again (emulated).")
        now = self.config.wall_clock()
        if job.in_progress(now):
            if self.config.enforce_poll_interval and now < job.next_poll_at:
                return operation_outcome(
                    429, "throttled", "Polling too frequently; honour Retry-After.",
                    headers={"Retry-After": self.retry_after(job.next_poll_at - now)})
            wait = self.config.poll_retry_after_seconds
            headers = {"X-Progress": self.exporter.progress(job)}
            if wait is not None:  # without a hint there is no pace to enforce
                job.next_poll_at = now + wait
                headers["Retry-After"] = self.retry_after(wait)
            return Response(status_code=202, headers=headers)
        if job.state == "failed":
            return operation_outcome(500, "exception", "The export failed.", severity="fatal")
        headers = {}
        if (expires := self.exporter.expires_header(job)) is not None:
            headers["Expires"] = expires
        return JSONResponse(self.exporter.manifest(job, self.base_url(request)), headers=headers)

    async def download(self, request: Request) -> Response:
        job, resp = await self._job_request(request, "file")
        if resp is not None:
            return resp
        found = self.exporter.file(job, request.path_params["name"])
        if found is None:
            return operation_outcome(404, "not-found", "No such file in this export.")
        if self.faults.take("files_expired") is not None:
            return operation_outcome(404, "not-found", "The file has expired; start a new export.")
        _, path = found
        gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
        size = path.stat().st_size
        headers = {"Cache-Control": "no-store"}
        if self.faults.take("truncate") is not None:
            cut = await run_in_threadpool(_mid_line_cut, path, size)
            if not gzip:
                headers["Content-Length"] = str(size)
            return self._stream(path, cut, gzip, headers, abort=True)
        if self.faults.take("truncate_clean") is not None:
            cut = await run_in_threadpool(_mid_line_cut, path, size)
            if not gzip:
                headers["Content-Length"] = str(cut)
            return self._stream(path, cut, gzip, headers, abort=False)
        if gzip:
            return self._stream(path, size, True, headers, abort=False)
        return FileResponse(path, media_type=NDJSON, headers=headers)

    @staticmethod
    def _stream(path: Path, limit: int, gzip: bool, headers: dict[str, str],
                abort: bool) -> Response:
        if gzip:
            headers = {**headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}

        async def body() -> AsyncIterator[bytes]:
            comp = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
            with await anyio.to_thread.run_sync(path.open, "rb") as f:
                left = limit
                while left > 0:
                    chunk = await anyio.to_thread.run_sync(f.read, min(_CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    out = comp.compress(chunk) if comp else chunk
                    if out:
                        yield out
            if abort:
                if comp:
                    yield comp.flush(zlib.Z_SYNC_FLUSH)
                raise TruncatedDownload("connection dropped on purpose (fault truncate)")
            if comp:
                yield comp.flush()

        return StreamingResponse(body(), headers=headers, media_type=NDJSON)

    # --- runtime control -------------------------------------------------------------------------
    async def reset(self, request: Request) -> Response:
        """Disarm all faults and zero the fired counters and quota counters."""
        self.faults.reset()
        self.meter.reset()
        return JSONResponse(self.faults.snapshot())


def _mid_line_cut(path: Path, size: int) -> int:
    """A byte offset roughly half-way through the file that falls inside a line."""
    if size <= 1:
        return 0
    cut = max(1, size // 2)
    with open(path, "rb") as f:
        f.seek(cut - 1)
        window = f.read(min(4096, size - cut + 1))
    # Move forward until neither the last byte sent nor the first byte withheld is a newline,
    # so the client really gets half a line (not a whole line missing only its "\n").
    for i in range(len(window) - 1):
        if window[i] != 0x0A and window[i + 1] != 0x0A:
            return cut + i
    return cut


def _unavailable(handler):
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            return operation_outcome(503, "exception", str(exc))
    wrapped.__name__ = handler.__name__
    return wrapped


# --- middleware ----------------------------------------------------------------------------------
class _Observe(RequestObserver):
    """Pure-ASGI middleware: request id, quota headers, one log line per request."""

    log: logging.Logger = log  # this module's logger, not the shared module's
    emulator: Emulator

    def request_id(self, scope: Scope) -> str:
        """The caller's ``X-Request-Id`` when it is a sane token, else a fresh UUID."""
        rid = _request_header(scope, "x-request-id") or ""
        if not re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", rid):
            rid = str(uuid.uuid4())
        return rid

    def response_headers(self, scope: Scope, rid: str) -> list[tuple[bytes, bytes]]:
        client = (scope.get(_CLIENT_KEY)
                  or self.emulator.tokens.client_of(_request_header(scope, "authorization"))
                  or ANONYMOUS)
        extra = self.emulator.meter.headers(client)
        extra["X-Request-Id"] = rid
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]

    def finished(self, scope: Scope, template: str, status: int, elapsed_ms: float,
                 rid: str) -> None:
        self.log.info("%s %s %s %.1fms", scope["method"], template, status, elapsed_ms,
                      extra={"request_id": rid})


def _request_header(scope: Scope, name: str) -> str | None:
    """The value of request header ``name`` (lower case); the last one wins when repeated."""
    found = None
    for k, v in scope["headers"]:
        if k.decode("latin-1").lower() == name:
            found = v.decode("latin-1")
    return found


def create_app(world_dir: Path | str, config: EmulatorConfig | None = None,
               faults: FaultInjector | str | None = None) -> Starlette:
    """The emulator for the world in ``world_dir``. ``app.state.emulator`` holds its state."""
    config = config or EmulatorConfig()
    if not isinstance(faults, FaultInjector):
        faults = FaultInjector(faults)
    emu = Emulator(Path(world_dir), config, faults)
    routes: list[BaseRoute] = [
        Route("/oauth2/v1/token", emu.token, methods=["POST"]),
        Route("/fhir/r4/metadata", emu.metadata, methods=["GET"]),
        Route("/fhir/r4/.well-known/smart-configuration", emu.smart_configuration, methods=["GET"]),
        Route("/fhir/r4/Group/{group_id}/$export", _unavailable(emu.kickoff),
              methods=["GET", "POST"]),
        *subscription_routes(emu),  # before the generic /fhir/r4/{type} routes
        Route("/fhir/r4/{type}", _unavailable(emu.search), methods=["GET"]),
        Route("/fhir/r4/{type}/{id}", _unavailable(emu.read), methods=["GET"]),
        Route("/v1/{practiceid}/ping", emu.ping, methods=["GET"]),
        *v1_routes(emu),
        gateway_route(),  # after every /v1 route: unknown /v1 paths get the gateway's 404
        Route("/bulkstatus/{job_id}", _unavailable(emu.status), methods=["GET", "DELETE"]),
        Route("/bulkfiles/{job_id}/{name}", _unavailable(emu.download), methods=["GET"]),
    ]
    if config.control_endpoints:
        routes += [
            Route("/_emulator/faults", emu.faults_get, methods=["GET"]),
            Route("/_emulator/faults", emu.faults_post, methods=["POST"]),
            Route("/_emulator/reset", emu.reset, methods=["POST"]),
            *control_routes(emu),
        ]
    uvicorn_error = logging.getLogger("uvicorn.error")
    if _QUIET not in uvicorn_error.filters:
        uvicorn_error.addFilter(_QUIET)
    app = Starlette(routes=routes,
                    middleware=[Middleware(_Observe, emulator=emu, routes=routes)])
    app.state.emulator = emu
    return app
