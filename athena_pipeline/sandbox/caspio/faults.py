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

from typing import ClassVar

from athena_pipeline.sandbox.common.faults import Fault, FaultCatalogue, FaultRegistry

__all__ = ["FAULTS", "FAULTS_HELP", "CaspioFaults", "Fault"]

#: name -> (default argument, one-line description)
FAULTS: FaultCatalogue = {
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


class CaspioFaults(FaultRegistry):
    """Thread-safe registry of armed Caspio faults, shared by the app and by tests at runtime.

    The machinery is :class:`~athena_pipeline.sandbox.common.faults.FaultRegistry`; the only
    setting is ``seed``, and every bad spec item, setting or not, is named in its error.
    """

    catalogue: ClassVar[FaultCatalogue] = FAULTS
    spec_label: ClassVar[str] = "Caspio fault"
    spec_errors_name_settings: ClassVar[bool] = True
