"""Every setting of the pipeline, read from environment variables in one place.

Why one frozen dataclass: the CLI, the Dagster resources and the tests all need the same
values with the same defaults, and none of them should parse ``os.environ`` on its own.
This module is plain Python (no Dagster import) so the CLI and the sandbox can use it.

The defaults point at the **sandbox** (the athenahealth emulator on loopback, the sandbox
world's Data View file, a local DuckDB warehouse). Pointing the pipeline at real
athenahealth, Snowflake and Caspio is a matter of setting the variables below; nothing
else changes. Secrets (client secrets, the Snowflake password) never appear in ``repr``
or in :meth:`Settings.redacted`.

Environment variables (default in brackets):

athenahealth
    ATHENA_FHIR_BASE_URL        FHIR R4 base URL [http://127.0.0.1:{SANDBOX_PORT}/fhir/r4]
    ATHENA_TOKEN_URL            OAuth 2.0 token endpoint [http://127.0.0.1:{SANDBOX_PORT}/oauth2/v1/token]
    ATHENA_AUTH                 none | client_secret | private_key_jwt [client_secret]
    ATHENA_CLIENT_ID            OAuth client id [sandbox-client]
    ATHENA_CLIENT_SECRET        OAuth client secret, for client_secret auth [sandbox-secret]
    ATHENA_PRIVATE_KEY_PATH     PEM private key, for private_key_jwt auth [unset]
    ATHENA_KEY_ID               ``kid`` of that key as registered with athenahealth [unset]
    ATHENA_PRACTICE_ID          athenaOne practice id (CONTEXTID) [195900]
    ATHENA_GROUP_ID             FHIR Group for the practice-wide bulk export [a-1.c-{practice_id}]
    ATHENA_SCOPES               space-separated OAuth scopes [system/*.read]
    ATHENA_REQUESTS_PER_SECOND  client-side throttle for API calls [5 on athenahealth's preview host,
                                100 anywhere else]
    ATHENA_BULK_CONCURRENCY     parallel bulk export file downloads [4]
    ATHENA_BULK_POLL_SECONDS    longest wait between bulk status polls when the server sends no
                                Retry-After (the waits grow 1, 2, 4, ... s up to it) [60]
    ATHENA_JWT_ALGORITHM        signing algorithm for private_key_jwt [from the key: RS384 / ES384]
Data View (athenaOne tables)
    DATAVIEW_KIND               duckdb (the sandbox file) | snowflake (the real share) [duckdb]
    DATAVIEW_DUCKDB_PATH        Data View DuckDB file for kind duckdb [{SANDBOX_WORLD}/dataview.duckdb]
    DATAVIEW_DATABASE           database of the share [ATHENAHEALTH]
    DATAVIEW_SCHEMA             schema of the share [ATHENAONE]
    SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, SNOWFLAKE_PASSWORD, SNOWFLAKE_ROLE, SNOWFLAKE_WAREHOUSE
                                Snowflake connection, for kind snowflake [unset]
    DATAVIEW_CONTEXT_IDS        comma-separated CONTEXTIDs to copy from a shared share [ATHENA_PRACTICE_ID]
    DATAVIEW_PARTITION_START    first day of the daily Data View partitions [2023-11-01]
    DATAVIEW_SOFT_DELETE_MAX_RATIO  soft-deleted share of a raw table above which a check warns [0.2]
Scheduling
    PIPELINE_TIMEZONE           the practice's time zone: partition days and schedules [America/New_York]
    NIGHTLY_TIME                local time (HH:MM, in PIPELINE_TIMEZONE) of the nightly run: the
                                previous day's Data View partition, the FHIR export, then dbt and the
                                Caspio publish [02:00]
    FHIR_FULL_EXPORT_DAY        day of the month (1-28) whose nightly FHIR export is a full one instead
                                of ``_since`` [1]
    FRESHNESS_FAIL_HOURS        marts and Caspio tables older than this fail their freshness policy [26]
    ALERT_WEBHOOK_URL           where failed runs are reported (JSON POST, e.g. a chat channel's
                                incoming webhook); a secret: never logged [unset: log only]
    AUTOMATION_DEFAULT_RUNNING  schedules and sensors start RUNNING (true) or STOPPED (false) when
                                Dagster first sees them [true when the athenahealth endpoints are
                                the sandbox's loopback ones, else false]
Local storage
    WAREHOUSE_PATH              the DuckDB warehouse; keep this file NAME the same everywhere,
                                dbt's database name is its stem [data/warehouse.duckdb]
    LANDING_DIR                 where bulk export NDJSON files land [data/landing]
    WAREHOUSE_MEMORY_LIMIT      DuckDB memory limit for loads, e.g. 2GB [unset: DuckDB's default]
Sandbox
    SANDBOX_WORLD               the sandbox world directory [.sandbox/world]
    SANDBOX_PORT                port of the sandbox emulator [8765]
Caspio (publishing)
    CASPIO_BASE_URL             the account's Integration URL [http://127.0.0.1:{SANDBOX_PORT}/caspio]
    CASPIO_CLIENT_ID            REST client id [sandbox-caspio-client]
    CASPIO_CLIENT_SECRET        REST client secret [sandbox-caspio-secret]
    CASPIO_CALL_BUDGET          most API calls one publish may spend [5000]
    CASPIO_TABLE_PREFIX         prefix of every table the pipeline owns in Caspio [ap_]
    CASPIO_PUBLISH_PATIENT_LEVEL  publish patient-level tables (care-gap lists) [false]
    CASPIO_API_VERSION          v3 (one row per POST) | v4 (bulk insert, up to 1000 rows a call) [v3]
    CASPIO_CONCURRENCY          parallel Caspio calls (single-row POSTs, keyed PUTs) [4]
    CASPIO_REQUESTS_PER_SECOND  client-side throttle for Caspio calls; 0 = none [6.5: the
                                2000 calls / 300 s profile limit Caspio reports on v4]
    CASPIO_RECONCILE_EVERY      read each table back and repair drift every N publishes; 0 = only
                                when asked (--reconcile) [10]
Events (athenahealth Event Subscriptions, webhook receiver)
    WEBHOOK_SECRET              X-Hub-Secret sent when subscribing; the receiver checks signatures
                                with it. Comma-separated while rotating: the first is registered,
                                all are accepted [sandbox-webhook-secret]
    WEBHOOK_PORT                port of `athena-pipeline webhook serve` [8766]
    WEBHOOK_URL                 endpoint registered in each Subscription (athena needs public HTTPS
                                on 443) [http://127.0.0.1:{WEBHOOK_PORT}/webhook]
    WEBHOOK_MAX_BYTES           largest notification body accepted; larger ones get 413 [1048576]
    EVENTS_INBOX_PATH           the durable event inbox, SQLite in WAL mode [data/events.sqlite]
    ATHENA_EVENT_TOPICS         comma-separated topics to subscribe to; a family name means all of
                                its topics [Appointment,Patient,Encounter,LabResult,Claim]
    EVENTS_REFRESH_DEBOUNCE_MINUTES  non-appointment events trigger at most one incremental refresh
                                (``_since`` FHIR export + downstream) per this many minutes [15]
    EVENTS_STALE_MINUTES        events unprocessed for longer than this fail the inbox staleness
                                check on caspio/appointments [60]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Every variable :meth:`Settings.from_env` reads, in documentation order (README, .env.example).
ENV_VARS: tuple[str, ...] = (
    "ATHENA_FHIR_BASE_URL",
    "ATHENA_TOKEN_URL",
    "ATHENA_AUTH",
    "ATHENA_CLIENT_ID",
    "ATHENA_CLIENT_SECRET",
    "ATHENA_PRIVATE_KEY_PATH",
    "ATHENA_KEY_ID",
    "ATHENA_PRACTICE_ID",
    "ATHENA_GROUP_ID",
    "ATHENA_SCOPES",
    "ATHENA_REQUESTS_PER_SECOND",
    "ATHENA_BULK_CONCURRENCY",
    "ATHENA_BULK_POLL_SECONDS",
    "ATHENA_JWT_ALGORITHM",
    "DATAVIEW_KIND",
    "DATAVIEW_DUCKDB_PATH",
    "DATAVIEW_DATABASE",
    "DATAVIEW_SCHEMA",
    "SNOWFLAKE_ACCOUNT",
    "SNOWFLAKE_USER",
    "SNOWFLAKE_PASSWORD",
    "SNOWFLAKE_ROLE",
    "SNOWFLAKE_WAREHOUSE",
    "DATAVIEW_CONTEXT_IDS",
    "DATAVIEW_PARTITION_START",
    "DATAVIEW_SOFT_DELETE_MAX_RATIO",
    "PIPELINE_TIMEZONE",
    "NIGHTLY_TIME",
    "FHIR_FULL_EXPORT_DAY",
    "FRESHNESS_FAIL_HOURS",
    "ALERT_WEBHOOK_URL",
    "AUTOMATION_DEFAULT_RUNNING",
    "WAREHOUSE_PATH",
    "LANDING_DIR",
    "WAREHOUSE_MEMORY_LIMIT",
    "SANDBOX_WORLD",
    "SANDBOX_PORT",
    "CASPIO_BASE_URL",
    "CASPIO_CLIENT_ID",
    "CASPIO_CLIENT_SECRET",
    "CASPIO_CALL_BUDGET",
    "CASPIO_TABLE_PREFIX",
    "CASPIO_PUBLISH_PATIENT_LEVEL",
    "CASPIO_API_VERSION",
    "CASPIO_CONCURRENCY",
    "CASPIO_REQUESTS_PER_SECOND",
    "CASPIO_RECONCILE_EVERY",
    "WEBHOOK_SECRET",
    "WEBHOOK_PORT",
    "WEBHOOK_URL",
    "WEBHOOK_MAX_BYTES",
    "EVENTS_INBOX_PATH",
    "ATHENA_EVENT_TOPICS",
    "EVENTS_REFRESH_DEBOUNCE_MINUTES",
    "EVENTS_STALE_MINUTES",
)

ATHENA_AUTH_MODES = ("none", "client_secret", "private_key_jwt")
DATAVIEW_KINDS = ("duckdb", "snowflake")
CASPIO_API_VERSIONS = ("v3", "v4")
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
DATAVIEW_PARTITION_START = dt.date(2023, 11, 1)
PIPELINE_TIMEZONE = "America/New_York"

SANDBOX_HOST = "127.0.0.1"
SANDBOX_PORT = 8765
SANDBOX_WORLD = ".sandbox/world"
SANDBOX_CLIENT_ID = "sandbox-client"
SANDBOX_CLIENT_SECRET = "sandbox-secret"
SANDBOX_PRACTICE_ID = 195900
WEBHOOK_PORT = 8766
WEBHOOK_SECRET = "sandbox-webhook-secret"
ATHENA_EVENT_TOPICS = ("Appointment", "Patient", "Encounter", "LabResult", "Claim")

_HH_MM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def _secret(default: str | None = None) -> Any:
    """A field that is kept out of ``repr`` (and so out of logs and tracebacks)."""
    return field(default=default, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class Settings:
    """The pipeline's configuration. Build it with :meth:`from_env`; see the module docstring."""

    # athenahealth
    athena_fhir_base_url: str = f"http://{SANDBOX_HOST}:{SANDBOX_PORT}/fhir/r4"
    athena_token_url: str = f"http://{SANDBOX_HOST}:{SANDBOX_PORT}/oauth2/v1/token"
    athena_auth: str = "client_secret"
    athena_client_id: str = SANDBOX_CLIENT_ID
    athena_client_secret: str | None = _secret(SANDBOX_CLIENT_SECRET)
    athena_private_key_path: Path | None = None
    athena_key_id: str | None = None
    athena_practice_id: int = SANDBOX_PRACTICE_ID
    athena_group_id: str = f"a-1.c-{SANDBOX_PRACTICE_ID}"
    athena_scopes: str = "system/*.read"
    #: None = :func:`default_athena_requests_per_second` of ``athena_fhir_base_url``.
    athena_requests_per_second: float | None = None
    athena_bulk_concurrency: int = 4
    athena_bulk_poll_seconds: float = 60.0
    athena_jwt_algorithm: str | None = None
    # Data View
    dataview_kind: str = "duckdb"
    dataview_duckdb_path: Path = Path(SANDBOX_WORLD) / "dataview.duckdb"
    dataview_database: str = "ATHENAHEALTH"
    dataview_schema: str = "ATHENAONE"
    snowflake_account: str | None = None
    snowflake_user: str | None = None
    snowflake_password: str | None = _secret()
    snowflake_role: str | None = None
    snowflake_warehouse: str | None = None
    #: CONTEXTIDs to copy; None = just ``athena_practice_id`` (see :attr:`context_ids`).
    dataview_context_ids: tuple[int, ...] | None = None
    dataview_partition_start: dt.date = DATAVIEW_PARTITION_START
    dataview_soft_delete_max_ratio: float = 0.2
    # scheduling
    pipeline_timezone: str = PIPELINE_TIMEZONE
    nightly_time: str = "02:00"
    fhir_full_export_day: int = 1
    freshness_fail_hours: float = 26.0
    alert_webhook_url: str | None = _secret()
    #: None = follow :attr:`is_sandbox` (see :attr:`automation_running_by_default`).
    automation_default_running: bool | None = None
    # local storage
    warehouse_path: Path = Path("data/warehouse.duckdb")
    landing_dir: Path = Path("data/landing")
    warehouse_memory_limit: str | None = None
    # sandbox
    sandbox_world: Path = Path(SANDBOX_WORLD)
    sandbox_port: int = SANDBOX_PORT
    # Caspio
    caspio_base_url: str = f"http://{SANDBOX_HOST}:{SANDBOX_PORT}/caspio"
    caspio_client_id: str = "sandbox-caspio-client"
    caspio_client_secret: str | None = _secret("sandbox-caspio-secret")
    caspio_call_budget: int = 5000
    caspio_table_prefix: str = "ap_"
    caspio_publish_patient_level: bool = False
    caspio_api_version: str = "v3"
    caspio_concurrency: int = 4
    caspio_requests_per_second: float = 6.5
    caspio_reconcile_every: int = 10
    # events (webhooks)
    webhook_secret: str | None = _secret(WEBHOOK_SECRET)
    webhook_port: int = WEBHOOK_PORT
    webhook_url: str = f"http://{SANDBOX_HOST}:{WEBHOOK_PORT}/webhook"
    webhook_max_bytes: int = 1 << 20
    events_inbox_path: Path = Path("data/events.sqlite")
    athena_event_topics: tuple[str, ...] = ATHENA_EVENT_TOPICS
    events_refresh_debounce_minutes: float = 15.0
    events_stale_minutes: float = 60.0

    def __post_init__(self) -> None:
        if self.athena_requests_per_second is None:
            object.__setattr__(self, "athena_requests_per_second",
                               default_athena_requests_per_second(self.athena_fhir_base_url))
        if self.athena_auth not in ATHENA_AUTH_MODES:
            raise ValueError(
                f"ATHENA_AUTH must be one of {', '.join(ATHENA_AUTH_MODES)}, got {self.athena_auth!r}"
            )
        if self.athena_auth == "private_key_jwt" and self.athena_private_key_path is None:
            raise ValueError("ATHENA_AUTH=private_key_jwt needs ATHENA_PRIVATE_KEY_PATH")
        if self.dataview_kind not in DATAVIEW_KINDS:
            raise ValueError(
                f"DATAVIEW_KIND must be one of {', '.join(DATAVIEW_KINDS)}, got {self.dataview_kind!r}"
            )
        if self.athena_requests_per_second <= 0:  # type: ignore[operator]
            raise ValueError("ATHENA_REQUESTS_PER_SECOND must be > 0")
        if self.athena_bulk_concurrency < 1:
            raise ValueError("ATHENA_BULK_CONCURRENCY must be >= 1")
        if not 0 < self.athena_bulk_poll_seconds <= 3600:
            raise ValueError("ATHENA_BULK_POLL_SECONDS must be within (0, 3600]")
        if self.athena_jwt_algorithm is not None and self.athena_jwt_algorithm not in JWT_ALGORITHMS:
            raise ValueError(f"ATHENA_JWT_ALGORITHM must be one of {', '.join(JWT_ALGORITHMS)}")
        if self.dataview_context_ids is not None and not self.dataview_context_ids:
            raise ValueError("DATAVIEW_CONTEXT_IDS must list at least one CONTEXTID")
        if not 0 <= self.dataview_soft_delete_max_ratio <= 1:
            raise ValueError("DATAVIEW_SOFT_DELETE_MAX_RATIO must be within 0..1")
        try:
            ZoneInfo(self.pipeline_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("PIPELINE_TIMEZONE must be an IANA time zone such as America/New_York") from None
        if not _HH_MM.match(self.nightly_time):
            raise ValueError("NIGHTLY_TIME must be a local time HH:MM such as 02:00")
        if not 1 <= self.fhir_full_export_day <= 28:
            raise ValueError("FHIR_FULL_EXPORT_DAY must be within 1..28 (a day every month has)")
        if not self.freshness_fail_hours > 0:
            raise ValueError("FRESHNESS_FAIL_HOURS must be > 0")
        if self.alert_webhook_url is not None and urlsplit(self.alert_webhook_url).scheme not in ("http", "https"):
            raise ValueError("ALERT_WEBHOOK_URL must be an http(s) URL")
        if self.warehouse_memory_limit is not None and not _MEMORY.match(self.warehouse_memory_limit):
            raise ValueError("WAREHOUSE_MEMORY_LIMIT must look like 512MB or 2GB")
        if not 0 <= self.sandbox_port <= 65535:
            raise ValueError(f"SANDBOX_PORT must be a TCP port (0-65535), got {self.sandbox_port}")
        if self.caspio_call_budget < 0:
            raise ValueError("CASPIO_CALL_BUDGET must be >= 0")
        if self.caspio_api_version not in CASPIO_API_VERSIONS:
            raise ValueError(f"CASPIO_API_VERSION must be one of {', '.join(CASPIO_API_VERSIONS)}")
        if not 1 <= self.caspio_concurrency <= 64:
            raise ValueError("CASPIO_CONCURRENCY must be within 1..64")
        if self.caspio_requests_per_second < 0:
            raise ValueError("CASPIO_REQUESTS_PER_SECOND must be >= 0 (0 = no client-side limit)")
        if self.caspio_reconcile_every < 0:
            raise ValueError("CASPIO_RECONCILE_EVERY must be >= 0 (0 = only on demand)")
        if not 0 <= self.webhook_port <= 65535:
            raise ValueError(f"WEBHOOK_PORT must be a TCP port (0-65535), got {self.webhook_port}")
        if self.webhook_max_bytes < 1024:
            raise ValueError("WEBHOOK_MAX_BYTES must be at least 1024")
        if not self.athena_event_topics:
            raise ValueError("ATHENA_EVENT_TOPICS must name at least one topic")
        if self.events_refresh_debounce_minutes < 0:
            raise ValueError("EVENTS_REFRESH_DEBOUNCE_MINUTES must be >= 0")
        if self.events_stale_minutes <= 0:
            raise ValueError("EVENTS_STALE_MINUTES must be > 0")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read every variable from ``environ``; unset or empty ones take the sandbox default.

        Raises ValueError with the variable's name (never its value) when one is malformed.
        """

        def get(name: str) -> str | None:
            value = environ.get(name)
            return value.strip() if value is not None and value.strip() != "" else None

        def num(name: str, kind: type) -> Any:
            raw = get(name)
            if raw is None:
                return None
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}") from None

        def flag(name: str) -> bool | None:
            raw = get(name)
            if raw is None:
                return None
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(f"{name} must be true or false")

        def day(name: str) -> dt.date | None:
            raw = get(name)
            if raw is None:
                return None
            try:
                return dt.date.fromisoformat(raw)
            except ValueError:
                raise ValueError(f"{name} must be a date (YYYY-MM-DD)") from None

        def ints(name: str) -> tuple[int, ...] | None:
            raw = get(name)
            if raw is None:
                return None
            try:
                return tuple(dict.fromkeys(int(part) for part in raw.split(",") if part.strip()))
            except ValueError:
                raise ValueError(f"{name} must be a comma-separated list of integers") from None

        practice_id = num("ATHENA_PRACTICE_ID", int) or SANDBOX_PRACTICE_ID
        sandbox_world = Path(get("SANDBOX_WORLD") or SANDBOX_WORLD)
        sandbox_port = num("SANDBOX_PORT", int)
        # The sandbox URLs follow SANDBOX_PORT, so moving the emulator is one variable, not three.
        sandbox_base = f"http://{SANDBOX_HOST}:{sandbox_port if sandbox_port is not None else SANDBOX_PORT}"
        key_path = get("ATHENA_PRIVATE_KEY_PATH")
        webhook_port = num("WEBHOOK_PORT", int)
        values: dict[str, Any] = {
            "athena_fhir_base_url": get("ATHENA_FHIR_BASE_URL") or f"{sandbox_base}/fhir/r4",
            "athena_token_url": get("ATHENA_TOKEN_URL") or f"{sandbox_base}/oauth2/v1/token",
            "athena_auth": (get("ATHENA_AUTH") or "client_secret").lower(),
            "athena_client_id": get("ATHENA_CLIENT_ID"),
            "athena_client_secret": get("ATHENA_CLIENT_SECRET"),
            "athena_private_key_path": Path(key_path) if key_path else None,
            "athena_key_id": get("ATHENA_KEY_ID"),
            "athena_practice_id": practice_id,
            "athena_group_id": get("ATHENA_GROUP_ID") or f"a-1.c-{practice_id}",
            "athena_scopes": get("ATHENA_SCOPES"),
            "athena_requests_per_second": num("ATHENA_REQUESTS_PER_SECOND", float),
            "athena_bulk_concurrency": num("ATHENA_BULK_CONCURRENCY", int),
            "athena_bulk_poll_seconds": num("ATHENA_BULK_POLL_SECONDS", float),
            "athena_jwt_algorithm": (get("ATHENA_JWT_ALGORITHM") or "").upper() or None,
            "dataview_kind": (get("DATAVIEW_KIND") or "duckdb").lower(),
            "dataview_duckdb_path": Path(get("DATAVIEW_DUCKDB_PATH") or sandbox_world / "dataview.duckdb"),
            "dataview_database": get("DATAVIEW_DATABASE"),
            "dataview_schema": get("DATAVIEW_SCHEMA"),
            "snowflake_account": get("SNOWFLAKE_ACCOUNT"),
            "snowflake_user": get("SNOWFLAKE_USER"),
            "snowflake_password": get("SNOWFLAKE_PASSWORD"),
            "snowflake_role": get("SNOWFLAKE_ROLE"),
            "snowflake_warehouse": get("SNOWFLAKE_WAREHOUSE"),
            "dataview_context_ids": ints("DATAVIEW_CONTEXT_IDS"),
            "dataview_partition_start": day("DATAVIEW_PARTITION_START"),
            "dataview_soft_delete_max_ratio": num("DATAVIEW_SOFT_DELETE_MAX_RATIO", float),
            "pipeline_timezone": get("PIPELINE_TIMEZONE"),
            "nightly_time": get("NIGHTLY_TIME"),
            "fhir_full_export_day": num("FHIR_FULL_EXPORT_DAY", int),
            "freshness_fail_hours": num("FRESHNESS_FAIL_HOURS", float),
            "alert_webhook_url": get("ALERT_WEBHOOK_URL"),
            "automation_default_running": flag("AUTOMATION_DEFAULT_RUNNING"),
            "warehouse_path": _path_or_none(get("WAREHOUSE_PATH")),
            "landing_dir": _path_or_none(get("LANDING_DIR")),
            "warehouse_memory_limit": get("WAREHOUSE_MEMORY_LIMIT"),
            "sandbox_world": sandbox_world,
            "sandbox_port": sandbox_port,
            "caspio_base_url": get("CASPIO_BASE_URL") or f"{sandbox_base}/caspio",
            "caspio_client_id": get("CASPIO_CLIENT_ID"),
            "caspio_client_secret": get("CASPIO_CLIENT_SECRET"),
            "caspio_call_budget": num("CASPIO_CALL_BUDGET", int),
            "caspio_table_prefix": get("CASPIO_TABLE_PREFIX"),
            "caspio_publish_patient_level": flag("CASPIO_PUBLISH_PATIENT_LEVEL"),
            "caspio_api_version": (get("CASPIO_API_VERSION") or "v3").lower(),
            "caspio_concurrency": num("CASPIO_CONCURRENCY", int),
            "caspio_requests_per_second": num("CASPIO_REQUESTS_PER_SECOND", float),
            "caspio_reconcile_every": num("CASPIO_RECONCILE_EVERY", int),
            "webhook_secret": get("WEBHOOK_SECRET"),
            "webhook_port": webhook_port,
            "webhook_url": get("WEBHOOK_URL")
            or f"http://{SANDBOX_HOST}:{webhook_port if webhook_port is not None else WEBHOOK_PORT}/webhook",
            "webhook_max_bytes": num("WEBHOOK_MAX_BYTES", int),
            "events_inbox_path": _path_or_none(get("EVENTS_INBOX_PATH")),
            "athena_event_topics": tuple(t.strip() for t in (get("ATHENA_EVENT_TOPICS") or "").split(",")
                                         if t.strip()) or None,
            "events_refresh_debounce_minutes": num("EVENTS_REFRESH_DEBOUNCE_MINUTES", float),
            "events_stale_minutes": num("EVENTS_STALE_MINUTES", float),
        }
        return cls(**{k: v for k, v in values.items() if v is not None})

    # --- views ----------------------------------------------------------------------------
    @property
    def context_ids(self) -> tuple[int, ...]:
        """The Data View CONTEXTIDs to copy: ``DATAVIEW_CONTEXT_IDS``, else the practice id."""
        return self.dataview_context_ids or (self.athena_practice_id,)

    @property
    def is_sandbox(self) -> bool:
        """True when the athenahealth endpoints are on loopback, i.e. the sandbox emulator."""
        return _is_loopback(self.athena_fhir_base_url) and _is_loopback(self.athena_token_url)

    @property
    def automation_running_by_default(self) -> bool:
        """Whether schedules and sensors start RUNNING: ``AUTOMATION_DEFAULT_RUNNING``, else
        :attr:`is_sandbox` (the sandbox switches everything on; production starts stopped, so a
        deploy never starts hitting athenahealth before someone decides it should)."""
        if self.automation_default_running is not None:
            return self.automation_default_running
        return self.is_sandbox

    @property
    def nightly_hour_minute(self) -> tuple[int, int]:
        """``NIGHTLY_TIME`` as (hour, minute)."""
        hour, minute = self.nightly_time.split(":")
        return int(hour), int(minute)

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """``WEBHOOK_SECRET`` split on commas: the first is registered, every one is accepted."""
        return tuple(s.strip() for s in (self.webhook_secret or "").split(",") if s.strip())

    def redacted(self) -> dict[str, Any]:
        """Every setting as plain JSON-able values, secrets shown as ``***`` (unset ones as None).

        Safe to log or print: it is what ``athena-pipeline`` shows when asked for its configuration.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = "***" if value else None
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, dt.date):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _path_or_none(raw: str | None) -> Path | None:
    return Path(raw) if raw else None


#: athenahealth publishes no per-second limit; go-athenahealth throttles itself to 5 requests per
#: second on the preview host and 100 in production (../shared/specs/athenahealth-api.md, section 5).
ATHENA_PREVIEW_REQUESTS_PER_SECOND = 5.0
ATHENA_PRODUCTION_REQUESTS_PER_SECOND = 100.0


def default_athena_requests_per_second(fhir_base_url: str) -> float:
    """The client-side throttle when ``ATHENA_REQUESTS_PER_SECOND`` is unset.

    5 on athenahealth's preview host (``api.preview.platform.athenahealth.com``), 100 anywhere else:
    athena production, another Bulk Data server, the sandbox. Why not 5 everywhere: a bulk export
    downloads one file per request, so 5 per second would cap a 200-file export at 40 s of
    downloads however fast the server is; a server that wants less says so with 429 and
    ``Retry-After``, which the client honours.
    """
    host = (urlsplit(fhir_base_url).hostname or "").lower()
    on_athena = host == "athenahealth.com" or host.endswith(".athenahealth.com")
    if on_athena and "preview" in host.split("."):
        return ATHENA_PREVIEW_REQUESTS_PER_SECOND
    return ATHENA_PRODUCTION_REQUESTS_PER_SECOND


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
