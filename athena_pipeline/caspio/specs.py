"""What each published mart looks like in Caspio: table and field specs, and making Caspio match them.

A mart becomes one Caspio table ``{prefix}{mart}`` whose fields are the mart's columns plus a
unique ``row_key``. Why these choices:

- **Types** map from DuckDB by rule (:func:`duckdb_to_caspio`): VARCHAR is ``STRING`` (Caspio's
  Text(255)) when the longest value fits, else ``TEXT`` (64000); integers ``INTEGER`` (``NUMBER``
  when a value exceeds Caspio's 32-bit range); DECIMAL
  money columns (named ``*_amount``, ``*_charges``, ``*_balance``, ``*_write_offs``... and not a
  rate) ``CURRENCY``; other numbers ``NUMBER``; DATE/TIMESTAMP ``DATE/TIME``; BOOLEAN ``YES/NO``.
  A column's dbt ``meta.caspio_type`` overrides the rule; ``meta.caspio_publish: false`` keeps a
  column out of Caspio (``as_of_date``: one value per table, published once in ``mart_status``
  instead of on every row, which would rewrite every row every day).
- **Names** obey Caspio's field rules (letters, digits, ``_``; a letter first; at most 32
  characters; no SQL Server reserved word; ``PK_ID`` is Caspio's). A name that must be shortened
  keeps a short hash of the original so two long columns never collide.
- **Labels and descriptions** come from the dbt YAML (``models/marts/**/*.yml``) or the manifest,
  so a dashboard builder sees the same documentation as an analyst.
- **The row key** is the md5 of the mart's grain columns (``meta.grain``), one ``STRING`` field
  with ``Unique`` on: it guards against duplicate inserts after a crash, is short enough for
  IN-lists, and never puts a grain value (a patient id on patient-level tables) into a URL. Its
  Caspio description records the grain, so a grain change is noticed as a key change.

:func:`ensure_table` creates a missing table and adds missing fields; it never drops or retypes
anything: an incompatible change raises :class:`SchemaConflict` naming table, field and the fix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from athena_pipeline.caspio.errors import SchemaConflict

if TYPE_CHECKING:  # the client imports FieldSpec from here; avoid the cycle at runtime
    import duckdb

    from athena_pipeline.caspio.client import CaspioClient, CaspioField

#: The writable Caspio type tokens (exact API strings; ``TEXT(255)`` is not one).
CASPIO_TYPES: tuple[str, ...] = ("STRING", "TEXT", "NUMBER", "INTEGER", "CURRENCY", "DATE/TIME", "YES/NO")
STRING_MAX = 255
#: Caspio's INTEGER is SQL Server's 32-bit int.
INTEGER_MAX = 2**31 - 1
TEXT_MAX = 64000
LABEL_MAX = 255
DESCRIPTION_MAX = 4000
FIELD_NAME_MAX = 32
TABLE_NAME_MAX = 32
ROW_KEY = "row_key"
DEFAULT_SCHEMA = "marts"
#: The dbt marts folder of this repository (YAML docs), used when no docs are given.
DEFAULT_MARTS_DIR = Path(__file__).resolve().parents[2] / "dbt_project" / "models" / "marts"

_MONEY_WORDS = frozenset({
    "amount", "amounts", "amt", "charge", "charges", "balance", "balances", "paid", "payment",
    "payments", "adjustment", "adjustments", "writeoff", "writeoffs", "offs", "revenue", "collected",
    "collections", "cost", "costs", "price", "fee", "fees", "dollars", "receivable", "receivables",
    "copay", "copays", "deductible", "allowed", "billed", "refund", "refunds", "expected", "owed",
})
_RATE_WORDS = frozenset({"rate", "ratio", "pct", "percent", "percentage", "share", "proportion", "per"})
_INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                            "UINTEGER", "INT1", "INT2", "INT4", "INT8", "INT", "SHORT", "LONG"})
_NUMBER_TYPES = frozenset({"DOUBLE", "FLOAT", "REAL", "FLOAT4", "FLOAT8", "HUGEINT", "UHUGEINT",
                           "UBIGINT"})
_TIME_TYPES = ("DATE", "TIMESTAMP", "DATETIME")
_STRING_TYPES = frozenset({"VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR", "UUID", "TIME", "ENUM"})

#: SQL Server reserved keywords (Transact-SQL), which Caspio refuses as field names.
RESERVED_WORDS = frozenset("""
ADD ALL ALTER AND ANY AS ASC AUTHORIZATION BACKUP BEGIN BETWEEN BREAK BROWSE BULK BY CASCADE CASE
CHECK CHECKPOINT CLOSE CLUSTERED COALESCE COLLATE COLUMN COMMIT COMPUTE CONSTRAINT CONTAINS
CONTAINSTABLE CONTINUE CONVERT CREATE CROSS CURRENT CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP
CURRENT_USER CURSOR DATABASE DBCC DEALLOCATE DECLARE DEFAULT DELETE DENY DESC DISK DISTINCT
DISTRIBUTED DOUBLE DROP DUMP ELSE END ERRLVL ESCAPE EXCEPT EXEC EXECUTE EXISTS EXIT EXTERNAL FETCH
FILE FILLFACTOR FOR FOREIGN FREETEXT FREETEXTTABLE FROM FULL FUNCTION GOTO GRANT GROUP HAVING
HOLDLOCK IDENTITY IDENTITY_INSERT IDENTITYCOL IF IN INDEX INNER INSERT INTERSECT INTO IS JOIN KEY
KILL LEFT LIKE LINENO LOAD MERGE NATIONAL NOCHECK NONCLUSTERED NOT NULL NULLIF OF OFF OFFSETS ON
OPEN OPENDATASOURCE OPENQUERY OPENROWSET OPENXML OPTION OR ORDER OUTER OVER PERCENT PIVOT PLAN
PRECISION PRIMARY PRINT PROC PROCEDURE PUBLIC RAISERROR READ READTEXT RECONFIGURE REFERENCES
REPLICATION RESTORE RESTRICT RETURN REVERT REVOKE RIGHT ROLLBACK ROWCOUNT ROWGUIDCOL RULE SAVE
SCHEMA SECURITYAUDIT SELECT SEMANTICKEYPHRASETABLE SEMANTICSIMILARITYDETAILSTABLE
SEMANTICSIMILARITYTABLE SESSION_USER SET SETUSER SHUTDOWN SOME STATISTICS SYSTEM_USER TABLE
TABLESAMPLE TEXTSIZE THEN TO TOP TRAN TRANSACTION TRIGGER TRUNCATE TRY_CONVERT TSEQUAL UNION
UNIQUE UNPIVOT UPDATE UPDATETEXT USE USER VALUES VARYING VIEW WAITFOR WHEN WHERE WHILE WITH
WITHIN WRITETEXT
""".split())  # noqa: SIM905 - one word list, easy to check against the T-SQL docs
#: Names Caspio itself owns in every table.
_CASPIO_OWNED = frozenset({"PK_ID"})
_NAME_OK = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_GRAIN_NOTE = re.compile(r"grain \(([^)]*)\)")


# --- specs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """One Caspio field. ``length`` is the longest value seen (informational: it picked STRING or
    TEXT; it is not sent as a limit, so tomorrow's slightly longer name still fits).
    ``source`` is the mart column it is filled from (None for ``row_key``)."""

    name: str
    type: str
    unique: bool = False
    length: int | None = None
    label: str | None = None
    description: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.type not in CASPIO_TYPES:
            raise ValueError(f"field {self.name}: {self.type!r} is not a writable Caspio type "
                             f"({', '.join(CASPIO_TYPES)})")
        problem = field_name_problem(self.name)
        if problem:
            raise ValueError(f"field {self.name!r}: {problem}")

    def definition(self) -> dict[str, Any]:
        """The v3 fieldDef Caspio's ``POST /tables`` and ``POST /tables/{t}/fields`` take."""
        out: dict[str, Any] = {"Name": self.name, "Type": self.type, "Unique": self.unique}
        if self.label:
            out["Label"] = _clip(self.label, LABEL_MAX)
        if self.description:
            out["Description"] = _clip(self.description, DESCRIPTION_MAX)
        return out


@dataclass(frozen=True)
class TableSpec:
    """One Caspio table: its name, its unique key field and its fields (key included).

    ``mart`` and ``grain`` say where rows come from; ``meta`` is the dbt model's ``meta`` (a
    publisher reads e.g. a patient-level flag from it).
    """

    name: str
    key: str
    fields: tuple[FieldSpec, ...]
    mart: str | None = None
    grain: tuple[str, ...] = ()
    description: str | None = None
    meta: Mapping[str, Any] = dc_field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "grain", tuple(self.grain))
        problem = table_name_problem(self.name)
        if problem:
            raise ValueError(f"table {self.name!r}: {problem}")
        names = [f.name.lower() for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: duplicate field names")
        key = self.field(self.key)
        if key is None or not key.unique:
            raise ValueError(f"table {self.name}: key field {self.key} must be one of its fields, unique")

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name`` (case-insensitive, as Caspio compares them), or None."""
        low = name.lower()
        return next((f for f in self.fields if f.name.lower() == low), None)

    @property
    def column_map(self) -> dict[str, str]:
        """Mart column -> Caspio field name, for every field filled from a column."""
        return {f.source: f.name for f in self.fields if f.source is not None}

    def source_sql(self, schema: str = DEFAULT_SCHEMA) -> str:
        """A DuckDB query giving the mart's rows under their Caspio field names, ``row_key`` first."""
        if self.mart is None or not self.grain:
            raise ValueError(f"table {self.name}: no mart/grain to select from")
        cols = [f"{row_key_sql(self.grain)} AS {_ident(self.key)}"]
        cols += [f"{_ident(f.source)} AS {_ident(f.name)}" for f in self.fields if f.source is not None]
        return f"SELECT {', '.join(cols)} FROM {_ident(schema)}.{_ident(self.mart)}"


@dataclass(frozen=True)
class SchemaChange:
    """What :func:`ensure_table` did: created the table, and/or added these fields."""

    table: str
    created: bool
    added: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.created or bool(self.added)


# --- names -----------------------------------------------------------------------------------------
def field_name_problem(name: str, max_len: int = FIELD_NAME_MAX) -> str | None:
    """Why ``name`` is not a valid Caspio field name, or None if it is."""
    if not name:
        return "is empty"
    if len(name) > max_len:
        return f"is longer than {max_len} characters"
    if not _NAME_OK.fullmatch(name):
        return "must start with a letter and hold only letters, digits and _"
    if name.upper() in RESERVED_WORDS:
        return "is a SQL Server reserved word"
    if name.upper() in _CASPIO_OWNED:
        return "is Caspio's own field"
    return None


def table_name_problem(name: str) -> str | None:
    """Why ``name`` is not a table name this pipeline creates, or None."""
    return field_name_problem(name, TABLE_NAME_MAX)


def caspio_name(raw: str, max_len: int = FIELD_NAME_MAX) -> str:
    """``raw`` made into a valid Caspio name, deterministically.

    Invalid characters become ``_``; a name not starting with a letter gets ``f_``; reserved words
    and ``PK_ID`` get a trailing ``_``; a name over ``max_len`` is cut and ends with ``_`` plus 6
    hex digits of the original's md5, so distinct long names stay distinct.
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", raw.strip()) or "f"
    if not name[0].isalpha():
        name = "f_" + name
    if name.upper() in RESERVED_WORDS or name.upper() in _CASPIO_OWNED:
        name += "_"
    if len(name) > max_len:
        digest = hashlib.md5(raw.encode()).hexdigest()[:6]
        name = name[: max_len - 7].rstrip("_") + "_" + digest
    return name


def caspio_table_name(prefix: str, mart: str) -> str:
    """The Caspio table of ``mart``: ``{prefix}{mart}``, made valid (at most 32 characters)."""
    return caspio_name(f"{prefix}{mart}", TABLE_NAME_MAX)


# --- types -------------------------------------------------------------------------------------------
def is_money_column(column: str) -> bool:
    """True when a column's name says it holds money: a money word and no rate word in it."""
    words = set(column.lower().split("_"))
    if {"write", "off"} <= words or {"write", "offs"} <= words:
        words.add("writeoff")
    return bool(words & _MONEY_WORDS) and not words & _RATE_WORDS


def duckdb_to_caspio(duckdb_type: str, max_len: int | None = None, *, column: str | None = None,
                     currency: bool | None = None) -> str:
    """The Caspio type token for a DuckDB column type.

    ``max_len`` is the longest VARCHAR value (None: unknown/empty, taken as fitting Text(255)).
    ``currency`` forces (True) or forbids (False) ``CURRENCY`` for a DECIMAL; None applies the
    money-name rule to ``column``. Nested types (LIST, STRUCT, MAP, ...) and BLOBs have no Caspio
    type and raise ValueError.
    """
    t = duckdb_type.strip().upper()
    base = re.split(r"[\s(]", t, maxsplit=1)[0]
    if t.endswith("]") or base in ("STRUCT", "MAP", "UNION", "LIST", "ARRAY", "BLOB", "BYTEA",
                                   "BIT", "INTERVAL", "JSON", "VARIANT"):
        raise ValueError(f"{column or 'column'}: DuckDB type {duckdb_type} has no Caspio type; "
                         "flatten or cast it in the mart")
    if base in ("BOOLEAN", "BOOL", "LOGICAL"):
        return "YES/NO"
    if base.startswith(_TIME_TYPES):  # DATE, TIMESTAMP, TIMESTAMP WITH TIME ZONE, TIMESTAMP_S...
        return "DATE/TIME"
    if base in _INTEGER_TYPES:
        return "INTEGER"
    if base in ("DECIMAL", "NUMERIC"):
        money = currency if currency is not None else bool(column and is_money_column(column))
        return "CURRENCY" if money else "NUMBER"
    if base in _NUMBER_TYPES:
        return "NUMBER"
    if base in _STRING_TYPES:
        return "TEXT" if max_len is not None and max_len > STRING_MAX else "STRING"
    raise ValueError(f"{column or 'column'}: DuckDB type {duckdb_type} has no Caspio type")


# --- dbt docs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnDoc:
    description: str | None = None
    meta: Mapping[str, Any] = dc_field(default_factory=dict)


@dataclass(frozen=True)
class MartDoc:
    """A mart's dbt documentation: description, meta, grain and per-column docs."""

    name: str
    description: str | None = None
    meta: Mapping[str, Any] = dc_field(default_factory=dict)
    grain: tuple[str, ...] = ()
    columns: Mapping[str, ColumnDoc] = dc_field(default_factory=dict)


def load_mart_docs(source: Path | str | None = None) -> dict[str, MartDoc]:
    """The docs of every model in ``source``: a folder of dbt YAML files (searched recursively),
    one YAML file, or a ``manifest.json``. Default: this repository's ``models/marts``."""
    path = Path(source) if source is not None else DEFAULT_MARTS_DIR
    if path.is_file() and path.suffix == ".json":
        return _docs_from_manifest(path)
    files = [path] if path.is_file() else sorted([*path.rglob("*.yml"), *path.rglob("*.yaml")])
    import yaml  # dbt's own dependency; imported here so the client does not need it

    docs: dict[str, MartDoc] = {}
    for file in files:
        body = yaml.safe_load(file.read_text()) or {}
        for model in body.get("models") or []:
            if isinstance(model, dict) and model.get("name"):
                docs[model["name"]] = _doc_from_yaml(model)
    return docs


def _meta(node: Mapping[str, Any]) -> dict[str, Any]:
    return {**(node.get("meta") or {}), **((node.get("config") or {}).get("meta") or {})}


def _doc_from_yaml(model: Mapping[str, Any]) -> MartDoc:
    meta = _meta(model)
    grain = tuple(meta.get("grain") or ())
    if not grain:
        for test in [*(model.get("data_tests") or []), *(model.get("tests") or [])]:
            if isinstance(test, dict):
                for name, spec in test.items():
                    if name.endswith("unique_combination_of_columns") and isinstance(spec, dict):
                        args = spec.get("arguments") or spec
                        grain = tuple(args.get("combination_of_columns") or ())
    columns = {c["name"]: ColumnDoc(_text(c.get("description")), _meta(c))
               for c in model.get("columns") or [] if isinstance(c, dict) and c.get("name")}
    return MartDoc(model["name"], _text(model.get("description")), meta, grain, columns)


def _docs_from_manifest(path: Path) -> dict[str, MartDoc]:
    import json

    manifest = json.loads(path.read_text())
    docs: dict[str, MartDoc] = {}
    for node in (manifest.get("nodes") or {}).values():
        if node.get("resource_type") != "model":
            continue
        meta = _meta(node)
        columns = {name: ColumnDoc(_text(c.get("description")), _meta(c))
                   for name, c in (node.get("columns") or {}).items()}
        docs[node["name"]] = MartDoc(node["name"], _text(node.get("description")), meta,
                                     tuple(meta.get("grain") or ()), columns)
    return docs


# --- a mart's table spec -------------------------------------------------------------------------
def row_key_sql(grain: Sequence[str]) -> str:
    """DuckDB SQL for the row key of a row: md5 over the grain columns.

    Each value is cast to VARCHAR and tagged (``v…``; NULL is ``n``) and the parts are joined
    with the unit separator, so ``('a', NULL)``, ``(NULL, 'a')`` and ``('a|', '')`` all differ.
    """
    if not grain:
        raise ValueError("a row key needs at least one grain column")
    parts = ", ".join(f"coalesce('v' || CAST({_ident(c)} AS VARCHAR), 'n')" for c in grain)
    return f"md5(concat_ws(chr(31), {parts}))"


def table_spec_for_mart(con: duckdb.DuckDBPyConnection, mart: str,
                        docs: Mapping[str, MartDoc] | Path | str | None = None,
                        prefix: str = "ap_", *, schema: str = DEFAULT_SCHEMA,
                        key: str = ROW_KEY) -> TableSpec:
    """The Caspio table spec of the mart ``{schema}.{mart}`` in the warehouse ``con``.

    Column types come from the warehouse, STRING/TEXT from the longest value, labels and
    descriptions from ``docs`` (a :func:`load_mart_docs` result, or a path for it; default this
    repository's YAML). The grain (``meta.grain``, else the ``unique_combination_of_columns``
    test) becomes the unique ``row_key``. Raises ValueError when the mart is missing, has no
    documented grain, or its grain names a column it does not have.
    """
    if not isinstance(docs, Mapping):
        docs = load_mart_docs(docs)
    doc = docs.get(mart) or MartDoc(mart)
    columns = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position", [schema, mart]).fetchall()
    if not columns:
        raise ValueError(f"mart {schema}.{mart} does not exist in the warehouse; build it with dbt first")
    if not doc.grain:
        raise ValueError(f"mart {mart} has no grain: declare meta.grain (its unique columns) in its dbt YAML")
    names = [c for c, _ in columns]
    missing = [g for g in doc.grain if g not in names]
    if missing:
        raise ValueError(f"mart {mart}: grain column(s) {', '.join(missing)} are not in the table")

    # One scan for what the data decides: the longest text (STRING or TEXT) and the largest
    # integer (Caspio's INTEGER is 32-bit; a bigger BIGINT goes to NUMBER).
    text_cols = [c for c, t in columns if _is_text(t)]
    int_cols = [c for c, t in columns if duckdb_to_caspio_or_none(t) == "INTEGER"]
    probes = [f"max(length(CAST({_ident(c)} AS VARCHAR)))" for c in text_cols]
    probes += [f"max(abs(CAST({_ident(c)} AS HUGEINT)))" for c in int_cols]
    lengths: dict[str, int | None] = {}
    magnitudes: dict[str, int | None] = {}
    if probes:
        row = con.execute(f"SELECT {', '.join(probes)} FROM {_ident(schema)}.{_ident(mart)}").fetchall()[0]
        lengths = dict(zip(text_cols, row[: len(text_cols)], strict=True))
        magnitudes = dict(zip(int_cols, row[len(text_cols):], strict=True))

    taken = {key.lower()}
    fields = [FieldSpec(key, "STRING", unique=True, length=32, label="Row key",
                        description=f"Unique row key: md5 of the mart's grain ({', '.join(doc.grain)}). "
                                    "Written by athena-pipeline; do not edit.")]
    for column, dtype in columns:
        cdoc = doc.columns.get(column) or ColumnDoc()
        if not _publishes(cdoc, mart, column):
            continue
        declared = cdoc.meta.get("caspio_type")
        if declared is not None:
            ctype = str(declared).upper()
            if ctype not in CASPIO_TYPES:
                raise ValueError(f"mart {mart}.{column}: meta.caspio_type {declared!r} is not one of "
                                 f"{', '.join(CASPIO_TYPES)}")
        else:
            ctype = duckdb_to_caspio(dtype, lengths.get(column), column=column)
            if ctype == "INTEGER" and (magnitudes.get(column) or 0) > INTEGER_MAX:
                ctype = "NUMBER"
        name = _unique_name(caspio_name(str(cdoc.meta.get("caspio_name") or column)), taken)
        fields.append(FieldSpec(name, ctype, length=lengths.get(column),
                                label=str(cdoc.meta.get("label") or _humanize(column)),
                                description=cdoc.description, source=column))
    return TableSpec(caspio_table_name(prefix, mart), key, tuple(fields), mart=mart, grain=doc.grain,
                     description=doc.description, meta=dict(doc.meta))


def _publishes(cdoc: ColumnDoc, mart: str, column: str) -> bool:
    """False for a column whose dbt ``meta.caspio_publish`` is false: it stays in the warehouse
    but is not a Caspio field (e.g. ``as_of_date``, the same on every row and new every day: as a
    field it would make each nightly publish rewrite every row)."""
    flag = cdoc.meta.get("caspio_publish", True)
    if not isinstance(flag, bool):
        raise ValueError(f"mart {mart}.{column}: meta.caspio_publish must be true or false, got {flag!r}")
    return flag


def duckdb_to_caspio_or_none(duckdb_type: str) -> str | None:
    """:func:`duckdb_to_caspio` without a column name, None for types Caspio cannot hold."""
    try:
        return duckdb_to_caspio(duckdb_type)
    except ValueError:
        return None


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate.lower() in taken:
        suffix = f"_{n}"
        candidate = name[: FIELD_NAME_MAX - len(suffix)] + suffix
        n += 1
    taken.add(candidate.lower())
    return candidate


def _is_text(dtype: str) -> bool:
    base = re.split(r"[\s(]", dtype.strip().upper(), maxsplit=1)[0]
    return base in _STRING_TYPES and not dtype.strip().endswith("]")


def _humanize(column: str) -> str:
    text = column.replace("_", " ").strip()
    return _clip(text[:1].upper() + text[1:], LABEL_MAX)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: object) -> str | None:
    return " ".join(str(value).split()) or None if value else None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- making Caspio match ---------------------------------------------------------------------------
