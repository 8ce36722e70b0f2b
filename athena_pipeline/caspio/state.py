"""What was last published to Caspio, kept in the warehouse (schema ``publish``), and the write journal.

Why the publisher keeps its own state instead of reading Caspio every time: Caspio bills every call,
and reading a table back costs one call per 1,000 rows. With a row hash per published row in the
warehouse, the diff of a mart against "what Caspio holds" is one DuckDB query, and re-publishing an
unchanged mart makes no call at all.

Tables (all DDL ``IF NOT EXISTS``):

* ``publish.caspio_state(table_name, row_key, row_hash, published_at)``: one row per row Caspio
  holds, as far as Caspio has *confirmed* (201 on insert, ``RecordsAffected`` on update, a delete
  call returned). Never written ahead of Caspio.
* ``publish.caspio_tables(table_name, mart, spec_hash, ensured_at, publishes_since_reconcile,
  last_reconciled_at)``: the table spec last made to exist in Caspio (so an unchanged spec needs no
  schema call) and how many publishes ran since the last read-back reconciliation.
* ``publish.caspio_runs``: one row per table per publish, with counts and calls (no PHI: counts only).

**The journal** is how "updated only after Caspio confirms each write" survives a crash without
holding the warehouse during the network part: while calling Caspio, every confirmed write is
appended (and flushed) to a small NDJSON file beside the warehouse, one file per Caspio table. The
final short warehouse step folds the journal into ``caspio_state`` in one transaction and removes
it; a run that was killed leaves its journal behind and the next run folds it in first. A torn last
line (killed mid-write) is skipped: that write is then merely unconfirmed, which the next run resolves
(the Unique row key turns a repeated insert into "already there").
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import duckdb
import pyarrow as pa

from athena_pipeline.warehouse.audit import settle

SCHEMA = "publish"
STATE_TABLE = f"{SCHEMA}.caspio_state"
TABLES_TABLE = f"{SCHEMA}.caspio_tables"
RUNS_TABLE = f"{SCHEMA}.caspio_runs"

_DDL: tuple[str, ...] = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
        table_name VARCHAR NOT NULL,
        row_key VARCHAR NOT NULL,
        row_hash VARCHAR NOT NULL,
        published_at TIMESTAMPTZ
    )""",
    f"""CREATE TABLE IF NOT EXISTS {TABLES_TABLE} (
        table_name VARCHAR NOT NULL,
        mart VARCHAR,
        spec_hash VARCHAR,
        ensured_at TIMESTAMPTZ,
        publishes_since_reconcile INTEGER,
        last_reconciled_at TIMESTAMPTZ
    )""",
    f"""CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (
        run_id VARCHAR,
        table_name VARCHAR,
        mart VARCHAR,
        started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        inserted BIGINT,
        updated BIGINT,
        deleted BIGINT,
        unchanged BIGINT,
        drift_fixed BIGINT,
        calls BIGINT,
        reconciled BOOLEAN,
        status VARCHAR
    )""",
)

#: Arrow schema of the rows :func:`apply_journal` and :func:`read_journal` deal in.
JOURNAL_SCHEMA = pa.schema([("n", pa.int64()), ("op", pa.string()), ("k", pa.string()), ("h", pa.string())])


def ensure_state_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create schema ``publish`` and its three tables if missing (idempotent)."""
    for ddl in _DDL:
        con.execute(ddl)


def state_exists(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``publish.caspio_state`` exists (a read-only dry run on a fresh warehouse has none)."""
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'caspio_state'",
        [SCHEMA]).fetchall()
    return bool(rows[0][0])


def table_info(con: duckdb.DuckDBPyConnection, table: str) -> dict | None:
    """The ``caspio_tables`` row of ``table`` as a dict, or None when it was never published."""
    if not state_exists(con):
        return None
    cur = con.execute(f"SELECT * FROM {TABLES_TABLE} WHERE table_name = ?", [table])
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    return dict(zip(names, rows[0], strict=True)) if rows else None


# --- the journal ---------------------------------------------------------------------------------
def journal_dir_for(warehouse_path: Path | str) -> Path:
    """Where the journals of ``warehouse_path`` live: ``<warehouse>.caspio-journal/`` beside it."""
    path = Path(warehouse_path)
    return path.with_name(path.name + ".caspio-journal")


