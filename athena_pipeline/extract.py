"""The extraction steps in plain Python: used alike by ``athena-pipeline extract`` and the Dagster assets.

Three steps, each with one job, so each can run where it belongs (design.md: network work outside the
warehouse pool, warehouse writes inside it):

* :func:`export_fhir` - **network only**. Runs (or resumes) a FHIR Bulk Data Group export into
  ``<LANDING_DIR>/fhir/<export_id>/``. ``_since`` comes from the warehouse watermark (read with a short
  read-only connection) unless a ``since`` is given or ``full`` is asked for. An export killed
  mid-download is resumed, not kicked off again; an export that finished downloading but was never
  loaded (its load was killed or failed) is handed back as it is, without any call, when it asked
  for the same thing and is recent (:data:`REUSE_LANDED_MAX_AGE`).
* :func:`load_fhir` / :func:`load_unloaded_fhir` - **warehouse only**. Load landed exports into
  ``raw_fhir`` (one transaction per export; the loader sets the watermark inside it). Every landed
  export not yet loaded is loaded, oldest first, so a failed load is caught up by the next run.
* :func:`extract_dataview` - Data View tables from the share (or the sandbox file) as Arrow batches
  into ``raw_dataview``, one transaction per table.

Errors are plain exceptions with a ``transient`` attribute where it matters (:func:`is_transient`),
so callers (Dagster's retry policy, the CLI's exit code) can tell "try again later" from "fix
something first". Nothing here logs a resource, an id or a secret: counts, paths and export ids only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import duckdb
import httpx

from athena_pipeline.athena.bulk import (
    EXPORT_FILE,
    STATE_FILE,
    BulkExportConfig,
    BulkExportError,
    ExportResult,
    normalize_since,
    normalize_types,
    run_export,
)
from athena_pipeline.athena.dataview_catalog import CATALOG, DataViewTable, get_table
from athena_pipeline.http import ApiError
from athena_pipeline.settings import Settings
from athena_pipeline.warehouse.audit import get_watermark
from athena_pipeline.warehouse.connection import WarehouseBusyError, connect
from athena_pipeline.warehouse.fhir_loader import (
    WATERMARK_SOURCE as FHIR_WATERMARK_SOURCE,
)
from athena_pipeline.warehouse.fhir_loader import (
    FhirExportError,
    FhirLoadResult,
    landing_exports,
    load_fhir_export,
)

if TYPE_CHECKING:
    from athena_pipeline.warehouse.dataview_loader import DataViewLoadResult

log = logging.getLogger("athena_pipeline.extract")

#: The FHIR resource types athenahealth's Group export serves (and the sandbox emulator renders).
#: The Dagster assets are declared from this list; a type outside it is still loaded (into
#: ``raw_fhir.<type>``), it just has no asset of its own.
FHIR_RESOURCE_TYPES: tuple[str, ...] = (
    "Patient", "Practitioner", "Organization", "Location", "Encounter", "Condition",
    "Observation", "Procedure", "Immunization", "MedicationRequest", "AllergyIntolerance",
    "DiagnosticReport", "DocumentReference", "Coverage", "Appointment",
)

#: How long to wait for a busy warehouse before reading the ``_since`` watermark gives up.
WATERMARK_WAIT_SECONDS = 10.0
#: How long a load waits for the warehouse lock (outside Dagster, another process may hold it).
LOAD_WAIT_SECONDS = 30.0
#: A landed but unloaded export is reused instead of exporting again only while it is this fresh:
#: older data would only be replaced by the next run's ``_since`` export anyway.
REUSE_LANDED_MAX_AGE = dt.timedelta(hours=24)

_GROUP_IN_REQUEST = re.compile(r"/Group/([^/?#]+)/\$export")


class ExtractError(RuntimeError):
    """An extraction step could not run; ``transient`` says whether running it later may succeed."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def is_transient(exc: BaseException) -> bool:
    """Whether running the step again later may succeed (Dagster retries only these).

    Transient: the HTTP policy gave up on 429/5xx/timeouts, a download kept failing, the warehouse
    was locked by another process, the network dropped. Not transient: credentials refused, a
    4xx, a malformed export or schema change, a configuration error, a programming error.
    """
    if isinstance(exc, (ApiError, BulkExportError, ExtractError)):
        return bool(exc.transient)
    return isinstance(exc, (WarehouseBusyError, httpx.TransportError, TimeoutError, ConnectionError))


