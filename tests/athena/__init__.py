"""Helpers shared by the athena client tests.

The emulator fixtures (``fhir_world``, ``start_emulator``, ...) live in ``tests/sandbox/conftest.py``;
test modules here import them by name so pytest registers them. :class:`ScriptedServer` is a tiny
loopback HTTP server for the few behaviours the emulator does not have (paged manifests, v1
``limit``/``offset`` lists, non-JSON gateway errors).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qsl, urlsplit

import httpx

from athena_pipeline.athena.bulk import BulkExportConfig
from athena_pipeline.athena.client import AthenaClient
from athena_pipeline.http import RetryPolicy
from athena_pipeline.sandbox.server import RunningServer

SECRET = "sandbox-secret"
CLIENT_ID = "sandbox-client"

#: Retries that keep tests fast but still exercise backoff and Retry-After.
FAST_RETRY = RetryPolicy(backoff_base=0.02, backoff_max=0.2, max_total_seconds=30.0,
                         retry_after_max=5.0)


def group_of(server: RunningServer) -> str:
    return f"a-1.c-{server.emulator.store.snapshot().practice_id}"


def bulk_config(server: RunningServer, landing: Path, **overrides) -> BulkExportConfig:
    """A bulk configuration pointed at ``server`` with fast polling and retries."""
    values = {
        "fhir_base_url": server.fhir_base, "group_id": group_of(server), "landing_dir": landing,
        "token_url": server.token_url, "auth": "client_secret", "client_id": CLIENT_ID,
        "client_secret": SECRET, "requests_per_second": 500.0, "poll_min_seconds": 0.05,
        "poll_default_seconds": 0.2, "poll_max_seconds": 5.0, "retry": FAST_RETRY,
        "timeout": httpx.Timeout(5.0), "max_export_seconds": 60.0}
    values.update(overrides)
    return BulkExportConfig(**values)


def athena_client(server: RunningServer, **overrides) -> AthenaClient:
    values = {"auth_mode": "client_secret", "token_url": server.token_url, "client_id": CLIENT_ID,
                  "client_secret": SECRET, "requests_per_second": None, "retry": FAST_RETRY,
                  "timeout": httpx.Timeout(5.0),
                  "practice_id": server.emulator.store.snapshot().practice_id}
    values.update(overrides)
    return AthenaClient.create(server.fhir_base, **values)


def read_ndjson(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def kickoffs(records: list[dict]) -> list[dict]:
    return [r for r in records if r["path_template"].endswith("/$export")]


# --- the emulator's own request log ----------------------------------------------------------------
@dataclass
class RequestLog:
    """(method, route template, status) of every request the emulator answered."""

    entries: list[tuple[str, str, int]] = field(default_factory=list)

    def count(self, method: str, template_suffix: str, status: int | None = None) -> int:
        return sum(1 for m, t, s in self.entries
                   if m == method and t.endswith(template_suffix)
                   and (status is None or s == status))


class _Capture(logging.Handler):
    def __init__(self, log: RequestLog) -> None:
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3:
            self.log.entries.append((str(args[0]), str(args[1]), int(args[2])))


@contextmanager
def emulator_requests() -> Iterator[RequestLog]:
    """Capture the emulator's per-request log lines (logger athena_pipeline.sandbox.athena)."""
    logger = logging.getLogger("athena_pipeline.sandbox.athena")
    log = RequestLog()
    handler = _Capture(log)
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield log
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


# --- a scripted loopback server ------------------------------------------------------------------------
Route = Callable[["Request"], tuple[int, dict[str, str], bytes]]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_query: str = ""


class ScriptedServer:
    """``routes[(method, path)] = fn(request) -> (status, headers, body)`` on 127.0.0.1."""

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.requests: list[Request] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                return None

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                req = Request(self.command, parts.path, dict(parse_qsl(parts.query)),
                              {k.lower(): v for k, v in self.headers.items()}, parts.query)
                outer.requests.append(req)
                route = outer.routes.get((self.command, parts.path))
                status, headers, body = (route(req) if route
                                         else (404, {"Content-Type": "text/plain"}, b"no route"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def json_response(status: int, body: object, headers: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()
