"""Resources every stage shares, configured from environment variables (see ``settings.py``).

With nothing set, they point at the sandbox: the athenahealth emulator on loopback and a
local DuckDB warehouse. Secrets are passed as ``dg.EnvVar`` when the variable is set, so
Dagster resolves them when a run starts and never stores their values in run config.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb

from athena_pipeline.settings import Settings


class AthenaResource(dg.ConfigurableResource):
    """How to reach athenahealth (or the sandbox emulator): endpoints, credentials, throttle."""

    fhir_base_url: str
    token_url: str
    auth: str = "client_secret"
    client_id: str
    client_secret: str | None = None
    private_key_path: str | None = None
    key_id: str | None = None
    practice_id: int
    group_id: str
    scopes: str
    requests_per_second: float
    #: Bulk export: where the NDJSON files land, parallel downloads, private_key_jwt algorithm.
    landing_dir: str = "data/landing"
    bulk_concurrency: int = 4
    jwt_algorithm: str | None = None


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file. DuckDB allows one writer per file across processes, so every
    step that opens it for writing runs in pool ``warehouse`` (limit 1); open late, close early.
    """

    path: str

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse, closed on exit (parent directory created first); a file
        locked by another process raises ``WarehouseBusyError`` naming the holder and what to do."""
        from athena_pipeline.warehouse.connection import connect

        with connect(self.path, read_only=read_only) as con:
            yield con


def _secret(name: str, fallback: str | None) -> str | dg.EnvVar | None:
    """``dg.EnvVar(name)`` when the variable is set (resolved at run start), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else fallback


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resource instances for ``settings``; split out so tests can pass their own Settings."""
    return {
        "athena": AthenaResource(
            fhir_base_url=settings.athena_fhir_base_url,
            token_url=settings.athena_token_url,
            auth=settings.athena_auth,
            client_id=settings.athena_client_id,
            client_secret=_secret("ATHENA_CLIENT_SECRET", settings.athena_client_secret),
            private_key_path=(
                str(settings.athena_private_key_path) if settings.athena_private_key_path else None
            ),
            key_id=settings.athena_key_id,
            practice_id=settings.athena_practice_id,
            group_id=settings.athena_group_id,
            scopes=settings.athena_scopes,
            requests_per_second=settings.athena_requests_per_second,
            landing_dir=str(settings.landing_dir),
            bulk_concurrency=settings.athena_bulk_concurrency,
            jwt_algorithm=settings.athena_jwt_algorithm,
        ),
        "warehouse": WarehouseResource(path=str(settings.warehouse_path)),
    }


@dg.definitions
def resources() -> dg.Definitions:
    """Resources bound by key: ``athena`` and ``warehouse``."""
    return dg.Definitions(resources=build_resources(Settings.from_env()))
