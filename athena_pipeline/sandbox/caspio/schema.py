"""Caspio's data model: type tokens, field-name rules, field definitions and value conversion.

Why in one module: the same rules decide what ``POST /tables``, ``POST /fields``, a record
write and a where-clause literal accept, and what a record read returns, and they must agree.
The rules are the spec's (``caspio-api.md`` §4, §12): exact type tokens (``STRING`` is Text(255);
``TEXT(255)`` is not a token), names of letters/digits/``_`` starting with a letter, at most 32
characters, no SQL Server reserved word; auto-ID types need ``Unique: true``; Text(255) and
Text(64000) lengths; dates as ``YYYY-MM-DDTHH:MM:SS`` without a zone; Yes/No as booleans.

Storage form (SQLite, see ``store.py``): strings as TEXT, numbers as INTEGER/REAL, dates as the
canonical ISO text (so text order is time order), Yes/No as 0/1, lists as JSON text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from athena_pipeline.sandbox.caspio.errors import CaspioApiError, bad_body

#: Types a record write may set.
WRITABLE_TYPES = frozenset({"STRING", "TEXT", "NUMBER", "INTEGER", "CURRENCY", "DATE/TIME", "YES/NO"})
#: Auto-ID types: read-only, and v3 requires ``Unique: true`` when creating one.
AUTO_ID_TYPES = frozenset({"AUTONUMBER", "PREFIXED AUTONUMBER", "GUID", "RANDOM ID"})
LIST_TYPES = frozenset({"LIST-STRING", "LIST-NUMBER", "LIST-DATE/TIME"})
#: Every ``Type`` string the v2/v3 API accepts, exactly (case-sensitive).
TYPE_TOKENS = frozenset(WRITABLE_TYPES | AUTO_ID_TYPES | LIST_TYPES
                        | {"TIMESTAMP", "PASSWORD", "FILE", "ATTACHMENT"})
#: Never settable through a record write.
READ_ONLY_TYPES = frozenset(AUTO_ID_TYPES | {"TIMESTAMP", "FILE", "ATTACHMENT"})
NUMERIC_TYPES = frozenset({"NUMBER", "INTEGER", "CURRENCY", "AUTONUMBER"})
TEXT_TYPES = frozenset({"STRING", "TEXT", "PREFIXED AUTONUMBER", "GUID", "RANDOM ID", "PASSWORD",
                        "FILE", "ATTACHMENT"})
DATE_TYPES = frozenset({"DATE/TIME", "TIMESTAMP"})
#: Types that cannot carry a unique index (no index on Text(64000), passwords, files, lists)
#: [guess: the UI greys the Unique box out for them].
NO_UNIQUE_TYPES = frozenset({"TEXT", "PASSWORD", "FILE", "ATTACHMENT", "TIMESTAMP"} | LIST_TYPES)

MAX_LENGTH = {"STRING": 255, "TEXT": 64000, "PASSWORD": 255}
MAX_LABEL = 255
MAX_DESCRIPTION = 4000
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
PK_ID = "PK_ID"

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

#: SQL Server reserved keywords (T-SQL), the list the Caspio SDK checks names against.
RESERVED_WORDS = frozenset(["ADD", "ALL", "ALTER", "AND", "ANY", "AS", "ASC", "AUTHORIZATION", "BACKUP", "BEGIN", "BETWEEN", "BREAK", "BROWSE", "BULK", "BY", "CASCADE", "CASE", "CHECK", "CHECKPOINT", "CLOSE", "CLUSTERED", "COALESCE", "COLLATE", "COLUMN", "COMMIT", "COMPUTE", "CONSTRAINT", "CONTAINS", "CONTAINSTABLE", "CONTINUE", "CONVERT", "CREATE", "CROSS", "CURRENT", "CURRENT_DATE", "CURRENT_TIME", "CURRENT_TIMESTAMP", "CURRENT_USER", "CURSOR", "DATABASE", "DBCC", "DEALLOCATE", "DECLARE", "DEFAULT", "DELETE", "DENY", "DESC", "DISK", "DISTINCT", "DISTRIBUTED", "DOUBLE", "DROP", "DUMP", "ELSE", "END", "ERRLVL", "ESCAPE", "EXCEPT", "EXEC", "EXECUTE", "EXISTS", "EXIT", "EXTERNAL", "FETCH", "FILE", "FILLFACTOR", "FOR", "FOREIGN", "FREETEXT", "FREETEXTTABLE", "FROM", "FULL", "FUNCTION", "GOTO", "GRANT", "GROUP", "HAVING", "HOLDLOCK", "IDENTITY", "IDENTITY_INSERT", "IDENTITYCOL", "IF", "IN", "INDEX", "INNER", "INSERT", "INTERSECT", "INTO", "IS", "JOIN", "KEY", "KILL", "LEFT", "LIKE", "LINENO", "LOAD", "MERGE", "NATIONAL", "NOCHECK", "NONCLUSTERED", "NOT", "NULL", "NULLIF", "OF", "OFF", "OFFSETS", "ON", "OPEN", "OPENDATASOURCE", "OPENQUERY", "OPENROWSET", "OPENXML", "OPTION", "OR", "ORDER", "OUTER", "OVER", "PERCENT", "PIVOT", "PLAN", "PRECISION", "PRIMARY", "PRINT", "PROC", "PROCEDURE", "PUBLIC", "RAISERROR", "READ", "READTEXT", "RECONFIGURE", "REFERENCES", "REPLICATION", "RESTORE", "RESTRICT", "RETURN", "REVERT", "REVOKE", "RIGHT", "ROLLBACK", "ROWCOUNT", "ROWGUIDCOL", "RULE", "SAVE", "SCHEMA", "SECURITYAUDIT", "SELECT", "SEMANTICKEYPHRASETABLE", "SEMANTICSIMILARITYDETAILSTABLE", "SEMANTICSIMILARITYTABLE", "SESSION_USER", "SET", "SETUSER", "SHUTDOWN", "SOME", "STATISTICS", "SYSTEM_USER", "TABLE", "TABLESAMPLE", "TEXTSIZE", "THEN", "TO", "TOP", "TRAN", "TRANSACTION", "TRIGGER", "TRUNCATE", "TRY_CONVERT", "TSEQUAL", "UNION", "UNIQUE", "UNPIVOT", "UPDATE", "UPDATETEXT", "USE", "USER", "VALUES", "VARYING", "VIEW", "WAITFOR", "WHEN", "WHERE", "WHILE", "WITH", "WITHIN", "WRITETEXT"])

_LIST_KEYS_RE = re.compile(r"\s*\[[^\]]*\](\s*,\s*\[[^\]]*\])*\s*")
_DATE_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?"
    r"(?:Z|[+-]\d{2}:?\d{2})?")


def check_name(name: Any, what: str, max_length: int) -> str:
    """``name`` if it is a valid Caspio object name, else 400 IncorrectBodyParameter."""
    if not isinstance(name, str) or not name:
        raise bad_body(f"{what} name is required.")
    if not _NAME_RE.fullmatch(name):
        raise bad_body(f"{what} name '{name}' is invalid: use letters, digits and '_', "
                       "starting with a letter.")
    if len(name) > max_length:
        raise bad_body(f"{what} name '{name}' is longer than {max_length} characters.")
    if name.upper() in RESERVED_WORDS:
        raise bad_body(f"{what} name '{name}' is a reserved word.")
    return name


@dataclass(frozen=True)
class FieldDef:
    """One field as Caspio describes it (``fieldDef`` in the spec). PK_ID is not a FieldDef."""

    name: str
    type: str
    unique: bool = False
    unique_allow_nulls: bool = False
    label: str = ""
    description: str = ""
    display_order: int = 0
    on_insert: bool = False
    on_update: bool = False
    time_zone: str = ""
    format: str = ""
    prefix: str = ""
    is_formula: bool = False

    @property
    def enforces_unique(self) -> bool:
        return self.unique or self.unique_allow_nulls

    @property
    def read_only(self) -> bool:
        return self.type in READ_ONLY_TYPES

    def to_json(self) -> dict[str, Any]:
        """The fieldDef as ``GET /fields`` returns it."""
        return {
            "Name": self.name, "Type": self.type, "Unique": self.unique,
            "UniqueAllowNulls": self.unique_allow_nulls, "Label": self.label,
            "Description": self.description, "DisplayOrder": self.display_order,
            "OnInsert": self.on_insert, "OnUpdate": self.on_update, "TimeZone": self.time_zone,
            "Format": self.format, "Prefix": self.prefix, "Length": MAX_LENGTH.get(self.type),
            "IsFormula": self.is_formula, "ListField": None,
        }

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> FieldDef:
        return cls(**d)

    def stored(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _opt(body: dict, key: str, kind: type, default: Any, what: str) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if kind is bool and not isinstance(value, bool):
        raise bad_body(f"{what}: '{key}' must be true or false.")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad_body(f"{what}: '{key}' must be an integer.")
    if kind is str and not isinstance(value, str):
        raise bad_body(f"{what}: '{key}' must be a string.")
    return value


def parse_field_def(body: Any, *, display_order: int, max_name_length: int = 32,
                    base: FieldDef | None = None) -> FieldDef:
    """Validate a fieldDef from a request body (POST, or PUT over ``base``)."""
    if not isinstance(body, dict):
        raise bad_body("A field definition must be a JSON object.")
    b = base
    name = body.get("Name", b.name if b else None)
    name = check_name(name, "Field", max_name_length)
    if name.upper() == PK_ID:
        raise bad_body("Field name 'PK_ID' is reserved: Caspio adds it to every table.")
    what = f"Field '{name}'"
    ftype = body.get("Type", b.type if b else None)
    if not isinstance(ftype, str) or not ftype:
        raise bad_body(f"{what}: 'Type' is required.")
    if ftype not in TYPE_TOKENS:
        raise bad_body(f"{what}: '{ftype}' is not a valid data type. Valid types: "
                       + ", ".join(sorted(TYPE_TOKENS)) + ".")
    label = _opt(body, "Label", str, b.label if b else "", what)
    description = _opt(body, "Description", str, b.description if b else "", what)
    if len(label) > MAX_LABEL:
        raise bad_body(f"{what}: 'Label' is longer than {MAX_LABEL} characters.")
    if len(description) > MAX_DESCRIPTION:
        raise bad_body(f"{what}: 'Description' is longer than {MAX_DESCRIPTION} characters.")
    unique = _opt(body, "Unique", bool, b.unique if b else False, what)
    allow_nulls = _opt(body, "UniqueAllowNulls", bool, b.unique_allow_nulls if b else False, what)
    is_formula = _opt(body, "IsFormula", bool, b.is_formula if b else False, what)
    if is_formula:
        raise bad_body(f"{what}: formula fields are not supported by this emulator.")
    if ftype in AUTO_ID_TYPES and not unique:
        raise bad_body(f"{what}: a field of type {ftype} must be created with \"Unique\": true.")
    if (unique or allow_nulls) and ftype in NO_UNIQUE_TYPES:
        raise bad_body(f"{what}: a field of type {ftype} cannot be unique.")
    length = body.get("Length")  # informational: Text(255) and Text(64000) have fixed sizes
    if length is not None and ftype in MAX_LENGTH and (
            isinstance(length, bool) or not isinstance(length, int)
            or not 1 <= length <= MAX_LENGTH[ftype]):
        raise bad_body(f"{what}: 'Length' must be at most {MAX_LENGTH[ftype]} for {ftype}.")
    return FieldDef(
        name=name, type=ftype, unique=unique, unique_allow_nulls=allow_nulls,
        label=label, description=description,
        display_order=_opt(body, "DisplayOrder", int, b.display_order if b else display_order, what),
        on_insert=_opt(body, "OnInsert", bool,
                       b.on_insert if b else ftype == "TIMESTAMP", what),
        on_update=_opt(body, "OnUpdate", bool, b.on_update if b else False, what),
        time_zone=_opt(body, "TimeZone", str, b.time_zone if b else "", what),
        format=_opt(body, "Format", str, b.format if b else "", what),
        prefix=_opt(body, "Prefix", str, b.prefix if b else "", what),
        is_formula=False,
    )


# --- values -------------------------------------------------------------------------------------
def parse_datetime(value: str) -> str | None:
    """A date or date-time string in the canonical stored form, or None when it is not one.

    Accepts ``YYYY-MM-DD`` and ``YYYY-MM-DD[T ]HH:MM[:SS[.fff]]``; a zone designator is accepted
    and dropped (Caspio stores wall time without a zone [guess]). SQL Server ``datetime`` range
    (1753..9999) applies.
    """
    m = _DATE_RE.fullmatch(value.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        stamp = dt.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError:
        return None
    if stamp.year < 1753:
        return None
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    millis = int((frac or "0").ljust(3, "0")[:3])
    return f"{text}.{millis:03d}" if millis else text


def _mismatch(field: FieldDef, status: int, why: str = "") -> CaspioApiError:
    return CaspioApiError(
        status, "InvalidInputValue",
        f"The value doesn't match the data type of field(s) '{field.name}' ({field.type}){why}.")


def to_storage(field: FieldDef, value: Any, *, status: int = 400,
               currency_decimals: int | None = 4) -> Any:
    """A JSON value for ``field`` in its stored form; raises InvalidInputValue on a mismatch.

    Strict on purpose: a number must be a JSON number (not a numeric string), a Yes/No a JSON
    boolean (or 0/1), a date an ISO string; strings longer than the type allows are refused
    rather than truncated.
    """
    if value is None:
        return None
    t = field.type
    if t in ("STRING", "TEXT", "PASSWORD"):
        if isinstance(value, (bool, dict, list)):
            raise _mismatch(field, status)
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise _mismatch(field, status)
            value = json.dumps(value)
        if len(value) > MAX_LENGTH[t]:
            raise _mismatch(field, status, f": longer than {MAX_LENGTH[t]} characters")
        if t == "PASSWORD":
            return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
        return value
    if t in ("NUMBER", "CURRENCY", "INTEGER"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _mismatch(field, status)
        if isinstance(value, float) and not math.isfinite(value):
            raise _mismatch(field, status)
        if t == "INTEGER":
            if isinstance(value, float):
                if not value.is_integer():
                    raise _mismatch(field, status, ": not a whole number")
                value = int(value)
            if not INT_MIN <= value <= INT_MAX:
                raise _mismatch(field, status, ": out of range")
            return value
        if t == "CURRENCY" and currency_decimals is not None:
            value = round(float(value), currency_decimals)
        return value
    if t == "DATE/TIME":
        parsed = parse_datetime(value) if isinstance(value, str) else None
        if parsed is None:
            raise _mismatch(field, status, ": expected YYYY-MM-DDTHH:MM:SS")
        return parsed
    if t == "YES/NO":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int) and value in (0, 1):
            return value
        raise _mismatch(field, status, ": expected true or false")
    if t in LIST_TYPES:
        items = value if isinstance(value, list) else None
        if isinstance(value, str) and _LIST_KEYS_RE.fullmatch(value):  # v3 form: "[2], [3]"
            items = [int(k) if k.isdigit() else k for k in re.findall(r"\[([^\]]*)\]", value)]
        if items is None or not all(isinstance(i, (int, str)) and not isinstance(i, bool)
                                    for i in items):
            raise _mismatch(field, status, ": expected a list of keys")
        return json.dumps(items)
    raise CaspioApiError(400, "IncorrectBodyParameter", f"Field '{field.name}' is read-only.")


def from_storage(ftype: str, value: Any) -> Any:
    """A stored value as Caspio's JSON shows it."""
    if value is None:
        return None
    if ftype == "YES/NO":
        return bool(value)
    if ftype in LIST_TYPES:
        try:
            return json.loads(value)
        except (TypeError, ValueError):
            return value
    if ftype in ("NUMBER", "CURRENCY") and isinstance(value, float) and value.is_integer() \
            and abs(value) < 2**53:
        return int(value)
    return value
