"""Helpers shared by the Caspio client and spec tests: an emulator on loopback and a fast client.

The Caspio emulator (``athena_pipeline.sandbox.caspio``) runs in a thread on an ephemeral port,
mounted at ``/caspio`` like ``CASPIO_BASE_URL``; its state lives in the test's tmp dir. Tests
observe what actually went over the wire with httpx event hooks on the client's own connection
pool, and what Caspio holds by reading it back, never by mocking.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from athena_pipeline.caspio.client import CaspioClient
from athena_pipeline.http import RetryPolicy
from athena_pipeline.sandbox.caspio.config import (
    SANDBOX_CASPIO_CLIENT_ID,
    SANDBOX_CASPIO_CLIENT_SECRET,
    CaspioConfig,
)
from athena_pipeline.sandbox.caspio.server import RunningCaspio, run_caspio_in_thread

CLIENT_ID = SANDBOX_CASPIO_CLIENT_ID
SECRET = SANDBOX_CASPIO_CLIENT_SECRET

#: Retries that keep tests fast but still exercise backoff and Retry-After.
FAST_RETRY = RetryPolicy(backoff_base=0.01, backoff_max=0.1, max_total_seconds=20.0,
                         retry_after_max=0.2)


@contextmanager
def caspio_server(state_dir: Path, **config) -> Iterator[RunningCaspio]:
    """A Caspio emulator on loopback with ``CaspioConfig(**config)``; stopped on exit."""
    server = run_caspio_in_thread(state_dir, replace(CaspioConfig(), **config))
    try:
        yield server
    finally:
        server.stop()


def make_client(server: RunningCaspio, **kwargs) -> CaspioClient:
    """A client of ``server`` with fast retries and a short timeout (``kwargs`` override)."""
    values = {"retry": FAST_RETRY, "timeout": httpx.Timeout(10.0)}
    values.update(kwargs)
    return CaspioClient(server.base_url, CLIENT_ID, SECRET, **values)


@dataclass
class Sent:
    """One request as it left the client."""

    method: str
    path: str
    params: list[tuple[str, str]]
    uri_length: int
    body: object
    authorization: str | None


@dataclass
class Wire:
    """Every request a client sent (httpx event hooks), and the most that were in flight at once."""

    sent: list[Sent] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, client: CaspioClient) -> Wire:
        hooks = client.policy.client.event_hooks
        hooks["request"] = [*hooks.get("request", []), self._request]
        hooks["response"] = [*hooks.get("response", []), self._response]
        return self

    def _request(self, request: httpx.Request) -> None:
        parts = urlsplit(str(request.url))
        ctype = request.headers.get("content-type", "")
        body: object = None
        if request.content and ctype.startswith("application/json"):
            body = json.loads(request.content)
        elif request.content and ctype.startswith("application/x-www-form-urlencoded"):
            body = dict(parse_qsl(request.content.decode()))
        with self.lock:
            self.sent.append(Sent(request.method, parts.path, parse_qsl(parts.query, keep_blank_values=True),
                                  len(str(request.url)), body, request.headers.get("authorization")))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _response(self, response: httpx.Response) -> None:
        with self.lock:
            self.in_flight -= 1

    def calls(self, method: str | None = None, suffix: str = "") -> list[Sent]:
        return [s for s in self.sent if (method is None or s.method == method) and s.path.endswith(suffix)]
