"""One asset per mart: ``caspio/<mart>``, the Caspio table leadership's dashboards read.

Thin glue over :mod:`athena_pipeline.caspio.publish`; ``athena-pipeline publish`` runs the same code.

**Network-bound work stays outside the ``warehouse`` pool.** The assets have *no* pool: a publish is
mostly Caspio calls (~300 ms each), and holding the one warehouse slot for minutes would stall every
load and dbt run. Instead the asset opens the warehouse only in two short steps, each a fraction of
a second: the plan (the keyed diff, read into Arrow, connection closed) and the state write (the
journal of confirmed writes folded into ``publish.caspio_state``). Both go through
``warehouse.connection.connect`` with a wait (``WAREHOUSE_WAIT_SECONDS``), so if a pooled writer
(a raw load, dbt) holds the lock the step waits for it, and other writers that collide with these
brief opens wait the same way (the loaders connect with a wait too). Caspio is called with the
warehouse closed.

Each asset depends on its dbt mart (``AssetKey(["marts", <mart>])``, the dbt assets' key) and carries
an asset check, ``matches_mart``: Caspio's row count and a content checksum (row key + row hash of
every row) equal the mart's. Patient-level marts (dbt ``meta.contains_phi``) materialize nothing
unless the ``caspio`` resource allows them (``CASPIO_PUBLISH_PATIENT_LEVEL=true``).
"""


from collections.abc import Sequence

import dagster as dg
import httpx
from pydantic import Field

from athena_pipeline.caspio.errors import CaspioError
from athena_pipeline.caspio.publish import (
    MartInfo,
    PublishBudgetExceeded,
    PublishError,
    client_for,
    mart_catalog,
    publish,
    verify,
    warehouse_factory,
)
from athena_pipeline.defs.publish.resources import CaspioResource
from athena_pipeline.defs.resources import WarehouseResource
from athena_pipeline.warehouse.connection import WarehouseBusyError

GROUP = "caspio"
OWNERS = ["team:data-engineering"]
CHECK_NAME = "matches_mart"
#: Two more tries, 30 s then about 60 s later: a 429 storm or a warehouse lock passes; what Caspio
#: confirmed before the failure is kept (the journal), so a retry only does what is left.
RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class PublishConfig(dg.Config):
    """Run config of a ``caspio/<mart>`` asset."""

    reconcile: bool = Field(default=False, description="Read the Caspio table back and repair drift "
                                                        "(rows edited, deleted or added by hand).")
    force: bool = Field(default=False, description="Publish even when the plan needs more calls than "
                                                   "the call budget.")


def caspio_key(mart: str) -> dg.AssetKey:
    return dg.AssetKey([GROUP, mart])


def mart_key(mart: str) -> dg.AssetKey:
    return dg.AssetKey(["marts", mart])


def is_transient(exc: BaseException) -> bool:
    """Whether a later try may succeed: Caspio kept failing with 429/5xx, the network, a busy warehouse."""
    if isinstance(exc, (PublishError, CaspioError)):
        return bool(getattr(exc, "transient", False))
    return isinstance(exc, (WarehouseBusyError, httpx.TransportError, TimeoutError, ConnectionError))


def _failure(what: str, exc: Exception) -> dg.Failure:
    first = (str(exc).strip().splitlines() or [""])[0]
    return dg.Failure(description=f"{what} failed, and retrying will not help: {first}",
                      metadata={"error_type": type(exc).__name__}, allow_retries=False)


