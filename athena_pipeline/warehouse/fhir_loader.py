"""Load a landed FHIR bulk export (NDJSON files) into ``raw_fhir.<type>``, in ONE transaction.

The landing contract (written by the bulk-export client): ``<landing>/fhir/<export_id>/`` holds
``{Type}.{NNN}.ndjson``, ``deleted/`` (transaction Bundles of ``DELETE Type/id``), ``error/``
(OperationOutcome lines), ``api_calls.ndjson`` and, written last, ``export.json`` (the manifest with
per-file counts, ``transaction_time`` and the kick-off ``request``).

How a load works, and why:

* **DuckDB reads the files** (``read_ndjson_objects ... WITH ORDINALITY``), never a Python line
  loop. Python loops over *files* only. Each output file is scanned twice: pass 1 extracts the
  keys of every line (type, id, ``meta.lastUpdated``, a content hash, what is wrong with it) into a
  small temp table; pass 2 streams the file again and inserts only the lines that won. The
  resource text is therefore never held in a temp table or a hash table, so peak memory follows
  the number of lines, not the size of the files.
* **Line numbers** are the reader's ordinality: the Nth JSON text of the file. The reader skips
  blank lines, so in a file with blank lines this counts non-blank lines.
* **Malformed input is quarantined, never fatal**: a line that is not JSON (including a truncated
  last line), not an object, without ``resourceType`` or ``id``, of another type than its file, or
  with an unreadable ``meta.lastUpdated`` goes to ``audit.quarantine`` with its file, line, a reason
  and its byte length — never its content (it may be PHI).
* **Upsert by id, newest ``meta.lastUpdated`` wins**: duplicates of an id within the export keep
  the newest copy (tie: the later file, then the later line); a stored row is replaced only by a
  newer copy, or by a different copy with the same ``lastUpdated`` (the later export wins a tie);
  an older copy never overwrites. A resource without ``meta.lastUpdated`` counts as oldest.
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
_KEYS_SHAPE = '{"resourceType": "VARCHAR", "id": "VARCHAR", "meta": {"lastUpdated": "VARCHAR"}}'
# Tell DuckDB how to join a file scan with the (smaller) list of winning lines: with its own
# choice it builds the hash table on the scan, i.e. holds every resource text in memory.
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


def _create_raw_table(con: duckdb.DuckDBPyConnection, resource_type: str) -> None:
    con.execute(f"""CREATE TABLE IF NOT EXISTS {raw_table(resource_type)} (
        id VARCHAR PRIMARY KEY,
        last_updated TIMESTAMPTZ,
        resource JSON,
        export_id VARCHAR,
        source_file VARCHAR,
        source_line BIGINT,
        loaded_at TIMESTAMPTZ)""")


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


def _load(con: duckdb.DuckDBPyConnection, root: Path, spec: ExportSpec, *,
          watermark_key: str | None) -> FhirLoadResult:
    started = time.perf_counter()
    outputs = sorted((f for f in spec.files if f.kind == "output"), key=lambda f: (f.type, _part_key(f.path)))
    deleted_files = sorted((f for f in spec.files if f.kind == "deleted"), key=lambda f: _part_key(f.path))
    error_files = sorted((f for f in spec.files if f.kind == "error"), key=lambda f: _part_key(f.path))
    total_bytes = sum((root / f.path).stat().st_size for f in spec.files)

    optimizers = _disabled_optimizers(con)
    # Resource JSON compresses well with zstd and writes ~1.5x faster than DuckDB's default string
    # analysis (dictionary/FSST), which otherwise dominates the commit. Reset after the load.
    con.execute("SET force_compression = 'zstd'")
    con.execute("BEGIN TRANSACTION")
    try:
        ensure_tables(con)
        row = con.execute("SELECT status FROM meta.fhir_exports WHERE export_id = ?", [spec.export_id]).fetchone()
        already_loaded = bool(row and row[0] == "loaded")
        for rtype in spec.types:
            _create_raw_table(con, rtype)

        hash_types = {t for t in spec.types
                      if con.execute(f"SELECT EXISTS (SELECT 1 FROM {raw_table(t)})").fetchone()[0]}
        _scan_keys(con, root, outputs, hash_types)
        _scan_deletions(con, root, deleted_files, spec.transaction_time)
        stats = {rtype: TypeStats() for rtype in spec.types}
        _apply_deletions(con, spec.export_id, stats)
        _upsert(con, root, spec.export_id, outputs, stats)

        mismatches = _verify_counts(con, root, outputs, deleted_files, error_files)
        api_calls = 0
        if not already_loaded:
            _record_quarantine(con, spec.export_id, outputs)
            _record_export_errors(con, root, spec.export_id, error_files)
            if (root / "api_calls.ndjson").is_file():
                api_calls = load_api_calls_ndjson(con, root / "api_calls.ndjson", run_id=spec.export_id)
            lines_ok = con.execute("SELECT count(*) FROM _fhir_lines WHERE problem IS NULL").fetchone()[0]
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
        lines_read = con.execute("SELECT count(*) FROM _fhir_lines").fetchone()[0]
        bundle_problems = con.execute("SELECT count(*) FROM _fhir_bundles WHERE problem IS NOT NULL").fetchone()[0]
        for tmp in ("_fhir_lines", "_fhir_bundles", "_fhir_del", "_fhir_dec"):
            con.execute(f"DROP TABLE IF EXISTS temp.{tmp}")
        con.execute("COMMIT")
        con.execute("RESET force_compression")
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
            con.execute("RESET force_compression")
        except duckdb.Error:  # the connection is gone or the transaction already ended: nothing to undo
            pass
        _restore_optimizers(con, optimizers)
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


# Files read per SQL statement: one statement per file costs a fixed overhead that dominates with
# the small files servers hand out (10,000 resources each); a UNION ALL of per-file scans keeps
# exact per-file line numbers and lets DuckDB read the files in parallel.
FILES_PER_STATEMENT = 32


def _batches(items: list, size: int = FILES_PER_STATEMENT) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _scan_keys(con: duckdb.DuckDBPyConnection, root: Path, outputs: list[ExportFile],
               hash_types: set[str]) -> None:
    """Pass 1: one small row per line (keys, hash, length, problem) into ``temp._fhir_lines``.

    The content hash only settles ties with stored rows, so it is computed only for types whose
    raw table already has rows (``hash_types``); a first load skips it.
    """
    con.execute("""CREATE OR REPLACE TEMP TABLE _fhir_lines (
        type VARCHAR, file_no INTEGER, source_file VARCHAR, line BIGINT, problem VARCHAR,
        id VARCHAR, last_updated TIMESTAMPTZ, content_hash UBIGINT, byte_length BIGINT)""")
    numbered = list(enumerate(outputs))
    for batch in _batches(numbered):
        params: dict[str, object] = {}
        branches = []
        for file_no, f in batch:
            params[f"t{file_no}"], params[f"f{file_no}"], params[f"p{file_no}"] = f.type, f.path, str(root / f.path)
            branches.append(
                f"SELECT ${'t'}{file_no} AS type, {file_no} AS file_no, ${'f'}{file_no} AS source_file, "
                f"ordinality AS line, json, {'hash(json)' if f.type in hash_types else 'NULL::UBIGINT'} AS content_hash "
                f"FROM {_reader(f'$p{file_no}')}")
        con.execute(f"""
            INSERT INTO _fhir_lines
            SELECT type, file_no, source_file, line, problem, id, last_updated, content_hash,
                   CASE WHEN problem IS NOT NULL THEN strlen(json) END
            FROM (
              SELECT type, file_no, source_file, line, json, k.id AS id,
                     try_cast(k.meta.lastUpdated AS TIMESTAMPTZ) AS last_updated, content_hash,
                     CASE
                       WHEN json IS NULL THEN 'not valid JSON'
                       WHEN NOT regexp_matches(json, '^\\s*\\{{') THEN 'not a JSON object'
                       WHEN k.resourceType IS NULL THEN 'no resourceType'
                       WHEN k.resourceType <> type THEN
                         CASE WHEN regexp_matches(k.resourceType, '^[A-Za-z]{{1,64}}$')
                              THEN 'resourceType ' || k.resourceType || ' in a ' || type || ' file'
                              ELSE 'resourceType is not a type name, in a ' || type || ' file' END
                       WHEN k.id IS NULL THEN 'no id'
                       WHEN NOT regexp_matches(k.id, '{_FHIR_ID_SQL}') THEN 'id is not a valid FHIR id'
                       WHEN k.meta.lastUpdated IS NOT NULL AND try_cast(k.meta.lastUpdated AS TIMESTAMPTZ) IS NULL
                         THEN 'meta.lastUpdated is not a valid instant'
                     END AS problem
              FROM (SELECT *, json_transform(json, '{_KEYS_SHAPE}') AS k
                    FROM ({" UNION ALL ".join(branches)})))""", params)
        for file_no, f in batch:
            ends_with_newline, tail = _tail_length(root / f.path)
            if not ends_with_newline:
                # The last line has no newline: if it is not JSON either, the file was cut short.
                con.execute("""UPDATE _fhir_lines SET problem = 'truncated last line (no trailing newline, not valid JSON)',
                                      byte_length = ?
                               WHERE file_no = ? AND problem = 'not valid JSON'
                                 AND line = (SELECT max(line) FROM _fhir_lines WHERE file_no = ?)""",
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

    DuckDB cannot estimate how many rows a file scan yields and may build its hash table on the
    scan side, i.e. hold every resource text in memory. Our joins put the small side (line
    numbers, ids) on the right, so switching off join reordering keeps memory flat.
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


def _upsert(con: duckdb.DuckDBPyConnection, root: Path, export_id: str, outputs: list[ExportFile],
            stats: dict[str, TypeStats]) -> None:
    """Decide each line's fate in SQL, then pass 2: stream the winning lines into the raw tables."""
    con.execute("""CREATE OR REPLACE TEMP TABLE _fhir_dec (
        type VARCHAR, id VARCHAR, file_no INTEGER, source_file VARCHAR, line BIGINT,
        last_updated TIMESTAMPTZ, content_hash UBIGINT, action VARCHAR)""")
    files_by_type: dict[str, list[tuple[int, ExportFile]]] = {}
    for file_no, f in enumerate(outputs):
        files_by_type.setdefault(f.type, []).append((file_no, f))
    for rtype, files in files_by_type.items():
        table = raw_table(rtype)
        # Winner per id within the export: newest lastUpdated, then the later file, then the later
        # line. Compared with the stored row on keys only; equal timestamps are a 'tie', settled
        # below by comparing content hashes.
        con.execute(f"""
            INSERT INTO _fhir_dec
            WITH w AS (
                SELECT * FROM _fhir_lines WHERE type = $type AND problem IS NULL
                QUALIFY row_number() OVER (PARTITION BY id ORDER BY last_updated DESC NULLS LAST,
                                                        file_no DESC, line DESC) = 1),
            tomb AS (
                SELECT id, max(deleted_at) AS deleted_at FROM meta.fhir_deletions
                WHERE resource_type = $type GROUP BY id),
            stored AS (SELECT id, last_updated FROM {table})
            SELECT $type, w.id, w.file_no, w.source_file, w.line, w.last_updated, w.content_hash,
                   CASE
                     WHEN t.id IS NULL AND tomb.deleted_at IS NOT NULL
                          AND (w.last_updated IS NULL OR w.last_updated <= tomb.deleted_at) THEN 'tombstoned'
                     WHEN t.id IS NULL THEN 'insert'
                     WHEN t.last_updated IS NULL AND w.last_updated IS NOT NULL THEN 'update'
                     WHEN w.last_updated IS NULL AND t.last_updated IS NOT NULL THEN 'older'
                     WHEN w.last_updated > t.last_updated THEN 'update'
                     WHEN w.last_updated < t.last_updated THEN 'older'
                     ELSE 'tie'
                   END
            FROM w LEFT JOIN stored t ON t.id = w.id LEFT JOIN tomb ON tomb.id = w.id""",
            {"type": rtype})
        ties = con.execute("SELECT count(*) FROM _fhir_dec WHERE type = ? AND action = 'tie'", [rtype]).fetchone()[0]
        if ties:
            # Same lastUpdated: unchanged if the content is the same, else the later load wins.
            with _plan_as_written(con):
                con.execute(f"""
                    UPDATE _fhir_dec SET action = CASE WHEN h.h = _fhir_dec.content_hash THEN 'unchanged'
                                                       ELSE 'update' END
                    FROM (SELECT t.id, hash(t.resource) AS h FROM {table} t
                          JOIN (SELECT id FROM _fhir_dec WHERE type = $type AND action = 'tie') x ON x.id = t.id) h
                    WHERE _fhir_dec.type = $type AND _fhir_dec.action = 'tie' AND _fhir_dec.id = h.id""",
                    {"type": rtype})
        counts = dict(con.execute("SELECT action, count(*) FROM _fhir_dec WHERE type = ? GROUP BY 1",
                                  [rtype]).fetchall())
        read, bad, good = con.execute(
            """SELECT count(*), count(*) FILTER (WHERE problem IS NOT NULL), count(*) FILTER (WHERE problem IS NULL)
               FROM _fhir_lines WHERE type = ?""", [rtype]).fetchone()
        s = stats.setdefault(rtype, TypeStats())
        s.read, s.quarantined = read, bad
        s.inserted, s.updated = counts.get("insert", 0), counts.get("update", 0)
        s.unchanged, s.older, s.tombstoned = counts.get("unchanged", 0), counts.get("older", 0), counts.get("tombstoned", 0)
        s.duplicates = good - sum(counts.values())
        if s.updated:
            con.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM _fhir_dec WHERE type = ? AND action = 'update')",
                        [rtype])
        if not (s.inserted or s.updated):
            continue
        with _plan_as_written(con):
            for batch in _batches(files):
                params = {"export_id": export_id, "type": rtype}
                branches = []
                for file_no, f in batch:
                    params[f"p{file_no}"] = str(root / f.path)
                    branches.append(f"SELECT {file_no} AS file_no, ordinality, json FROM {_reader(f'$p{file_no}')}")
                con.execute(f"""
                    INSERT INTO {table} (id, last_updated, resource, export_id, source_file, source_line, loaded_at)
                    SELECT d.id, d.last_updated, s.json, $export_id, d.source_file, d.line, now()
                    FROM ({" UNION ALL ".join(branches)}) s
                    JOIN (SELECT id, last_updated, source_file, line, file_no FROM _fhir_dec
                          WHERE type = $type AND file_no BETWEEN {batch[0][0]} AND {batch[-1][0]}
                            AND action IN ('insert', 'update')) d
                      ON s.file_no = d.file_no AND s.ordinality = d.line""", params)


def _verify_counts(con: duckdb.DuckDBPyConnection, root: Path, outputs: list[ExportFile],
                   deleted_files: list[ExportFile], error_files: list[ExportFile]) -> list[CountMismatch]:
    """Lines read per file vs the manifest count (quarantined lines count as read)."""
    read = dict(con.execute("SELECT file_no, count(*) FROM _fhir_lines GROUP BY 1").fetchall())
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


def _record_quarantine(con: duckdb.DuckDBPyConnection, export_id: str, outputs: Iterable[ExportFile]) -> None:
    con.execute("""INSERT INTO audit.quarantine
                   SELECT ?, source_file, line, type, problem, byte_length, now()
                   FROM _fhir_lines WHERE problem IS NOT NULL
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
