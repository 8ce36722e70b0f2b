"""HTTP plumbing both emulators share: control JSON, the token form, the observing middleware.

Why here: the athenahealth and Caspio emulators expose the same runtime fault control
(``GET``/``POST /_emulator/faults``), read OAuth token requests the same way (form-encoded or
a 400), and wrap their apps in the same kind of pure-ASGI middleware (a request id on every
response, the route *template* of every request, one log line). What differs (which request
id, which extra headers, what else happens when a request ends) is a hook of
:class:`RequestObserver`; the fault endpoints differ only by the registry's settings, which
:meth:`FaultRegistry.apply_control` handles.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from athena_pipeline.sandbox.common.faults import FaultRegistry


async def read_json_object(request: Request) -> dict[str, Any]:
    """A control request's JSON body (empty means ``{}``).

    Raises ValueError for invalid JSON and TypeError for anything but an object, which the
    control endpoints answer as ``400 {"error": ...}`` (:func:`control_error`).
    """
    body = json.loads(await request.body() or b"{}")
    if not isinstance(body, dict):
        raise TypeError("body must be a JSON object")
    return body


def control_error(exc: Exception) -> JSONResponse:
    """The control endpoints' answer to a bad request: 400 with the error's message."""
    return JSONResponse({"error": str(exc)}, status_code=400)


async def read_token_form(request: Request) -> dict[str, str] | JSONResponse:
    """The string fields of an OAuth token request, or the 400 answered when the body is not
    ``application/x-www-form-urlencoded`` (RFC 6749 §4.4.2 says it must be)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/x-www-form-urlencoded"):
        return JSONResponse({"error": "invalid_request",
                             "error_description": "Use application/x-www-form-urlencoded."},
                            status_code=400)
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


class FaultControl:
    """The ``/_emulator/faults`` handlers, for an emulator that keeps its registry in ``faults``."""

    faults: FaultRegistry

    async def faults_get(self, request: Request) -> Response:
        return JSONResponse(self.faults.snapshot())

    async def faults_post(self, request: Request) -> Response:
        """Arm, disarm or reseed at runtime (body: see :meth:`FaultRegistry.apply_control`)."""
        try:
            self.faults.apply_control(await read_json_object(request))
        except (ValueError, TypeError, AttributeError) as exc:
            return control_error(exc)
        return JSONResponse(self.faults.snapshot())


def route_template(routes: list[BaseRoute], scope: Scope) -> str:
    """The path template of the first route that matches ``scope`` (never concrete ids)."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", "<route>")
    return "<unmatched>"


class RequestObserver:
    """Pure-ASGI middleware skeleton: request id, extra response headers, one line per request.

    Pure ASGI rather than ``BaseHTTPMiddleware`` so streamed downloads pass through untouched.
    Subclasses choose the request id (:meth:`request_id`), the headers every response gets
    (:meth:`response_headers`), how the app is called (:meth:`dispatch`) and what happens
    when a request ends (:meth:`finished`, which logs on :attr:`log`).
    """

    log: logging.Logger = logging.getLogger(__name__)

    def __init__(self, app: ASGIApp, emulator: Any, routes: list[BaseRoute]) -> None:
        self.app = app
        self.emulator = emulator
        self.routes = routes

    def _template(self, scope: Scope) -> str:
        return route_template(self.routes, scope)

    def request_id(self, scope: Scope) -> str:
        """The id this request is known by: a fresh UUID (subclasses may take the caller's)."""
        return str(uuid.uuid4())

    def response_headers(self, scope: Scope, rid: str) -> list[tuple[bytes, bytes]]:
        """Raw headers appended to the response, computed when it starts."""
        return []

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def finished(self, scope: Scope, template: str, status: int, elapsed_ms: float,
                 rid: str) -> None:
        """Log the request by method, route template, status and duration."""
        self.log.info("%s %s %s %.1fms", scope["method"], template, status, elapsed_ms)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = self.request_id(scope)
        template = self._template(scope)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = list(message.get("headers", []))
                raw += self.response_headers(scope, rid)
                message = {**message, "headers": raw}
            await send(message)

        try:
            await self.dispatch(scope, receive, send_wrapper)
        finally:
            self.finished(scope, template, status, (time.perf_counter() - started) * 1000, rid)
