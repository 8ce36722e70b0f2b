"""Parse a ``Retry-After`` header in every form servers really send, and clamp the result.

Why all three forms: RFC 9110 allows delta-seconds (``120``) and an HTTP-date
(``Wed, 21 Oct 2026 07:28:00 GMT``); bulk-data clients have met a bare epoch timestamp
(``1795000000``) in the wild too. A delta of 10^9 seconds (31 years) is meaningless, so a number
that large is read as an epoch instant. Why clamp: a server that says "come back in a week" (or
in the past) must not stall or spin a pipeline; callers pick the bounds.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import time

#: Numbers at or above this (2001-09-09 as epoch seconds) are epoch instants, not deltas.
EPOCH_THRESHOLD = 1_000_000_000


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait according to ``value``; None when absent or unparseable.

    ``now`` is the wall clock (epoch seconds) used for the HTTP-date and epoch forms. An instant
    in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    current = time.time() if now is None else now
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number) or number < 0:
            return None
        if number >= EPOCH_THRESHOLD:
            return max(0.0, number - current)
        return number
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 9110 dates are always GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - current)


def clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to ``[low, high]``."""
    return max(low, min(high, value))
