"""Load a landed FHIR bulk export (NDJSON files) into ``raw_fhir.<type>``, in ONE transaction.

The landing contract (written by the bulk-export client): ``<landing>/fhir/<export_id>/`` holds
``{Type}.{NNN}.ndjson``, ``deleted/`` (transaction Bundles of ``DELETE Type/id``), ``error/``
(OperationOutcome lines), ``api_calls.ndjson`` and, written last, ``export.json`` (the manifest with
per-file counts, ``transaction_time`` and the kick-off ``request``).

How a load works, and why:

* **One read of each file, straight into the raw table.** DuckDB reads the files
  (``read_ndjson_objects ... WITH ORDINALITY``; Python loops over *files* only) in one ``INSERT``
  per type that parses each line once for its keys — ``json_extract_string`` of ``resourceType``,
  ``id`` and ``meta.lastUpdated`` —, checks it and appends it to ``raw_fhir.<type>``, whose
  ``resource`` column is zstd-compressed (2-3x cheaper to write than DuckDB's default string
  compression, and 10x smaller for FHIR JSON). Everything after that is set-based SQL on the
  small key columns of the rows this load appended: the resource text is never copied into a
  staging table, held in a hash table or read again. Row groups are written (compressed) as they
  fill, so memory stays bounded by DuckDB's ``memory_limit``, not by the export. Why not stage
  first and merge: a second copy of every resource costs as much as the whole read-and-persist
  floor, while in a full load almost every line is a winner, so deleting the rare losers
  afterwards is far cheaper than filtering the winners into place.
* **No PRIMARY KEY on raw tables**, on purpose: a newer copy of a stored id (or a duplicate
  within the export) is appended before the loser is deleted, and maintaining a unique index is a
  large share of a bulk insert's cost. Uniqueness of ``id`` is the loader's invariant, kept by the
  settle step and checked by the ``no_duplicate_ids`` asset check. A raw table created by an
  earlier version (PRIMARY KEY, no zstd) is rebuilt once, by the first load that touches it.
* **Rows appended by this load** are those with ``loaded_at = now()`` (the start of this
  transaction: loads of one file are sequential, so no other load shares it) and this
  ``export_id``. When the table was empty before the load (a first load: the fast path) every row
  is, and only ids with several copies or a tombstone need a decision: no join with stored rows,
  no window over all rows, no delete.
* **Line numbers** are the Nth JSON text of the file (the reader skips blank lines, so in a file
  with blank lines this counts non-blank lines). Ordinality makes a scan single-threaded, so the
  files of a type are read in a few concurrent *runs* (:data:`RUN_LINES`), each one scan of
  consecutive files numbered from the manifest counts; a file after a wrong count is renumbered
  from its first line, so line numbers stay exact. Files without a manifest count are each their
  own run.
* **Malformed input is quarantined, never fatal**: a line that is not JSON (including a truncated
  last line), not an object, without ``resourceType`` or ``id``, of another type than its file, or
  with an unreadable ``meta.lastUpdated`` goes to ``audit.quarantine`` with its file, line, a reason
  and its byte length — never its content (it may be PHI). In the single pass such a line is
  appended as a placeholder row (``id`` NULL, ``resource`` = the reason and length only) that the
  settle step moves to the quarantine and deletes before the transaction commits.
* **Upsert by id, newest ``meta.lastUpdated`` wins**: duplicates of an id within the export keep
  the newest copy (tie: the later file, then the later line); a stored row is replaced only by a
  newer copy, or by a different copy with the same ``lastUpdated`` (the later export wins a tie);
  an older copy never overwrites. A resource without ``meta.lastUpdated`` counts as oldest.
  Losers — placeholders, superseded duplicates, copies older than, equal to or tombstoned against
  what is stored, and stored rows that a newer copy replaces — are deleted by ``rowid``.
* **Deletes** (``deleted/``) are applied before the upserts: a stored row is removed when the
  deletion is not older than it. The deletion time is the Bundle's ``meta.lastUpdated`` or
  ``timestamp`` if present, else the export's ``transaction_time``. Every deletion is kept in
  ``meta.fhir_deletions`` as a tombstone, so an older copy of that resource (in this or a later
  load) is not inserted again; a copy newer than the deletion is.
* **One transaction** holds all of it: raw rows, deletes, audit rows, the ``meta.fhir_exports`` row
  and the watermark ``meta.watermarks('fhir', <group id>)`` = ``transaction_time``. A load killed
  at any point leaves the previous state; re-loading the same export changes nothing (the audit
  rows are written only by the first successful load of an export).
* **Counts are verified** against ``export.json``: lines read per file (quarantined lines count as
  read) must equal the manifest ``count``; a mismatch is reported in the result, not raised.

Where a first load's time goes (1.79M resources, 1.6 GB, one thread, CPU-s; the benchmark is
``benchmarks/bench_fhir_load.py``): DuckDB's own copy of the files into one zstd JSON table costs
2.9; split into one table per type in one transaction, as the raw layer must be, 3.5-3.9. On top
of that the load pays the key parse (``json_extract_string`` parses every line a second time:
~1.2), the key and provenance columns (~0.6, of which the FHIR-id check's regex 0.23 and the
``lastUpdated`` cast 0.15) and the settle step (~0.4): ~6.6 in all. Measured and rejected:
reading raw lines with ``read_csv`` and parsing once saves ~0.5 only if ``resource`` becomes
VARCHAR (a VARCHAR to JSON cast is a full validating parse again), and that reader fails the whole
load on a line with invalid UTF-8, or skips it and shifts every later line number; slicing the keys
out of the text with string functions or a regex costs more than the parse (DuckDB's string
functions scan the whole 1-3 KB text to check its UTF-8); one scan per file instead of runs took
~1.7x the CPU on Observation (small scans' row groups are merged and compressed at the end). An
``id`` column stored with zstd (not the default dictionary) and row groups written as they fill
(``write_buffer_row_group_count``) took ~0.4 CPU-s and ~60 MiB off. So a first load stays ~2x the
one-table copy in CPU, and on two cores its wall time cannot reach 1.5x of it either.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import duckdb

from athena_pipeline.warehouse.audit import (
    DIAGNOSTICS_MAX_CHARS,
    ensure_tables,
    load_api_calls_ndjson,
    set_watermark,
)

WATERMARK_SOURCE = "fhir"
DEFAULT_WATERMARK_KEY = "default"
# read_ndjson_objects refuses objects above this size; FHIR resources with inline attachments
# (DocumentReference, Binary) can be large, DuckDB's 16 MB default is too small.
MAX_OBJECT_BYTES = 32 * 1024 * 1024

_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_OUTPUT_FILE = re.compile(r"^(?P<type>[A-Z][A-Za-z]{1,63})\.(?:.+\.)?ndjson$")
_GROUP_IN_REQUEST = re.compile(r"/Group/([^/?#]+)/\$export")
# FHIR R4 id: [A-Za-z0-9\-\.]{1,64}. Ids end up in references and URLs, so anything else is refused.
_FHIR_ID_SQL = r"^[A-Za-z0-9\-\.]{1,64}$"
# Tell DuckDB how to join a raw table with a (smaller) list of row ids: left to itself it may
# build the hash table on the table side, i.e. hold resource texts in memory.
_PLAN_AS_WRITTEN = ("join_order", "build_side_probe_side")


class FhirExportError(ValueError):
    """The export folder cannot be loaded as a whole (no manifest, a listed file missing, ...)."""


# --- what is loaded ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportFile:
    """One NDJSON file of an export. ``count`` is the manifest's (None without a manifest)."""

    kind: str  # output | deleted | error
    type: str  # resource type of an output file; 'Bundle' / 'OperationOutcome' otherwise
    path: str  # relative to the export folder, POSIX separators
    count: int | None = None