# --- configuration ---------------------------------------------------------------------------
def bulk_config(settings: Settings, **overrides: Any) -> BulkExportConfig:
    """The bulk export configuration for ``settings`` (plus test or benchmark overrides)."""
    poll = settings.athena_bulk_poll_seconds
    values: dict[str, Any] = {"concurrency": settings.athena_bulk_concurrency,
                              "jwt_algorithm": settings.athena_jwt_algorithm,
                              "poll_default_seconds": poll, "poll_initial_seconds": min(1.0, poll),
                              "poll_min_seconds": min(1.0, poll)}
    values.update(overrides)
    return BulkExportConfig.from_settings(settings, **values)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# --- what the warehouse knows --------------------------------------------------------------------
@contextmanager
def _read_only(settings: Settings, what: str, wait_seconds: float) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A short read-only connection, or None when nothing was ever loaded (no file yet).

    A writer in another process blocks read-only opens (DuckDB: one writer, or many readers). We
    say so, wait ``wait_seconds`` and then fail with what to do instead.
    """
    path = Path(settings.warehouse_path)
    if not path.exists():
        yield None
        return
    with ExitStack() as stack:
        try:
            con = stack.enter_context(connect(path, read_only=True))
        except WarehouseBusyError:
            log.warning("the warehouse %s is busy (another process is writing it); waiting up to %.0fs "
                        "to read %s", path, wait_seconds, what)
            try:
                con = stack.enter_context(connect(path, read_only=True, wait_seconds=wait_seconds))
            except WarehouseBusyError as exc:
                raise ExtractError(f"could not read {what}: {exc}", transient=True) from None
        yield con


def stored_watermark(con: duckdb.DuckDBPyConnection | None, source: str, key: str) -> dt.datetime | None:
    """The watermark ``(source, key)`` on an open connection; None when nothing was loaded yet."""
    if con is None:
        return None
    try:
        return get_watermark(con, source, key)
    except duckdb.CatalogException:  # nothing loaded yet: no meta.watermarks table
        return None


def _loaded_export_ids(con: duckdb.DuckDBPyConnection | None) -> set[str]:
    if con is None:
        return set()
    try:
        return {r[0] for r in con.execute(
            "SELECT export_id FROM meta.fhir_exports WHERE status = 'loaded'").fetchall()}
    except duckdb.CatalogException:
        return set()


def read_fhir_watermark(settings: Settings, *, wait_seconds: float = WATERMARK_WAIT_SECONDS
                        ) -> dt.datetime | None:
    """The ``_since`` of the next incremental export: the last loaded export's transaction time."""
    with _read_only(settings, "the FHIR _since watermark", wait_seconds) as con:
        return stored_watermark(con, FHIR_WATERMARK_SOURCE, settings.athena_group_id)


# --- landed exports --------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _export_id(export_dir: Path) -> str:
    doc = _read_json(export_dir / EXPORT_FILE)
    return str((doc or {}).get("export_id") or export_dir.name)


def export_group(export_dir: Path) -> str | None:
    """The Group id a landed export was kicked off for (from its kick-off URL), if known."""
    doc = _read_json(Path(export_dir) / EXPORT_FILE) or {}
    match = _GROUP_IN_REQUEST.search(str(doc.get("request") or ""))
    if match:
        return unquote(match.group(1))
    state = _read_json(Path(export_dir) / STATE_FILE) or {}
    return state.get("group_id")


