"""Serve an emulator app on a real loopback socket, in the foreground or in a background thread.

Why we bind the socket ourselves instead of letting uvicorn do it: with ``port=0`` the OS
picks a free port, and we must know it *before* serving to print it (CLI) or hand it to a
test. The socket is listening before uvicorn starts, so a client that connects immediately
is queued rather than refused.

uvicorn's own access log is switched off: it prints full paths and query strings, which can
carry patient ids. The emulators log their own line per request with the route template.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Self

import uvicorn
from starlette.types import ASGIApp


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free one the OS picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(256)
    sock.set_inheritable(True)
    return sock


def server_url(host: str, port: int) -> str:
    """``http://host:port`` as a client should dial it (a wildcard host shown as loopback)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def start_in_thread(app: ASGIApp, *, host: str, port: int, label: str, thread_name: str,
                    start_timeout: float, on_failure: Callable[[], None] | None = None,
                    ) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Serve ``app`` in a daemon thread; returns ``(server, thread, port)`` once it serves.

    When it does not start within ``start_timeout`` seconds (or the thread dies), the socket
    is closed, ``on_failure`` runs (to release what the app holds) and RuntimeError says
    ``"the {label} did not start"``.
    """
    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=thread_name, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            if on_failure is not None:
                on_failure()
            raise RuntimeError(f"the {label} did not start")
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


class BackgroundServer:
    """``stop()`` and the context-manager protocol of a server run by :func:`start_in_thread`.

    For dataclasses holding ``_server`` and ``_thread``; :meth:`_release` frees what the
    emulator holds once serving has stopped.
    """

    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, wait for the thread, then release the emulator's resources."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._release()

    def _release(self) -> None:
        """Free what the emulator holds (files, connections, worker threads)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
