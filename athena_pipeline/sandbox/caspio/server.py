"""Serve the Caspio emulator alone on loopback in a thread (tests), and build its config (CLI).

``athena-pipeline sandbox serve`` mounts the Caspio app at ``/caspio`` next to the
athenahealth emulator (``athena_pipeline/sandbox/server.py``); tests that only need Caspio
start it here instead, mounted at the same ``/caspio`` path so ``base_url`` has the shape of
``CASPIO_BASE_URL``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from athena_pipeline.sandbox.caspio.app import CaspioEmulator, create_caspio_app
from athena_pipeline.sandbox.caspio.config import CaspioClientConfig, CaspioConfig
from athena_pipeline.sandbox.caspio.faults import CaspioFaults
from athena_pipeline.sandbox.common.serving import BackgroundServer, server_url, start_in_thread

MOUNT_PATH = "/caspio"


def build_caspio_config(base: CaspioConfig | None = None, *, latency_ms: float | None = None,
                        rate_limit: float | None = None, burst: int | None = None,
                        monthly_allowance: int | None = None, over_allowance: str | None = None,
                        token_lifetime: float | None = None, stale_token_400: bool = False,
                        client_secrets: dict[str, str] | None = None) -> CaspioConfig:
    """``base`` (default :class:`CaspioConfig`) with the ``sandbox serve --caspio-*`` options.

    ``None``/``False`` leaves a setting at its default; ``client_secrets`` adds Web Services
    profiles (client id -> secret) after the sandbox one. Raises ValueError for a bad value.
    """
    config = base or CaspioConfig()
    changes: dict = {}
    if latency_ms is not None:
        if latency_ms < 0:
            raise ValueError("the Caspio latency must not be negative")
        changes["latency_seconds"] = latency_ms / 1000.0
    if rate_limit is not None:
        changes["rate_limit_per_second"] = float(rate_limit)
    if burst is not None:
        changes["rate_limit_burst"] = int(burst)
    if monthly_allowance is not None:
        changes["monthly_allowance"] = int(monthly_allowance)
    if over_allowance is not None:
        changes["over_allowance"] = over_allowance
    if token_lifetime is not None:
        changes["token_lifetime_seconds"] = float(token_lifetime)
    if stale_token_400:
        changes["stale_token_400"] = True
    if client_secrets:
        clients = [c for c in config.clients if c.client_id not in client_secrets]
        clients += [CaspioClientConfig(cid, secret) for cid, secret in client_secrets.items()]
        changes["clients"] = tuple(clients)
    return replace(config, **changes) if changes else config


def mounted(app: Starlette) -> Starlette:
    """A bare app serving ``app`` under ``/caspio`` (``app.state.caspio`` carried over)."""
    outer = Starlette(routes=[Mount(MOUNT_PATH, app=app)])
    outer.state.caspio = app.state.caspio
    return outer


@dataclass
class RunningCaspio(BackgroundServer):
    """A Caspio emulator serving on loopback in a background thread.

    ``stop()`` (also on leaving a ``with`` block) stops serving and closes the state file.
    """

    base_url: str  # e.g. http://127.0.0.1:PORT/caspio, the shape of CASPIO_BASE_URL
    emulator: CaspioEmulator
    _server: uvicorn.Server
    _thread: threading.Thread

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth/token"

    @property
    def v3(self) -> str:
        return f"{self.base_url}/integrations/rest/v3"

    @property
    def v4(self) -> str:
        return f"{self.base_url}/integrations/rest/v4"

    @property
    def faults(self) -> CaspioFaults:
        return self.emulator.faults

    @property
    def config(self) -> CaspioConfig:
        return self.emulator.config

    def _release(self) -> None:
        self.emulator.close()


def run_caspio_in_thread(state_dir: Path | str, config: CaspioConfig | None = None, *,
                         faults: CaspioFaults | str | None = None, host: str = "127.0.0.1",
                         port: int = 0, start_timeout: float = 10.0) -> RunningCaspio:
    """Start the Caspio emulator (state in ``state_dir/caspio.sqlite``) in a daemon thread."""
    app = mounted(create_caspio_app(state_dir, config, faults))
    server, thread, bound = start_in_thread(
        app, host=host, port=port, label="Caspio emulator", thread_name="caspio-emulator",
        start_timeout=start_timeout, on_failure=app.state.caspio.close)
    return RunningCaspio(base_url=server_url(host, bound) + MOUNT_PATH, emulator=app.state.caspio,
                         _server=server, _thread=thread)
