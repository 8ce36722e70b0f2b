"""Caspio's tables, fields and records, persisted in one SQLite file (``<state>/caspio.sqlite``).

Why SQLite and not DuckDB: Caspio's v3 API writes one row per call, from many concurrent
clients, and every write must be durable before the 201 goes out. SQLite (WAL, one writer)
commits a one-row transaction in microseconds and has ``COLLATE NOCASE`` to model SQL Server's
case-insensitive comparisons and unique indexes; DuckDB is built for the opposite (big scans,
costly single-row commits, one process per file). The file lives in the world directory, so the
demo's tables survive a restart of ``sandbox serve``.

Layout: ``caspio_tables`` and ``caspio_fields`` hold the design (a field's whole definition as
JSON, plus the counter of auto-number fields); each Caspio table is a SQLite table
``data_<tableId>`` with ``PK_ID INTEGER PRIMARY KEY AUTOINCREMENT`` (never reused, as Caspio's
autonumber) and one untyped ``COLLATE NOCASE`` column per field (``schema.py`` converts values
and so decides what is stored). ``Unique`` is a unique index; plain ``Unique`` also allows at
most one empty value (SQL Server's unique constraint), ``UniqueAllowNulls`` any number.

One connection, one lock: calls are short (a row, or a page of at most 1000 rows), so the app
calls the store inline and the lock makes it safe from any thread.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import sqlite3
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from athena_pipeline.sandbox.caspio.errors import CaspioApiError, bad_body, bad_query, not_found, sql_error
from athena_pipeline.sandbox.caspio.schema import (
    AUTO_ID_TYPES,
    PK_ID,
    READ_ONLY_TYPES,
    FieldDef,
    from_storage,
    to_storage,
)
from athena_pipeline.sandbox.caspio.where import (
    Columns,
    Compiler,
    SelectItem,
    like_regex,
    quote,
)

DB_NAME = "caspio.sqlite"
#: Hidden integer column of every view: the first table's PK_ID, the order of an unordered read.
VIEW_ORDER = "_pk_order"
JOIN_TYPES = ("INNER", "LEFT")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS caspio_tables (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    note TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS caspio_fields (
    table_id TEXT NOT NULL,
    name TEXT NOT NULL COLLATE NOCASE,
    position INTEGER NOT NULL,
    def TEXT NOT NULL,
    next_value INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (table_id, name)
);
CREATE TABLE IF NOT EXISTS caspio_tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    client_id TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    last_used REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS caspio_views (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    note TEXT NOT NULL DEFAULT '',
    def TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS caspio_meter (
    period TEXT PRIMARY KEY,
    calls INTEGER NOT NULL
);
"""

_UNIQUE_COL_RE = re.compile(r"UNIQUE constraint failed: data_\w+\.(\w+)")
_UNIQUE_IDX_RE = re.compile(r"UNIQUE constraint failed: index '[un]_\w{6}_(\w+)'")


@dataclass(frozen=True)
class TableInfo:
    """A table's (or view's) design: v4 ``id``, ``name``, ``note`` and fields in display order.

    A view is read through the same query code: its relation is the SQLite view
    ``view_<id>``, its ``PK_ID`` is text (the source PK_IDs joined by commas) and a hidden
    integer column orders it when the client gives no order.
    """

    id: str
    name: str
    note: str
    fields: tuple[FieldDef, ...]
    is_view: bool = False
    _by_lower: dict[str, FieldDef] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_lower.update({f.name.lower(): f for f in self.fields})

    @property
    def data(self) -> str:
        return quote(f"view_{self.id}" if self.is_view else f"data_{self.id}")

    @property
    def order_column(self) -> str:
        return quote(VIEW_ORDER if self.is_view else PK_ID)

    def field(self, name: str) -> FieldDef | None:
        return self._by_lower.get(name.lower())

    def columns(self) -> Columns:
        return Columns({f.name: f.type for f in self.fields},
                       pk_type="STRING" if self.is_view else "PK_ID")