def journal_path(journal_dir: Path, table: str) -> Path:
    """The journal file of one Caspio table."""
    return Path(journal_dir) / f"{table}.ndjson"


class TableBusy(RuntimeError):
    """Another process is publishing the same Caspio table right now (its journal is locked)."""

    transient = True  # it will have finished by the time a retry comes


def _lock_path(path: Path) -> Path:
    return Path(path).with_suffix(".lock")


def _try_lock(path: Path) -> int | None:
    """An exclusive, non-blocking ``flock`` on the journal's lock file: the fd, or None when another
    process holds it. The kernel drops the lock when its holder dies, so a killed run never blocks."""
    lock = _lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class Journal:
    """Append-only record of the writes Caspio confirmed for one table, flushed to disk per batch.

    ``upserted(keys, hashes)`` says Caspio now holds those rows with those hashes; ``deleted(keys)``
    says it holds none of them. Thread-safe. Lines carry a sequence number so the last word on a
    key wins when the journal is folded into the state. While open it holds the table's lock file,
    so a second process cannot publish the same table at once (:class:`TableBusy`), nor fold this
    journal while it is still being written.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = _try_lock(self.path)
        if self._fd is None:
            raise TableBusy(f"Caspio table {self.path.stem} is being published by another process right now; "
                            "try again when it has finished")
        self._lock = threading.Lock()
        self._n = self._last_sequence()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.lines = 0

    def _last_sequence(self) -> int:
        if not self.path.exists():
            return 0
        last = 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    last = max(last, int(json.loads(line)["n"]))
                except (ValueError, KeyError, TypeError):
                    continue
        return last

    def _write(self, entries: Iterable[tuple[str, str, str | None]]) -> None:
        with self._lock:
            parts = []
            for op, key, row_hash in entries:
                self._n += 1
                parts.append(json.dumps({"n": self._n, "op": op, "k": key, "h": row_hash}, separators=(",", ":")))
            if not parts:
                return
            self._file.write("\n".join(parts) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.lines += len(parts)

    def upserted(self, keys: Iterable[str], hashes: Iterable[str]) -> None:
        """Caspio confirmed these rows (inserted, updated, or found already right)."""
        self._write(("u", k, h) for k, h in zip(keys, hashes, strict=True))

    def deleted(self, keys: Iterable[str]) -> None:
        """Caspio holds none of these keys any more."""
        self._write(("d", k, None) for k in keys)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()
                _unlock(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: Path) -> pa.Table:
    """The journal's entries (``n, op, k, h``), torn or malformed lines skipped; empty when absent."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return JOURNAL_SCHEMA.empty_table()
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                if entry["op"] in ("u", "d") and isinstance(entry["k"], str):
                    rows.append({"n": int(entry["n"]), "op": entry["op"], "k": entry["k"], "h": entry.get("h")})
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line: that write stays unconfirmed
    return pa.Table.from_pylist(rows, schema=JOURNAL_SCHEMA)


def apply_journal(con: duckdb.DuckDBPyConnection, table: str, path: Path) -> int:
    """Fold a journal into ``publish.caspio_state`` (one transaction), then delete the file.

    Returns the number of keys whose state changed. The caller holds the warehouse briefly; the
    file is removed only after the transaction committed, so a crash in between re-applies the same
    (idempotent) entries next time. A journal another live process is still writing is left alone
    (returns 0): that process folds it in itself.
    """
    fd = _try_lock(Path(path))
    if fd is None:
        return 0
    try:
        return _apply_journal_locked(con, table, Path(path))
    finally:
        _unlock(fd)


def _apply_journal_locked(con: duckdb.DuckDBPyConnection, table: str, path: Path) -> int:
    entries = read_journal(path)
    if entries.num_rows == 0:
        Path(path).unlink(missing_ok=True)
        return 0
    ensure_state_tables(con)
    view = "_caspio_journal_in"
    settle(con)
    con.register(view, entries)
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"""CREATE OR REPLACE TEMP TABLE _caspio_journal_last AS
                SELECT k AS row_key, op, h AS row_hash FROM {view}
                QUALIFY row_number() OVER (PARTITION BY k ORDER BY n DESC) = 1""")
            con.execute(f"DELETE FROM {STATE_TABLE} s USING _caspio_journal_last j "
                        "WHERE s.table_name = ? AND s.row_key = j.row_key", [table])
            con.execute(f"INSERT INTO {STATE_TABLE} SELECT ?, row_key, row_hash, now() "
                        "FROM _caspio_journal_last WHERE op = 'u'", [table])
            changed = con.execute("SELECT count(*) FROM _caspio_journal_last").fetchall()[0][0]
            con.execute("DROP TABLE _caspio_journal_last")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.unregister(view)
    Path(path).unlink(missing_ok=True)
    return int(changed)


