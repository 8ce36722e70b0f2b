"""The webhook receiver: an ASGI (Starlette) app that turns athenahealth notifications into inbox rows.

``POST /webhook`` (the endpoint registered in every Subscription), in this order:

1. **size**: a ``Content-Length`` over the limit, or a body that grows past it, is 413 before
   anything else is done with it;
2. **signature**: ``X-Hub-Signature: sha256=<hex>`` must be the HMAC-SHA256 of the raw body under
   one of the configured secrets, compared in constant time; otherwise 401 and nothing stored;
3. **shape**: the body must be a notification Bundle (see ``notification.py``); otherwise 400;
4. **durability**: events go to the inbox and are COMMITTED before the 2xx. A handshake or
   heartbeat only records its time. ``query-status`` is acknowledged and ignored.

``GET /health``: 200 with inbox statistics and request counters while the writer is alive, else 503.

Why a dedicated writer thread with group commit: SQLite has one writer. Handing every request's
rows to one thread that writes whatever has queued up in a single transaction means one commit
(one fsync with ``synchronous=FULL``) covers many concurrent requests, the event loop never
blocks on disk, and throughput grows with load instead of collapsing into lock waits. A write
that takes longer than ``write_timeout`` (a stalled disk) is answered 503 so athenahealth
retries; if it commits after all, the redelivery is deduplicated by event id. WAL checkpoints
(copying the log into the database file, with its own fsync) run in a background thread, never
inside a commit that a request is waiting for.

Nothing about a request body is logged: no ids, no payloads, no signatures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from athena_pipeline.events.inbox import Inbox
from athena_pipeline.events.notification import MalformedNotification, ParsedEvent, parse_notification
from athena_pipeline.events.signature import HEADER, verify

log = logging.getLogger("athena_pipeline.events.receiver")

WEBHOOK_PATH = "/webhook"
DEFAULT_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class ReceiverConfig:
    """What the receiver accepts. ``secrets[0]`` is the current one; others are being rotated out."""

    secrets: tuple[str, ...]
    max_bytes: int = DEFAULT_MAX_BYTES
    path: str = WEBHOOK_PATH
    #: Answer 503 (athena retries) when the inbox commit takes longer than this.
    write_timeout: float = 1.5
    #: Most requests folded into one inbox transaction.
    max_group: int = 512

    def __post_init__(self) -> None:
        if not self.secrets or not all(isinstance(s, str) and s for s in self.secrets):
            raise ValueError("the webhook receiver needs at least one non-empty secret (WEBHOOK_SECRET)")
        if self.max_bytes < 1024:
            raise ValueError("WEBHOOK_MAX_BYTES must be at least 1024")
        if not self.path.startswith("/"):
            raise ValueError("the webhook path must start with /")


# --- the writer ------------------------------------------------------------------------------
@dataclass
class _Job:
    kind: str  # "events" | "signal"
    payload: Any
    future: concurrent.futures.Future


class InboxWriter:
    """One thread that commits queued requests to the inbox in groups (see module docstring)."""

    def __init__(self, inbox: Inbox, max_group: int = 512, checkpoint_seconds: float = 1.0) -> None:
        self.inbox = inbox
        self.max_group = max_group
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
        self._closed = False
        self._stop_checkpoints = threading.Event()
        self.commits = 0
        self._thread.start()
        self._checkpointer: threading.Thread | None = None
        if not inbox.autocheckpoint:  # commits never checkpoint: do it here, off the hot path
            self._checkpointer = threading.Thread(target=self._checkpoints, args=(checkpoint_seconds,),
                                                  name="inbox-checkpointer", daemon=True)
            self._checkpointer.start()

    def _checkpoints(self, every: float) -> None:
        while not self._stop_checkpoints.wait(every):
            try:
                self.inbox.checkpoint()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.debug("inbox checkpoint skipped: %s", type(exc).__name__)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit_events(self, events: Sequence[ParsedEvent]) -> concurrent.futures.Future:
        return self._submit("events", list(events))

    def submit_signal(self, kind: str) -> concurrent.futures.Future:
        return self._submit("signal", kind)

    def _submit(self, kind: str, payload: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._closed:
            future.set_exception(RuntimeError("the inbox writer is closed"))
            return future
        self._queue.put(_Job(kind, payload, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs = [first]
            while len(jobs) < self.max_group:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            self._commit(jobs)
        self.inbox.close()

    def _commit(self, jobs: list[_Job]) -> None:
        event_jobs = [j for j in jobs if j.kind == "events"]
        signal_jobs = [j for j in jobs if j.kind == "signal"]
        try:
            if event_jobs:
                counts = self.inbox.add_batches([j.payload for j in event_jobs])
                for job, new in zip(event_jobs, counts, strict=True):
                    job.future.set_result(new)
            if signal_jobs:
                self.inbox.record_signals([j.payload for j in signal_jobs])
                for job in signal_jobs:
                    job.future.set_result(0)
            self.commits += 1
        except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
            log.error("inbox write failed: %s", type(exc).__name__)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)


# --- the app ---------------------------------------------------------------------------------
class Receiver:
    """State and handlers of one receiver app."""

    def __init__(self, inbox: Inbox, config: ReceiverConfig) -> None:
        self.inbox = inbox
        self.config = config
        self.writer = InboxWriter(inbox, config.max_group)
        self.counters: Counter[str] = Counter()
        self.started_at = time.time()
        #: Server-side time to answer the last acknowledged requests (ms), for /health.
        self.ack_ms: deque[float] = deque(maxlen=20_000)

    def close(self) -> None:
        self.writer.close()

    def _answer(self, status: int, body: dict[str, Any], started: float) -> JSONResponse:
        elapsed = (time.perf_counter() - started) * 1000
        self.counters[str(status)] += 1
        if status < 300:
            self.ack_ms.append(elapsed)
        log.debug("POST %s %d %.1fms", self.config.path, status, elapsed)
        return JSONResponse(body, status_code=status)

    def ack_percentiles(self) -> dict[str, float]:
        """p50/p99/max of the server-side acknowledgement time over the last 20,000 requests."""
        values = sorted(self.ack_ms)
        if not values:
            return {}
        at = lambda q: values[min(len(values) - 1, round(q * (len(values) - 1)))]
        return {"p50": round(at(0.5), 2), "p99": round(at(0.99), 2), "max": round(values[-1], 2),
                "n": len(values)}

    async def _read_body(self, request: Request) -> bytes | None:
        """The raw body, or None as soon as it is known to exceed the limit."""
        limit = self.config.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return None
            if int(declared) > limit:
                return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    async def webhook(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await self._read_body(request)
        if body is None:
            return self._answer(413, {"error": f"the body exceeds {self.config.max_bytes} bytes"}, started)
        if not verify(self.config.secrets, body, request.headers.get(HEADER)):
            return self._answer(401, {"error": "missing or invalid X-Hub-Signature"}, started)
        try:
            notification = parse_notification(body)
        except MalformedNotification as exc:
            return self._answer(400, {"error": str(exc)}, started)
        if notification.type in ("handshake", "heartbeat"):
            future = self.writer.submit_signal(notification.type)
            events = 0
        elif notification.events:
            future = self.writer.submit_events(notification.events)
            events = len(notification.events)
        else:  # query-status and other event-less types: acknowledge, store nothing
            return self._answer(200, {"status": "ok", "type": notification.type}, started)
        try:
            new = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                         self.config.write_timeout)
        except TimeoutError:
            return self._answer(503, {"error": "the inbox is busy; retry"}, started)
        except Exception as exc:  # noqa: BLE001 - not stored: athena must retry
            log.warning("webhook not stored: %s", type(exc).__name__)
            return self._answer(503, {"error": "the inbox could not store the notification"}, started)
        return self._answer(200, {"status": "ok", "type": notification.type, "events": events,
                                  "new": new}, started)

    async def health(self, request: Request) -> Response:
        if not self.writer.alive:
            return JSONResponse({"status": "unavailable", "writer": "stopped"}, status_code=503)
        try:
            stats = await run_in_threadpool(self.inbox.stats)
        except Exception as exc:  # noqa: BLE001 - a health check reports, it does not raise
            return JSONResponse({"status": "unavailable", "error": type(exc).__name__},
                                status_code=503)
        return JSONResponse({"status": "ok", "inbox": stats.to_dict(),
                             "responses": dict(self.counters), "commits": self.writer.commits,
                             "ack_ms": self.ack_percentiles(),
                             "uptime_seconds": round(time.time() - self.started_at, 1)})


def create_receiver_app(inbox: Inbox | Path | str, config: ReceiverConfig, *,
                        synchronous: str = "FULL") -> Starlette:
    """The receiver app. ``app.state.receiver`` holds its state; it closes at app shutdown."""
    if not isinstance(inbox, Inbox):
        inbox = Inbox(inbox, synchronous=synchronous, autocheckpoint=False)
    receiver = Receiver(inbox, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(receiver.close)

    app = Starlette(routes=[
        Route(config.path, receiver.webhook, methods=["POST"]),
        Route("/health", receiver.health, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.receiver = receiver
    return app


def config_from_settings(settings: Any, *, max_bytes: int | None = None) -> ReceiverConfig:
    """A :class:`ReceiverConfig` from :class:`athena_pipeline.settings.Settings`."""
    return ReceiverConfig(secrets=tuple(settings.webhook_secrets),
                          max_bytes=max_bytes or settings.webhook_max_bytes)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = any free port), bound before serving so the port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def serve(config: ReceiverConfig, inbox_path: Path | str, *, host: str = "127.0.0.1", port: int = 0,
          log_level: str = "info", synchronous: str = "FULL") -> None:
    """Serve the receiver in the foreground until interrupted (SIGINT/SIGTERM drain the writer).

    Prints one line (``webhook receiver: url=... inbox=...``) once the socket listens, so a
    script can wait for it and learn the port.
    """
    import uvicorn

    app = create_receiver_app(inbox_path, config, synchronous=synchronous)
    sock = bind(host, port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    print(f"webhook receiver: url=http://{shown}:{sock.getsockname()[1]}{config.path} "
          f"health=http://{shown}:{sock.getsockname()[1]}/health inbox={inbox_path} "
          f"max_bytes={config.max_bytes} secrets={len(config.secrets)}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                  timeout_graceful_shutdown=5)).run(sockets=[sock])
