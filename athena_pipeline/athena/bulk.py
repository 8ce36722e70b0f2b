"""FHIR Bulk Data 2.0 Group export: kick-off, poll, download, verify, resume, clean up.

:func:`run_export` is the entry point. One export lands in ``<landing_dir>/fhir/<export_id>/``::

    state.json                 written atomically at kick-off and after every finished file
    Patient.000.ndjson ...     output files, numbered per type in manifest order
    deleted/Bundle.000.ndjson  deleted[] files (transaction Bundles of DELETE requests)
    error/OperationOutcome.000.ndjson   error[] files
    api_calls.ndjson           one CallRecord per HTTP attempt (no ids, no PHI, no secrets)
    export.json                written last: the contract the loader reads (see below)

Behaviour, following what mature bulk clients do (``specs/fhir-notes.md`` §1):

- kick-off ``GET {base}/Group/{id}/$export`` with ``Prefer: respond-async``,
  ``Accept: application/fhir+json``, ``_type`` comma-joined in ONE parameter, ``_since``;
- polling honours ``Retry-After`` (clamped; a default when absent), logs ``X-Progress`` and
  treats a ``transient`` OperationOutcome as "poll again"; other 5xx are retried by the HTTP
  policy; the whole wait is bounded (``max_export_seconds``);
- the manifest may be paged (``link`` next); output file URLs are opaque;
- downloads are streamed to ``<name>.part`` in chunks by a bounded thread pool (``gzip``),
  checked for completeness and renamed into place; a truncated file is downloaded again, then
  the run fails loudly. The check costs next to nothing when the file is whole: lines are counted
  in the stream (``bytes.count``) and only the last line is parsed (a transfer cut mid-line leaves
  a partial last line); when that matches the manifest ``count`` the file is complete. Only a
  mismatch (or a manifest without counts) pays for the full scan, :func:`check_ndjson` (every
  line valid JSON of the manifest's type; DuckDB streams the file, nothing is loaded whole),
  which also tells blank lines from missing ones. Why not parse every line here: the loader
  parses each line anyway and quarantines a bad one with its file and line; a second full parse
  here cost ~11 CPU s per 1.8 M resources, more than half of the client's CPU for an export;
- expired files (404/410) or a vanished job start a fresh export, at most ``max_reexports`` times;
- the status URL is in ``state.json`` so a killed run **resumes** the same export (files already
  verified are not downloaded again) instead of kicking off a new one;
- the job is ``DELETE``d after a successful download and on cancellation (KeyboardInterrupt or
  the ``cancel`` event);
- ``_since`` is an argument: the client never advances a watermark (the loader records
  ``transaction_time`` once its load commits).

``export.json``::

    {"export_id", "kind": "since"|"full", "since": instant|null, "transaction_time",
     "request": kick-off URL, "status_url", "types": [...],
     "files": [{"type", "path", "count", "bytes"}], "deleted": [{"path", "count"}],
     "errors": [{"path", "count"}], "downloaded_at"}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import duckdb
import httpx

from athena_pipeline.athena.client import AthenaClient
from athena_pipeline.http import (
    ApiError,
    CallRecord,
    RetryPolicy,
    clamp,
    is_transient_outcome,
    parse_retry_after,
)

log = logging.getLogger("athena_pipeline.athena.bulk")

STATE_FILE = "state.json"
EXPORT_FILE = "export.json"
CALLS_FILE = "api_calls.ndjson"
_CALLS_PARTIAL = ".api_calls.partial.ndjson"  # not *.part: those are cleaned up
_STATE_VERSION = 1
_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_KINDS = ("output", "deleted", "error")
_SUBDIR = {"output": "", "deleted": "deleted/", "error": "error/"}
_MAX_MANIFEST_PAGES = 10_000
#: At most this many DuckDB file checks at once: each holds a bounded read buffer (~32 MB).
_CHECKS = threading.BoundedSemaphore(2)
_CHECK_SQL = """
    SELECT count(*),
           count(*) FILTER (WHERE NOT json_valid(line)),
           count(*) FILTER (WHERE (CASE WHEN json_valid(line)
                                        THEN json_extract_string(line, '$.resourceType') END)
                                  IS DISTINCT FROM ?)
    FROM read_csv(?, columns = {'line': 'VARCHAR'}, header = false, delim = chr(1) || chr(2),
                  quote = '', escape = '', auto_detect = false, strict_mode = false,
                  max_line_size = 33554432, buffer_size = 33554432)
    WHERE line <> ''
