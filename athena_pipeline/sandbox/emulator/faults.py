"""Fault injection for the athenahealth emulator: make the failures real clients meet happen on cue.

Why: a bulk client is only as good as its handling of 429s, 5xx polls, ``transient``
OperationOutcomes, expired or truncated files and surprise 401s. Real servers produce those
rarely and at random; tests need them deterministic and countable. So every fault has two
modes:

- **count**: fire on the next ``N`` requests of its kind, then stop (``kickoff_429=2``);
- **probability**: fire with probability ``p`` from a seeded RNG (``kickoff_429=p0.25``), so a
  given seed and request order always give the same failures.

Each fault may carry an argument after a colon (``slow_poll=2:3.0`` = the next 2 polls sleep
3 s). ``fired(name)`` counts how often a fault actually happened, so tests can assert it.

Spec string (``--faults``): comma-separated ``name[=value]`` items; ``value`` is ``N``
(count, default 1), ``pX`` (probability X in 0..1) or ``X%``, optionally followed by
``:ARG``. Settings share the syntax: ``retry_after=seconds|http-date|epoch`` (the form of
every ``Retry-After`` header), ``retry_after_seconds=N`` (the value fault 429s carry,
default 1) and ``seed=N`` (the RNG seed, default 0).

Request classes: ``token`` (POST /oauth2/v1/token), ``kickoff`` ($export), ``poll`` (status
URL), ``file`` (output/error/deleted file downloads), ``fhir`` (FHIR read/search and v1).

Faults:

==================  ==========================================================================
``token_429``       token request answered 429 + Retry-After
``kickoff_429``     kick-off answered 429 + Retry-After
``poll_429``        status poll answered 429 + Retry-After
``file_429``        file download answered 429 + Retry-After
``fhir_429``        FHIR read/search or v1 call answered 429 + Retry-After
``poll_500``        status poll answered 500 with a fatal-looking OperationOutcome (code
                    ``exception``); the job itself is fine
``poll_transient``  status poll answered 500 with an OperationOutcome of code ``transient``
``slow``            any request sleeps ARG seconds (default 5) before answering
``slow_<class>``    the same for one class: ``slow_token``, ``slow_kickoff``, ``slow_poll``,
                    ``slow_file``, ``slow_fhir``
``files_expired``   file download answered 404 "expired" although the file exists
``truncate``        file download declares the full length, sends part of it (cut mid-line)
                    and drops the connection
``truncate_clean``  file download ends cleanly but early, cut mid-line (only a line count or
                    JSON check notices)
``error_lines``     the next export job's manifest gets an ``error[]`` file with ARG
                    OperationOutcome lines (default 3); counted per job
``bearer_expired``  a bearer-token check fails with 401 as if the token had expired
==================  ==========================================================================
"""

from __future__ import annotations

import email.utils
import math
from typing import Any, ClassVar

from athena_pipeline.sandbox.common.faults import Fault, FaultCatalogue, FaultRegistry

__all__ = ["FAULTS", "FAULTS_HELP", "REQUEST_CLASSES", "RETRY_AFTER_FORMS", "Fault",
           "FaultInjector"]

REQUEST_CLASSES: tuple[str, ...] = ("token", "kickoff", "poll", "file", "fhir")

#: name -> (default argument, one-line description)
FAULTS: FaultCatalogue = {
    "token_429": (None, "token request answered 429 + Retry-After"),
    "kickoff_429": (None, "kick-off answered 429 + Retry-After"),
    "poll_429": (None, "status poll answered 429 + Retry-After"),
    "file_429": (None, "file download answered 429 + Retry-After"),
    "fhir_429": (None, "FHIR read/search or v1 call answered 429 + Retry-After"),
    "poll_500": (None, "status poll answered 500, fatal-looking OperationOutcome"),
    "poll_transient": (None, "status poll answered 500, OperationOutcome code 'transient'"),
    "slow": (5.0, "any request sleeps ARG seconds first"),
    **{f"slow_{c}": (5.0, f"{c} requests sleep ARG seconds first") for c in REQUEST_CLASSES},
    "files_expired": (None, "file download answered 404 as expired"),
    "truncate": (None, "file download cut mid-line, then the connection is dropped"),
    "truncate_clean": (None, "file download ends cleanly but early, cut mid-line"),
    "error_lines": (3.0, "next export job gets an error[] file with ARG OperationOutcome lines"),
    "bearer_expired": (None, "bearer token check fails with 401 as if expired"),
}

RETRY_AFTER_FORMS = ("seconds", "http-date", "epoch")

FAULTS_HELP = (
    "Comma-separated faults, name[=N|pX|X%][:ARG]: "
    + ", ".join(sorted(FAULTS))
    + "; settings retry_after=seconds|http-date|epoch, retry_after_seconds=N, seed=N. "
    "Example: kickoff_429=2,poll_transient=3,poll_500=1,slow_poll=1:3.0,files_expired=1,"
    "truncate=1,error_lines=1:3,bearer_expired=1,retry_after=http-date"
)


class FaultInjector(FaultRegistry):
    """Thread-safe registry of armed faults, shared by the app and by tests at runtime.

    The machinery is :class:`~athena_pipeline.sandbox.common.faults.FaultRegistry`; this adds
    the ``retry_after`` and ``retry_after_seconds`` settings and :meth:`retry_after`. Errors in
    settings items keep their own message; only bad fault items are named.
    """

    catalogue: ClassVar[FaultCatalogue] = FAULTS
    retry_after_form: str
    retry_after_seconds: int

    def set_retry_after(self, *, form: str | None = None, seconds: int | None = None) -> None:
        if form is not None:
            if form not in RETRY_AFTER_FORMS:
                raise ValueError(f"retry_after must be one of {RETRY_AFTER_FORMS}")
            self.retry_after_form = form
        if seconds is not None:
            if seconds < 0:
                raise ValueError("retry_after_seconds must be >= 0")
            self.retry_after_seconds = seconds

    # --- settings hooks ----------------------------------------------------------------------
    def _apply_setting(self, name: str, value: str) -> bool:
        if name == "retry_after":
            self.set_retry_after(form=value)
        elif name == "retry_after_seconds":
            self.set_retry_after(seconds=int(value))
        else:
            return super()._apply_setting(name, value)
        return True

    def _apply_control_settings(self, body: dict[str, Any]) -> None:
        if body.get("retry_after") is not None or body.get("retry_after_seconds") is not None:
            self.set_retry_after(
                form=body.get("retry_after"),
                seconds=None if body.get("retry_after_seconds") is None
                else int(body["retry_after_seconds"]))

    def _reset_settings(self) -> None:
        self.retry_after_form = "seconds"
        self.retry_after_seconds = 1

    def _settings_snapshot(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after_form,
                "retry_after_seconds": self.retry_after_seconds}

    # --- Retry-After -------------------------------------------------------------------------
    def retry_after(self, seconds: float, now: float) -> str:
        """A Retry-After value meaning "in ``seconds``", in the configured form.

        HTTP-date and epoch forms are rounded *up* to a whole second so a client that honours
        them never comes back early.
        """
        seconds = max(0.0, seconds)
        if self.retry_after_form == "seconds":
            return str(math.ceil(seconds))
        at = math.ceil(now + seconds)
        if self.retry_after_form == "epoch":
            return str(at)
        return email.utils.formatdate(at, usegmt=True)