def apply_pending_journals(con: duckdb.DuckDBPyConnection, journal_dir: Path,
                           tables: Iterable[str] | None = None) -> dict[str, int]:
    """Fold every journal left in ``journal_dir`` (by a killed run) into the state; {table: keys}."""
    journal_dir = Path(journal_dir)
    if not journal_dir.is_dir():
        return {}
    wanted = set(tables) if tables is not None else None
    applied = {}
    for path in sorted(journal_dir.glob("*.ndjson")):
        if wanted is None or path.stem in wanted:
            applied[path.stem] = apply_journal(con, path.stem, path)
    return applied


def journal_overlay(con: duckdb.DuckDBPyConnection, table: str, path: Path, name: str) -> None:
    """A temp table ``name`` = the state of ``table`` with an unapplied journal laid over it.

    For read-only runs (``--dry-run``): the plan must count what a killed run already wrote, but a
    dry run writes nothing, not even the state.
    """
    entries = read_journal(path)
    has_state = state_exists(con)
    view = "_caspio_journal_ro"
    settle(con)
    con.register(view, entries)
    try:
        base = (f"SELECT row_key, row_hash FROM {STATE_TABLE} WHERE table_name = ?" if has_state
                else "SELECT NULL::VARCHAR AS row_key, NULL::VARCHAR AS row_hash WHERE ? IS NULL")
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {name} AS
            WITH j AS (SELECT k, op, h FROM {view}
                       QUALIFY row_number() OVER (PARTITION BY k ORDER BY n DESC) = 1),
                 s AS ({base})
            SELECT s.row_key, s.row_hash FROM s ANTI JOIN j ON j.k = s.row_key
            UNION ALL
            SELECT k, h FROM j WHERE op = 'u'""", [table])
    finally:
        con.unregister(view)


# --- bookkeeping -----------------------------------------------------------------------------------
def record_table(con: duckdb.DuckDBPyConnection, table: str, mart: str, spec_hash: str | None,
                 *, reconciled: bool, published: bool) -> None:
    """Update ``caspio_tables`` after a publish: the spec now in Caspio, the reconciliation counter.

    ``spec_hash`` None keeps the stored one (the schema was not checked this run).
    """
    ensure_state_tables(con)
    info = table_info(con, table)
    since = 0 if reconciled else ((info or {}).get("publishes_since_reconcile") or 0) + (1 if published else 0)
    if info is None:
        con.execute(f"INSERT INTO {TABLES_TABLE} VALUES (?, ?, ?, CASE WHEN ? IS NULL THEN NULL ELSE now() END, ?, "
                    "CASE WHEN ? THEN now() END)", [table, mart, spec_hash, spec_hash, since, reconciled])
        return
    con.execute(f"""UPDATE {TABLES_TABLE} SET mart = ?,
            spec_hash = coalesce(?, spec_hash),
            ensured_at = CASE WHEN ? IS NULL THEN ensured_at ELSE now() END,
            publishes_since_reconcile = ?,
            last_reconciled_at = CASE WHEN ? THEN now() ELSE last_reconciled_at END
        WHERE table_name = ?""", [mart, spec_hash, spec_hash, since, reconciled, table])


def record_run(con: duckdb.DuckDBPyConnection, row: dict) -> None:
    """Append one ``caspio_runs`` row (keys as the table's columns; missing ones are NULL)."""
    ensure_state_tables(con)
    cols = ("run_id", "table_name", "mart", "started_at", "finished_at", "inserted", "updated", "deleted",
            "unchanged", "drift_fixed", "calls", "reconciled", "status")
    con.execute(f"INSERT INTO {RUNS_TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [row.get(c) for c in cols])
