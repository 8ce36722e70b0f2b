"""Bulk Data 2.0 export jobs: snapshot the FHIR rendering into NDJSON files, then serve a manifest.

A job (one ``$export`` kick-off) runs in a background thread:

1. open its own read-only snapshot of ``fhir.duckdb`` (a world replaced mid-export does not
   tear the export) and take ``transactionTime`` = the world clock of that snapshot;
2. select ``resources`` of the requested types with ``_since < last_updated <= transactionTime``;
3. write them with ONE DuckDB ``COPY ... PARTITION_BY`` into files of at most
   ``resources_per_file`` lines each, numbered per type by ``row_number() OVER (PARTITION BY
   resource_type ORDER BY id)``. The CSV writer with quoting and escaping switched off and a
   control character as delimiter emits each JSON text verbatim, one per line (compact JSON
   can contain neither a raw control character nor a raw newline), so no Python touches rows;
4. for ``_since`` exports, write ``deleted`` files: one transaction Bundle per line with one
   ``DELETE Type/id`` entry, for deletions with ``_since < deleted_at <= transactionTime``;
5. optionally (fault ``error_lines``) an ``error`` file of OperationOutcome lines.

The job reports "in progress" until both the work is done and the configured processing delay
has passed, so clients really exercise their polling. Files live in
``<world>/emulator/exports/<job>/`` and disappear ``file_expiry_seconds`` after completion,
as does the job. Wall time comes from ``config.wall_clock``; world time only sets
``transactionTime`` and the ``_since`` upper bound.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import os
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from athena_pipeline.sandbox.emulator.config import RESOURCE_TYPES, EmulatorConfig
from athena_pipeline.sandbox.emulator.fhir_store import FhirStore, open_snapshot, world_meta

log = logging.getLogger("athena_pipeline.sandbox.athena")

_RAW_LINES = r"FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x01'"


def fhir_instant(value: dt.datetime) -> str:
    """Naive UTC datetime as a FHIR instant (``2024-05-01T00:00:00Z``)."""
    spec = "milliseconds" if value.microsecond else "seconds"
    return value.isoformat(timespec=spec) + "Z"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_ts(value: dt.datetime) -> str:
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"


@dataclass(frozen=True)
class ExportRequest:
    """A validated kick-off."""

    group_id: str
    client_id: str
    types: tuple[str, ...]
    since: dt.datetime | None  # naive UTC
    request_url: str


@dataclass(frozen=True)
class ExportFile:
    """One file of a finished job; ``kind`` is output | deleted | error."""

    kind: str
    type: str
    name: str
    count: int


@dataclass
class ExportJob:
    id: str
    request: ExportRequest
    dir: Path
    created_at: float
    ready_at: float
    error_lines: int = 0
    state: str = "running"  # running | done | failed | cancelled
    transaction_time: dt.datetime | None = None
    files: list[ExportFile] = field(default_factory=list)
    completed_at: float | None = None
    failure: str | None = None
    next_poll_at: float = 0.0
    conn: duckdb.DuckDBPyConnection | None = None

    def in_progress(self, now: float) -> bool:
        return self.state == "running" or (self.state == "done" and now < self.ready_at)

    def expires_at(self, expiry_seconds: float) -> float | None:
        if self.completed_at is None:
            return None
        return max(self.completed_at, self.ready_at) + expiry_seconds


# --- the writer (pure DuckDB) -----------------------------------------------------------------
def _copy_partitioned(conn: duckdb.DuckDBPyConnection, select_sql: str, counts: dict[str, int],
                      out_dir: Path, kind: str, name_prefix: str, per_file: int) -> list[ExportFile]:
    """COPY ``select_sql`` (columns t, f, line) into files ``{prefix}{t}.{f:03d}.ndjson``."""
    if not counts:
        return []
    parts = out_dir / f"_parts_{kind}"
    conn.execute(f"COPY ({select_sql}) TO {_sql_str(str(parts))} "
                 f"({_RAW_LINES}, PARTITION_BY (t, f), OVERWRITE_OR_IGNORE true)")
    files: list[ExportFile] = []
    for rtype in sorted(counts):
        n = counts[rtype]
        for f in range((n + per_file - 1) // per_file):
            pieces = sorted((parts / f"t={rtype}" / f"f={f}").iterdir())
            name = f"{name_prefix}{rtype}.{f:03d}.ndjson"
            target = out_dir / name
            if len(pieces) == 1:
                os.replace(pieces[0], target)
            else:  # DuckDB may split a partition per thread; stitch the pieces in order
                with open(target, "wb") as dst:
                    for piece in pieces:
                        with open(piece, "rb") as src:
                            shutil.copyfileobj(src, dst, 1 << 20)
            files.append(ExportFile(kind, rtype, name, min(per_file, n - f * per_file)))
    shutil.rmtree(parts, ignore_errors=True)
    return files


def write_export(conn: duckdb.DuckDBPyConnection, out_dir: Path, types: tuple[str, ...],
                 since: dt.datetime | None, until: dt.datetime, per_file: int,
                 error_lines: int = 0) -> list[ExportFile]:
    """Write the NDJSON files of one export into ``out_dir``; returns them in manifest order.

    ``conn`` has the rendering attached as catalog ``fhir``. Types are checked against
    :data:`RESOURCE_TYPES` and timestamps are formatted here, so inlining them is safe.
    """
    unknown = set(types) - set(RESOURCE_TYPES)
    if unknown:
        raise ValueError(f"unsupported resource types: {sorted(unknown)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    type_list = ", ".join(_sql_str(t) for t in types)
    where = f"resource_type IN ({type_list}) AND last_updated <= {_sql_ts(until)}"
    if since is not None:
        where += f" AND last_updated > {_sql_ts(since)}"
    where += " AND resource IS NOT NULL"
    counts = dict(conn.execute(
        f"SELECT resource_type, count(*) FROM fhir.resources WHERE {where} GROUP BY 1"
    ).fetchall())
    files = _copy_partitioned(
        conn,
        f"""SELECT resource_type AS t,
                   (row_number() OVER (PARTITION BY resource_type ORDER BY id, last_updated)
                    - 1) // {int(per_file)} AS f,
                   resource AS line
            FROM fhir.resources WHERE {where}""",
        counts, out_dir, "output", "", per_file)

    if since is not None:
        dwhere = (f"resource_type IN ({type_list}) AND deleted_at > {_sql_ts(since)} "
                  f"AND deleted_at <= {_sql_ts(until)}")
        n_deleted = conn.execute(f"SELECT count(*) FROM fhir.deletions WHERE {dwhere}").fetchone()[0]
        files += _copy_partitioned(
            conn,
            f"""SELECT 'Bundle' AS t,
                       (row_number() OVER (ORDER BY resource_type, id, deleted_at) - 1)
                        // {int(per_file)} AS f,
                       json_object('resourceType', 'Bundle', 'type', 'transaction',
                         'entry', json_array(json_object('request', json_object(
                           'method', 'DELETE', 'url', resource_type || '/' || id))))::VARCHAR AS line
                FROM fhir.deletions WHERE {dwhere}""",
            {"Bundle": n_deleted} if n_deleted else {}, out_dir, "deleted", "deleted.", per_file)

    if error_lines > 0:
        name = "error.OperationOutcome.000.ndjson"
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing",
                       "diagnostics": "Emulated export error (fault error_lines)."}],
        }
        line = json.dumps(outcome, separators=(",", ":"))
        (out_dir / name).write_text((line + "\n") * error_lines, encoding="utf-8")
        files.append(ExportFile("error", "OperationOutcome", name, error_lines))
    return files


# --- the job manager --------------------------------------------------------------------------
class BulkExporter:
    """Starts, tracks, cancels and expires export jobs. Thread-safe."""

    def __init__(self, store: FhirStore, config: EmulatorConfig) -> None:
        self.store = store
        self.config = config
        self.exports_dir = store.world_dir / "emulator" / "exports"
        self._lock = threading.Lock()
        self._jobs: dict[str, ExportJob] = {}
        self._cleanups: list[threading.Thread] = []  # background deletions of DELETEd jobs' files
        self._expired: dict[str, float] = {}  # job id -> when, to say "expired" not "unknown"
        self._remove_stale_dirs()

    def _remove_stale_dirs(self) -> None:
        """Delete job folders a previous emulator left behind once they are past expiry.

        Jobs live in memory, so files of an emulator that crashed or was killed are orphans. A
        folder's mtime is when its last file landed (job completion), so one older than the
        expiry is dead for every emulator, including others serving the same world right now.
        """
        if not self.exports_dir.is_dir():
            return
        cutoff = self.config.wall_clock() - self.config.file_expiry_seconds
        for child in self.exports_dir.iterdir():
            try:
                if child.is_dir() and child.stat().st_mtime < cutoff:
                    shutil.rmtree(child, ignore_errors=True)
            except FileNotFoundError:
                continue

    def close(self) -> None:
        """Cancel every job and delete its files (the emulator is shutting down)."""
        with self._lock:
            job_ids = list(self._jobs)
        for job_id in job_ids:
            self.cancel(job_id, background=False)
        with self._lock:
            cleanups, self._cleanups = self._cleanups, []
        for cleanup in cleanups:  # DELETEs answered earlier: their files are gone before we return
            cleanup.join()

    def running_for(self, group_id: str, client_id: str) -> ExportJob | None:
        now = self.config.wall_clock()
        with self._lock:
            for job in self._jobs.values():
                if (job.request.group_id == group_id and job.request.client_id == client_id
                        and job.in_progress(now)):
                    return job
        return None

    def start(self, request: ExportRequest, error_lines: int = 0) -> ExportJob:
        """Register a job and start its worker thread."""
        self.sweep()
        now = self.config.wall_clock()
        job_id = secrets.token_urlsafe(18)
        job = ExportJob(id=job_id, request=request, dir=self.exports_dir / job_id,
                        created_at=now,
                        ready_at=now + self.config.export_processing_delay_seconds,
                        error_lines=error_lines)
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job,), name=f"bulk-export-{job_id[:6]}",
                         daemon=True).start()
        return job

    def _run(self, job: ExportJob) -> None:
        tmp = job.dir / ".tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            conn = open_snapshot(self.store.path, threads=self.config.export_threads,
                                 temp_directory=tmp)
            job.conn = conn
            if job.state == "cancelled":
                return
            _, clock = world_meta(conn, self.store.world_dir)
            files = write_export(conn, job.dir, job.request.types, job.request.since, clock,
                                 self.config.resources_per_file, job.error_lines)
            with self._lock:
                if job.state == "running":
                    job.transaction_time = clock
                    job.files = files
                    job.completed_at = self.config.wall_clock()
                    job.state = "done"
        except Exception as exc:  # noqa: BLE001 - any failure becomes a 500 on the status URL
            with self._lock:
                if job.state == "running":
                    job.state = "failed"
                    job.failure = type(exc).__name__
                    job.completed_at = self.config.wall_clock()
            if job.state == "failed":
                log.error("bulk export job failed: %s", type(exc).__name__)
        finally:
            job.conn = None
            shutil.rmtree(tmp, ignore_errors=True)
            if job.state == "cancelled":
                shutil.rmtree(job.dir, ignore_errors=True)

    def get(self, job_id: str) -> ExportJob | None:
        self.sweep()
        with self._lock:
            return self._jobs.get(job_id)

    def was_expired(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._expired

    def cancel(self, job_id: str, *, background: bool = True) -> bool:
        """Cancel a job and delete its files (by default after returning); False when there is no such job."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return False
            was_running = job.state == "running"
            job.state = "cancelled"
        conn = job.conn
        if was_running and conn is not None:
            try:
                conn.interrupt()
            except duckdb.Error:
                pass
        if not was_running and not background:
            shutil.rmtree(job.dir, ignore_errors=True)
        elif not was_running:
            # The job is gone for clients from here on; its files go in the background, as a real
            # server answers the DELETE (202) before its clean-up, not after removing gigabytes.
            cleanup = threading.Thread(target=shutil.rmtree, args=(job.dir,), kwargs={"ignore_errors": True},
                                       name=f"bulk-cleanup-{job_id}", daemon=True)
            cleanup.start()
            with self._lock:
                self._cleanups = [t for t in self._cleanups if t.is_alive()] + [cleanup]
        return True

    def sweep(self) -> None:
        """Drop jobs whose files have expired, deleting the files."""
        now = self.config.wall_clock()
        expired: list[ExportJob] = []
        with self._lock:
            for job_id, job in list(self._jobs.items()):
                at = job.expires_at(self.config.file_expiry_seconds)
                if at is not None and at <= now:
                    expired.append(self._jobs.pop(job_id))
                    self._expired[job_id] = now
            if len(self._expired) > 1000:
                for old in sorted(self._expired, key=self._expired.__getitem__)[:500]:
                    del self._expired[old]
        for job in expired:
            shutil.rmtree(job.dir, ignore_errors=True)

    # --- answers ---------------------------------------------------------------------------
    def progress(self, job: ExportJob) -> str:
        """The ``X-Progress`` text of a job still in progress (under 100 characters)."""
        now = self.config.wall_clock()
        span = max(job.ready_at - job.created_at, 1e-9)
        pct = int(100 * (now - job.created_at) / span)
        pct = max(0, min(pct, 95 if job.state == "running" else 99))
        return f"{pct}% complete"

    def manifest(self, job: ExportJob, base_url: str) -> dict:
        assert job.transaction_time is not None

        def entries(kind: str) -> list[dict]:
            return [{"type": f.type, "url": f"{base_url}/bulkfiles/{job.id}/{f.name}",
                     "count": f.count} for f in job.files if f.kind == kind]

        return {
            "transactionTime": fhir_instant(job.transaction_time),
            "request": job.request.request_url,
            "requiresAccessToken": self.config.auth_required,  # False in open mode
            "output": entries("output"),
            "deleted": entries("deleted"),
            "error": entries("error"),
        }

    def expires_header(self, job: ExportJob) -> str | None:
        at = job.expires_at(self.config.file_expiry_seconds)
        return None if at is None else email.utils.formatdate(at, usegmt=True)

    def file(self, job: ExportJob, name: str) -> tuple[ExportFile, Path] | None:
        """The file ``name`` of a finished job, or None (also for names not in the manifest)."""
        if job.state != "done":
            return None
        for f in job.files:
            if f.name == name:
                path = job.dir / f.name
                return (f, path) if path.exists() else None
        return None