def _pending(settings: Settings, loaded: set[str]) -> list[Path]:
    """Landed (complete) exports of this Group that the warehouse has not loaded, oldest first."""
    return [d for d in landing_exports(Path(settings.landing_dir))
            if export_group(d) == settings.athena_group_id and _export_id(d) not in loaded]


def unloaded_exports(settings: Settings) -> list[Path]:
    """Every landed export of ``ATHENA_GROUP_ID`` not loaded yet, oldest first."""
    with _read_only(settings, "the list of loaded exports", WATERMARK_WAIT_SECONDS) as con:
        loaded = _loaded_export_ids(con)
    return _pending(settings, loaded)


def latest_unloaded_export(settings: Settings) -> Path | None:
    """The newest landed export not loaded yet, or None."""
    pending = unloaded_exports(settings)
    return pending[-1] if pending else None


def manifest_summary(export_dir: Path) -> dict[str, dict[str, int]]:
    """Per resource type, what the export's manifest (``export.json``) announces:
    ``{"count": resources, "files": files, "bytes": bytes}``."""
    doc = _read_json(Path(export_dir) / EXPORT_FILE) or {}
    out: dict[str, dict[str, int]] = {}
    for entry in doc.get("files") or []:
        row = out.setdefault(str(entry["type"]), {"count": 0, "files": 0, "bytes": 0})
        row["count"] += int(entry.get("count") or 0)
        row["files"] += 1
        row["bytes"] += int(entry.get("bytes") or 0)
    return out


def manifest_counts(export_dir: Path) -> dict[str, int]:
    """Resources per type the export's manifest (``export.json``) announces."""
    return {t: row["count"] for t, row in manifest_summary(export_dir).items()}


def export_error_issues(export_dir: Path) -> dict[str, int]:
    """OperationOutcome issues in the export's ``error/`` files, counted by severity.

    Read with DuckDB from the landed files (no warehouse needed), so the export step can judge its
    own result. A line that is not an OperationOutcome counts as one ``unknown`` issue.
    """
    doc = _read_json(Path(export_dir) / EXPORT_FILE) or {}
    paths = [str(Path(export_dir) / e["path"]) for e in doc.get("errors") or []
             if (Path(export_dir) / e["path"]).is_file()]
    if not paths:
        return {}
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        rows = con.execute(
            """WITH lines AS (SELECT json FROM read_ndjson_objects(?, ignore_errors = true)),
                    issues AS (SELECT unnest(coalesce(json_extract(json, '$.issue[*]'), [NULL::JSON])) AS i
                               FROM lines)
               SELECT coalesce(lower(i->>'severity'), 'unknown'), count(*) FROM issues GROUP BY 1""",
            [paths]).fetchall()
    finally:
        con.close()
    return {severity: int(n) for severity, n in rows}


def _landed_result(export_dir: Path) -> ExportResult:
    """An :class:`ExportResult` describing an export already on disk (no network)."""
    doc = _read_json(export_dir / EXPORT_FILE) or {}
    counts: dict[str, int] = {}
    for entry in doc.get("files") or []:
        counts[entry["type"]] = counts.get(entry["type"], 0) + int(entry.get("count") or 0)
    entries = [*(doc.get("files") or []), *(doc.get("deleted") or []), *(doc.get("errors") or [])]
    size = sum((export_dir / e["path"]).stat().st_size for e in entries if (export_dir / e["path"]).is_file())
    return ExportResult(
        export_dir=export_dir, export_id=str(doc.get("export_id") or export_dir.name),
        kind=str(doc.get("kind") or "full"), since=doc.get("since"),
        transaction_time=str(doc.get("transaction_time") or ""), counts=counts,
        deleted_count=sum(int(e.get("count") or 0) for e in doc.get("deleted") or []),
        error_count=sum(int(e.get("count") or 0) for e in doc.get("errors") or []),
        files=len(entries), bytes=size, duration_seconds=0.0, calls=0, downloaded_files=0,
        reexports=0, resumed=True)


