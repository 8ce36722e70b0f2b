"""The HTTP policy every outbound call of the pipeline goes through (athenahealth, Caspio, ...).

One place decides, for every request:

- **timeouts**: explicit connect/read/write/pool timeouts, never httpx's "wait forever" options;
- **retries**: transport errors (including timeouts) and 408, 429, 500, 502, 503, 504 are retried
  with exponential backoff and jitter, honouring ``Retry-After`` (delta-seconds, HTTP-date or
  epoch, clamped), within a bounded number of attempts *and* a bounded total time;
- **authentication**: an :class:`Authenticator` supplies headers; a 401 triggers exactly one
  re-authentication and retry, then :class:`AuthError`;
- **pacing**: a shared :class:`RateLimiter` (requests per second);
- **tracing**: a fresh ``X-Request-Id`` (uuid4) on every attempt;
- **accounting**: every attempt is reported to ``on_call`` as a :class:`CallRecord` (timestamp,
  system, method, path *template*, status, duration, bytes, request id, resource count). The
  record holds no ids, query values, bodies, tokens or secrets, so it can be stored and shown.

Nothing here knows about athenahealth: the athena client passes path templates, auth and
"which responses are fine" predicates (e.g. a bulk status poll accepts 202 and a ``transient``
OperationOutcome). Why sync httpx: bulk downloads are few large files, streamed by a small
thread pool; a shared ``httpx.Client`` is thread-safe and keeps memory flat.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import httpx

from athena_pipeline.http.errors import (
    ApiError,
    AuthError,
    RetryExhausted,
    error_detail,
    origin,
    redact_url,
    template_path,
)
from athena_pipeline.http.ratelimit import RateLimiter
from athena_pipeline.http.retry_after import clamp, parse_retry_after

log = logging.getLogger("athena_pipeline.http")

class _RedactHttpxUrls(logging.Filter):
    """Rewrite httpx's own "HTTP Request: GET <url>" INFO line to ``origin + path template``.

    httpx logs the full URL, query string included: patient ids in searches, ``_since`` values,
    signed file URLs. An application that turns on INFO logging must not get those.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 2 and isinstance(args[1], httpx.URL):
            url = args[1]
            record.args = (args[0], origin(url) + template_path(url.path), *args[2:])
        return True


_HTTPX_FILTER = _RedactHttpxUrls()
if not any(isinstance(f, _RedactHttpxUrls) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_HTTPX_FILTER)

RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=60.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry transient failures.

    The wait before retry *n* (0-based) is ``Retry-After`` when the server sent one (clamped to
    ``[retry_after_min, retry_after_max]``), else "equal jitter" exponential backoff: a random
    value in ``[d/2, d]`` with ``d = min(backoff_max, backoff_base * 2**n)``. Retrying stops
    after ``max_attempts`` attempts or when the next wait would end past ``max_total_seconds``
    after the first attempt, whichever comes first.
    """

    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_total_seconds: float = 300.0
    retry_after_min: float = 0.0
    retry_after_max: float = 120.0
    retry_statuses: frozenset[int] = RETRY_STATUSES

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.max_total_seconds < 0:
            raise ValueError("backoff and time budgets must be >= 0")
        if self.retry_after_min > self.retry_after_max:
            raise ValueError("retry_after_min must be <= retry_after_max")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The jittered backoff before retry number ``retry`` (0-based)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** min(retry, 62)))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def wait_for(self, response: httpx.Response | None, retry: int,
                 rng: random.Random | None = None, now: float | None = None) -> float:
        """The wait before the next attempt: ``Retry-After`` (clamped) if given, else backoff."""
        if response is not None:
            hinted = parse_retry_after(response.headers.get("retry-after"), now=now)
            if hinted is not None:
                return clamp(hinted, self.retry_after_min, self.retry_after_max)
        return self.backoff(retry, rng)


@dataclass(frozen=True)
class CallRecord:
    """One HTTP attempt as reported to ``on_call`` and stored in ``api_calls.ndjson``."""

    ts: str                      # start, ISO 8601 UTC
    system: str                  # "athena", "caspio", ...
    method: str
    path_template: str           # no ids, no query: /fhir/r4/Group/{id}/$export
    status: int | None           # None: no response (transport error, timeout)
    duration_ms: float
    bytes: int                   # response bytes received on the wire
    request_id: str              # the X-Request-Id we sent
    resource_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Authenticator(Protocol):
    """Supplies credentials for a request; told when they were refused (401)."""

    def auth_headers(self) -> dict[str, str]:
        """Headers to add (e.g. ``Authorization: Bearer …``); may fetch a token."""
        ...

    def invalidate(self, used: Mapping[str, str]) -> None:
        """The headers ``used`` were answered 401: drop them so the next call re-authenticates."""
        ...


@dataclass
class StreamHandle:
    """What :meth:`HttpPolicy.stream` yields: the response, and a slot for the resource count."""

    response: httpx.Response
    request_id: str
    resource_count: int | None = None


@dataclass
class _Attempt:
    request_id: str
    started: float
    ts: str
    auth_used: dict[str, str] = field(default_factory=dict)


Data = Mapping[str, str] | Callable[[], Mapping[str, str]] | None


class HttpPolicy:
    """An ``httpx.Client`` wrapped in the policy above. Thread-safe; close it when done."""

    def __init__(self, system: str, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 retry: RetryPolicy | None = None, requests_per_second: float | None = None,
                 burst: float = 1.0, on_call: Callable[[CallRecord], None] | None = None,
                 headers: Mapping[str, str] | None = None, max_connections: int = 10,
                 client: httpx.Client | None = None,
                 describe_error: Callable[[httpx.Response], str | None] = error_detail,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.system = system
        self.retry = retry or RetryPolicy()
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.limiter = RateLimiter(requests_per_second, burst) if requests_per_second else None
        self.on_call = on_call
        self.describe_error = describe_error
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._owns_client = client is None
        self.client = client or httpx.Client(
            timeout=self.timeout, follow_redirects=False, headers=dict(headers or {}),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections))

    # --- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public calls ----------------------------------------------------------------------
    def request(self, method: str, url: str, *, path_template: str | None = None,
                params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                data: Data = None, json: Any = None, auth: Authenticator | None = None,
                accept: Callable[[httpx.Response], bool] | None = None,
                count_resources: Callable[[httpx.Response], int | None] | None = None,
                retry: RetryPolicy | None = None,
                timeout: httpx.Timeout | float | None = None) -> httpx.Response:
        """Send one logical request (with retries) and return the response, body read.

        ``accept(response)`` decides which responses are returned to the caller (default: 2xx);
        others are retried (408/429/5xx), re-authenticated once (401) or raised as errors.
        ``data`` may be a callable, evaluated per attempt (a JWT assertion must be fresh each
        time). ``count_resources`` fills :attr:`CallRecord.resource_count` for accepted responses.
        """
        response, attempt, template = self._send(
            method, url, path_template=path_template, params=params, headers=headers, data=data,
            json=json, auth=auth, accept=accept, retry=retry, timeout=timeout, stream=False)
        count = None
        if count_resources is not None:
            try:
                count = count_resources(response)
            except Exception:  # noqa: BLE001 - a count is informative only
                count = None
        self._record(attempt, method, template, response.status_code,
                     response.num_bytes_downloaded, count)
        return response

    @contextmanager
    def stream(self, method: str, url: str, *, path_template: str | None = None,
               params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
               auth: Authenticator | None = None,
               accept: Callable[[httpx.Response], bool] | None = None,
               retry: RetryPolicy | None = None,
               timeout: httpx.Timeout | float | None = None) -> Iterator[StreamHandle]:
        """Like :meth:`request` but the body is not read: iterate ``handle.response``.

        Status-level failures are retried before the body is touched. Errors while reading the
        body (a dropped connection, a read timeout) propagate as ``httpx`` exceptions: only the
        caller knows whether a partial body can be resumed or the whole download is redone. The
        call is recorded when the block exits, with the bytes actually received.
        """
        response, attempt, template = self._send(
            method, url, path_template=path_template, params=params, headers=headers, data=None,
            json=None, auth=auth, accept=accept, retry=retry, timeout=timeout, stream=True)
        handle = StreamHandle(response=response, request_id=attempt.request_id)
        try:
            yield handle
        finally:
            response.close()
            self._record(attempt, method, template, response.status_code,
                         response.num_bytes_downloaded, handle.resource_count)

    # --- the loop ----------------------------------------------------------------------------
    def _send(self, method: str, url: str, *, path_template: str | None,
              params: Mapping[str, str] | None, headers: Mapping[str, str] | None, data: Data,
              json: Any, auth: Authenticator | None,
              accept: Callable[[httpx.Response], bool] | None, retry: RetryPolicy | None,
              timeout: httpx.Timeout | float | None, stream: bool
              ) -> tuple[httpx.Response, _Attempt, str]:
        policy = retry or self.retry
        method = method.upper()
        template = path_template or template_path(httpx.URL(url).path)
        ok = accept or (lambda r: r.is_success)
        first = time.monotonic()
        retries = 0
        reauthenticated = False
        while True:
            auth_used = auth.auth_headers() if auth is not None else {}  # may fetch a token
            if self.limiter is not None:
                self.limiter.acquire()
            attempt = _Attempt(request_id=str(uuid.uuid4()), started=time.monotonic(),
                               ts=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
                               .replace("+00:00", "Z"), auth_used=auth_used)
            send_headers = {**dict(headers or {}), "X-Request-Id": attempt.request_id,
                            **auth_used}
            body = data() if callable(data) else data
            request = self.client.build_request(
                method, url, params=params, headers=send_headers, data=body, json=json,
                timeout=timeout if timeout is not None else self.timeout)
            response: httpx.Response | None = None
            failure: BaseException | None = None
            try:
                response = self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                failure = exc
                self._record(attempt, method, template, None, 0, None)
            if response is not None and (not stream or not response.is_success):
                # Read the body now: non-streamed calls want it, error bodies are small, and
                # ``accept`` may look at them (a ``transient`` OperationOutcome, say).
                try:
                    response.read()
                except httpx.TransportError as exc:  # body cut: retry like any dropped call
                    response.close()
                    self._record(attempt, method, template, response.status_code,
                                 response.num_bytes_downloaded, None)
                    failure, response = exc, None
            if response is not None:
                if ok(response):
                    return response, attempt, template
                else:
                    response.close()
                    self._record(attempt, method, template, response.status_code,
                                 response.num_bytes_downloaded, None)
                    status = response.status_code
                    if status == 401 and auth is not None and not reauthenticated:
                        reauthenticated = True
                        auth.invalidate(attempt.auth_used)
                        log.info("%s %s %s: 401, re-authenticating once", self.system, method,
                                 template)
                        continue
                    if status not in policy.retry_statuses:
                        raise self._error(AuthError if status in (401, 403) else ApiError,
                                          method, str(request.url), template, response, attempt,
                                          transient=False)
            # a transient failure: wait and retry, within the budget
            wait = policy.wait_for(response, retries, self._rng)
            retries += 1
            elapsed = time.monotonic() - first
            if retries >= policy.max_attempts or elapsed + wait > policy.max_total_seconds:
                why = (f"after {retries} attempt(s) in {elapsed:.1f}s"
                       + ("" if retries >= policy.max_attempts
                          else f" (next wait {wait:.1f}s exceeds the {policy.max_total_seconds:.0f}s budget)"))
                raise self._error(RetryExhausted, method, str(request.url), template, response,
                                  attempt, transient=True, failure=failure, suffix=why)
            what = (f"HTTP {response.status_code}" if response is not None
                    else type(failure).__name__)
            log.warning("%s %s %s: %s; retry %d/%d in %.2fs", self.system, method, template,
                        what, retries, policy.max_attempts - 1, wait)
            self._sleep(wait)

    # --- helpers -----------------------------------------------------------------------------
    def _error(self, cls: type[ApiError], method: str, url: str, template: str,
               response: httpx.Response | None, attempt: _Attempt, *, transient: bool,
               failure: BaseException | None = None, suffix: str = "") -> ApiError:
        status = response.status_code if response is not None else None
        detail = self.describe_error(response) if response is not None else None
        if response is None and failure is not None:
            detail = type(failure).__name__  # never str(exc): it can echo the full URL
        where = f"{self.system} {method} {origin(url)}{template}"
        text = f"{where} -> {status if status is not None else 'no response'}"
        if detail:
            text += f": {detail}"
        if suffix:
            text += f" [{suffix}]"
        text += f" (X-Request-Id {attempt.request_id})"
        query = urlsplit(redact_url(url)).query
        safe_url = f"{origin(url)}{template}" + (f"?{query}" if query else "")
        return cls(text, system=self.system, method=method, url=safe_url,
                   path_template=template, status=status, detail=detail,
                   request_id=attempt.request_id, transient=transient)

    def _record(self, attempt: _Attempt, method: str, template: str, status: int | None,
                nbytes: int, resource_count: int | None) -> None:
        duration = (time.monotonic() - attempt.started) * 1000
        log.debug("%s %s %s -> %s in %.0fms", self.system, method, template, status, duration)
        if self.on_call is None:
            return
        record = CallRecord(ts=attempt.ts, system=self.system, method=method,
                            path_template=template, status=status,
                            duration_ms=round(duration, 1), bytes=int(nbytes),
                            request_id=attempt.request_id, resource_count=resource_count)
        try:
            self.on_call(record)
        except Exception:  # noqa: BLE001 - accounting must never break a call
            log.warning("on_call callback failed for %s %s", method, template, exc_info=False)