@dataclass(frozen=True)
class ReadQuery:
    """A parsed records GET: clauses, plus the LIMIT/OFFSET the app derived from q.*."""

    select: list[SelectItem] | None = None
    where: Any = None
    group_by: list[str] | None = None
    order_by: list[tuple[SelectItem, bool]] | None = None
    limit: int = 100
    offset: int = 0
    #: Set when paging without q.orderBy in "scrambled" mode: the page number seeds the order.
    scramble: int | None = None
    unknown_select_status: int = 500


@dataclass(frozen=True)
class WriteOptions:
    """How values are checked: status of a type mismatch, currency rounding."""

    invalid_status: int = 400
    currency_decimals: int | None = 4


@dataclass(frozen=True)
class BulkRowResult:
    status: int
    pk_id: int | None
    error: CaspioApiError | None


def _caspio_like(value: Any, pattern: str, escape: str | None) -> int | None:
    if value is None or pattern is None:
        return None
    return 1 if like_regex(pattern, escape).fullmatch(str(value)) else 0


def _now_text(clock: Callable[[], float]) -> str:
    return dt.datetime.fromtimestamp(clock(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


class CaspioStore:
    """The persisted state of one Caspio account (design, records, tokens, meter)."""

    def __init__(self, state_dir: Path | str, *, seed: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / DB_NAME
        self.clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                    timeout=30)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.create_function("caspio_like", 3, _caspio_like, deterministic=True)
        self._con.executescript(_SCHEMA)
        self._tables: dict[str, TableInfo] | None = None

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # --- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on any error."""
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            else:
                self._con.execute("COMMIT")

    def _load(self) -> dict[str, TableInfo]:
        if self._tables is None:
            fields: dict[str, list[FieldDef]] = {}
            for tid, d in self._con.execute(
                    "SELECT table_id, def FROM caspio_fields ORDER BY table_id, position"):
                fields.setdefault(tid, []).append(FieldDef.from_stored(json.loads(d)))
            self._tables = {
                name.lower(): TableInfo(tid, name, note, tuple(fields.get(tid, ())))
                for tid, name, note in self._con.execute(
                    "SELECT id, name, note FROM caspio_tables ORDER BY name")
            }
        return self._tables

    def _invalidate(self) -> None:
        self._tables = None

    def _new_table_id(self) -> str:
        alphabet = string.ascii_lowercase + string.digits
        taken = {t.id for t in self._load().values()}
        taken |= {r[0] for r in self._con.execute("SELECT id FROM caspio_views")}
        while True:
            tid = "".join(self._rng.choice(alphabet) for _ in range(6))
            if tid not in taken:
                return tid

    # --- design -----------------------------------------------------------------------------
    def table_names(self) -> list[str]:
        with self._lock:
            return [t.name for t in self._load().values()]

    def tables(self) -> list[TableInfo]:
        with self._lock:
            return list(self._load().values())

    def table(self, name: str) -> TableInfo:
        """The table named ``name`` (case-insensitive), else 404 ObjectNotFound."""
        with self._lock:
            info = self._load().get(name.lower())
        if info is None:
            raise not_found(f"Table '{name}' does not exist.")
        return info

    def table_by_id(self, table_id: str) -> TableInfo:
        with self._lock:
            for info in self._load().values():
                if info.id == table_id:
                    return info
        raise not_found(f"Table with id '{table_id}' does not exist.")

    def create_table(self, name: str, note: str, fields: Sequence[FieldDef]) -> TableInfo:
        seen: set[str] = set()
        for f in fields:
            if f.name.lower() in seen:
                raise bad_body(f"Field '{f.name}' appears more than once.")
            seen.add(f.name.lower())
        with self._write() as con:
            if name.lower() in self._load():
                raise bad_body(f"Table '{name}' already exists.")
            tid = self._new_table_id()
            con.execute("INSERT INTO caspio_tables (id, name, note, created_at) VALUES (?, ?, ?, ?)",
                        (tid, name, note, _now_text(self.clock)))
            con.execute(f'CREATE TABLE "data_{tid}" ("{PK_ID}" INTEGER PRIMARY KEY AUTOINCREMENT)')
            self._invalidate()
            try:
                for pos, f in enumerate(fields):
                    self._add_field(con, tid, f, pos)
            finally:
                self._invalidate()
        return self.table(name)

    def delete_table(self, name: str) -> None:
        info = self.table(name)
        users = [v for v, d in self._view_defs() if info.id in d["table_ids"]]
        if users:
            raise bad_body(f"Table '{info.name}' is used by view(s) {', '.join(users)}; "
                           "delete the view(s) first.")
        with self._write() as con:
            con.execute(f"DROP TABLE {info.data}")
            con.execute("DELETE FROM caspio_fields WHERE table_id = ?", (info.id,))
            con.execute("DELETE FROM caspio_tables WHERE id = ?", (info.id,))
            self._invalidate()

    def _indexes(self, con: sqlite3.Connection, tid: str, f: FieldDef) -> None:
        col = quote(f.name)
        try:
            if f.enforces_unique:
                con.execute(f'CREATE UNIQUE INDEX "u_{tid}_{f.name}" ON "data_{tid}" ({col})')
            if f.unique and not f.unique_allow_nulls:
                con.execute(f'CREATE UNIQUE INDEX "n_{tid}_{f.name}" ON "data_{tid}" '
                            f"(({col} IS NULL)) WHERE {col} IS NULL")
        except sqlite3.IntegrityError:
            raise sql_error(f"Cannot make field '{f.name}' unique: the table has duplicate "
                            "(or more than one empty) values in it.") from None

    def _drop_indexes(self, con: sqlite3.Connection, tid: str, name: str) -> None:
        con.execute(f'DROP INDEX IF EXISTS "u_{tid}_{name}"')
        con.execute(f'DROP INDEX IF EXISTS "n_{tid}_{name}"')

    def _add_field(self, con: sqlite3.Connection, tid: str, f: FieldDef, pos: int) -> None:
        con.execute(f'ALTER TABLE "data_{tid}" ADD COLUMN {quote(f.name)} COLLATE NOCASE')
        next_value = 1
        if f.type in AUTO_ID_TYPES:  # existing rows get values, in PK_ID order
            pks = [r[0] for r in con.execute(f'SELECT "{PK_ID}" FROM "data_{tid}" ORDER BY 1')]
            for pk in pks:
                con.execute(f'UPDATE "data_{tid}" SET {quote(f.name)} = ? WHERE "{PK_ID}" = ?',
                            (self._auto_value(f, next_value), pk))
                next_value += 1
        self._indexes(con, tid, f)
        con.execute("INSERT INTO caspio_fields (table_id, name, position, def, next_value) "
                    "VALUES (?, ?, ?, ?, ?)", (tid, f.name, pos, json.dumps(f.stored()), next_value))

    def add_field(self, table: str, f: FieldDef) -> None:
        info = self.table(table)
        if info.field(f.name) is not None:
            raise bad_body(f"Field '{f.name}' already exists in table '{info.name}'.")
        with self._write() as con:
            pos = con.execute("SELECT coalesce(max(position) + 1, 0) FROM caspio_fields "
                              "WHERE table_id = ?", (info.id,)).fetchone()[0]
            try:
                self._add_field(con, info.id, f, pos)
            finally:
                self._invalidate()

    def update_field(self, table: str, name: str, new: FieldDef, opts: WriteOptions) -> None:
        """Change a field's definition: rename, relabel, uniqueness, or a type whose existing
        values all convert (else 400, nothing changed)."""
        info = self.table(table)
        old = info.field(name)
        if old is None:
            raise CaspioApiError(404, "FieldNotFound", f"Field '{name}' does not exist in table '{info.name}'.")
        if new.name.lower() != old.name.lower() and info.field(new.name) is not None:
            raise bad_body(f"Field '{new.name}' already exists in table '{info.name}'.")
        if new.type != old.type and (new.type in READ_ONLY_TYPES or old.type in READ_ONLY_TYPES
                                     or "PASSWORD" in (new.type, old.type)):
            raise bad_body(f"Field '{old.name}' cannot be changed from {old.type} to {new.type}.")
        with self._write() as con:
            try:
                self._drop_indexes(con, info.id, old.name)
                if new.name != old.name:
                    con.execute(f'ALTER TABLE "data_{info.id}" RENAME COLUMN {quote(old.name)} '
                                f"TO {quote(new.name)}")
                if new.type != old.type:
                    self._convert(con, info, old, new, opts)
                self._indexes(con, info.id, new)
                con.execute("UPDATE caspio_fields SET name = ?, def = ? WHERE table_id = ? AND name = ?",
                            (new.name, json.dumps(new.stored()), info.id, old.name))
            finally:
                self._invalidate()

    def _convert(self, con: sqlite3.Connection, info: TableInfo, old: FieldDef, new: FieldDef,
                 opts: WriteOptions) -> None:
        col = quote(new.name)
        rows = con.execute(f'SELECT "{PK_ID}", {col} FROM {info.data} WHERE {col} IS NOT NULL').fetchall()
        for pk, stored in rows:
            value = from_storage(old.type, stored)
            candidates = [value]
            if isinstance(value, str):  # SQL Server converts numeric and true/false text
                text = value.strip()
                for parse in (int, float):
                    try:
                        candidates.append(parse(text))
                    except ValueError:
                        pass
                if text.lower() in ("true", "false"):
                    candidates.append(text.lower() == "true")
            for candidate in candidates:
                try:
                    converted = to_storage(new, candidate, status=400,
                                           currency_decimals=opts.currency_decimals)
                    break
                except CaspioApiError:
                    continue
            else:
                raise CaspioApiError(
                    opts.invalid_status, "InvalidInputValue",
                    f"Field '{old.name}' cannot be changed to {new.type}: "
                    "existing values do not convert.")
            con.execute(f'UPDATE {info.data} SET {col} = ? WHERE "{PK_ID}" = ?', (converted, pk))

    def delete_field(self, table: str, name: str) -> None:
        info = self.table(table)
        f = info.field(name)
        if f is None:
            raise CaspioApiError(404, "FieldNotFound", f"Field '{name}' does not exist in table '{info.name}'.")
        with self._write() as con:
            try:
                self._drop_indexes(con, info.id, f.name)
                try:
                    con.execute(f"ALTER TABLE {info.data} DROP COLUMN {quote(f.name)}")
                except sqlite3.OperationalError:  # SQLite refuses when a view uses the column
                    raise bad_body(f"Field '{f.name}' is used by a view and cannot be deleted.") from None
                con.execute("DELETE FROM caspio_fields WHERE table_id = ? AND name = ?",
                            (info.id, f.name))
            finally:
                self._invalidate()

    # --- records: values --------------------------------------------------------------------
    def _auto_value(self, f: FieldDef, n: int) -> Any:
        if f.type == "AUTONUMBER":
            return n
        if f.type == "PREFIXED AUTONUMBER":
            return f"{f.prefix}{n}"
        if f.type == "GUID":
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4)).upper()
        alphabet = string.ascii_uppercase + string.digits  # RANDOM ID
        return "".join(self._rng.choice(alphabet) for _ in range(8))

    def _values(self, info: TableInfo, body: dict[str, Any], opts: WriteOptions, *,
                insert: bool) -> dict[str, Any]:
        """Body keys resolved to fields and values converted; the checks Caspio makes, in the
        order a client meets them: unknown field (404), read-only (400), type/length (400)."""
        resolved: list[tuple[FieldDef, Any]] = []
        for key, value in body.items():
            f = info.field(key)
            if f is None:
                if key.upper() == PK_ID:
                    raise bad_body("Field 'PK_ID' is read-only.")
                raise CaspioApiError(404, "FieldNotFound",
                                     f"Field '{key}' does not exist in table '{info.name}'.")
            resolved.append((f, value))
        out: dict[str, Any] = {}
        for f, value in resolved:
            if f.read_only:
                raise bad_body(f"Field '{f.name}' is read-only.")
            if f.type == "PASSWORD" and not insert:
                raise bad_body(f"Field '{f.name}' is a password field: set it on insert only.")
            out[f.name] = to_storage(f, value, status=opts.invalid_status,
                                     currency_decimals=opts.currency_decimals)
        return out

    def _unique_error(self, info: TableInfo, exc: sqlite3.IntegrityError) -> CaspioApiError:
        text = str(exc)
        m = _UNIQUE_COL_RE.search(text) or _UNIQUE_IDX_RE.search(text)
        name = m.group(1) if m else "?"
        return sql_error(f"Violation of UNIQUE KEY constraint on field '{name}' of table "
                         f"'{info.name}'. Cannot insert duplicate key.")

    def _insert_one(self, con: sqlite3.Connection, info: TableInfo, body: dict[str, Any],
                    opts: WriteOptions) -> int:
        values = self._values(info, body, opts, insert=True)
        now = None
        for f in info.fields:
            if f.type in AUTO_ID_TYPES:
                n = con.execute("UPDATE caspio_fields SET next_value = next_value + 1 "
                                "WHERE table_id = ? AND name = ? RETURNING next_value - 1",
                                (info.id, f.name)).fetchone()[0]
                values[f.name] = self._auto_value(f, n)
            elif f.type == "TIMESTAMP" and (f.on_insert or f.on_update):
                values[f.name] = now = now or _now_text(self.clock)
        cols = ", ".join(quote(c) for c in values)
        sql = (f"INSERT INTO {info.data} ({cols}) VALUES ({', '.join('?' * len(values))})"
               if values else f"INSERT INTO {info.data} DEFAULT VALUES")
        try:
            cur = con.execute(sql, tuple(values.values()))
        except sqlite3.IntegrityError as exc:
            raise self._unique_error(info, exc) from None
        return int(cur.lastrowid)

    def insert(self, table: str, body: dict[str, Any], opts: WriteOptions) -> int:
        """Insert one record; returns its PK_ID."""
        info = self.table(table)
        with self._write() as con:
            return self._insert_one(con, info, body, opts)

    def insert_many(self, info: TableInfo, rows: Sequence[Any], opts: WriteOptions
                    ) -> list[BulkRowResult]:
        """v4 bulk: each row inserted on its own (a failed row does not undo the others)."""
        results: list[BulkRowResult] = []
        with self._write() as con:
            for row in rows:
                con.execute("SAVEPOINT bulk_row")
                try:
                    if not isinstance(row, dict):
                        raise bad_body("Each row must be a JSON object.")
                    pk = self._insert_one(con, info, row, opts)
                except CaspioApiError as exc:
                    con.execute("ROLLBACK TO bulk_row")
                    con.execute("RELEASE bulk_row")
                    results.append(BulkRowResult(exc.status, None, exc))
                else:
                    con.execute("RELEASE bulk_row")
                    results.append(BulkRowResult(201, pk, None))
        return results

    def _where_sql(self, info: TableInfo, where: Any) -> tuple[str, list[Any]]:
        if where is None:
            return "", []
        comp = Compiler(info.columns())
        sql = comp.where(where)
        return f" WHERE {sql}", comp.params

    def update(self, table: str, where: Any, body: dict[str, Any], opts: WriteOptions, *,
               capture: bool = False) -> tuple[list[int], list[dict], list[dict]]:
        """Set ``body`` on every record matching ``where`` (None = all).

        Returns the PK_IDs matched and, with ``capture``, the rows before and after (for
        webhooks, which fire only on a real change).
        """
        info = self.table(table)
        values = self._values(info, body, opts, insert=False)
        if not values:
            raise bad_body("The request body names no field to update.")
        where_sql, params = self._where_sql(info, where)
        stamps = [f for f in info.fields if f.type == "TIMESTAMP" and f.on_update]
        before: list[dict] = []
        after: list[dict] = []
        with self._write() as con:
            pks = [r[0] for r in con.execute(
                f'SELECT "{PK_ID}" FROM {info.data}{where_sql} ORDER BY 1', params)]
            if pks:
                if capture:
                    before = self.rows_by_pk(info, pks)
                now = _now_text(self.clock)
                sets = {**values, **{f.name: now for f in stamps}}
                assign = ", ".join(f"{quote(c)} = ?" for c in sets)
                try:
                    con.execute(f"UPDATE {info.data} SET {assign}{where_sql}",
                                (*sets.values(), *params))
                except sqlite3.IntegrityError as exc:
                    raise self._unique_error(info, exc) from None
                if capture:
                    after = self.rows_by_pk(info, pks)
        return pks, before, after

    def delete(self, table: str, where: Any, *, capture: bool = False) -> tuple[int, list[dict]]:
        """Delete the records matching ``where`` (None = all): (count, the rows if ``capture``)."""
        info = self.table(table)
        where_sql, params = self._where_sql(info, where)
        with self._write() as con:
            rows = self._run_select(info, ReadQuery(limit=-1), where_sql, params) if capture else []
            return con.execute(f"DELETE FROM {info.data}{where_sql}", params).rowcount, rows

    # --- records: reads ---------------------------------------------------------------------
    def rows_by_pk(self, info: TableInfo, pks: Sequence[int]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(pks), 500):
            chunk = list(pks[start:start + 500])
            out += self._run_select(info, ReadQuery(limit=len(chunk)),
                                    f' WHERE "{PK_ID}" IN ({", ".join("?" * len(chunk))})', chunk)
        return out

    def select(self, table: str, q: ReadQuery) -> list[dict[str, Any]]:
        info = self.table(table)
        where_sql, params = self._where_sql(info, q.where)
        return self._run_select(info, q, where_sql, params)

    def _run_select(self, info: TableInfo, q: ReadQuery, where_sql: str, params: list[Any]
                    ) -> list[dict[str, Any]]:
        cols = info.columns()
        visible = [(PK_ID, "STRING" if info.is_view else "AUTONUMBER")] + [
            (f.name, f.type) for f in info.fields if f.type != "PASSWORD"]
        group = []
        for name in q.group_by or []:
            canonical, _ = cols.resolve(name)
            group.append(canonical)
        group_lower = {g.lower() for g in group}
        items = q.select or [SelectItem(None)]
        grouped = bool(group) or any(i.agg for i in items)

        def not_grouped(name: str) -> CaspioApiError:
            return sql_error(f"Column '{name}' is invalid in the select list because it is not "
                             "contained in either an aggregate function or the GROUP BY clause.")

        def agg_sql(item: SelectItem, status: int) -> tuple[str, str]:
            if item.column is None:
                return "COUNT(*)", "INTEGER"
            name, ftype = cols.resolve(item.column, status)
            if ftype == "PASSWORD":
                raise bad_query(f"Password field '{name}' cannot be selected.")
            distinct = "DISTINCT " if item.distinct else ""
            out_type = {"COUNT": "INTEGER", "SUM": "NUMBER", "AVG": "NUMBER"}.get(item.agg or "", ftype)
            return f"{item.agg}({distinct}{quote(name)})", out_type

        select: list[tuple[str, str, str]] = []  # (sql, key, type)
        for item in items:
            if item.star:
                if grouped:
                    raise not_grouped(visible[0][0])
                select += [(quote(n), n, t) for n, t in visible]
            elif item.agg:
                sql, t = agg_sql(item, q.unknown_select_status)
                select.append((sql, item.alias or item.text, t))
            else:
                name, ftype = cols.resolve(item.column or "", q.unknown_select_status)
                if ftype == "PASSWORD":
                    raise bad_query(f"Password field '{name}' cannot be selected.")
                if grouped and name.lower() not in group_lower:
                    raise not_grouped(name)
                select.append((quote(name), item.alias or name, ftype))

        aliases = {key.lower(): key for _, key, _ in select}
        order: list[str] = []
        for item, desc in q.order_by or []:
            direction = " DESC" if desc else ""
            if item.agg:
                order.append(agg_sql(item, 400)[0] + direction)
                continue
            column = item.column or ""
            if q.select is not None and column.lower() in aliases:
                order.append(quote(aliases[column.lower()]) + direction)
                continue
            name, _ = cols.resolve(column)
            if grouped and name.lower() not in group_lower:
                raise sql_error(f"Column '{name}' is invalid in the ORDER BY clause because it is "
                                "not contained in either an aggregate function or the GROUP BY clause.")
            order.append(quote(name) + direction)
        if not grouped:
            if not order and q.scramble is not None:
                # hash(PK_ID) XOR a per-page mask (SQLite has no XOR: a|b - a&b): each page
                # number orders the table differently, so pages overlap and miss rows
                h = f"(({info.order_column} * 2654435761) % 4294967296)"
                mask = (int(q.scramble) * 2246822519) % 4294967296
                order.append(f"(({h} | {mask}) - ({h} & {mask}))")
            order.append(info.order_column)  # ties (and the unordered q.limit mode) in PK_ID order
            if info.is_view:
                order.append(quote(PK_ID))

        sql = (f"SELECT {', '.join(f'{s} AS {quote(k)}' for s, k, _ in select)} FROM {info.data}"
               f"{where_sql}"
               + (f" GROUP BY {', '.join(quote(g) for g in group)}" if group else "")
               + (f" ORDER BY {', '.join(order)}" if order else "")
               + " LIMIT ? OFFSET ?")
        with self._lock:
            try:
                rows = self._con.execute(sql, (*params, q.limit, q.offset)).fetchall()
            except sqlite3.OperationalError as exc:
                raise sql_error(f"The query failed: {exc}.") from None
        keys = [(k, t) for _, k, t in select]
        return [{k: from_storage(t, v) for (k, t), v in zip(keys, row)} for row in rows]

    def row_count(self, info: TableInfo) -> int:
        with self._lock:
            return int(self._con.execute(f"SELECT count(*) FROM {info.data}").fetchone()[0])

    # --- views ------------------------------------------------------------------------------------
    def _view_defs(self) -> list[tuple[str, dict]]:
        with self._lock:
            return [(name, json.loads(d)) for name, d in
                    self._con.execute("SELECT name, def FROM caspio_views ORDER BY name")]

    def view_names(self) -> list[str]:
        return [name for name, _ in self._view_defs()]

    def view(self, name: str) -> TableInfo:
        """The view named ``name`` (case-insensitive), else 404 ObjectNotFound."""
        with self._lock:
            row = self._con.execute("SELECT id, name, note, fields FROM caspio_views WHERE name = ?",
                                    (name,)).fetchone()
        if row is None:
            raise not_found(f"View '{name}' does not exist.")
        vid, vname, note, fields = row
        return TableInfo(vid, vname, note, tuple(FieldDef.from_stored(f) for f in json.loads(fields)),
                         is_view=True)

    def create_view(self, name: str, note: str, tables: Sequence[str],
                    joins: Sequence[dict[str, Any]], fields: Sequence[str] | None) -> TableInfo:
        """Define a view (Caspio's are made in the UI; the sandbox makes them here).

        ``tables`` are joined left to right; ``joins[i]`` joins ``tables[i + 1]``:
        ``{"Left": "T.field", "Right": "U.field", "Type": "INNER"|"LEFT"}``. ``fields`` are
        ``"Table.Field"`` names (default: every field of every table); a view field is named
        ``Table_Field`` and ``PK_ID`` is the source PK_IDs joined by commas.
        """
        if not tables:
            raise bad_body("A view needs at least one table.")
        infos = [self.table(t) for t in tables]
        if len({i.id for i in infos}) != len(infos):
            raise bad_body("A table appears twice in the view.")
        if len(joins) != len(infos) - 1:
            raise bad_body("Give one join for every table after the first.")
        alias = {i.name.lower(): (f"t{n}", i) for n, i in enumerate(infos)}

        def ref(text: Any) -> tuple[str, TableInfo, FieldDef]:
            table, _, fname = str(text).partition(".")
            if table.lower() not in alias:
                raise bad_body(f"'{text}' does not name a table of the view.")
            a, info = alias[table.lower()]
            f = info.field(fname)
            if f is None:
                raise CaspioApiError(404, "FieldNotFound",
                                     f"Field '{fname}' does not exist in table '{info.name}'.")
            return a, info, f

        sql_from = f"{infos[0].data} t0"
        for n, j in enumerate(joins, start=1):
            kind = str(j.get("Type", "INNER")).upper()
            if kind not in JOIN_TYPES:
                raise bad_body(f"Join type must be one of {', '.join(JOIN_TYPES)}.")
            (la, _, lf), (ra, _, rf) = ref(j.get("Left")), ref(j.get("Right"))
            sql_from += (f" {kind} JOIN {infos[n].data} t{n} "
                         f"ON {la}.{quote(lf.name)} = {ra}.{quote(rf.name)}")
        chosen = ([ref(f) for f in fields] if fields else
                  [(f"t{n}", i, f) for n, i in enumerate(infos) for f in i.fields])
        view_fields: list[FieldDef] = []
        select = [" || ',' || ".join(f"coalesce(CAST(t{n}.\"{PK_ID}\" AS TEXT), '')"
                                     for n in range(len(infos))) + f' AS "{PK_ID}"',
                  f't0."{PK_ID}" AS "{VIEW_ORDER}"']
        for order, (a, info, f) in enumerate(chosen, start=1):
            if f.type == "PASSWORD":
                continue
            out = f"{info.name}_{f.name}"
            if any(v.name.lower() == out.lower() for v in view_fields):
                raise bad_body(f"Field '{out}' appears twice in the view.")
            view_fields.append(FieldDef(**{**f.stored(), "name": out, "unique": False,
                                           "unique_allow_nulls": False, "display_order": order}))
            select.append(f"{a}.{quote(f.name)} AS {quote(out)}")
        definition = {"tables": [i.name for i in infos], "table_ids": [i.id for i in infos],
                      "joins": list(joins), "fields": list(fields or [])}
        with self._write() as con:
            if con.execute("SELECT 1 FROM caspio_views WHERE name = ?", (name,)).fetchone():
                raise bad_body(f"View '{name}' already exists.")
            vid = self._new_table_id()
            con.execute(f'CREATE VIEW "view_{vid}" AS SELECT {", ".join(select)} FROM {sql_from}')
            con.execute("INSERT INTO caspio_views (id, name, note, def, fields) VALUES (?, ?, ?, ?, ?)",
                        (vid, name, note, json.dumps(definition),
                         json.dumps([f.stored() for f in view_fields])))
        return self.view(name)

    def delete_view(self, name: str) -> None:
        info = self.view(name)
        with self._write() as con:
            con.execute(f"DROP VIEW IF EXISTS {info.data}")
            con.execute("DELETE FROM caspio_views WHERE id = ?", (info.id,))

    def select_view(self, name: str, q: ReadQuery) -> list[dict[str, Any]]:
        info = self.view(name)
        where_sql, params = self._where_sql(info, q.where)
        return self._run_select(info, q, where_sql, params)

    # --- tokens and the meter (used by auth.py and meter.py) --------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement on the bookkeeping tables (tokens, meter) and fetch its rows."""
        with self._lock:
            return self._con.execute(sql, params).fetchall()

    def reset_data(self) -> None:
        """Drop every table and record (tokens and the meter are kept)."""
        with self._write() as con:
            for (vid,) in con.execute("SELECT id FROM caspio_views").fetchall():
                con.execute(f'DROP VIEW IF EXISTS "view_{vid}"')
            con.execute("DELETE FROM caspio_views")
            for (tid,) in con.execute("SELECT id FROM caspio_tables").fetchall():
                con.execute(f'DROP TABLE IF EXISTS "data_{tid}"')
            con.execute("DELETE FROM caspio_fields")
            con.execute("DELETE FROM caspio_tables")
            self._invalidate()