def _reusable_landed(settings: Settings, config: BulkExportConfig, since: str | None,
                     types: tuple[str, ...], loaded: set[str]) -> Path | None:
    """A complete, unloaded, recent, error-free export that asked for exactly this; else None."""
    now = dt.datetime.now(dt.UTC)
    best: tuple[str, Path] | None = None
    for export_dir in _pending(settings, loaded):
        state = _read_json(export_dir / STATE_FILE)
        doc = _read_json(export_dir / EXPORT_FILE)
        if not isinstance(state, dict) or not isinstance(doc, dict) or doc.get("errors"):
            continue
        if (state.get("fhir_base_url") != config.fhir_base_url.rstrip("/") or state.get("since") != since
                or list(state.get("types") or []) != list(types)):
            continue
        try:
            landed_at = _utc(dt.datetime.fromisoformat(str(doc.get("downloaded_at"))))
        except ValueError:
            continue
        if now - landed_at > REUSE_LANDED_MAX_AGE:
            continue
        key = str(doc.get("downloaded_at"))
        if best is None or key > best[0]:
            best = (key, export_dir)
    return best[1] if best else None


# --- step 1: export (network) -----------------------------------------------------------------------
class _Forward(logging.Handler):
    """Hands the bulk client's INFO+ log lines to a progress callback (e.g. Dagster's context.log)."""

    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback
        self._lock_cb = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must not break the export
            return
        with self._lock_cb:
            self.callback(message)


@contextmanager
def _progress(callback: Callable[[str], None] | None) -> Iterator[None]:
    if callback is None:
        yield
        return
    logger = logging.getLogger("athena_pipeline.athena.bulk")
    handler = _Forward(callback)
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def export_fhir(settings: Settings, *, types: Iterable[str] | None = None,
                since: str | dt.datetime | None = None, full: bool = False,
                on_progress: Callable[[str], None] | None = None,
                cancel: threading.Event | None = None, **config_overrides: Any) -> ExportResult:
    """Run, resume or reuse the Group export of ``ATHENA_GROUP_ID`` into ``LANDING_DIR``.

    ``since`` None (or ``'auto'``) takes ``_since`` from the warehouse watermark (a full export when
    nothing was loaded yet); an instant is used as given; ``full=True`` exports everything. ``types``
    limits the resource types (default: all the server exports). ``on_progress`` receives the bulk
    client's progress messages. ``config_overrides`` go to :class:`BulkExportConfig` (tests use
    them for fast polling). Never writes the warehouse.
    """
    if full and since not in (None, "auto"):
        raise ValueError("give either since or full, not both")
    chosen = normalize_types(types)
    config = bulk_config(settings, **config_overrides)
    explicit = not full and since not in (None, "auto")
    with _read_only(settings, "the FHIR _since watermark", WATERMARK_WAIT_SECONDS) as con:
        watermark = (None if full or explicit
                     else stored_watermark(con, FHIR_WATERMARK_SOURCE, settings.athena_group_id))
        loaded = _loaded_export_ids(con)
    since_s = None if full else normalize_since(since if explicit else watermark)  # type: ignore[arg-type]
    if not full and not explicit:
        log.info("FHIR export of %s: %s", settings.athena_group_id,
                 f"_since {since_s} (the watermark)" if since_s else "full (no watermark yet)")
    landed = _reusable_landed(settings, config, since_s, chosen, loaded)
    if landed is not None:
        log.info("export %s already landed and is not loaded yet: reusing it instead of exporting again",
                 landed.name)
        return _landed_result(landed)
    with _progress(on_progress):
        return run_export(config, since=since_s, types=chosen, cancel=cancel)


