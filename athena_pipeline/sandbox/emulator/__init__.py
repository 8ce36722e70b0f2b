"""Emulator of the athenahealth APIs (OAuth, FHIR R4 + Bulk Data, v1) over a sandbox world.

``create_app(world_dir, config, faults)`` builds the ASGI app; ``athena_pipeline.sandbox.server``
runs it on a socket. Faults (429s, 5xx polls, truncated files, ...) are described in
``faults.py``.
"""

from athena_pipeline.sandbox.emulator.app import create_app
from athena_pipeline.sandbox.emulator.config import (
    RESOURCE_TYPES,
    ClientConfig,
    EmulatorConfig,
    QuotaHeaderNames,
)
from athena_pipeline.sandbox.emulator.faults import FAULTS, FAULTS_HELP, FaultInjector

__all__ = [
    "FAULTS",
    "FAULTS_HELP",
    "RESOURCE_TYPES",
    "ClientConfig",
    "EmulatorConfig",
    "FaultInjector",
    "QuotaHeaderNames",
    "create_app",
]
