"""Generic HTTP plumbing shared by every API client of the pipeline (athenahealth, Caspio).

:class:`HttpPolicy` wraps ``httpx`` with timeouts, retries (backoff + jitter, ``Retry-After``),
a rate limiter, one re-authentication on 401, request ids and per-call accounting; errors are
the typed :class:`ApiError` family. Nothing in this package knows about a particular vendor.
"""

from athena_pipeline.http.errors import (
    ApiError,
    AuthError,
    RetryExhausted,
    error_detail,
    is_transient_outcome,
    origin,
    redact_url,
    template_path,
)
from athena_pipeline.http.policy import (
    DEFAULT_TIMEOUT,
    RETRY_STATUSES,
    Authenticator,
    CallRecord,
    HttpPolicy,
    RetryPolicy,
    StreamHandle,
)
from athena_pipeline.http.ratelimit import RateLimiter
from athena_pipeline.http.retry_after import clamp, parse_retry_after

__all__ = [
    "DEFAULT_TIMEOUT",
    "RETRY_STATUSES",
    "ApiError",
    "AuthError",
    "Authenticator",
    "CallRecord",
    "HttpPolicy",
    "RateLimiter",
    "RetryExhausted",
    "RetryPolicy",
    "StreamHandle",
    "clamp",
    "error_detail",
    "is_transient_outcome",
    "origin",
    "parse_retry_after",
    "redact_url",
    "template_path",
]