@dataclass(frozen=True)
class ExportSpec:
    """Everything a load needs to know about one export (from ``export.json`` or a folder scan)."""

    export_id: str
    kind: str  # since | full | directory
    since: dt.datetime | None
    transaction_time: dt.datetime | None
    request: str | None
    types: tuple[str, ...]
    files: tuple[ExportFile, ...]

    @property
    def group_id(self) -> str | None:
        match = _GROUP_IN_REQUEST.search(self.request or "")
        return match.group(1) if match else None


@dataclass(frozen=True)
class CountMismatch:
    """A file whose lines read differ from the manifest count (a truncated or padded download)."""

    file: str
    expected: int
    read: int


@dataclass
class TypeStats:
    """Per resource type: what the load did with each line read."""

    read: int = 0  # lines read from the type's files, quarantined ones included
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # same lastUpdated and same content as the stored row
    older: int = 0  # older than the stored row: skipped
    duplicates: int = 0  # superseded copies of an id within this export
    tombstoned: int = 0  # not newer than a recorded deletion: not re-inserted
    deleted: int = 0  # stored rows removed by this export's deletions
    quarantined: int = 0


@dataclass
class FhirLoadResult:
    """What one load did; ``types`` maps resource type -> :class:`TypeStats`."""

    export_id: str
    kind: str
    transaction_time: dt.datetime | None
    already_loaded: bool  # the export had been loaded before (audit rows were not written again)
    types: dict[str, TypeStats]
    files: int
    bytes: int
    lines_read: int
    quarantined: int
    count_mismatches: list[CountMismatch]
    error_issues: dict[str, int]  # OperationOutcome issues in error/ files, by severity
    api_calls: int  # rows this load added to audit.api_calls
    deletions: int  # deletion entries (tombstones) announced by the export
    watermark_key: str | None
    watermark: dt.datetime | None  # meta.watermarks value after the load (None: not set)
    duration_s: float = 0.0

    def _total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.types.values())

    @property
    def inserted(self) -> int:
        return self._total("inserted")

    @property
    def updated(self) -> int:
        return self._total("updated")

    @property
    def unchanged(self) -> int:
        return self._total("unchanged")

    @property
    def deleted(self) -> int:
        return self._total("deleted")

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)

    @property
    def rows_per_second(self) -> float:
        return self.lines_read / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def has_fatal_errors(self) -> bool:
        """The server reported fatal/error issues: the export may be incomplete."""
        return bool(self.error_issues.get("fatal") or self.error_issues.get("error"))

    def summary(self) -> str:
        """A plain-text table for logs and the CLI (counts only: no ids, no content)."""
        lines = [(f"export {self.export_id} ({self.kind}): {self.lines_read} lines from {self.files} files, "
                  f"{self.bytes / 1e6:.1f} MB in {self.duration_s:.2f}s ({self.rows_per_second:,.0f} rows/s)"),
                 f"{'type':<24}{'read':>9}{'ins':>9}{'upd':>9}{'same':>9}{'older':>7}{'dup':>6}{'del':>6}{'quar':>6}"]
        for name, s in sorted(self.types.items()):
            lines.append(f"{name:<24}{s.read:>9}{s.inserted:>9}{s.updated:>9}{s.unchanged:>9}{s.older:>7}"
                         f"{s.duplicates:>6}{s.deleted:>6}{s.quarantined:>6}")
        for m in self.count_mismatches:
            lines.append(f"COUNT MISMATCH {m.file}: manifest {m.expected}, read {m.read}")
        if self.error_issues:
            lines.append("export errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.error_issues.items())))
        return "\n".join(lines)


# --- reading the export folder ---------------------------------------------------------------
def _parse_instant(value: object, what: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise FhirExportError(f"export.json: {what} must be an ISO instant")
    try:
        parsed = dt.datetime.fromisoformat(value)  # Python 3.11 reads a trailing "Z"
    except ValueError:
        raise FhirExportError(f"export.json: {what} is not an ISO instant") from None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _safe_relative(root: Path, rel: object) -> str:
    """A manifest path, refused if it could point outside the export folder."""
    if not isinstance(rel, str) or not rel:
        raise FhirExportError("export.json: every file needs a 'path'")
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts:
        raise FhirExportError(f"export.json: file path {rel!r} leaves the export folder")
    if not (root / posix).is_file():
        raise FhirExportError(f"export {root.name} is incomplete: {posix} is listed in export.json but missing")
    return str(posix)


def _count(entry: dict, where: str) -> int | None:
    count = entry.get("count")
    if count is None:
        return None
    if not isinstance(count, int) or count < 0:
        raise FhirExportError(f"export.json: {where} count must be a non-negative integer")
    return count


def read_manifest(export_dir: Path) -> ExportSpec:
    """Parse and check ``export.json``; every listed file must exist (the download is complete)."""
    export_dir = Path(export_dir)
    manifest_path = export_dir / "export.json"
    if not manifest_path.is_file():
        raise FhirExportError(f"{export_dir} has no export.json: the download is not complete (the client "
                              "writes it last); use load_fhir_directory for a plain folder of NDJSON files")
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FhirExportError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FhirExportError(f"{manifest_path} must hold a JSON object")
    export_id = doc.get("export_id") or export_dir.name
    kind = doc.get("kind") or "full"
    if kind not in ("since", "full"):
        raise FhirExportError(f"export.json: kind must be 'since' or 'full', got {kind!r}")
    files: list[ExportFile] = []
    for entry in doc.get("files") or []:
        rtype = entry.get("type")
        if not isinstance(rtype, str) or not _TYPE_NAME.match(rtype):
            raise FhirExportError(f"export.json: {rtype!r} is not a FHIR resource type name")
        files.append(ExportFile("output", rtype, _safe_relative(export_dir, entry.get("path")),
                                _count(entry, "file")))
    for key, kind_name, rtype in (("deleted", "deleted", "Bundle"), ("errors", "error", "OperationOutcome")):
        for entry in doc.get(key) or []:
            files.append(ExportFile(kind_name, rtype, _safe_relative(export_dir, entry.get("path")),
                                    _count(entry, key)))
    listed = [f.path for f in files]
    if len(set(listed)) != len(listed):
        twice = next(p for p in listed if listed.count(p) > 1)
        raise FhirExportError(f"export.json lists {twice} more than once")
    types = doc.get("types") or []
    bad = [t for t in types if not isinstance(t, str) or not _TYPE_NAME.match(t)]
    if bad:
        raise FhirExportError(f"export.json: {bad[0]!r} is not a FHIR resource type name")
    transaction_time = _parse_instant(doc.get("transaction_time"), "transaction_time")
    if transaction_time is None:
        raise FhirExportError("export.json: transaction_time is required (it becomes the next _since)")
    return ExportSpec(
        export_id=str(export_id), kind=kind, since=_parse_instant(doc.get("since"), "since"),
        transaction_time=transaction_time, request=doc.get("request"),
        types=tuple(dict.fromkeys([*types, *(f.type for f in files if f.kind == "output")])),
        files=tuple(files),
    )


def _part_key(path: str) -> tuple:
    """Natural order of ``Type.000.ndjson``, ``Type.001.ndjson`` ... ``Type.1000.ndjson``."""
    parts = PurePosixPath(path).name.split(".")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def scan_directory(directory: Path, export_id: str | None = None) -> ExportSpec:
    """An :class:`ExportSpec` for a plain folder of ``{Type}.*.ndjson`` files (no manifest)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FhirExportError(f"{directory} is not a directory")
    files = [ExportFile("output", m.group("type"), p.name)
             for p in directory.iterdir() if p.is_file() and (m := _OUTPUT_FILE.match(p.name))]
    for sub, kind, rtype in (("deleted", "deleted", "Bundle"), ("error", "error", "OperationOutcome")):
        if (directory / sub).is_dir():
            files += [ExportFile(kind, rtype, f"{sub}/{p.name}")
                      for p in (directory / sub).iterdir() if p.is_file() and p.name.endswith(".ndjson")]
    if not any(f.kind == "output" for f in files):
        raise FhirExportError(f"{directory} holds no {{Type}}.*.ndjson files")
    return ExportSpec(
        export_id=export_id or directory.resolve().name, kind="directory", since=None, transaction_time=None,
        request=None, types=tuple(sorted({f.type for f in files if f.kind == "output"})), files=tuple(files),
    )


# --- SQL helpers ------------------------------------------------------------------------------
def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def raw_table(resource_type: str) -> str:
    """``raw_fhir.<type lower-case>``, e.g. ``raw_fhir.medicationrequest``."""
    if not _TYPE_NAME.match(resource_type):
        raise ValueError(f"{resource_type!r} is not a FHIR resource type name")
    return f"raw_fhir.{_q(resource_type.lower())}"


def _reader(path_param: str = "?") -> str:
    return (f"read_ndjson_objects({path_param}, ignore_errors = true, "
            f"maximum_object_size = {MAX_OBJECT_BYTES}) WITH ORDINALITY")


_RAW_COLUMNS = "id, last_updated, resource, export_id, source_file, source_line, loaded_at"
# Resource JSON compresses well with zstd: ~2.5x less CPU to write than DuckDB's default string
# compression (dictionary/FSST), which would dominate the load, and ~10x smaller. The id column too:
# ids are all distinct, so the default's dictionary analysis is wasted work (0.37 vs 0.18 CPU-s for
# 1.8M ids) and zstd stores them smaller. The other columns keep the default (constant or nearly so:
# measured no cheaper under any other compression).
_RAW_DDL = """id VARCHAR USING COMPRESSION zstd, last_updated TIMESTAMPTZ, resource JSON USING COMPRESSION zstd,
    export_id VARCHAR, source_file VARCHAR, source_line BIGINT, loaded_at TIMESTAMPTZ"""
_RAW_SHAPE = ["id VARCHAR", "last_updated TIMESTAMP WITH TIME ZONE", "resource JSON", "export_id VARCHAR",
              "source_file VARCHAR", "source_line BIGINT", "loaded_at TIMESTAMP WITH TIME ZONE"]
# One parse of each line yields the three keys (a list: resourceType, id, meta.lastUpdated).
_KEYS_SQL = "json_extract_string(json, ['$.resourceType', '$.id', '$.meta.lastUpdated'])"
# What is wrong with a line, NULL when nothing is. Columns: json, k (the keys), last_updated;
# parameter $type: the file's resource type. Rare branches (regexes on the text) run only for the
# rows that reach them.
_PROBLEM_SQL = f"""CASE
    WHEN json IS NULL THEN 'not valid JSON'
    WHEN k[1] IS NULL THEN CASE WHEN regexp_matches(json, '^\\s*\\{{') THEN 'no resourceType'
                                ELSE 'not a JSON object' END
    WHEN k[1] <> $type THEN
      CASE WHEN regexp_matches(k[1], '^[A-Za-z]{{1,64}}$') THEN 'resourceType ' || k[1] || ' in a ' || $type || ' file'
           ELSE 'resourceType is not a type name, in a ' || $type || ' file' END
    WHEN k[2] IS NULL THEN 'no id'
    WHEN NOT regexp_matches(k[2], '{_FHIR_ID_SQL}') THEN 'id is not a valid FHIR id'
    WHEN k[3] IS NOT NULL AND last_updated IS NULL THEN 'meta.lastUpdated is not a valid instant'
  END"""


def _create_raw_tables(con: duckdb.DuckDBPyConnection, resource_types: Iterable[str]) -> None:
    """Create ``raw_fhir.<type>`` for each type; rebuild one made by an earlier version of this
    loader (with a PRIMARY KEY, without zstd) once. A table of another shape is left alone: the
    load then fails on it with DuckDB's own error rather than silently changing someone's table.
    (One catalogue query for all types: on a small export, per-type look-ups were a visible share.)"""
    existing = {name: rest for name, *rest in con.execute("""
        SELECT t.table_name, t.sql,
               (SELECT count(*) FROM duckdb_constraints() c
                WHERE c.database_name = t.database_name AND c.schema_name = t.schema_name
                  AND c.table_name = t.table_name AND c.constraint_type IN ('PRIMARY KEY', 'UNIQUE')),
               (SELECT list(c.column_name || ' ' || c.data_type ORDER BY c.column_index)
                FROM duckdb_columns() c
                WHERE c.database_name = t.database_name AND c.schema_name = t.schema_name
                  AND c.table_name = t.table_name)
        FROM duckdb_tables() t WHERE t.database_name = current_database() AND t.schema_name = 'raw_fhir'
        """).fetchall()}
    for resource_type in resource_types:
        table, name = raw_table(resource_type), resource_type.lower()
        row = existing.get(name)
        if row is None:
            con.execute(f"CREATE TABLE {table} ({_RAW_DDL})")
        elif row[2] == _RAW_SHAPE and (row[1] or "COMPRESSION ZSTD" not in row[0].upper()):
            # DuckDB cannot drop a key constraint: copy the rows into a new table and swap names.
            rebuilt = f"raw_fhir.{_q(name + '__rebuilt')}"
            con.execute(f"CREATE TABLE {rebuilt} ({_RAW_DDL})")
            con.execute(f"INSERT INTO {rebuilt} SELECT {_RAW_COLUMNS} FROM {table}")
            con.execute(f"DROP TABLE {table}")
            con.execute(f"ALTER TABLE {rebuilt} RENAME TO {_q(name)}")


def _has_rows(con: duckdb.DuckDBPyConnection, resource_type: str) -> bool:
    return bool(con.execute(f"SELECT EXISTS (SELECT 1 FROM {raw_table(resource_type)})").fetchone()[0])


def _table_exists(con: duckdb.DuckDBPyConnection, resource_type: str) -> bool:
    row = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                      "AND schema_name = 'raw_fhir' AND table_name = ?", [resource_type.lower()]).fetchone()
    return bool(row and row[0])


def _tail_length(path: Path) -> tuple[bool, int]:
    """(file ends with a newline, byte length of its last line). Reads only the file's end."""
    size = path.stat().st_size
    if size == 0:
        return True, 0
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return True, 0
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return False, size - (start + nl + 1)
            pos = start
        return False, size


# --- the load --------------------------------------------------------------------------------
def load_fhir_export(con: duckdb.DuckDBPyConnection, export_dir: Path, *,
                     watermark_key: str | None = None) -> FhirLoadResult:
    """Load one landed export folder (with ``export.json``) in one transaction.

    The watermark ``meta.watermarks('fhir', key)`` is set to the export's ``transaction_time``
    (never moved back); ``key`` is ``watermark_key``, else the Group id in the manifest's kick-off
    ``request``, else ``'default'``. Raises :class:`FhirExportError` before writing anything when
    the folder is not a complete export. ``con`` must not be inside a transaction.
    """
    spec = read_manifest(Path(export_dir))
    key = watermark_key or spec.group_id or DEFAULT_WATERMARK_KEY
    return _load(con, Path(export_dir), spec, watermark_key=key)


def load_fhir_directory(con: duckdb.DuckDBPyConnection, directory: Path,
                        export_id: str | None = None) -> FhirLoadResult:
    """Load a plain folder of ``{Type}.*.ndjson`` files (e.g. a third-party export) in one transaction.

    Same rules as :func:`load_fhir_export`, without a manifest: no count verification and no
    watermark (there is no ``transaction_time``); deletions without a time of their own count as
    happening now. ``export_id`` defaults to the folder name. Other ``*.ndjson`` files (an
    exporter's ``log.ndjson``) are ignored.
    """
    spec = scan_directory(Path(directory), export_id)
    return _load(con, Path(directory), spec, watermark_key=None)


# Session settings a load changes, restored afterwards to what the caller had.
_LOAD_SETTINGS = {
    # Row order in a raw table carries no meaning; without this DuckDB reads the files of a
    # statement one after another (each file's ordinality scan is single-threaded).
    "preserve_insertion_order": "false",
    # A large commit then checkpoints at once: rows not yet written (small tables, the last row
    # group of each insert) go straight into the database file, compressed, instead of through the
    # WAL first and a later checkpoint (measured ~0.5 s less for a 1.8M-resource first load).
    "checkpoint_threshold": "1MB",
    # Write each full row group as soon as it fills, by the thread that filled it, instead of
    # buffering five per scan: the buffered ones were compressed at COMMIT, on one thread, while
    # they filled the memory limit (measured: ~0.4 CPU-s and ~60 MiB peak less for 1.8M resources).
    "write_buffer_row_group_count": "1",
}


def _current_settings(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    names = [*_LOAD_SETTINGS, "disabled_optimizers"]
    return {n: str(con.execute(f"SELECT current_setting('{n}')").fetchone()[0] or "") for n in names}


def _restore_settings(con: duckdb.DuckDBPyConnection, saved: dict[str, str]) -> None:
    # After a failed statement the transaction refuses even SET until ROLLBACK; _load restores
    # again after rolling back, so a failure here must not hide the real error.
    for name, value in saved.items():
        try:
            con.execute(f"SET {name} = '{value}'")
        except duckdb.Error:
            pass


def _load(con: duckdb.DuckDBPyConnection, root: Path, spec: ExportSpec, *,
          watermark_key: str | None) -> FhirLoadResult:
    started = time.perf_counter()
    outputs = sorted((f for f in spec.files if f.kind == "output"), key=lambda f: (f.type, _part_key(f.path)))
    deleted_files = sorted((f for f in spec.files if f.kind == "deleted"), key=lambda f: _part_key(f.path))
    error_files = sorted((f for f in spec.files if f.kind == "error"), key=lambda f: _part_key(f.path))
    total_bytes = sum((root / f.path).stat().st_size for f in spec.files)

    saved = _current_settings(con)
    for name, value in _LOAD_SETTINGS.items():
        con.execute(f"SET {name} = '{value}'")
    con.execute("BEGIN TRANSACTION")
    try:
        ensure_tables(con)
        row = con.execute("SELECT status FROM meta.fhir_exports WHERE export_id = ?", [spec.export_id]).fetchone()
        already_loaded = bool(row and row[0] == "loaded")
        _create_raw_tables(con, spec.types)

        _register_files(con, outputs)
        _scan_deletions(con, root, deleted_files, spec.transaction_time)
        stats = {rtype: TypeStats() for rtype in spec.types}
        _apply_deletions(con, spec.export_id, stats)
        files_by_type: dict[str, list[tuple[int, ExportFile]]] = {}
        for file_no, f in enumerate(outputs):
            files_by_type.setdefault(f.type, []).append((file_no, f))
        for rtype, files in files_by_type.items():
            _load_type(con, root, spec.export_id, rtype, files, stats.setdefault(rtype, TypeStats()))

        mismatches = _verify_counts(con, root, outputs, deleted_files, error_files)
        api_calls = 0
        if not already_loaded:
            _record_quarantine(con, spec.export_id)
            _record_export_errors(con, root, spec.export_id, error_files)
            if (root / "api_calls.ndjson").is_file():
                api_calls = load_api_calls_ndjson(con, root / "api_calls.ndjson", run_id=spec.export_id)
            lines_ok = con.execute("SELECT (SELECT coalesce(sum(lines), 0) FROM _fhir_counts) - "
                                   "(SELECT count(*) FROM _fhir_problems)").fetchone()[0]
            con.execute(
                "INSERT INTO meta.fhir_exports VALUES (?, ?, ?, ?, 'loaded', ?, ?, now()) "
                "ON CONFLICT (export_id) DO NOTHING",
                [spec.export_id, spec.kind, spec.since, spec.transaction_time, len(spec.files), lines_ok])
        error_issues = dict(con.execute(
            "SELECT coalesce(severity, 'unknown'), count(*) FROM audit.export_errors WHERE export_id = ? GROUP BY 1",
            [spec.export_id]).fetchall())
        watermark = None
        if watermark_key is not None and spec.transaction_time is not None:
            watermark = set_watermark(con, WATERMARK_SOURCE, watermark_key, spec.transaction_time)
        deletions = con.execute("SELECT count(*) FROM _fhir_del").fetchone()[0]
        lines_read = con.execute("SELECT coalesce(sum(lines), 0) FROM _fhir_counts").fetchone()[0]
        bundle_problems = con.execute("SELECT count(*) FROM _fhir_bundles WHERE problem IS NOT NULL").fetchone()[0]
        for tmp in _TEMP_TABLES:
            con.execute(f"DROP TABLE IF EXISTS temp.{tmp}")
        con.execute("COMMIT")
        _checkpoint(con)
        _restore_settings(con, saved)
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # the connection is gone or the transaction already ended: nothing to undo
            pass
        _restore_settings(con, saved)
        if isinstance(exc, duckdb.InvalidInputException) and "maximum_object_size" in str(exc):
            raise FhirExportError(
                f"export {spec.export_id}: a line is larger than DuckDB's JSON reader allows "
                f"({2 * MAX_OBJECT_BYTES // 2**20} MB); nothing was loaded. Raise fhir_loader.MAX_OBJECT_BYTES "
                "if resources this large are expected") from exc
        raise
    return FhirLoadResult(
        export_id=spec.export_id, kind=spec.kind, transaction_time=spec.transaction_time,
        already_loaded=already_loaded, types=stats, files=len(spec.files), bytes=total_bytes,
        lines_read=lines_read, quarantined=sum(s.quarantined for s in stats.values()) + bundle_problems,
        count_mismatches=mismatches, error_issues=error_issues, api_calls=api_calls, deletions=deletions,
        watermark_key=watermark_key if watermark is not None else None, watermark=watermark,
        duration_s=time.perf_counter() - started,
    )


def _checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Write the committed load into the database file now, as part of the load.

    After this transaction's COMMIT, DuckDB leaves part of the new rows (the row groups it had not
    written yet) in the WAL for a later checkpoint, which the next write or the closing of the
    connection would then pay for. Skipped when another transaction on this database is open
    (DuckDB refuses); the WAL is durable either way.
    """
    try:
        con.execute("CHECKPOINT")
    except duckdb.Error:
        pass


_TEMP_TABLES = ("_fhir_files", "_fhir_counts", "_fhir_problems", "_fhir_dup", "_fhir_win", "_fhir_hash",
                "_fhir_bundles", "_fhir_del")

# A run: consecutive files of one type read by ONE scan. Its ordinality numbers the lines of all its
# files in order, so a file's line = ordinality - the lines of the run's earlier files (from the
# manifest counts; checked and, if a count was wrong, repaired after the insert). Why runs: ordinality
# makes a scan single-threaded and the runs of a type are read concurrently, so a type is split into
# at least two runs (both cores busy). Why not one run per file: DuckDB compresses and writes the
# rows of a scan of at least one row group (122,880 rows) in parallel as they arrive, but funnels
# smaller scans through one lock when they finish; with 10,000-line files one scan per file took
# more CPU and used the second core less than runs of up to RUN_LINES lines.
RUN_LINES = 250_000


def _runs(files: list[tuple[int, ExportFile]]) -> list[list[tuple[int, ExportFile]]]:
    """Consecutive files grouped into runs: at least two when there are two files, each of at most
    about :data:`RUN_LINES` lines. A file without a manifest count (a plain directory) is a run of
    its own, so that line numbers never rest on a guess."""
    if any(f.count is None for _, f in files):
        return [[item] for item in files]
    total = sum(f.count or 0 for _, f in files)
    target = max(1, -(-total // max(2, -(-total // RUN_LINES))))  # ceil(total / number of runs)
    runs: list[list[tuple[int, ExportFile]]] = []
    lines = target
    for item in files:
        if lines >= target:
            runs.append([])
            lines = 0
        runs[-1].append(item)
        lines += item[1].count or 0
    return runs


def _register_files(con: duckdb.DuckDBPyConnection, outputs: list[ExportFile]) -> None:
    """The small temp tables a load keeps besides the raw rows themselves.

    ``_fhir_files`` numbers the output files in load order (type, then natural part order: a
    later file wins a tie); ``_fhir_counts`` holds the lines read per file, ``_fhir_problems`` one
    row per quarantined line (file, line, reason, byte length, and its placeholder's rowid).
    """
    con.execute("CREATE OR REPLACE TEMP TABLE _fhir_files (file_no INTEGER, type VARCHAR, source_file VARCHAR)")
    if outputs:
        con.executemany("INSERT INTO _fhir_files VALUES (?, ?, ?)",
                        [(n, f.type, f.path) for n, f in enumerate(outputs)])
    con.execute("""CREATE OR REPLACE TEMP TABLE _fhir_counts (
        file_no INTEGER, lines BIGINT, first_line BIGINT, last_line BIGINT)""")
    con.execute("""CREATE OR REPLACE TEMP TABLE _fhir_problems (
        file_no INTEGER, line BIGINT, rid BIGINT, problem VARCHAR, byte_length BIGINT)""")


def _load_type(con: duckdb.DuckDBPyConnection, root: Path, export_id: str, rtype: str,
               files: list[tuple[int, ExportFile]], stats: TypeStats) -> None:
    """Append every line of one type's files to its raw table in one pass, then settle it."""
    table = raw_table(rtype)
    fast = not _has_rows(con, rtype)  # empty before this load: every row in it is ours
    params: dict[str, object] = {"export_id": export_id, "type": rtype}
    branches = []
    for n, run in enumerate(_runs(files)):
        offsets, lines = [], 0
        for _, f in run:
            offsets.append(lines)
            lines += f.count or 0
        params[f"p{n}"] = [str(root / f.path) for _, f in run]
        params[f"f{n}"] = [f.path for _, f in run]
        params[f"o{n}"] = offsets
        branches.append(f"SELECT list_extract($f{n}, file_index::INTEGER + 1) AS source_file, "
                        f"ordinality - list_extract($o{n}, file_index::INTEGER + 1) AS line, json "
                        f"FROM {_reader(f'$p{n}')}")
    con.execute(f"""
        INSERT INTO {table} ({_RAW_COLUMNS})
        SELECT CASE WHEN problem IS NULL THEN k[2] END,
               CASE WHEN problem IS NULL THEN last_updated END,
               CASE WHEN problem IS NULL THEN json
                    ELSE json_object('problem', problem, 'byte_length', strlen(json)) END,
               $export_id, source_file, line, now()
        FROM (SELECT *, {_PROBLEM_SQL} AS problem
              FROM (SELECT *, try_cast(k[3] AS TIMESTAMPTZ) AS last_updated
                    FROM (SELECT source_file, line, json, {_KEYS_SQL} AS k
                          FROM ({" UNION ALL ".join(branches)}))))""", params)
    _settle(con, root, rtype, export_id, files, fast, stats)


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object]) -> duckdb.DuckDBPyConnection:
    """Execute with the named parameters ``sql`` uses (DuckDB refuses unused ones)."""
    return con.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql})


