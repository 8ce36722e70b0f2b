"""Fault injection for the Caspio emulator: the failures a publisher must survive, on cue.

Why: a client's retry, refresh and idempotency logic only gets exercised when Caspio
misbehaves, which it does rarely and at random. Tests need it deterministic and countable, so
every fault has two modes, as in the athenahealth emulator's ``faults.py``:

- **count**: fire on the next ``N`` requests it applies to (``server_error=2``);
- **probability**: fire with probability ``p`` from a seeded RNG (``throttle=p0.1`` or
  ``throttle=10%``), so a given seed and request order always give the same failures.

An item may carry an argument after a colon (``server_error=3:503`` = three 503s).
Spec string (``--caspio-faults``): comma-separated ``name[=N|pX|X%][:ARG]`` items, plus
``seed=N``.

REST faults apply to calls under ``/integrations/rest`` (v2/v3/v4) and fire *after*
authentication, so a faulted call is still metered, as Caspio bills what reaches it:

====================  ========================================================================
``throttle``          answered 429 (``Retry-After`` per the config)
``server_error``      answered ARG (default 500) ``InternalError`` before doing anything
``error_after_write`` a write (POST/PUT/DELETE) is applied and committed, then answered 500:
                      the client cannot tell, and a retried POST meets its own row
``expire_token``      the caller's access token is revoked and the call answered 401
``stale_token``       the same, answered 400 ``IncorrectQueryParameter`` (the NWCA quirk)
``slow``              the call sleeps ARG extra seconds (default 5)
``token_error``       the token endpoint answers ARG (default 500) once
====================  ========================================================================
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass

#: name -> (default argument, one-line description)
FAULTS: dict[str, tuple[float | None, str]] = {
    "throttle": (None, "REST call answered 429"),
    "server_error": (500.0, "REST call answered ARG (default 500) before doing anything"),
    "error_after_write": (None, "write applied and committed, then answered 500"),
    "expire_token": (None, "caller's token revoked, call answered 401"),
    "stale_token": (None, "caller's token revoked, call answered 400 IncorrectQueryParameter"),
    "slow": (5.0, "REST call sleeps ARG extra seconds"),
    "token_error": (500.0, "token endpoint answers ARG (default 500)"),
}

FAULTS_HELP = (
    "Comma-separated Caspio faults, name[=N|pX|X%][:ARG]: " + ", ".join(sorted(FAULTS))
    + "; setting seed=N. Example: throttle=p0.05,server_error=2:503,error_after_write=1"
)


@dataclass
class Fault:
    """One armed fault. Exactly one of ``remaining`` (count mode) or ``probability`` is set."""

    name: str
    remaining: int | None = None
    probability: float | None = None
    arg: float | None = None


class CaspioFaults:
    """Thread-safe registry of armed faults, shared by the app and by tests at runtime."""

    def __init__(self, spec: str | None = None, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._fired: dict[str, int] = {}
        self.seed = seed
        self._rng = random.Random(seed)
        if spec:
            self.configure(spec)

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
        """Apply a spec string (see the module docstring)."""
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name, _, value = item.partition("=")
            name, value = name.strip(), value.strip()
            try:
                if name == "seed":
                    self.reseed(int(value))
                    continue
                mode, _, arg = value.partition(":")
                arg_value = float(arg) if arg else None
                if not mode:
                    self.set(name, 1, arg=arg_value)
                elif mode.startswith("p"):
                    self.set(name, probability=float(mode[1:]), arg=arg_value)
                elif mode.endswith("%"):
                    self.set(name, probability=float(mode[:-1]) / 100, arg=arg_value)
                else:
                    self.set(name, int(mode), arg=arg_value)
            except ValueError as exc:
                raise ValueError(f"bad Caspio fault item {item!r}: {exc}") from None

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
        """Disarm everything, zero the fired counters, restore the RNG seed."""
        with self._lock:
            self._faults.clear()
            self._fired.clear()
            self._rng = random.Random(self.seed)

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

    def snapshot(self) -> dict:
        """JSON-able view: armed faults, fired counters and the seed."""
        with self._lock:
            return {
                "faults": {n: asdict(f) for n, f in sorted(self._faults.items())},
                "fired": dict(sorted(self._fired.items())),
                "seed": self.seed,
            }