"""


# --- errors -------------------------------------------------------------------------------------
class BulkExportError(RuntimeError):
    """The export failed. ``transient`` says whether running it again later may succeed."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ExportCancelled(BulkExportError):
    """The export was cancelled (``cancel`` event or KeyboardInterrupt); the job was deleted."""


class _Restart(Exception):
    """Internal: the job or its files are gone; start a fresh export."""


# --- configuration and result ---------------------------------------------------------------------
@dataclass(frozen=True)
class BulkExportConfig:
    """Where and how to export. Build from settings with :meth:`from_settings`."""

    fhir_base_url: str
    group_id: str
    landing_dir: Path
    token_url: str | None = None
    auth: str = "client_secret"                # none | client_secret | private_key_jwt
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    private_key_path: Path | None = None
    key_id: str | None = None
    jwt_algorithm: str | None = None           # default: RS384 (RSA) / ES384 (P-384)
    scopes: str | None = "system/*.read"
    requests_per_second: float | None = 5.0
    #: Resource types to export; empty = whatever the server exports by default (all).
    types: tuple[str, ...] = ()
    #: Parallel file downloads.
    concurrency: int = 4
    #: Without Retry-After the client backs off exponentially, as the Bulk Data IG asks: the
    #: first wait is ``poll_initial_seconds``, each next one doubles, up to ``poll_default_seconds``.
    #: (A fixed long wait would leave a finished small export idle for up to a minute.)
    poll_initial_seconds: float = 1.0
    poll_default_seconds: float = 60.0
    #: Clamp for every wait, the server's Retry-After included.
    poll_min_seconds: float = 1.0
    poll_max_seconds: float = 300.0
    #: Give up waiting for the server to finish after this long (large EHR exports take hours).
    max_export_seconds: float = 2 * 86400.0
    #: Download attempts per file (truncation, invalid lines, dropped connections).
    max_file_attempts: int = 5
    #: Fresh exports started because files expired or the job vanished, at most.
    max_reexports: int = 2
    timeout: httpx.Timeout | float = field(default_factory=lambda: httpx.Timeout(
        connect=10.0, read=120.0, write=60.0, pool=120.0))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    chunk_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.max_file_attempts < 1:
            raise ValueError("max_file_attempts must be >= 1")
        if self.max_reexports < 0:
            raise ValueError("max_reexports must be >= 0")
        if self.poll_min_seconds > self.poll_max_seconds:
            raise ValueError("poll_min_seconds must be <= poll_max_seconds")
        for t in self.types:
            _check_type(t)

    @classmethod
    def from_settings(cls, settings, **overrides) -> BulkExportConfig:
        """The configuration from :class:`athena_pipeline.settings.Settings`, plus overrides."""
        values: dict[str, Any] = {
            "fhir_base_url": settings.athena_fhir_base_url,
            "group_id": settings.athena_group_id,
            "landing_dir": Path(settings.landing_dir),
            "token_url": settings.athena_token_url,
            "auth": settings.athena_auth,
            "client_id": settings.athena_client_id,
            "client_secret": settings.athena_client_secret,
            "private_key_path": settings.athena_private_key_path,
            "key_id": settings.athena_key_id,
            "scopes": settings.athena_scopes,
            "requests_per_second": settings.athena_requests_per_second,
        }
        values.update(overrides)
        return cls(**values)

    def make_client(self, on_call: Callable[[CallRecord], None] | None = None) -> AthenaClient:
        """An :class:`AthenaClient` for this configuration (the caller closes it)."""
        return AthenaClient.create(
            self.fhir_base_url, auth_mode=self.auth, token_url=self.token_url,
            client_id=self.client_id, client_secret=self.client_secret,
            private_key_path=self.private_key_path, key_id=self.key_id,
            jwt_algorithm=self.jwt_algorithm, scopes=self.scopes,
            requests_per_second=self.requests_per_second, timeout=self.timeout,
            retry=self.retry, on_call=on_call, max_connections=self.concurrency + 2)


@dataclass(frozen=True)
class ExportResult:
    """What one :func:`run_export` call produced (the files are described in export.json)."""

    export_dir: Path
    export_id: str
    kind: str
    since: str | None
    transaction_time: str
    counts: dict[str, int]            # resources per type in output files
    deleted_count: int
    error_count: int
    files: int                        # output + deleted + error files
    bytes: int                        # bytes of all files on disk
    duration_seconds: float
    calls: int                        # HTTP attempts made by this run
    downloaded_files: int             # files this run downloaded (the rest were already there)
    reexports: int
    resumed: bool


