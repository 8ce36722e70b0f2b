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
import random
import threading
from dataclasses import asdict, dataclass

REQUEST_CLASSES: tuple[str, ...] = ("token", "kickoff", "poll", "file", "fhir")

#: name -> (default argument, one-line description)
FAULTS: dict[str, tuple[float | None, str]] = {
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


@dataclass
class Fault:
    """One armed fault. Exactly one of ``remaining`` (count mode) or ``probability`` is set."""

    name: str
    remaining: int | None = None
    probability: float | None = None
    arg: float | None = None


class FaultInjector:
    """Thread-safe registry of armed faults, shared by the app and by tests at runtime."""

    def __init__(self, spec: str | None = None, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._fired: dict[str, int] = {}
        self.seed = seed
        self._rng = random.Random(seed)
        self.retry_after_form = "seconds"
        self.retry_after_seconds = 1
        if spec:
            self.configure(spec)

    # --- arming --------------------------------------------------------------------------
    def set(self, name: str, count: int | None = None, *, probability: float | None = None,
            arg: float | None = None) -> None:
        """Arm ``name`` for the next ``count`` requests (default 1) or with ``probability``."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}")
        if probability is not None and count is not None:
            raise ValueError("give either count or probability, not both")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        if probability is None and count is None:
            count = 1
        if count is not None and count < 0:
            raise ValueError("count must be >= 0")
        default_arg = FAULTS[name][0]
        with self._lock:
            self._faults[name] = Fault(name, remaining=count, probability=probability,
                                       arg=default_arg if arg is None else float(arg))

    def configure(self, spec: str) -> None:
        """Apply a ``--faults`` spec string (see the module docstring)."""
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name, _, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if name == "retry_after":
                self.set_retry_after(form=value)
            elif name == "retry_after_seconds":
                self.set_retry_after(seconds=int(value))
            elif name == "seed":
                self.reseed(int(value))
            else:
                mode, _, arg = value.partition(":")
                arg_value = float(arg) if arg else None
                try:
                    if not mode:
                        self.set(name, 1, arg=arg_value)
                    elif mode.startswith("p"):
                        self.set(name, probability=float(mode[1:]), arg=arg_value)
                    elif mode.endswith("%"):
                        self.set(name, probability=float(mode[:-1]) / 100, arg=arg_value)
                    else:
                        self.set(name, int(mode), arg=arg_value)
                except ValueError as exc:
                    raise ValueError(f"bad fault item {item!r}: {exc}") from None

    def set_retry_after(self, *, form: str | None = None, seconds: int | None = None) -> None:
        if form is not None:
            if form not in RETRY_AFTER_FORMS:
                raise ValueError(f"retry_after must be one of {RETRY_AFTER_FORMS}")
            self.retry_after_form = form
        if seconds is not None:
            if seconds < 0:
                raise ValueError("retry_after_seconds must be >= 0")
            self.retry_after_seconds = seconds

    def reseed(self, seed: int) -> None:
        with self._lock:
            self.seed = seed
            self._rng = random.Random(seed)

    def clear(self, name: str | None = None) -> None:
        """Disarm one fault, or all of them (fired counters are kept)."""
        with self._lock:
            if name is None:
                self._faults.clear()
            else:
                self._faults.pop(name, None)

    def reset(self) -> None:
        """Disarm everything, zero the fired counters, restore settings and the RNG seed."""
        with self._lock:
            self._faults.clear()
            self._fired.clear()
            self._rng = random.Random(self.seed)
            self.retry_after_form = "seconds"
            self.retry_after_seconds = 1

    # --- firing --------------------------------------------------------------------------
    def take(self, name: str) -> Fault | None:
        """Decide whether ``name`` fires for this request; if so count it and return it."""
        with self._lock:
            fault = self._faults.get(name)
            if fault is None:
                return None
            if fault.probability is not None:
                if self._rng.random() >= fault.probability:
                    return None
            else:
                if not fault.remaining:
                    return None
                fault.remaining -= 1
            self._fired[name] = self._fired.get(name, 0) + 1
            return Fault(fault.name, fault.remaining, fault.probability, fault.arg)

    def fired(self, name: str) -> int:
        with self._lock:
            return self._fired.get(name, 0)

    def remaining(self, name: str) -> int | None:
        """Count left in count mode; None when not armed or in probability mode."""
        with self._lock:
            f = self._faults.get(name)
            return None if f is None else f.remaining

    def snapshot(self) -> dict:
        """JSON-able view: armed faults, fired counters and settings."""
        with self._lock:
            return {
                "faults": {n: asdict(f) for n, f in sorted(self._faults.items())},
                "fired": dict(sorted(self._fired.items())),
                "retry_after": self.retry_after_form,
                "retry_after_seconds": self.retry_after_seconds,
                "seed": self.seed,
            }

    # --- Retry-After -----------------------------------------------------------------------
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
