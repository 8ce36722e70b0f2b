"""The ``dataview`` resource, and the bridge from resources to :class:`Settings` for the extract steps.

Why a bridge: the extract steps (``athena_pipeline.extract``) take one :class:`Settings`, exactly as
the CLI builds it. In Dagster the connection values come from resources (so they show in the UI and
secrets are resolved from ``dg.EnvVar`` when a run starts); :func:`settings_for` lays the resource
values over ``Settings.from_env()`` so the rest (time zone, memory limit, thresholds) stays the
same in both worlds.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import dagster as dg

from athena_pipeline.defs.resources import AthenaResource, WarehouseResource
from athena_pipeline.settings import Settings


class DataViewResource(dg.ConfigurableResource):
    """Where Data View tables are read: the sandbox file (``duckdb``) or the Snowflake share."""

    kind: str = "duckdb"
    duckdb_path: str
    database: str = "ATHENAHEALTH"
    share_schema: str = "ATHENAONE"
    #: CONTEXTIDs (practices) to copy; a share can hold several.
    context_ids: list[int]
    #: The soft-delete check warns above this share of soft-deleted rows in a raw table.
    soft_delete_max_ratio: float = 0.2
    snowflake_account: str | None = None
    snowflake_user: str | None = None
    snowflake_password: str | None = None
    snowflake_role: str | None = None
    snowflake_warehouse: str | None = None


def build_extract_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The extract stage's own resources for ``settings`` (tests pass their own Settings)."""
    password = dg.EnvVar("SNOWFLAKE_PASSWORD") if os.environ.get("SNOWFLAKE_PASSWORD") else settings.snowflake_password
    return {
        "dataview": DataViewResource(
            kind=settings.dataview_kind,
            duckdb_path=str(settings.dataview_duckdb_path),
            database=settings.dataview_database,
            share_schema=settings.dataview_schema,
            context_ids=list(settings.context_ids),
            soft_delete_max_ratio=settings.dataview_soft_delete_max_ratio,
            snowflake_account=settings.snowflake_account,
            snowflake_user=settings.snowflake_user,
            snowflake_password=password,
            snowflake_role=settings.snowflake_role,
            snowflake_warehouse=settings.snowflake_warehouse,
        ),
    }


def settings_for(*, athena: AthenaResource | None = None, warehouse: WarehouseResource | None = None,
                 dataview: DataViewResource | None = None) -> Settings:
    """``Settings.from_env()`` with every value the given resources carry laid over it."""
    changes: dict = {}
    if athena is not None:
        changes.update(
            athena_fhir_base_url=athena.fhir_base_url, athena_token_url=athena.token_url,
            athena_auth=athena.auth, athena_client_id=athena.client_id,
            athena_client_secret=athena.client_secret,
            athena_private_key_path=Path(athena.private_key_path) if athena.private_key_path else None,
            athena_key_id=athena.key_id, athena_practice_id=athena.practice_id,
            athena_group_id=athena.group_id, athena_scopes=athena.scopes,
            athena_requests_per_second=athena.requests_per_second, landing_dir=Path(athena.landing_dir),
            athena_bulk_concurrency=athena.bulk_concurrency, athena_jwt_algorithm=athena.jwt_algorithm)
    if warehouse is not None:
        changes["warehouse_path"] = Path(warehouse.path)
    if dataview is not None:
        changes.update(
            dataview_kind=dataview.kind, dataview_duckdb_path=Path(dataview.duckdb_path),
            dataview_database=dataview.database, dataview_schema=dataview.share_schema,
            dataview_context_ids=tuple(dataview.context_ids) or None,
            dataview_soft_delete_max_ratio=dataview.soft_delete_max_ratio,
            snowflake_account=dataview.snowflake_account, snowflake_user=dataview.snowflake_user,
            snowflake_password=dataview.snowflake_password, snowflake_role=dataview.snowflake_role,
            snowflake_warehouse=dataview.snowflake_warehouse)
    return dataclasses.replace(Settings.from_env(), **changes)


@dg.definitions
def extract_resources() -> dg.Definitions:
    """The ``dataview`` resource (``athena`` and ``warehouse`` come from ``defs/resources.py``)."""
    return dg.Definitions(resources=build_extract_resources(Settings.from_env()))