def _settle(con: duckdb.DuckDBPyConnection, root: Path, rtype: str, export_id: str,
            files: list[tuple[int, ExportFile]], fast: bool, stats: TypeStats) -> None:
    """Decide the fate of each row this load appended, on key columns only; delete the losers.

    Placeholders go to ``_fhir_problems``. Each id's winning copy in this export is compared with
    the stored row and the tombstones. On the fast path (the table was empty) only ids with
    several copies or a tombstone need a decision, so a first load of a clean export costs two
    small aggregates and no join, window or delete.
    """
    table = raw_table(rtype)
    lo, hi = files[0][0], files[-1][0]
    params: dict[str, object] = {"type": rtype, "lo": lo, "hi": hi, "export_id": export_id}
    ours = "true" if fast else "t.loaded_at = now() AND t.export_id = $export_id"
    files_of_type = "(SELECT file_no, source_file FROM _fhir_files WHERE file_no BETWEEN $lo AND $hi)"
    _run(con, f"""INSERT INTO _fhir_counts
                  SELECT f.file_no, c.lines, c.first_line, c.last_line
                  FROM (SELECT t.source_file, count(*) AS lines, min(t.source_line) AS first_line,
                               max(t.source_line) AS last_line
                        FROM {table} t WHERE {ours} GROUP BY 1) c
                  JOIN {files_of_type} f ON f.source_file = c.source_file""", params)
    _repair_line_numbers(con, table, ours, params)
    # Placeholders: only their (tiny) resource is read, never the real rows' text.
    _run(con, f"""INSERT INTO _fhir_problems
                  SELECT f.file_no, t.source_line, t.rowid, t.resource->>'$.problem',
                         TRY_CAST(t.resource->>'$.byte_length' AS BIGINT)
                  FROM {table} t JOIN {files_of_type} f ON f.source_file = t.source_file
                  WHERE {ours} AND t.id IS NULL""", params)
    _mark_truncated_files(con, root, files)
    _run(con, f"""CREATE OR REPLACE TEMP TABLE _fhir_dup AS
                  SELECT t.id FROM {table} t WHERE {ours} AND t.id IS NOT NULL GROUP BY t.id HAVING count(*) > 1""",
         params)

    # The rows needing a decision: all of ours, or on the fast path those of an id with copies or
    # a tombstone. The winner per id within the export: newest lastUpdated, then the later file,
    # then the later line (a window over the duplicated ids only). It is compared with the stored
    # row on keys only; equal timestamps are a 'tie', settled below by comparing text hashes.
    scope = ""
    if fast:
        scope = ("AND (t.id IN (SELECT id FROM _fhir_dup) OR "
                 "t.id IN (SELECT id FROM meta.fhir_deletions WHERE resource_type = $type))")
    stored = "(SELECT NULL::BIGINT AS srid, NULL::VARCHAR AS id, NULL::TIMESTAMPTZ AS last_updated WHERE false)"
    if not fast:
        stored = f"(SELECT t.rowid AS srid, t.id, t.last_updated FROM {table} t WHERE ({ours}) IS NOT TRUE)"
    _run(con, f"""
        CREATE OR REPLACE TEMP TABLE _fhir_win AS
        WITH ranked AS (
            SELECT t.rowid AS rid, t.id, t.last_updated, 1 AS copy_rank FROM {table} t
            WHERE {ours} AND t.id IS NOT NULL {scope} AND t.id NOT IN (SELECT id FROM _fhir_dup)
            UNION ALL
            SELECT t.rowid, t.id, t.last_updated,
                   row_number() OVER (PARTITION BY t.id ORDER BY t.last_updated DESC NULLS LAST,
                                                                 f.file_no DESC, t.source_line DESC)
            FROM {table} t JOIN {files_of_type} f ON f.source_file = t.source_file
            WHERE {ours} AND t.id IN (SELECT id FROM _fhir_dup)),
        tomb AS (
            SELECT id, max(deleted_at) AS deleted_at FROM meta.fhir_deletions
            WHERE resource_type = $type GROUP BY id)
        SELECT r.rid, s.srid,
               CASE
                 WHEN r.copy_rank > 1 THEN 'duplicate'
                 WHEN s.srid IS NULL AND tomb.deleted_at IS NOT NULL
                      AND (r.last_updated IS NULL OR r.last_updated <= tomb.deleted_at) THEN 'tombstoned'
                 WHEN s.srid IS NULL THEN 'insert'
                 WHEN s.last_updated IS NULL AND r.last_updated IS NOT NULL THEN 'update'
                 WHEN r.last_updated IS NULL AND s.last_updated IS NOT NULL THEN 'older'
                 WHEN r.last_updated > s.last_updated THEN 'update'
                 WHEN r.last_updated < s.last_updated THEN 'older'
                 ELSE 'tie'
               END AS action
        FROM ranked r LEFT JOIN {stored} s ON s.id = r.id AND r.copy_rank = 1
                      LEFT JOIN tomb ON tomb.id = r.id AND r.copy_rank = 1""", params)
    ties = con.execute("SELECT count(*) FROM _fhir_win WHERE action = 'tie'").fetchone()[0]
    if ties:
        # Same lastUpdated: unchanged if the text is the same, else the later load wins. The scan
        # reads the resource column; the small list of row ids is the join's build side.
        with _plan_as_written(con):
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE _fhir_hash AS
                SELECT t.rowid AS rid, hash(t.resource) AS h FROM {table} t
                WHERE t.rowid IN (SELECT rid FROM _fhir_win WHERE action = 'tie'
                                  UNION ALL SELECT srid FROM _fhir_win WHERE action = 'tie')""")
        con.execute("""
            UPDATE _fhir_win SET action = CASE WHEN n.h = s.h THEN 'unchanged' ELSE 'update' END
            FROM _fhir_hash n, _fhir_hash s
            WHERE _fhir_win.action = 'tie' AND n.rid = _fhir_win.rid AND s.rid = _fhir_win.srid""")
    counts = dict(con.execute("SELECT action, count(*) FROM _fhir_win GROUP BY 1").fetchall())
    read = con.execute("SELECT coalesce(sum(lines), 0) FROM _fhir_counts WHERE file_no BETWEEN ? AND ?",
                       [lo, hi]).fetchone()[0]
    bad = con.execute("SELECT count(*) FROM _fhir_problems WHERE file_no BETWEEN ? AND ?", [lo, hi]).fetchone()[0]
    undecided = read - bad - sum(counts.values())  # fast path: rows outside the scope are inserts
    stats.read, stats.quarantined = int(read), int(bad)
    stats.inserted, stats.updated = counts.get("insert", 0) + undecided, counts.get("update", 0)
    stats.unchanged, stats.older = counts.get("unchanged", 0), counts.get("older", 0)
    stats.tombstoned, stats.duplicates = counts.get("tombstoned", 0), counts.get("duplicate", 0)
    if bad or stats.inserted != read - bad:
        with _plan_as_written(con):
            _run(con, f"""
                DELETE FROM {table} WHERE rowid IN (
                    SELECT rid FROM _fhir_win WHERE action IN ('duplicate', 'tombstoned', 'older', 'unchanged')
                    UNION ALL SELECT srid FROM _fhir_win WHERE action = 'update'
                    UNION ALL SELECT rid FROM _fhir_problems WHERE file_no BETWEEN $lo AND $hi)""", params)


def _repair_line_numbers(con: duckdb.DuckDBPyConnection, table: str, ours: str, params: dict[str, object]) -> None:
    """Renumber the files of a run that followed a file whose manifest count was wrong.

    A run's scan numbers its lines in file order, so each file's lines are contiguous: a file
    whose first line is not 1 is shifted by exactly ``first_line - 1``. Anything else would be a
    reader that does not keep file order: the load fails rather than store wrong line numbers.
    """
    shifted = con.execute("""SELECT count(*) FROM _fhir_counts
                             WHERE file_no BETWEEN ? AND ? AND first_line <> 1""",
                          [params["lo"], params["hi"]]).fetchone()[0]
    if shifted:
        _run(con, f"""UPDATE {table} t SET source_line = t.source_line - s.shift
                      FROM (SELECT f.source_file, c.first_line - 1 AS shift
                            FROM _fhir_counts c JOIN _fhir_files f USING (file_no)
                            WHERE c.file_no BETWEEN $lo AND $hi AND c.first_line <> 1) s
                      WHERE s.source_file = t.source_file AND {ours}""", params)
        con.execute("""UPDATE _fhir_counts SET last_line = last_line - (first_line - 1), first_line = 1
                       WHERE file_no BETWEEN ? AND ? AND first_line <> 1""", [params["lo"], params["hi"]])
    broken = con.execute("""SELECT count(*) FROM _fhir_counts
                            WHERE file_no BETWEEN ? AND ? AND last_line - first_line + 1 <> lines""",
                         [params["lo"], params["hi"]]).fetchone()[0]
    if broken:
        raise RuntimeError(f"{table}: the JSON reader did not number lines in file order; nothing was loaded")


def _mark_truncated_files(con: duckdb.DuckDBPyConnection, root: Path, files: list[tuple[int, ExportFile]]) -> None:
    """A last line without a newline that is not JSON either: the file was cut short."""
    for file_no, f in files:
        ends_with_newline, tail = _tail_length(root / f.path)
        if not ends_with_newline:
            con.execute("""UPDATE _fhir_problems SET problem = 'truncated last line (no trailing newline, not valid JSON)',
                                  byte_length = ?
                           WHERE file_no = ? AND problem = 'not valid JSON'
                             AND line = (SELECT last_line FROM _fhir_counts WHERE file_no = ?)""",
                        [tail, file_no, file_no])


def _scan_deletions(con: duckdb.DuckDBPyConnection, root: Path, deleted_files: list[ExportFile],
                    transaction_time: dt.datetime | None) -> None:
    """Read ``deleted/`` Bundles into ``temp._fhir_bundles`` (one row per entry or per bad line)."""
    con.execute("""CREATE OR REPLACE TEMP TABLE _fhir_bundles (
        file_no INTEGER, source_file VARCHAR, line BIGINT, problem VARCHAR,
        resource_type VARCHAR, id VARCHAR, deleted_at TIMESTAMPTZ, byte_length BIGINT)""")
    fallback = transaction_time or dt.datetime.now(dt.UTC)
    for file_no, f in enumerate(deleted_files):
        con.execute(f"""
            INSERT INTO _fhir_bundles
            WITH b AS (
                SELECT ordinality AS line, json, strlen(json) AS byte_length,
                       CASE WHEN json IS NULL THEN 'deleted: not valid JSON'
                            WHEN json->>'$.resourceType' IS DISTINCT FROM 'Bundle' THEN 'deleted: not a Bundle'
                       END AS problem,
                       coalesce(try_cast(json->>'$.meta.lastUpdated' AS TIMESTAMPTZ),
                                try_cast(json->>'$.timestamp' AS TIMESTAMPTZ), $fallback::TIMESTAMPTZ) AS del_at
                FROM {_reader('$path')}),
            e AS (
                SELECT line, del_at, byte_length, unnest(json_extract(json, '$.entry[*]')) AS entry
                FROM b WHERE problem IS NULL),
            p AS (
                SELECT line, del_at, byte_length, entry->>'$.request.method' AS method,
                       regexp_extract(entry->>'$.request.url',
                                      '(?:^|/)([A-Z][A-Za-z]{{1,63}})/([A-Za-z0-9\\-\\.]{{1,64}})(?:/_history/[^/]*)?$',
                                      ['type', 'id']) AS ref
                FROM e)
            SELECT $file_no, $source_file, line, problem, NULL, NULL, NULL, byte_length FROM b WHERE problem IS NOT NULL
            UNION ALL
            SELECT $file_no, $source_file, line,
                   CASE WHEN upper(method) IS DISTINCT FROM 'DELETE' OR coalesce(ref.type, '') = ''
                        THEN 'deleted: entry is not a DELETE Type/id request' END,
                   nullif(ref.type, ''), nullif(ref.id, ''), del_at, byte_length
            FROM p""",
            {"file_no": file_no, "source_file": f.path, "path": str(root / f.path), "fallback": fallback})


def _apply_deletions(con: duckdb.DuckDBPyConnection, export_id: str, stats: dict[str, TypeStats]) -> None:
    """Record tombstones and delete stored rows that are not newer than their deletion."""
    con.execute("""CREATE OR REPLACE TEMP TABLE _fhir_del AS
                   SELECT resource_type, id, max(deleted_at) AS deleted_at, false AS applies
                   FROM _fhir_bundles WHERE problem IS NULL GROUP BY resource_type, id""")
    types = [t for (t,) in con.execute("SELECT DISTINCT resource_type FROM _fhir_del ORDER BY 1").fetchall()]
    for rtype in types:
        if not _table_exists(con, rtype):
            continue
        table = raw_table(rtype)
        con.execute(f"""UPDATE _fhir_del SET applies = true FROM {table} t
                        WHERE _fhir_del.resource_type = ? AND t.id = _fhir_del.id
                          AND (t.last_updated IS NULL OR t.last_updated <= _fhir_del.deleted_at)""", [rtype])
        row = con.execute(f"""DELETE FROM {table} WHERE id IN (
                                SELECT id FROM _fhir_del WHERE resource_type = ? AND applies)""", [rtype]).fetchone()
        stats.setdefault(rtype, TypeStats()).deleted = int(row[0]) if row else 0
    con.execute("""INSERT INTO meta.fhir_deletions
                   SELECT ?, resource_type, id, deleted_at, applies, now() FROM _fhir_del
                   ON CONFLICT (export_id, resource_type, id) DO NOTHING""", [export_id])


@contextmanager
def _plan_as_written(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the enclosed statements with the join order exactly as written (build side = right).

    When a list of row ids is about as long as the table (a full re-load: every row a tie), DuckDB
    may build its hash table on the table side, i.e. hold resource texts in memory. Our joins put
    the row ids on the right, so switching off join reordering keeps memory flat.
    """
    previous = _disabled_optimizers(con)
    disabled = ",".join(dict.fromkeys(o.strip() for o in [*previous.split(","), *_PLAN_AS_WRITTEN] if o.strip()))
    con.execute(f"SET disabled_optimizers = '{disabled}'")
    try:
        yield
    finally:
        _restore_optimizers(con, previous)


