"""Emulator of the Caspio REST API (OAuth, v3 tables/fields/records/views/webhooks, v2, v4 bulk).

``create_caspio_app(state_dir, config, faults)`` builds the ASGI app (state in
``state_dir/caspio.sqlite``); ``athena-pipeline sandbox serve`` mounts it at ``/caspio`` next to
the athenahealth emulator, and :func:`run_caspio_in_thread` serves it alone for tests. The rules
it follows are the checklist of ``caspio-api.md`` §14; knobs are in ``config.py``, faults in
``faults.py``. The sandbox credentials are ``sandbox-caspio-client`` / ``sandbox-caspio-secret``.
"""

from athena_pipeline.sandbox.caspio.app import CaspioEmulator, create_caspio_app
from athena_pipeline.sandbox.caspio.config import (
    SANDBOX_CASPIO_CLIENT_ID,
    SANDBOX_CASPIO_CLIENT_SECRET,
    CaspioClientConfig,
    CaspioConfig,
)
from athena_pipeline.sandbox.caspio.faults import FAULTS, FAULTS_HELP, CaspioFaults
from athena_pipeline.sandbox.caspio.server import (
    RunningCaspio,
    build_caspio_config,
    run_caspio_in_thread,
)

__all__ = [
    "FAULTS",
    "FAULTS_HELP",
    "SANDBOX_CASPIO_CLIENT_ID",
    "SANDBOX_CASPIO_CLIENT_SECRET",
    "CaspioClientConfig",
    "CaspioConfig",
    "CaspioEmulator",
    "CaspioFaults",
    "RunningCaspio",
    "build_caspio_config",
    "create_caspio_app",
    "run_caspio_in_thread",
]
