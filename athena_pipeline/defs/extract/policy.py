"""Retries for the extract assets: transient failures are retried, everything else fails fast.

Dagster's ``RetryPolicy`` retries *every* exception (dagster-notes.md §3), including a wrong client
secret or a bug, which only wastes the backoff and hides the cause. So each asset body runs inside
:func:`fail_fast_unless_transient`: an error :func:`athena_pipeline.extract.is_transient` calls
transient (429/5xx the HTTP client already retried, dropped connections, a busy warehouse) is
re-raised for the policy to retry; anything else becomes ``dg.Failure(allow_retries=False)`` with
a one-line description. Throttling itself lives in the HTTP client, not here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from athena_pipeline.extract import is_transient

#: Two more tries, 30 s then about 60 s later (jittered): long enough for a 429 storm or a
#: warehouse lock held by another run to pass, short enough not to stall a schedule.
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                 jitter=dg.Jitter.PLUS_MINUS)

OWNERS = ["team:data-engineering"]


@contextmanager
def fail_fast_unless_transient(what: str) -> Iterator[None]:
    """Re-raise transient errors (retried); turn the rest into a Failure that is not retried."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise dg.Failure(
            description=f"{what} failed, and retrying will not help: {type(exc).__name__}: {first_line}",
            metadata={"error_type": type(exc).__name__},
            allow_retries=False,
        ) from exc