# --- step 2: load (warehouse) -----------------------------------------------------------------------
def _load_one(con: duckdb.DuckDBPyConnection, settings: Settings, export_dir: Path) -> FhirLoadResult:
    key = export_group(export_dir) or settings.athena_group_id
    log.info("loading export %s into raw_fhir", Path(export_dir).name)
    result = load_fhir_export(con, Path(export_dir), watermark_key=key)
    log.info("loaded export %s: %d lines, %d inserted, %d updated, %d deleted, %d quarantined in %.2fs "
             "(%s rows/s)%s", result.export_id, result.lines_read, result.inserted, result.updated,
             result.deleted, result.quarantined, result.duration_s, f"{result.rows_per_second:,.0f}",
             " (loaded before: nothing changed)" if result.already_loaded and not result.changed else "")
    for m in result.count_mismatches:
        log.warning("export %s: %s has %d line(s) where the manifest says %d", result.export_id, m.file,
                    m.read, m.expected)
    return result


def load_fhir(settings: Settings, export_dir: Path) -> FhirLoadResult:
    """Load one landed export into ``raw_fhir`` (one transaction; sets the watermark inside it)."""
    export_dir = Path(export_dir)
    if not (export_dir / EXPORT_FILE).is_file():
        raise FhirExportError(f"{export_dir} has no export.json: its download is not complete")
    with connect(settings.warehouse_path, wait_seconds=LOAD_WAIT_SECONDS,
                 memory_limit=settings.warehouse_memory_limit) as con:
        return _load_one(con, settings, export_dir)


def load_unloaded_fhir(settings: Settings) -> list[tuple[Path, FhirLoadResult]]:
    """Load every landed, not yet loaded export of ``ATHENA_GROUP_ID``, oldest first.

    Returns (export folder, load result) pairs in load order. Why all of them and oldest first: a
    load that failed or was killed leaves its export pending; loading it before newer ones keeps
    "newest ``lastUpdated`` wins" and the deletions in time order.
    """
    results: list[tuple[Path, FhirLoadResult]] = []
    with connect(settings.warehouse_path, wait_seconds=LOAD_WAIT_SECONDS,
                 memory_limit=settings.warehouse_memory_limit) as con:
        pending = _pending(settings, _loaded_export_ids(con))
        if not pending:
            log.info("no landed FHIR export is waiting to be loaded")
        for export_dir in pending:
            results.append((export_dir, _load_one(con, settings, export_dir)))
    return results


@dataclass
class FhirExtractResult:
    """What ``extract fhir`` did: the export (or the reused landing) and every load it ran."""

    export: ExportResult
    loads: list[tuple[Path, FhirLoadResult]] = field(default_factory=list)

    @property
    def error_issues(self) -> dict[str, int]:
        """OperationOutcome issues of the loaded exports, by severity."""
        out: dict[str, int] = {}
        for _, load in self.loads:
            for severity, n in load.error_issues.items():
                out[severity] = out.get(severity, 0) + n
        return out


def extract_fhir(settings: Settings, *, types: Iterable[str] | None = None,
                 since: str | dt.datetime | None = None, full: bool = False,
                 **config_overrides: Any) -> FhirExtractResult:
    """Export (network), then load every pending export (warehouse): what the CLI runs."""
    exported = export_fhir(settings, types=types, since=since, full=full, **config_overrides)
    return FhirExtractResult(export=exported, loads=load_unloaded_fhir(settings))


# --- Data View ---------------------------------------------------------------------------------------
def _instant(value: dt.date | dt.datetime | None, tz: str) -> dt.datetime | None:
    """A window bound as an aware UTC datetime; a date means midnight in the practice's time zone."""
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time(), tzinfo=ZoneInfo(tz))
    return _utc(value)


def dataview_tables(names: Iterable[str] | None = None) -> list[DataViewTable]:
    """Catalogue entries for ``names`` (case-insensitive, de-duplicated), or every table."""
    if not names:
        return list(CATALOG)
    out: dict[str, DataViewTable] = {}
    for name in names:
        for part in str(name).split(","):
            if part.strip():
                try:
                    entry = get_table(part.strip())
                except KeyError as exc:
                    raise ValueError(str(exc.args[0])) from None
                out[entry.name] = entry
    return list(out.values())