def _disabled_optimizers(con: duckdb.DuckDBPyConnection) -> str:
    return con.execute("SELECT current_setting('disabled_optimizers')").fetchall()[0][0] or ""


def _restore_optimizers(con: duckdb.DuckDBPyConnection, previous: str) -> None:
    # After a failed statement the transaction refuses even SET until ROLLBACK; _load restores
    # the setting again after rolling back, so a failure here must not hide the real error.
    try:
        con.execute(f"SET disabled_optimizers = '{previous}'")
    except duckdb.Error:
        pass


def _verify_counts(con: duckdb.DuckDBPyConnection, root: Path, outputs: list[ExportFile],
                   deleted_files: list[ExportFile], error_files: list[ExportFile]) -> list[CountMismatch]:
    """Lines read per file vs the manifest count (quarantined lines count as read)."""
    read = dict(con.execute("SELECT file_no, lines FROM _fhir_counts").fetchall())
    mismatches = [CountMismatch(f.path, f.count, read.get(n, 0))
                  for n, f in enumerate(outputs) if f.count is not None and read.get(n, 0) != f.count]
    bundle_lines = dict(con.execute("SELECT file_no, count(DISTINCT line) FROM _fhir_bundles GROUP BY 1").fetchall())
    for n, f in enumerate(deleted_files):
        if f.count is not None and bundle_lines.get(n, 0) != f.count:
            # A Bundle with no entries leaves no row: count its lines with the reader instead.
            lines = con.execute(f"SELECT count(*) FROM {_reader('?')}", [str(root / f.path)]).fetchone()[0]
            if lines != f.count:
                mismatches.append(CountMismatch(f.path, f.count, lines))
    for f in error_files:
        if f.count is not None:
            lines = con.execute(f"SELECT count(*) FROM {_reader('?')}", [str(root / f.path)]).fetchone()[0]
            if lines != f.count:
                mismatches.append(CountMismatch(f.path, f.count, lines))
    return mismatches


