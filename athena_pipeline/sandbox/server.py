"""Run the athenahealth emulator on a real socket: in the foreground (CLI) or in a thread (tests).

The socket is bound before uvicorn starts (so ``port=0`` gives a port we can print or hand to
a test) and uvicorn's access log is off (it would print query strings that can carry patient
ids): see ``athena_pipeline/sandbox/common/serving.py``, which the Caspio emulator shares.

:func:`build_config` turns the ``sandbox serve`` options (open mode, extra OAuth clients, token
and export knobs) into an :class:`EmulatorConfig`, so the CLI stays a thin layer over it.

``serve`` also mounts the Caspio emulator (``athena_pipeline/sandbox/caspio``) at ``/caspio``
with a Starlette ``Mount``: one port serves both APIs, and ``CASPIO_BASE_URL`` defaults to
``http://127.0.0.1:{SANDBOX_PORT}/caspio``. Its state lives in ``<world>/caspio.sqlite``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn
from starlette.routing import Mount, Router

from athena_pipeline.sandbox.caspio.app import create_caspio_app
from athena_pipeline.sandbox.caspio.config import CaspioConfig
from athena_pipeline.sandbox.common.serving import (
    BackgroundServer,
    bind_socket,
    server_url,
    start_in_thread,
)
from athena_pipeline.sandbox.emulator.app import Emulator, create_app
from athena_pipeline.sandbox.emulator.config import ClientConfig, EmulatorConfig
from athena_pipeline.sandbox.emulator.faults import FaultInjector
from athena_pipeline.sandbox.emulator.subscriptions import grant_subscription_scopes
from athena_pipeline.sandbox.world import World

log = logging.getLogger("athena_pipeline.sandbox.athena")


def build_config(base: EmulatorConfig | None = None, *, open_mode: bool = False,
                 environment: str | None = None, token_lifetime: float | None = None,
                 expires_in_string: bool = False, resources_per_file: int | None = None,
                 file_expiry: float | None = None, export_delay: float | None = None,
                 per_second_limit: int | None = None,
                 jwt_clients: Mapping[str, Sequence[str | dict]] | None = None,
                 client_secrets: Mapping[str, str] | None = None) -> EmulatorConfig:
    """``base`` (default :class:`EmulatorConfig`) with the ``sandbox serve`` options applied.

    ``None``/``False`` leaves a setting at its default. ``jwt_clients`` maps a client id to its
    public keys (see :func:`auth.load_public_keys`) for ``private_key_jwt``; ``client_secrets``
    maps a client id to a secret for Basic/post auth. A client id that is already registered
    (e.g. ``sandbox-client``) keeps what it had and gains the new key(s) or secret; new ids are
    added after the existing clients, so ``clients[0]`` stays the sandbox client. Raises
    ValueError for a bad value (the dataclass validates environment and file size).
    """
    config = base or EmulatorConfig()
    changes: dict = {}
    if open_mode:
        changes["auth_required"] = False
    if environment is not None:
        changes["environment"] = environment
    if token_lifetime is not None:
        if token_lifetime <= 0:
            raise ValueError("the token lifetime must be positive")
        changes["token_lifetime_seconds"] = float(token_lifetime)
    if expires_in_string:
        changes["expires_in_as_string"] = True
    if resources_per_file is not None:
        changes["resources_per_file"] = int(resources_per_file)
    if file_expiry is not None:
        if file_expiry <= 0:
            raise ValueError("the file expiry must be positive")
        changes["file_expiry_seconds"] = float(file_expiry)
    if export_delay is not None:
        if export_delay < 0:
            raise ValueError("the export delay must not be negative")
        changes["export_processing_delay_seconds"] = float(export_delay)
    if per_second_limit is not None:
        if per_second_limit < 1:
            raise ValueError("the per-second limit must be at least 1")
        changes["per_second_limit"] = int(per_second_limit)

    jwt_clients, client_secrets = dict(jwt_clients or {}), dict(client_secrets or {})
    if jwt_clients or client_secrets:
        clients = list(config.clients)
        for client_id in dict.fromkeys([*jwt_clients, *client_secrets]):
            if not client_id:
                raise ValueError("a client id must not be empty")
            keys = tuple(jwt_clients.get(client_id, ()))
            secret = client_secrets.get(client_id)
            at = next((i for i, c in enumerate(clients) if c.client_id == client_id), None)
            if at is None:
                clients.append(ClientConfig(client_id, secret=secret, public_keys=keys))
            else:
                old = clients[at]
                clients[at] = replace(old, public_keys=old.public_keys + keys,
                                      secret=secret if secret is not None else old.secret)
        changes["clients"] = tuple(clients)
    return replace(config, **changes) if changes else config


@dataclass
class RunningServer(BackgroundServer):
    """An emulator serving on loopback in a background thread (see :func:`run_in_thread`).

    ``stop()`` (also on leaving a ``with`` block) stops serving and deletes this emulator's
    export files: its jobs die with it.
    """

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

    def _release(self) -> None:
        self.emulator.events.stop()
        self.emulator.exporter.close()


def run_in_thread(world_dir: Path | str, *, host: str = "127.0.0.1", port: int = 0,
                  faults: FaultInjector | str | None = None,
                  config: EmulatorConfig | None = None,
                  start_timeout: float = 10.0) -> RunningServer:
    """Start the emulator for ``world_dir`` in a daemon thread; returns once it serves."""
    app = create_app(world_dir, config, faults)
    server, thread, bound = start_in_thread(
        app, host=host, port=port, label="athenahealth emulator", thread_name="athena-emulator",
        start_timeout=start_timeout)
    app.state.emulator.events.start()  # webhook delivery runs beside the server, never in a request
    return RunningServer(base_url=server_url(host, bound),
                         emulator=app.state.emulator, _server=server, _thread=thread)


def serve(world_dir: Path, host: str = "127.0.0.1", port: int = 0, faults: str | None = None,
          config: EmulatorConfig | None = None, log_level: str = "info",
          caspio_config: CaspioConfig | None = None, caspio_faults: str | None = None) -> None:
    """Serve the emulator in the foreground until interrupted.

    Prints one line with the base URL, FHIR base, token URL, the sandbox client id/secret and
    the Data View DuckDB path, so a user (or a script) can point the pipeline at it; then a
    second line for the Caspio emulator mounted at ``/caspio`` (base, token URL, client, state).
    """
    world = World.load(world_dir)  # fails early, with a helpful message, on a non-world
    # the sandbox app has been granted the Event Subscription scopes (athena's ops team does that)
    config = grant_subscription_scopes(config or EmulatorConfig())
    app = create_app(world.root, config, faults)
    caspio_app = create_caspio_app(world.root, caspio_config, caspio_faults)
    caspio = caspio_app.state.caspio
    combined = Router(routes=[Mount("/caspio", app=caspio_app), Mount("", app=app)])
    sock = bind_socket(host, port)
    base = server_url(host, sock.getsockname()[1])
    client = config.clients[0] if config.clients else None
    if not logging.getLogger().handlers:
        logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(
        f"athenahealth emulator: base={base} fhir={base}/fhir/r4 token={base}/oauth2/v1/token "
        f"client_id={client.client_id if client else ''} "
        f"client_secret={(client.secret or '') if client else ''} "
        f"dataview={world.dataview_path}" + ("" if config.auth_required else " auth=open"),
        flush=True,
    )
    caspio_client = caspio.config.clients[0]
    print(
        f"caspio emulator: base={base}/caspio token={base}/caspio/oauth/token "
        f"v3={base}/caspio/integrations/rest/v3 client_id={caspio_client.client_id} "
        f"client_secret={caspio_client.secret} state={caspio.state_path} "
        f"view={base}/caspio/_emulator/",
        flush=True,
    )
    log.info("OAuth clients: %s; %s", ", ".join(
        f"{c.client_id} ({'+'.join(m for m, on in (('secret', c.secret), ('jwt', c.public_keys)) if on)})"
        for c in config.clients) or "none",
        "open mode: no token required" if not config.auth_required else "bearer tokens required")
    app.state.emulator.events.start()  # webhook delivery (Event Subscriptions) in a background thread
    try:
        uvicorn.Server(uvicorn.Config(combined, log_level=log_level, access_log=False,
                                      lifespan="off")).run(sockets=[sock])
    finally:
        app.state.emulator.events.stop()
        app.state.emulator.exporter.close()
        caspio.close()
