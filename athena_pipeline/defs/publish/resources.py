"""The ``caspio`` resource, and the bridge from it to :class:`Settings` for the publish steps.

Why a bridge (as ``defs/extract/resources.py`` does for extraction): the publisher
(``athena_pipeline.caspio.publish``) takes one :class:`Settings`, exactly as the CLI builds it. In
Dagster the Caspio values come from this resource, so they show in the UI and the client secret is
resolved from ``dg.EnvVar`` when a run starts; :meth:`CaspioResource.settings` lays them over
``Settings.from_env()`` so everything else (warehouse path, memory limit) stays the same in both.
"""


import dataclasses
import os
from pathlib import Path
from typing import Any

import dagster as dg

from athena_pipeline.defs.resources import WarehouseResource
from athena_pipeline.settings import Settings


class CaspioResource(dg.ConfigurableResource):
    """How to reach Caspio (or the sandbox emulator) and how much a publish may spend."""

    base_url: str
    client_id: str
    client_secret: str | None = None
    api_version: str = "v3"
    concurrency: int = 4
    #: Client-side throttle; 0 = none.
    requests_per_second: float = 0.0
    #: Most calls one publish (one asset) may spend; a bigger plan fails unless forced.
    call_budget: int = 5000
    table_prefix: str = "ap_"
    #: Publish patient-level marts (dbt meta.contains_phi) too.
    publish_patient_level: bool = False
    #: Read each table back and repair drift every N publishes; 0 = only when asked.
    reconcile_every: int = 10

    def settings(self, warehouse: WarehouseResource | None = None) -> Settings:
        """``Settings.from_env()`` with this resource's values (and the warehouse path) laid over it."""
        changes: dict[str, Any] = {
            "caspio_base_url": self.base_url, "caspio_client_id": self.client_id,
            "caspio_client_secret": self.client_secret, "caspio_api_version": self.api_version,
            "caspio_concurrency": self.concurrency, "caspio_requests_per_second": self.requests_per_second,
            "caspio_call_budget": self.call_budget, "caspio_table_prefix": self.table_prefix,
            "caspio_publish_patient_level": self.publish_patient_level,
            "caspio_reconcile_every": self.reconcile_every,
        }
        if warehouse is not None:
            changes["warehouse_path"] = Path(warehouse.path)
        return dataclasses.replace(Settings.from_env(), **changes)


def build_publish_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The publish stage's own resource for ``settings`` (tests pass their own Settings)."""
    secret = dg.EnvVar("CASPIO_CLIENT_SECRET") if os.environ.get("CASPIO_CLIENT_SECRET") \
        else settings.caspio_client_secret
    return {
        "caspio": CaspioResource(
            base_url=settings.caspio_base_url,
            client_id=settings.caspio_client_id,
            client_secret=secret,
            api_version=settings.caspio_api_version,
            concurrency=settings.caspio_concurrency,
            requests_per_second=settings.caspio_requests_per_second,
            call_budget=settings.caspio_call_budget,
            table_prefix=settings.caspio_table_prefix,
            publish_patient_level=settings.caspio_publish_patient_level,
            reconcile_every=settings.caspio_reconcile_every,
        ),
    }


@dg.definitions
def publish_resources() -> dg.Definitions:
    """The ``caspio`` resource (``warehouse`` comes from ``defs/resources.py``)."""
    return dg.Definitions(resources=build_publish_resources(Settings.from_env()))