def build_publish_asset(info: MartInfo, others: Sequence[str] = ()) -> dg.AssetsDefinition:
    """The ``caspio/<mart>`` asset of one mart; ``others``: the marts it is published after
    (``meta.caspio_publish_last``: ``mart_status`` waits for every other table)."""
    key = caspio_key(info.name)
    phi = " Patient-level (PHI): published only when CASPIO_PUBLISH_PATIENT_LEVEL=true." if info.contains_phi else ""

    @dg.asset(
        key=key,
        deps=[mart_key(info.name), *(caspio_key(m) for m in others)],
        group_name=GROUP,
        kinds={"caspio"},
        owners=OWNERS,
        output_required=False,
        retry_policy=RETRY,
        description=(f"The mart {info.name} in its Caspio table (keyed diff sync: only inserts, updates and "
                     f"deletes are written; an unchanged mart costs no call).{phi}"),
        metadata={"mart": info.name, "grain": ", ".join(info.grain), "contains_phi": info.contains_phi},
    )
    def _publish(context: dg.AssetExecutionContext, config: PublishConfig, caspio: CaspioResource,
                 warehouse: WarehouseResource):
        settings = caspio.settings(warehouse)
        what = f"Publishing {info.name} to Caspio"
        try:
            with client_for(settings, force=config.force) as client:
                result = publish(warehouse_factory(settings), client, [info.name], settings=settings,
                                 reconcile=config.reconcile, force=config.force, on_progress=context.log.info)[0]
                budget_left = client.budget_left
        except PublishBudgetExceeded as exc:
            raise dg.Failure(description=str(exc), metadata={"planned_calls": exc.planned, "budget": exc.budget},
                             allow_retries=False) from exc
        except Exception as exc:
            if is_transient(exc):
                raise
            raise _failure(what, exc) from exc
        if result.status == "skipped":
            context.log.info(f"{info.name} not published: {result.message}")
            return  # nothing materialized (output_required=False): the check is skipped too
        yield dg.MaterializeResult(metadata={
            "dagster/row_count": result.rows,
            "table": result.table,
            "status": result.status,
            "rows_inserted": result.inserted,
            "rows_updated": result.updated,
            "rows_deleted": result.deleted,
            "rows_unchanged": result.unchanged,
            "calls_used": result.calls,
            "calls_planned": result.planned_calls,
            "budget_left": budget_left if budget_left is not None else -1,
            "duration_s": round(result.duration_s, 3),
            "reconciled": result.reconciled,
            "drift_fixed": dg.MetadataValue.json(result.drift or {}),
            "schema_created": result.schema_created,
            "fields_added": ", ".join(result.fields_added) or "-",
            "content_checksum": result.checksum,
        })

    return _publish


def build_publish_check(info: MartInfo) -> dg.AssetChecksDefinition:
    """``matches_mart`` on ``caspio/<mart>``: same row count and content checksum in Caspio as in the mart."""

    @dg.asset_check(asset=caspio_key(info.name), name=CHECK_NAME,
                    description="Caspio's table has as many rows as the mart, no duplicate or keyless row, and "
                                "the same content checksum (row key + row hash of every row).")
    def _check(caspio: CaspioResource, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        settings = caspio.settings(warehouse)
        with client_for(settings, force=True) as client:
            v = verify(warehouse_factory(settings), client, info.name, settings)
            calls = client.calls_made
        return dg.AssetCheckResult(
            passed=v.matches,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if v.matches else (
                "Caspio differs from the mart; materialize with config reconcile: true (or run "
                "`athena-pipeline publish --reconcile`) to repair it."),
            metadata={"mart_rows": v.mart_rows, "caspio_rows": v.caspio_rows,
                      "duplicate_or_keyless_rows": v.duplicate_or_keyless,
                      "mart_checksum": v.mart_checksum, "caspio_checksum": v.caspio_checksum,
                      "calls_used": calls},
        )

    return _check


CATALOG = mart_catalog()


def published_before(info: MartInfo, catalog: dict[str, MartInfo]) -> list[str]:
    """The marts whose Caspio asset ``info``'s waits for: for a ``publish_last`` mart, every other
    mart except patient-level ones (those materialize nothing unless PHI publishing is on, and a
    missing upstream output would make Dagster skip the status table every night)."""
    if not info.publish_last:
        return []
    return [m.name for m in catalog.values() if not m.publish_last and not m.contains_phi]


PUBLISH_ASSETS = [build_publish_asset(info, published_before(info, CATALOG)) for info in CATALOG.values()]
PUBLISH_CHECKS = [build_publish_check(info) for info in CATALOG.values()]
publish_job = dg.define_asset_job(
    "publish_job", selection=dg.AssetSelection.groups(GROUP),
    description="Publish every mart into Caspio (keyed diff sync), then check each table against its mart.")


@dg.definitions
def publish_defs() -> dg.Definitions:
    """The ``caspio/<mart>`` assets, their ``matches_mart`` checks and ``publish_job``."""
    return dg.Definitions(assets=PUBLISH_ASSETS, asset_checks=PUBLISH_CHECKS, jobs=[publish_job])