def _record_quarantine(con: duckdb.DuckDBPyConnection, export_id: str) -> None:
    con.execute("""INSERT INTO audit.quarantine
                   SELECT ?, f.source_file, l.line, f.type, l.problem, l.byte_length, now()
                   FROM _fhir_problems l JOIN _fhir_files f USING (file_no)
                   UNION ALL
                   SELECT ?, source_file, line, 'Bundle', problem, byte_length, now()
                   FROM _fhir_bundles WHERE problem IS NOT NULL""", [export_id, export_id])


def _record_export_errors(con: duckdb.DuckDBPyConnection, root: Path, export_id: str,
                          error_files: list[ExportFile]) -> None:
    """OperationOutcome issues -> ``audit.export_errors`` (diagnostics truncated)."""
    shape = '[{"severity": "VARCHAR", "code": "VARCHAR", "diagnostics": "VARCHAR", "details": {"text": "VARCHAR"}}]'
    for f in error_files:
        con.execute(f"""
            INSERT INTO audit.export_errors
            SELECT $export_id, $source_file, line, issue.severity, issue.code,
                   left(coalesce(issue.diagnostics, issue.details.text), {DIAGNOSTICS_MAX_CHARS}), now()
            FROM (SELECT ordinality AS line,
                         unnest(json_transform(json->'$.issue', '{shape}')) AS issue
                  FROM {_reader('$path')})""",
            {"export_id": export_id, "source_file": f.path, "path": str(root / f.path)})


def landing_exports(landing_dir: Path) -> list[Path]:
    """Export folders under ``<landing>/fhir/`` whose download is complete (``export.json`` present),
    oldest first by manifest modification time."""
    base = Path(landing_dir) / "fhir"
    if not base.is_dir():
        return []
    done = [p for p in base.iterdir() if p.is_dir() and (p / "export.json").is_file()]
    return sorted(done, key=lambda p: (os.stat(p / "export.json").st_mtime, p.name))
