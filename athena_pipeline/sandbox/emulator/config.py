"""Settings of the athenahealth emulator: who may log in, how long things live, how big files get.

Why a dataclass and not module constants: tests start many emulators side by side with very
different settings (one-second tokens, three-line NDJSON files, a frozen wall clock for the
per-minute token limit), and the sandbox CLI starts one with production-like values. Every
knob that changes observable behaviour lives here; the *faults* (things that go wrong on
purpose) live in ``faults.py`` because tests switch those on and off while a server runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: FHIR resource types the emulator serves (and accepts in ``_type``).
RESOURCE_TYPES: tuple[str, ...] = (
    "Patient", "Practitioner", "Organization", "Location", "Encounter", "Condition",
    "Observation", "Procedure", "Immunization", "MedicationRequest", "AllergyIntolerance",
    "DiagnosticReport", "DocumentReference", "Coverage", "Appointment",
)

#: Scope for athenaOne v1 REST calls (athena's own name for it).
V1_SCOPE = "athena/service/Athenanet.MDP.*"

#: What the default sandbox client may be granted: every FHIR read plus v1.
DEFAULT_ALLOWED_SCOPES: tuple[str, ...] = ("system/*.read", V1_SCOPE)

#: What every caller may do in open mode (``auth_required=False``): read all FHIR and v1.
OPEN_MODE_SCOPES: frozenset[str] = frozenset(DEFAULT_ALLOWED_SCOPES)

#: Token requests per clock minute, as documented by athenahealth.
TOKEN_RATE_LIMITS: dict[str, int] = {"production": 50, "preview": 5}

SANDBOX_CLIENT_ID = "sandbox-client"
SANDBOX_CLIENT_SECRET = "sandbox-secret"


@dataclass(frozen=True)
class ClientConfig:
    """A registered OAuth client.

    ``secret`` enables ``client_secret_basic``/``client_secret_post``; ``public_keys`` enables
    ``private_key_jwt`` (each key a PEM string or a JWK dict; a JWK's ``kid`` is matched
    against the assertion header's ``kid``). ``environments`` lists where the client is
    registered: a client of only ``preview`` is rejected by a ``production`` emulator, just as
    athenahealth's two environments reject each other's credentials.
    """

    client_id: str
    secret: str | None = None
    public_keys: tuple[str | dict, ...] = ()
    allowed_scopes: tuple[str, ...] = DEFAULT_ALLOWED_SCOPES
    environments: tuple[str, ...] = ("preview", "production")


@dataclass(frozen=True)
class QuotaHeaderNames:
    """Names of the quota headers on every response (athena's real names are unknown)."""

    limit_day: str = "X-RateLimit-Limit-Day"
    remaining_day: str = "X-RateLimit-Remaining-Day"
    reset_day: str = "X-RateLimit-Reset-Day"
    limit_minute: str = "X-RateLimit-Limit-Minute"
    remaining_minute: str = "X-RateLimit-Remaining-Minute"


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything about the emulator except faults. Defaults suit the sandbox CLI."""

    #: ``production`` or ``preview``: picks the default token rate limit and which clients work.
    environment: str = "production"
    clients: tuple[ClientConfig, ...] = (
        ClientConfig(SANDBOX_CLIENT_ID, secret=SANDBOX_CLIENT_SECRET),
    )
    token_lifetime_seconds: float = 3600
    #: Send ``expires_in`` as a JSON string, as athena's newer platform sometimes does.
    expires_in_as_string: bool = False
    #: Token requests per clock minute per client; None = 50 (production) / 5 (preview).
    token_rate_limit_per_minute: int | None = None
    #: Authenticated API calls per UTC day per client (reset at midnight GMT).
    daily_api_limit: int = 1_000_000
    #: Optional per-second API limit per client (429 with Retry-After: 1); None = off.
    per_second_limit: int | None = None
    #: Signing algorithms accepted in ``private_key_jwt`` assertions (SMART Backend Services).
    jwt_algorithms: tuple[str, ...] = ("RS384", "ES384")
    #: Largest allowed ``exp - now`` of a client assertion, in seconds.
    jwt_max_lifetime_seconds: float = 300

    # --- bulk export ---------------------------------------------------------------------
    #: At most this many resources (lines) per NDJSON file; a type spans several files.
    resources_per_file: int = 10_000
    #: Files (and the job) disappear this long after the job completes: then 404.
    file_expiry_seconds: float = 3600
    #: ``Retry-After`` (seconds) on a 202 status poll; None sends none (whether athena sends one is
    #: not documented: specs/athenahealth-api.md section 2), so clients fall back to their own pace.
    poll_retry_after_seconds: int | None = 1
    #: A job reports "in progress" for at least this long, so clients really poll.
    export_processing_delay_seconds: float = 2.0
    #: 429 when a client polls sooner than the Retry-After it was given (off by default).
    enforce_poll_interval: bool = False
    #: DuckDB threads for writing export files. 1 keeps each file's line order byte-identical
    #: between runs (ordered by id); more threads are faster but order lines arbitrarily.
    export_threads: int = 1
    #: ``Retry-After`` on a 429 for a second export while one is running.
    concurrent_export_retry_after_seconds: int = 5

    # --- FHIR search ---------------------------------------------------------------------
    search_default_count: int = 50
    search_max_count: int = 1000

    # --- misc ----------------------------------------------------------------------------
    quota_headers: QuotaHeaderNames = field(default_factory=QuotaHeaderNames)
    #: Absolute base URL to put in links (e.g. behind a proxy); None = taken from the request.
    public_base_url: str | None = None
    #: Serve ``/_emulator/faults`` and ``/_emulator/reset`` (runtime fault control).
    control_endpoints: bool = True
    #: Wall clock (epoch seconds) for token expiry, rate-limit windows and file expiry.
    #: Tests inject a fake one to make minute windows deterministic.
    wall_clock: Callable[[], float] = time.time

    # --- open mode (last, so positional construction of the fields above is unchanged) -----
    #: False = open mode: no bearer token needed anywhere (tokens sent anyway are accepted
    #: and only name the client), manifests say ``requiresAccessToken: false``. For
    #: third-party Bulk Data clients run without auth, as open reference servers allow.
    auth_required: bool = True

    @property
    def token_rate_limit(self) -> int:
        if self.token_rate_limit_per_minute is not None:
            return self.token_rate_limit_per_minute
        return TOKEN_RATE_LIMITS.get(self.environment, TOKEN_RATE_LIMITS["production"])

    def client(self, client_id: str | None) -> ClientConfig | None:
        """The registered client with this id in this environment, else None."""
        for c in self.clients:
            if c.client_id == client_id and self.environment in c.environments:
                return c
        return None

    def __post_init__(self) -> None:
        if self.environment not in TOKEN_RATE_LIMITS:
            raise ValueError(f"environment must be one of {sorted(TOKEN_RATE_LIMITS)}")
        if self.resources_per_file < 1:
            raise ValueError("resources_per_file must be >= 1")
