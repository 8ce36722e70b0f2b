"""Publishing to Caspio: the REST client, table specs, and (in sibling modules) the diff sync.

Plain Python, no Dagster: the CLI, tests and Dagster assets all use it the same way.
"""

from athena_pipeline.caspio.client import CaspioClient, CaspioField, InsertResult, WriteResult, encode_value
from athena_pipeline.caspio.errors import (
    CaspioAuthError,
    CaspioBudgetExceeded,
    CaspioError,
    CaspioRetryExhausted,
    SchemaConflict,
)
from athena_pipeline.caspio.specs import (
    FieldSpec,
    SchemaChange,
    TableSpec,
    duckdb_to_caspio,
    ensure_table,
    load_mart_docs,
    row_key_sql,
    table_spec_for_mart,
)
from athena_pipeline.caspio.where import in_clauses, quote_literal

__all__ = [
    "CaspioAuthError",
    "CaspioBudgetExceeded",
    "CaspioClient",
    "CaspioError",
    "CaspioField",
    "CaspioRetryExhausted",
    "FieldSpec",
    "InsertResult",
    "SchemaChange",
    "SchemaConflict",
    "TableSpec",
    "WriteResult",
    "duckdb_to_caspio",
    "encode_value",
    "ensure_table",
    "in_clauses",
    "load_mart_docs",
    "quote_literal",
    "row_key_sql",
    "table_spec_for_mart",
]