#: existing Caspio type -> spec types it can hold without loss (besides itself).
_WIDER: dict[str, frozenset[str]] = {
    "TEXT": frozenset({"STRING"}),
    "NUMBER": frozenset({"INTEGER", "CURRENCY"}),
}


def ensure_table(client: CaspioClient, spec: TableSpec) -> SchemaChange:
    """Make Caspio's table ``spec.name`` able to hold ``spec``'s rows, without losing data.

    A missing table is created with every field. An existing one gets its missing fields added.
    Fields Caspio has beyond the spec are left alone. Raises :class:`SchemaConflict` (before any
    change) when a field's type cannot hold the new values, when the key field is missing from a
    table that already has rows, is not unique, or was built from another grain, or when another
    field is unique (the pipeline would write NULLs into it).
    """
    existing = client.describe_table(spec.name)
    if existing is None:
        client.create_table(spec.name, spec.fields)
        return SchemaChange(spec.name, created=True, added=tuple(f.name for f in spec.fields))

    have = {f.name.lower(): f for f in existing}
    missing = [f for f in spec.fields if f.name.lower() not in have]
    for wanted in spec.fields:
        current = have.get(wanted.name.lower())
        if current is not None:
            _check_field(spec, wanted, current)
    key_missing = spec.key.lower() not in have
    for current in existing:
        if current.unique and current.name.lower() != spec.key.lower():
            raise SchemaConflict(
                f"Caspio table {spec.name}: field {current.name} is unique but the pipeline's key is "
                f"{spec.key}; new rows would leave it empty. Turn off 'Unique' on {current.name} in "
                f"Caspio (Table Design), or publish to a new table (change CASPIO_TABLE_PREFIX).",
                table=spec.name, field=current.name)
    if key_missing and client.count_records(spec.name) > 0:
        raise SchemaConflict(
            f"Caspio table {spec.name} has rows but no unique key field {spec.key}, so its rows cannot "
            f"be matched to the mart's. Empty or rename the table in Caspio (nothing is deleted by the "
            f"pipeline), or publish to a new table (change CASPIO_TABLE_PREFIX).",
            table=spec.name, field=spec.key)
    for f in missing:
        client.add_field(spec.name, f)
    return SchemaChange(spec.name, created=False, added=tuple(f.name for f in missing))