# --- small helpers ------------------------------------------------------------------------------
def _check_type(name: str) -> str:
    if not _TYPE_RE.fullmatch(name):
        raise ValueError(f"not a FHIR resource type name: {name[:40]!r}")
    return name


def normalize_since(since: str | dt.datetime | None) -> str | None:
    """``since`` as a FHIR instant in UTC (``2026-01-01T00:00:00Z``); naive values are UTC."""
    if since is None:
        return None
    if isinstance(since, str):
        text = since.strip()
        try:
            since = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"since must be an ISO 8601 instant, got {text[:40]!r}") from None
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    since = since.astimezone(dt.UTC)
    spec = "milliseconds" if since.microsecond else "seconds"
    return since.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def normalize_types(types: Iterable[str] | None) -> tuple[str, ...]:
    """Sorted, de-duplicated, validated resource type names (empty = all)."""
    return tuple(sorted({_check_type(t.strip()) for t in (types or ()) if t.strip()}))


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class _LineTally:
    """Lines of a download counted as it streams, and the bytes after its last newline.

    ``lines`` counts newline-terminated lines plus a final unterminated one; blank lines count too
    (so a file with blank lines does not match its manifest count and gets the full check).
    """

    def __init__(self) -> None:
        self.newlines = 0
        self.tail = bytearray()  # bytes after the last newline seen (one line at most)

    def add(self, chunk: bytes) -> None:
        self.newlines += chunk.count(b"\n")
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            self.tail = bytearray(chunk[cut + 1:])
        else:
            self.tail += chunk

    @property
    def lines(self) -> int:
        return self.newlines + (1 if self.tail.strip() else 0)

    def last_line_complete(self) -> bool:
        """An unterminated last line must be whole JSON (a transfer cut mid-line is not)."""
        if not self.tail.strip():
            return True
        try:
            json.loads(self.tail)
        except ValueError:
            return False
        return True


def check_ndjson(path: Path, resource_type: str) -> tuple[int, int, int]:
    """(lines, invalid JSON lines, lines whose ``resourceType`` is not ``resource_type``).

    Blank lines are ignored and a missing final newline is fine. DuckDB streams the file with a
    bounded buffer; lines over 32 MB fall back to a line-by-line Python check.
    """
    with _CHECKS:
        con = duckdb.connect(":memory:", config={"threads": 1, "memory_limit": "512MB"})
        try:
            row = con.execute(_CHECK_SQL, [resource_type, str(path)]).fetchone()
            return int(row[0]), int(row[1]), int(row[2])
        except duckdb.Error:
            pass
        finally:
            con.close()
    lines = bad = wrong = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            lines += 1
            try:
                obj = json.loads(raw)
            except ValueError:
                bad += 1
                wrong += 1
                continue
            if not isinstance(obj, dict) or obj.get("resourceType") != resource_type:
                wrong += 1
    return lines, bad, wrong


# --- the manifest ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestFile:
    kind: str            # output | deleted | error
    type: str
    url: str
    count: int | None
    path: str            # relative to the export dir: Patient.000.ndjson, deleted/Bundle.000.ndjson


@dataclass(frozen=True)
class Manifest:
    transaction_time: str
    request: str | None
    requires_access_token: bool
    files: tuple[ManifestFile, ...]


def _parse_manifest_pages(pages: Sequence[dict], base_url: str) -> Manifest:
    first = pages[0]
    tt = first.get("transactionTime")
    if not isinstance(tt, str) or not tt:
        raise BulkExportError("the export manifest has no transactionTime")
    numbering: dict[tuple[str, str], int] = {}
    files: list[ManifestFile] = []
    for page in pages:
        for kind in _KINDS:
            entries = page.get(kind) or []
            if not isinstance(entries, list):
                raise BulkExportError(f"the export manifest's {kind} is not a list")
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                    raise BulkExportError(f"a manifest {kind} entry has no url")
                rtype = entry.get("type")
                if not isinstance(rtype, str) or not _TYPE_RE.fullmatch(rtype):
                    raise BulkExportError(f"a manifest {kind} entry has no valid type")
                count = entry.get("count")
                if count is not None and (not isinstance(count, int) or count < 0):
                    count = None
                n = numbering.get((kind, rtype), 0)
                numbering[(kind, rtype)] = n + 1
                files.append(ManifestFile(kind, rtype, urljoin(base_url, entry["url"]), count,
                                          f"{_SUBDIR[kind]}{rtype}.{n:03d}.ndjson"))
    return Manifest(transaction_time=tt,
                    request=first.get("request") if isinstance(first.get("request"), str) else None,
                    requires_access_token=bool(first.get("requiresAccessToken", True)),
                    files=tuple(files))


