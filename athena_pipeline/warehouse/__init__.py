"""The DuckDB warehouse: connections, raw loaders (FHIR NDJSON exports, Data View Arrow batches),
the audit log and the bookkeeping tables (watermarks, exports, deletions).

Plain Python, no Dagster: the CLI, the tests and the Dagster assets all call the same functions.
Every loader writes in ONE transaction, so a killed load leaves the previous state and a re-run
converges (design.md, "Idempotent everywhere").
"""

from athena_pipeline.warehouse.audit import get_watermark, set_watermark
from athena_pipeline.warehouse.connection import WarehouseBusyError, connect, ensure_schemas

__all__ = ["WarehouseBusyError", "connect", "ensure_schemas", "get_watermark", "set_watermark"]