def _check_field(spec: TableSpec, wanted: FieldSpec, current: CaspioField) -> None:
    have_type = (current.type or "").upper()
    if have_type != wanted.type and wanted.type not in _WIDER.get(have_type, frozenset()):
        hint = (f"change {current.name} to {wanted.type} in Caspio (Table Design) if Caspio can "
                "convert the existing values")
        if have_type == "STRING" and wanted.type == "TEXT":
            hint = (f"values now exceed 255 characters: change {current.name} from Text (255) to "
                    "Text (64000) in Caspio (Table Design)")
        raise SchemaConflict(
            f"Caspio table {spec.name}: field {current.name} is {have_type or 'untyped'} but the mart "
            f"column {wanted.source or wanted.name} now needs {wanted.type}. The pipeline never retypes "
            f"or drops a field: {hint}, or rename the column in the mart, or publish to a new table "
            f"(change CASPIO_TABLE_PREFIX).", table=spec.name, field=current.name)
    if wanted.name.lower() != spec.key.lower():
        return
    if not current.unique:
        raise SchemaConflict(
            f"Caspio table {spec.name}: key field {current.name} is not unique, so a retried insert "
            f"could duplicate rows. Turn on 'Unique' for {current.name} in Caspio (Table Design) after "
            f"removing duplicate rows.", table=spec.name, field=current.name)
    old = _GRAIN_NOTE.search(current.description or "")
    if old and spec.grain and tuple(g.strip() for g in old.group(1).split(",")) != spec.grain:
        raise SchemaConflict(
            f"Caspio table {spec.name}: key field {current.name} was built from the grain "
            f"({old.group(1)}), the mart's grain is now ({', '.join(spec.grain)}); existing rows cannot "
            f"be matched. Publish to a new table (change CASPIO_TABLE_PREFIX), or empty this table in "
            f"Caspio and re-publish.", table=spec.name, field=current.name)