# --- the call log -----------------------------------------------------------------------------------
class _CallLog:
    """Collects CallRecords; once the export dir exists, appends each to a partial file.

    Why on disk as it happens: a killed run's calls (its kick-off above all) stay in the final
    ``api_calls.ndjson`` of the run that resumes it.
    """

    def __init__(self, forward: Callable[[CallRecord], None] | None) -> None:
        self.forward = forward
        self.records: list[CallRecord] = []
        self._lock = threading.Lock()
        self._fh = None
        self._written = 0

    def __call__(self, record: CallRecord) -> None:
        with self._lock:
            self.records.append(record)
            self._flush()
        if self.forward is not None:
            self.forward(record)

    def _flush(self) -> None:
        if self._fh is None:
            return
        for rec in self.records[self._written:]:
            self._fh.write(json.dumps(rec.to_dict(), separators=(",", ":")) + "\n")
        self._written = len(self.records)
        self._fh.flush()

    def attach(self, export_dir: Path) -> None:
        partial, final = export_dir / _CALLS_PARTIAL, export_dir / CALLS_FILE
        with self._lock:
            if final.exists():  # a run died between api_calls.ndjson and export.json: keep it
                earlier = final.read_bytes() + (partial.read_bytes() if partial.exists() else b"")
                partial.write_bytes(earlier)
                final.unlink()
            self._fh = open(partial, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()/close()
            self._flush()

    def finish(self, export_dir: Path) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            partial = export_dir / _CALLS_PARTIAL
            if partial.exists():
                os.replace(partial, export_dir / CALLS_FILE)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


# --- resume -------------------------------------------------------------------------------------
def find_resumable_export(landing_dir: Path | str, group_id: str,
                          since: str | dt.datetime | None, types: Iterable[str] | None, *,
                          fhir_base_url: str | None = None) -> Path | None:
    """The newest unfinished export dir (state.json, no export.json, not cancelled) whose
    group, ``_since`` and ``_type`` (and, when given, FHIR base URL) match; else None."""
    root = Path(landing_dir) / "fhir"
    if not root.is_dir():
        return None
    want_since, want_types = normalize_since(since), list(normalize_types(types))
    candidates: list[tuple[str, Path]] = []
    for state_path in root.glob(f"*/{STATE_FILE}"):
        export_dir = state_path.parent
        if (export_dir / EXPORT_FILE).exists():
            continue
        state = _read_json(state_path)
        if not isinstance(state, dict) or state.get("cancelled"):
            continue
        if (state.get("group_id") == group_id and state.get("since") == want_since
                and list(state.get("types") or []) == want_types
                and (fhir_base_url is None
                     or state.get("fhir_base_url") == fhir_base_url.rstrip("/"))):
            candidates.append((str(state.get("created_at") or ""), export_dir))
    if not candidates:
        return None
    return max(candidates)[1]


# --- the export -----------------------------------------------------------------------------------
class _Export:
    """One run of one export (fresh or resumed)."""

    def __init__(self, config: BulkExportConfig, client: AthenaClient, calls: _CallLog,
                 cancel: threading.Event | None) -> None:
        self.config = config
        self.client = client
        self.calls = calls
        self.cancel = cancel or threading.Event()
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self.dir: Path = Path()
        self.state: dict[str, Any] = {}
        self.downloaded = 0
        self.resumed = False

    # --- state ------------------------------------------------------------------------------
    def save_state(self) -> None:
        with self._state_lock:
            _write_json_atomic(self.dir / STATE_FILE, self.state)

    def open(self, since: str | None, types: tuple[str, ...], resume: bool) -> None:
        found = (find_resumable_export(self.config.landing_dir, self.config.group_id, since,
                                       types, fhir_base_url=self.config.fhir_base_url)
                 if resume else None)
        if found is not None:
            self.dir = found
            self.state = _read_json(found / STATE_FILE)
            self.state["reexports"] = 0  # the fresh-export bound is per run: a later run may retry
            self.resumed = True
            log.info("resuming export %s (%d file(s) already complete)", self.state["export_id"],
                     len(self.state.get("files") or {}))
        else:
            kind = "since" if since else "full"
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            export_id = f"{stamp}-{kind}-{uuid.uuid4().hex[:8]}"
            self.dir = Path(self.config.landing_dir) / "fhir" / export_id
            self.dir.mkdir(parents=True, exist_ok=False)
            self.state = {
                "version": _STATE_VERSION, "export_id": export_id, "kind": kind,
                "group_id": self.config.group_id,
                "fhir_base_url": self.config.fhir_base_url.rstrip("/"),
                "since": since, "types": list(types), "created_at": _now_iso(),
                "request": None, "status_url": None, "kicked_off_at": None, "reexports": 0,
                "cancelled": False, "manifest": None, "files": {},
            }
            self.save_state()
        self.calls.attach(self.dir)

    # --- kick-off -----------------------------------------------------------------------------
    def kickoff(self) -> None:
        base = self.config.fhir_base_url.rstrip("/")
        query = []
        if self.state["types"]:
            query.append("_type=" + ",".join(self.state["types"]))
        if self.state["since"]:
            query.append("_since=" + quote(self.state["since"], safe=""))
        url = f"{base}/Group/{quote(self.config.group_id, safe='')}/$export"
        if query:
            url += "?" + "&".join(query)
        template = f"{self.client.fhir_path}/Group/{{id}}/$export"
        response = self.client.request(
            "GET", url, path_template=template,
            headers={"Accept": "application/fhir+json", "Prefer": "respond-async"},
            accept=lambda r: r.status_code == 202)
        location = response.headers.get("content-location")
        if not location:
            raise BulkExportError("the kick-off was accepted without a Content-Location")
        self.state.update(request=url, status_url=urljoin(url, location),
                          kicked_off_at=_now_iso(), manifest=None, files={})
        self.save_state()
        types = ", ".join(self.state["types"]) or "all types"
        log.info("export %s kicked off: %s export of %s%s", self.state["export_id"],
                 self.state["kind"], types,
                 f" since {self.state['since']}" if self.state["since"] else "")

    def status_template(self) -> str:
        url = self.state["status_url"]
        job = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        return self.client.template(url, tokens={job: "{job}"}, last="{job}")

    def file_template(self, url: str) -> str:
        job = urlsplit(self.state["status_url"]).path.rstrip("/").rsplit("/", 1)[-1]
        return self.client.template(url, tokens={job: "{job}"}, last="{file}")

    # --- polling ---------------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise ExportCancelled("the export was cancelled")

    def wait_for_manifest(self) -> Manifest:
        status_url = self.state["status_url"]
        template = self.status_template()
        cfg = self.config
        deadline = time.monotonic() + cfg.max_export_seconds
        polls = 0
        transient_in_a_row = 0
        unhinted = 0  # 202s without Retry-After so far: the exponent of the back-off
        while True:
            if self.cancel.is_set():
                raise ExportCancelled("the export was cancelled")
            try:
                response = self.client.request(
                    "GET", status_url, path_template=template,
                    headers={"Accept": "application/json"},
                    accept=lambda r: r.status_code in (200, 202) or (
                        r.status_code >= 400 and is_transient_outcome(r)))
            except ApiError as exc:
                if exc.status in (404, 410):
                    raise _Restart("the export job is gone (status "
                                   f"{exc.status})") from None
                raise
            polls += 1
            if response.status_code == 200:
                log.info("export %s complete after %d poll(s)", self.state["export_id"], polls)
                return self.read_manifest(response)
            hinted = parse_retry_after(response.headers.get("retry-after"))
            if response.status_code == 202:
                transient_in_a_row = 0
                if hinted is None:
                    hinted = min(cfg.poll_default_seconds, cfg.poll_initial_seconds * 2 ** min(unhinted, 30))
                    unhinted += 1
                wait_s = clamp(hinted, cfg.poll_min_seconds, cfg.poll_max_seconds)
            else:
                # A transient error without Retry-After (the SMART reference server sends none) is
                # a hiccup, not a pace: back off from the retry policy's base instead of waiting
                # the full default poll interval, never longer than that interval.
                transient_in_a_row += 1
                if hinted is None:
                    hinted = min(cfg.retry.backoff(transient_in_a_row - 1), cfg.poll_default_seconds)
                wait_s = clamp(hinted, cfg.poll_min_seconds, cfg.poll_max_seconds)
            if response.status_code == 202:
                progress = _printable(response.headers.get("x-progress", ""))
                log.info("export %s in progress: %s (next poll in %.1fs)",
                         self.state["export_id"], progress or "no progress reported", wait_s)
            else:
                log.info("export %s: status poll got a transient error (HTTP %d); "
                         "polling again in %.1fs", self.state["export_id"],
                         response.status_code, wait_s)
            if time.monotonic() + wait_s > deadline:
                raise BulkExportError(
                    f"the export did not finish within {cfg.max_export_seconds:.0f}s; "
                    "run again to resume it", transient=True)
            self._sleep(wait_s)

    def read_manifest(self, response: httpx.Response) -> Manifest:
        template = self.status_template()
        pages: list[dict] = []
        seen: set[str] = set()
        url = self.state["status_url"]
        while True:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise BulkExportError("the export manifest is not a JSON object")
            pages.append(body)
            nxt = next((link.get("url") for link in body.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            if not nxt:
                break
            url = urljoin(url, nxt)
            if url in seen or len(pages) >= _MAX_MANIFEST_PAGES:
                raise BulkExportError("the export manifest's next links loop")
            seen.add(url)
            response = self.client.request("GET", url, path_template=template + "/{page}",
                                           headers={"Accept": "application/json"})
        manifest = _parse_manifest_pages(pages, self.state["status_url"])
        if len(pages) > 1:
            log.info("export %s: manifest has %d pages", self.state["export_id"], len(pages))
        return manifest

    # --- downloads ------------------------------------------------------------------------------
    def _complete(self, f: ManifestFile) -> bool:
        done = (self.state.get("files") or {}).get(f.path)
        if not isinstance(done, dict):
            return False
        path = self.dir / f.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        return size == done.get("bytes") and (f.count is None or f.count == done.get("count"))

    def download_all(self, manifest: Manifest) -> None:
        self._stop.clear()
        todo = [f for f in manifest.files if not self._complete(f)]
        total = len(manifest.files)
        log.info("export %s: %d file(s) in the manifest, %d to download",
                 self.state["export_id"], total, len(todo))
        done_n = total - len(todo)
        done_bytes = sum(int(v.get("bytes", 0)) for v in (self.state.get("files") or {}).values())
        started = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency,
                                  thread_name_prefix="bulk-download")
        futures: dict[Future, ManifestFile] = {}
        try:
            futures = {pool.submit(self.download, f, manifest.requires_access_token): f
                       for f in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                if self.cancel.is_set():
                    raise ExportCancelled("the export was cancelled")
                for fut in finished:
                    f = futures[fut]
                    count, nbytes = fut.result()
                    with self._state_lock:
                        self.state["files"][f.path] = {"count": count, "bytes": nbytes}
                    self.save_state()
                    done_n += 1
                    done_bytes += nbytes
                    self.downloaded += 1
                    log.info("export %s: %d/%d files done (%s, %d lines, %s)",
                             self.state["export_id"], done_n, total, f.path, count,
                             _human(nbytes))
        except BaseException:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        elapsed = max(time.monotonic() - started, 1e-6)
        log.info("export %s: all %d files downloaded, %s in total (%s/s this run)",
                 self.state["export_id"], total, _human(done_bytes),
                 _human(sum(self.state["files"][f.path]["bytes"] for f in todo) / elapsed))

    def _stopped(self) -> bool:
        return self._stop.is_set() or self.cancel.is_set()

    def download(self, f: ManifestFile, with_token: bool) -> tuple[int, int]:
        """Download, verify and move one file into place; returns (lines, bytes)."""
        cfg = self.config
        final = self.dir / f.path
        tmp = final.with_name(final.name + ".part")
        final.parent.mkdir(parents=True, exist_ok=True)
        template = self.file_template(f.url)
        problem = ""
        for attempt in range(1, cfg.max_file_attempts + 1):
            if self._stopped():
                raise ExportCancelled("the export was stopped")
            try:
                with self.client.stream(
                        "GET", f.url, path_template=template, authenticated=with_token,
                        headers={"Accept": "application/fhir+ndjson",
                                 "Accept-Encoding": "gzip"}) as handle:
                    tally = _LineTally()
                    with open(tmp, "wb") as out:
                        for chunk in handle.response.iter_bytes(cfg.chunk_bytes):
                            if self._stopped():
                                raise ExportCancelled("the export was stopped")
                            out.write(chunk)
                            tally.add(chunk)
                    if f.count is not None and tally.lines == f.count and tally.last_line_complete():
                        lines, invalid, wrong = tally.lines, 0, 0  # whole: the loader checks each line
                    else:
                        lines, invalid, wrong = check_ndjson(tmp, f.type)
                    handle.resource_count = lines
            except ApiError as exc:
                if exc.status in (404, 410):
                    raise _Restart(f"{f.path}: the file has expired (HTTP {exc.status})") from None
                raise
            except httpx.TransportError as exc:
                problem = f"the connection failed mid-file ({type(exc).__name__})"
            else:
                if invalid:
                    problem = f"{invalid} line(s) are not valid JSON (truncated?)"
                elif f.count is not None and lines != f.count:
                    problem = f"{lines} line(s) where the manifest says {f.count}"
                elif wrong:
                    problem = f"{wrong} line(s) are not {f.type} resources"
                else:
                    nbytes = tmp.stat().st_size
                    os.replace(tmp, final)
                    return lines, nbytes
            if attempt < cfg.max_file_attempts:
                delay = cfg.retry.backoff(attempt - 1)
                log.warning("export %s: %s: %s; downloading it again (attempt %d/%d) in %.2fs",
                            self.state["export_id"], f.path, problem, attempt + 1,
                            cfg.max_file_attempts, delay)
                if self.cancel.wait(delay):
                    raise ExportCancelled("the export was cancelled")
        tmp.unlink(missing_ok=True)
        raise BulkExportError(f"{f.path}: {problem} after {cfg.max_file_attempts} download "
                              "attempt(s)", transient=True)

    # --- clean-up -------------------------------------------------------------------------------------
    def delete_job(self, why: str) -> None:
        """Best-effort DELETE of the status URL (the server may allow one export at a time)."""
        url = self.state.get("status_url")
        if not url:
            return
        try:
            self.client.request("DELETE", url, path_template=self.status_template(),
                                headers={"Accept": "application/fhir+json"},
                                accept=lambda r: r.status_code < 300 or r.status_code in (404, 410),
                                retry=replace(self.config.retry, max_attempts=3,
                                              max_total_seconds=10.0))
            log.info("export %s: job deleted on the server (%s)", self.state["export_id"], why)
        except (ApiError, httpx.HTTPError) as exc:
            log.warning("export %s: could not delete the job (%s): %s",
                        self.state["export_id"], why, type(exc).__name__)

    def restart(self, why: str) -> None:
        """Forget the current job and its files, so the next loop kicks off a fresh export."""
        reexports = int(self.state.get("reexports") or 0) + 1
        if reexports > self.config.max_reexports:
            raise BulkExportError(f"{why}; gave up after {self.config.max_reexports} fresh "
                                  "export(s)", transient=True)
        log.warning("export %s: %s; starting a fresh export (%d/%d)", self.state["export_id"],
                    why, reexports, self.config.max_reexports)
        self.delete_job("replaced by a fresh export")
        for rel in list(self.state.get("files") or {}):
            (self.dir / rel).unlink(missing_ok=True)
        self.state.update(reexports=reexports, status_url=None, request=None,
                          kicked_off_at=None, manifest=None, files={})
        self.save_state()

    def remember_manifest(self, manifest: Manifest) -> None:
        stored = self.state.get("manifest") or {}
        if stored and stored.get("transaction_time") != manifest.transaction_time:
            # a different job answers at this status URL: nothing on disk belongs to it
            for rel in list(self.state.get("files") or {}):
                (self.dir / rel).unlink(missing_ok=True)
            self.state["files"] = {}
        self.state["manifest"] = {
            "transaction_time": manifest.transaction_time,
            "request": manifest.request,
            "files": [{"kind": f.kind, "type": f.type, "count": f.count, "path": f.path}
                      for f in manifest.files],
        }
        self.save_state()

    def manifest_if_all_downloaded(self) -> Manifest | None:
        """The stored manifest when every one of its files is complete on disk, else None."""
        stored = self.state.get("manifest")
        if not isinstance(stored, dict) or not self.state.get("status_url"):
            return None
        files = tuple(ManifestFile(e["kind"], e["type"], "", e.get("count"), e["path"])
                      for e in stored.get("files") or [])
        if not all(self._complete(f) for f in files):
            return None
        return Manifest(transaction_time=stored["transaction_time"], request=stored.get("request"),
                        requires_access_token=True, files=files)

    def write_export_json(self, manifest: Manifest) -> dict:
        files = self.state["files"]
        out_types = list(dict.fromkeys(f.type for f in manifest.files if f.kind == "output"))
        doc = {
            "export_id": self.state["export_id"],
            "kind": self.state["kind"],
            "since": self.state["since"],
            "transaction_time": manifest.transaction_time,
            "request": self.state["request"],
            "status_url": self.state["status_url"],
            "types": list(self.state["types"]) or out_types,
            "files": [{"type": f.type, "path": f.path, "count": files[f.path]["count"],
                       "bytes": files[f.path]["bytes"]}
                      for f in manifest.files if f.kind == "output"],
            "deleted": [{"path": f.path, "count": files[f.path]["count"]}
                        for f in manifest.files if f.kind == "deleted"],
            "errors": [{"path": f.path, "count": files[f.path]["count"]}
                       for f in manifest.files if f.kind == "error"],
            "downloaded_at": _now_iso(),
        }
        _write_json_atomic(self.dir / EXPORT_FILE, doc)
        return doc

    def cleanup_parts(self) -> None:
        for part in self.dir.rglob("*.part"):
            part.unlink(missing_ok=True)


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:100]


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GB"


# --- entry point -----------------------------------------------------------------------------------
def run_export(config: BulkExportConfig, *, since: str | dt.datetime | None = None,
               types: Iterable[str] | None = None, resume: bool = True,
               on_call: Callable[[CallRecord], None] | None = None,
               cancel: threading.Event | None = None,
               client: AthenaClient | None = None) -> ExportResult:
    """Run (or resume) one Group export into ``<landing_dir>/fhir/<export_id>/``.

    ``since`` is the ``_since`` instant (None = full export); ``types`` overrides
    ``config.types``. With ``resume`` (default), an unfinished export with the same group,
    ``since`` and types is continued rather than a new one kicked off. ``on_call`` receives
    every call record. Setting ``cancel`` (or a KeyboardInterrupt) deletes the server job and
    raises :class:`ExportCancelled` (the KeyboardInterrupt is re-raised as is). ``client`` lets a
    caller share an :class:`AthenaClient`; its ``on_call`` is then the caller's business and
    ``api_calls.ndjson`` only holds what this function can see.
    """
    started = time.monotonic()
    since_s = normalize_since(since)
    chosen = normalize_types(types if types is not None else config.types)
    calls = _CallLog(on_call)
    own_client = client is None
    if client is None:
        client = config.make_client(on_call=calls)
    export = _Export(config, client, calls, cancel)
    try:
        export.open(since_s, chosen, resume)
        try:
            manifest = _run(export)
        except (KeyboardInterrupt, ExportCancelled):
            export._stop.set()
            export.delete_job("cancelled")
            export.state["cancelled"] = True
            export.save_state()
            raise
        export.delete_job("download complete")
        export.cleanup_parts()
        errors = [f for f in manifest.files if f.kind == "error"]
        error_lines = sum(export.state["files"][f.path]["count"] for f in errors)
        if error_lines:
            log.warning("export %s: the server reported %d error line(s) in %d file(s) under "
                        "error/; they are listed in export.json", export.state["export_id"],
                        error_lines, len(errors))
        calls.finish(export.dir)
        export.write_export_json(manifest)
    finally:
        calls.close()
        if own_client:
            client.close()
    files = export.state["files"]
    counts: dict[str, int] = {}
    for f in manifest.files:
        if f.kind == "output":
            counts[f.type] = counts.get(f.type, 0) + files[f.path]["count"]
    duration = time.monotonic() - started
    total_bytes = sum(int(v["bytes"]) for v in files.values())
    result = ExportResult(
        export_dir=export.dir, export_id=export.state["export_id"], kind=export.state["kind"],
        since=since_s, transaction_time=manifest.transaction_time, counts=counts,
        deleted_count=sum(files[f.path]["count"] for f in manifest.files if f.kind == "deleted"),
        error_count=sum(files[f.path]["count"] for f in manifest.files if f.kind == "error"),
        files=len(manifest.files), bytes=total_bytes, duration_seconds=duration,
        calls=len(calls.records), downloaded_files=export.downloaded,
        reexports=int(export.state.get("reexports") or 0), resumed=export.resumed)
    log.info("export %s done: %d resources in %d file(s), %s in %.1fs (%s/s), %d call(s)",
             result.export_id, sum(counts.values()), result.files, _human(total_bytes),
             duration, _human(total_bytes / max(duration, 1e-6)), result.calls)
    return result


def _run(export: _Export) -> Manifest:
    """Kick off (unless resuming), poll, download; restart on expiry, within the bound."""
    finished = export.manifest_if_all_downloaded()
    if finished is not None:  # killed after the last file, before export.json
        log.info("export %s: every file was already downloaded and verified",
                 export.state["export_id"])
        return finished
    while True:
        if not export.state.get("status_url"):
            export.kickoff()
        try:
            manifest = export.wait_for_manifest()
            export.remember_manifest(manifest)
            export.download_all(manifest)
            return manifest
        except _Restart as why:
            export.restart(str(why))