def extract_dataview(settings: Settings, *, tables: Iterable[str] | None = None,
                     start: dt.date | dt.datetime | None = None, end: dt.date | dt.datetime | None = None,
                     full_refresh: bool = False, from_watermark: bool = True, run_id: str | None = None
                     ) -> dict[str, DataViewLoadResult]:
    """Copy Data View tables into ``raw_dataview``: fetch Arrow batches, upsert, one transaction per table.

    The window is ``start <= LASTUPDATED < end`` (dates are midnight in ``PIPELINE_TIMEZONE``).
    Without ``start``, each table continues from its own watermark (everything, the first time),
    or with ``from_watermark=False`` takes every row before ``end``; ``full_refresh`` copies every
    row whatever the window. Soft-deleted rows are copied too.

    A table missing upstream is skipped with a warning when the catalogue marks it experimental
    (its name is a guess), and stops the run otherwise. Tables loaded before a failure stay loaded.
    Returns the load result per logical table name.
    """
    # Imported here, not at the top: they pull in pyarrow (~0.1 s), which the FHIR path never needs
    # and every `extract fhir` would otherwise pay at start-up.
    from athena_pipeline.athena.dataview import DataViewTableMissing, source_from_settings
    from athena_pipeline.warehouse.dataview_loader import WATERMARK_SOURCE as DATAVIEW_WATERMARK_SOURCE
    from athena_pipeline.warehouse.dataview_loader import load_dataview_batches

    entries = dataview_tables(tables)
    start_at = None if full_refresh else _instant(start, settings.pipeline_timezone)
    end_at = None if full_refresh else _instant(end, settings.pipeline_timezone)
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise ValueError(f"the window is empty: end {end_at:%Y-%m-%d %H:%M}Z is not after start "
                         f"{start_at:%Y-%m-%d %H:%M}Z")
    run_id = run_id or f"cli-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    results: dict[str, DataViewLoadResult] = {}
    source = source_from_settings(settings)
    try:
        with connect(settings.warehouse_path, wait_seconds=LOAD_WAIT_SECONDS,
                     memory_limit=settings.warehouse_memory_limit) as con:
            for entry in entries:
                try:
                    source.columns(entry.name)
                except DataViewTableMissing:
                    if entry.experimental:
                        log.warning("Data View table %s is not in the share (its name is a guess): skipped; "
                                    "map it with DATAVIEW_TABLE_MAP if it has another name", entry.name)
                        continue
                    raise
                window_start = start_at
                if window_start is None and start is None and from_watermark and not full_refresh:
                    window_start = stored_watermark(con, DATAVIEW_WATERMARK_SOURCE, entry.name.lower())
                batches = source.fetch(entry.name, start=window_start, end=end_at,
                                       context_ids=list(settings.context_ids))
                result = load_dataview_batches(con, entry.name, batches, window=(window_start, end_at),
                                               run_id=run_id)
                log.info("%s: %d rows fetched (%s .. %s): %d inserted, %d updated, %d unchanged, "
                         "%d soft-deleted in %.2fs (%s rows/s)", result.raw_table, result.received,
                         _show(window_start), _show(end_at), result.inserted, result.updated,
                         result.unchanged, result.soft_deleted, result.duration_s,
                         f"{result.rows_per_second:,.0f}")
                results[entry.name] = result
    finally:
        source.close()
    return results


def _show(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else "-"


__all__ = [
    "FHIR_RESOURCE_TYPES",
    "ExtractError",
    "FhirExtractResult",
    "bulk_config",
    "dataview_tables",
    "export_error_issues",
    "export_fhir",
    "export_group",
    "extract_dataview",
    "extract_fhir",
    "is_transient",
    "latest_unloaded_export",
    "load_fhir",
    "load_unloaded_fhir",
    "manifest_counts",
    "manifest_summary",
    "read_fhir_watermark",
    "stored_watermark",
    "unloaded_exports",
]

