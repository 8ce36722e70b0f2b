"""Settings of the Caspio emulator: credentials, limits, quirks and the knobs a demo turns.

Why one frozen dataclass: tests start emulators side by side with very different settings
(one-second tokens, a 2-calls-per-second throttle, a tiny monthly allowance), the CLI starts
one with demo values, and a running emulator swaps its config atomically when a test changes
a knob at runtime (``POST /caspio/_emulator/config``). Faults (things that go wrong on cue)
live in ``faults.py``.

Where the public documentation is exact (``/work/shared/specs/caspio-api.md``) the default is
that value; where the spec marks a guess, the guess is the default and the field says so, so
a user who learns the real behaviour can switch it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

#: Client credentials the sandbox accepts (same defaults as ``athena_pipeline.settings``).
SANDBOX_CASPIO_CLIENT_ID = "sandbox-caspio-client"
SANDBOX_CASPIO_CLIENT_SECRET = "sandbox-caspio-secret"

UNORDERED_PAGING_MODES = ("scrambled", "stable")
OVER_ALLOWANCE_MODES = ("count", "throttle")


@dataclass(frozen=True)
class CaspioClientConfig:
    """A Web Services profile: the Client ID and Client Secret Caspio shows on it."""

    client_id: str
    secret: str


@dataclass(frozen=True)
class CaspioConfig:
    """Everything about the Caspio emulator except faults. Defaults follow the spec."""

    clients: tuple[CaspioClientConfig, ...] = (
        CaspioClientConfig(SANDBOX_CASPIO_CLIENT_ID, SANDBOX_CASPIO_CLIENT_SECRET),
    )

    # --- OAuth (spec §2) ---------------------------------------------------------------------
    #: ``expires_in`` of an access token; Caspio says 86399 (24 h minus a second).
    token_lifetime_seconds: float = 86399
    #: A refresh token lives a year, but dies after 60 days unused.
    refresh_token_lifetime_seconds: float = 365 * 86400
    refresh_token_idle_seconds: float = 60 * 86400
    #: At most this many live refresh tokens per account; the oldest is revoked beyond it.
    max_refresh_tokens: int = 1000
    #: The NWCA quirk: a stale (expired or revoked) token gets 400 IncorrectQueryParameter
    #: instead of 401. Off = 401 (the documented behaviour).
    stale_token_400: bool = False

    # --- cost of a call --------------------------------------------------------------------
    #: Every REST call (not the token endpoint) sleeps this long before answering, to model
    #: Caspio's ~300 ms; asynchronous, so concurrent calls overlap as they do for real.
    latency_seconds: float = 0.0
    #: Uniform extra latency in [0, jitter) on top, from a seeded RNG.
    latency_jitter_seconds: float = 0.0
    #: Token-bucket throttle per client: calls per second (None = off) and burst size
    #: (None = max(1, ceil(rate))). Over it: 429 (Caspio documents no per-second limit).
    rate_limit_per_second: float | None = None
    rate_limit_burst: int | None = None
    #: Send ``Retry-After`` (seconds) with a 429; Caspio documents none, so a client must
    #: also cope without it.
    retry_after_header: bool = True

    # --- the monthly "Integrations" meter (spec §9) ------------------------------------------
    monthly_allowance: int = 500_000
    #: A period runs from this day of the month (Pacific clock) to the day before it next month.
    meter_period_start_day: int = 27
    meter_timezone: str = "America/Los_Angeles"
    #: ``count`` = overage is counted (and billed), never blocked, as the spec says;
    #: ``throttle`` = calls over the allowance get 429 (one account saw throttling at 630K).
    over_allowance: str = "count"

    # --- limits (spec §3, §5) ----------------------------------------------------------------
    max_uri_length: int = 2047
    max_records_per_call: int = 1000
    default_limit: int = 100
    default_page_size: int = 25
    min_page_size: int = 5
    max_bulk_rows: int = 1000
    #: Table-name length limit: not documented, a guess.
    max_table_name_length: int = 64
    max_field_name_length: int = 32

    # --- quirks and guesses ------------------------------------------------------------------
    #: Paging *without* ``q.orderBy``: ``scrambled`` reproduces the measured quirk (pages come
    #: from an order unrelated to ``q.limit``'s and differing between pages, so paging without
    #: an order duplicates and loses rows); ``stable`` pages in PK_ID order.
    unordered_paging: str = "scrambled"
    #: PUT/DELETE without a where clause: True = 400 IncorrectQueryParameter [guess];
    #: False = the write applies to every row.
    require_where_for_writes: bool = True
    #: Status of a type/length violation (``InvalidInputValue``): 400 per the checklist and the
    #: v2 SDK; NWCA measured 500 on v3.
    invalid_input_status: int = 400
    #: Status of an unknown column in ``q.select`` (NWCA measured 500).
    unknown_select_field_status: int = 500
    #: Writes without ``Content-Type: application/json`` get 415 (NWCA, unverified).
    require_json_content_type: bool = True
    #: CURRENCY values are rounded to this many decimals (SQL Server ``money``); None = as sent.
    currency_decimals: int | None = 4
    #: ``Location`` header on a 201 POST (its format is undocumented: the records URL).
    location_header: bool = True

    # --- outgoing webhooks (spec §11; the real retry policy is unpublished) -------------------
    #: Attempts per message and URL (the first included), with doubling delays between them.
    webhook_max_attempts: int = 3
    webhook_retry_delay_seconds: float = 1.0
    webhook_timeout_seconds: float = 10.0
    #: Highest ``CallThrottling`` (calls per second per webhook); plan-dependent, and the
    #: default when a webhook gives none.
    webhook_max_throttling: int = 10
    #: ``GET /outgoingWebhooks`` repeats each ``Secret`` (n8n reads it there; NWCA says create only).
    webhook_secret_in_list: bool = True
    #: Accept ``http://`` outgoing URLs (loopback receivers); Caspio itself wants https.
    webhook_allow_http: bool = True
    #: Name of the HMAC-SHA256 signature header added in 73.0 (unpublished: None = not sent).
    webhook_signature_header: str | None = None
    #: ``accountId`` in payloads (the documented sample has it empty).
    webhook_account_id: str = ""

    # --- surface -----------------------------------------------------------------------------
    #: Serve ``/rest/v2`` (Columns-based table creation) and ``/integrations/rest/v4`` (bulk).
    v2_enabled: bool = True
    v4_enabled: bool = True
    #: Serve ``/_emulator/*`` (stats, faults, config, reset, the HTML view).
    control_endpoints: bool = True
    #: Seed of the jitter RNG and of the table ids (v4 ``tableId``).
    seed: int = 0
    #: Wall clock (epoch seconds): token expiry, timestamps, the meter period (the throttle
    #: uses the monotonic clock, so a frozen test clock never starves it).
    wall_clock: Callable[[], float] = field(default=time.time, compare=False)

    def __post_init__(self) -> None:
        if self.unordered_paging not in UNORDERED_PAGING_MODES:
            raise ValueError(f"unordered_paging must be one of {UNORDERED_PAGING_MODES}")
        if self.over_allowance not in OVER_ALLOWANCE_MODES:
            raise ValueError(f"over_allowance must be one of {OVER_ALLOWANCE_MODES}")
        if self.token_lifetime_seconds <= 0:
            raise ValueError("the token lifetime must be positive")
        if self.latency_seconds < 0 or self.latency_jitter_seconds < 0:
            raise ValueError("latency must not be negative")
        if self.rate_limit_per_second is not None and self.rate_limit_per_second <= 0:
            raise ValueError("the rate limit must be positive (or None for off)")
        if self.rate_limit_burst is not None and self.rate_limit_burst < 1:
            raise ValueError("the burst must be at least 1")
        if self.monthly_allowance < 0:
            raise ValueError("the monthly allowance must not be negative")
        if not 1 <= self.meter_period_start_day <= 28:
            raise ValueError("meter_period_start_day must be within 1..28")
        if self.invalid_input_status not in (400, 500):
            raise ValueError("invalid_input_status must be 400 or 500")
        if not self.clients:
            raise ValueError("at least one client is needed")
        if self.webhook_max_attempts < 1 or self.webhook_max_throttling < 1:
            raise ValueError("webhook attempts and throttling must be at least 1")

    def client_secret(self, client_id: str | None) -> str | None:
        for c in self.clients:
            if c.client_id == client_id:
                return c.secret
        return None


#: Knobs a running emulator lets tests change (``POST /caspio/_emulator/config``).
RUNTIME_KNOBS: tuple[str, ...] = (
    "token_lifetime_seconds", "stale_token_400", "latency_seconds", "latency_jitter_seconds",
    "rate_limit_per_second", "rate_limit_burst", "retry_after_header", "monthly_allowance",
    "over_allowance", "unordered_paging", "require_where_for_writes", "invalid_input_status",
    "unknown_select_field_status", "require_json_content_type", "currency_decimals",
    "location_header", "max_uri_length", "webhook_max_attempts", "webhook_retry_delay_seconds",
    "webhook_timeout_seconds", "webhook_secret_in_list", "webhook_signature_header",
)


def config_snapshot(config: CaspioConfig) -> dict[str, Any]:
    """The JSON-able part of a config (no clients' secrets, no clock)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        if f.name in ("clients", "wall_clock"):
            continue
        out[f.name] = getattr(config, f.name)
    out["client_ids"] = [c.client_id for c in config.clients]
    return out


def apply_knobs(config: CaspioConfig, changes: dict[str, Any]) -> CaspioConfig:
    """``config`` with runtime knob ``changes``; ValueError names an unknown or bad knob."""
    kinds = {f.name: f for f in fields(config)}
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in RUNTIME_KNOBS:
            raise ValueError(f"unknown or fixed knob {name!r}; runtime knobs: {', '.join(RUNTIME_KNOBS)}")
        default = kinds[name].default
        if value is None:
            if name not in ("rate_limit_per_second", "rate_limit_burst", "currency_decimals",
                            "webhook_signature_header"):
                raise ValueError(f"{name} cannot be null")
            clean[name] = None
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
            clean[name] = value
        elif isinstance(default, str) or name == "webhook_signature_header":
            clean[name] = str(value)
        elif isinstance(default, int) and not isinstance(default, bool) and name != "rate_limit_per_second":
            clean[name] = int(value)
        else:
            clean[name] = float(value) if name != "rate_limit_burst" else int(value)
    return replace(config, **clean)
