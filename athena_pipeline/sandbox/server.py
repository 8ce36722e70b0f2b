"""Run the athenahealth emulator on a real socket: in the foreground (CLI) or in a thread (tests).

Why we bind the socket ourselves instead of letting uvicorn do it: with ``port=0`` the OS
picks a free port, and we must know it *before* serving to print it (CLI) or hand it to a
test. The socket is listening before uvicorn starts, so a client that connects immediately
is queued rather than refused.

uvicorn's own access log is switched off: it prints full paths and query strings, which can
carry patient ids. The emulator logs its own line per request with the route template.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import uvicorn

from athena_pipeline.sandbox.emulator.app import Emulator, create_app
from athena_pipeline.sandbox.emulator.config import EmulatorConfig
from athena_pipeline.sandbox.emulator.faults import FaultInjector
from athena_pipeline.sandbox.world import World


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(256)
    sock.set_inheritable(True)
    return sock


def _base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


@dataclass
class RunningServer:
    """An emulator serving on loopback in a background thread (see :func:`run_in_thread`)."""

    base_url: str
    emulator: Emulator
    _server: uvicorn.Server
    _thread: threading.Thread

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir/r4"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth2/v1/token"

    @property
    def faults(self) -> FaultInjector:
        """Runtime fault control, shared with the running app."""
        return self.emulator.faults

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and delete this emulator's export files (its jobs die with it)."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self.emulator.exporter.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(world_dir: Path | str, *, host: str = "127.0.0.1", port: int = 0,
                  faults: FaultInjector | str | None = None,
                  config: EmulatorConfig | None = None,
                  start_timeout: float = 10.0) -> RunningServer:
    """Start the emulator for ``world_dir`` in a daemon thread; returns once it serves."""
    app = create_app(world_dir, config, faults)
    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="athena-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the athenahealth emulator did not start")
        time.sleep(0.01)
    return RunningServer(base_url=_base_url(host, sock.getsockname()[1]),
                         emulator=app.state.emulator, _server=server, _thread=thread)


def serve(world_dir: Path, host: str = "127.0.0.1", port: int = 0, faults: str | None = None,
          config: EmulatorConfig | None = None, log_level: str = "info") -> None:
    """Serve the emulator in the foreground until interrupted.

    Prints one line with the base URL, FHIR base, token URL, the sandbox client id/secret and
    the Data View DuckDB path, so a user (or a script) can point the pipeline at it.
    """
    world = World.load(world_dir)  # fails early, with a helpful message, on a non-world
    config = config or EmulatorConfig()
    app = create_app(world.root, config, faults)
    sock = _bind(host, port)
    base = _base_url(host, sock.getsockname()[1])
    client = config.clients[0] if config.clients else None
    if not logging.getLogger().handlers:
        logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(
        f"athenahealth emulator: base={base} fhir={base}/fhir/r4 token={base}/oauth2/v1/token "
        f"client_id={client.client_id if client else ''} "
        f"client_secret={(client.secret or '') if client else ''} "
        f"dataview={world.dataview_path}",
        flush=True,
    )
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                      lifespan="off")).run(sockets=[sock])
    finally:
        app.state.emulator.exporter.close()
