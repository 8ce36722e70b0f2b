"""The fault registry both sandbox emulators arm, fire and report their injected failures with.

Why one registry: the athenahealth emulator (``emulator/faults.py``) and the Caspio emulator
(``caspio/faults.py``) need the same machinery: a fault fires on the next ``N`` requests it
applies to (count mode) or with probability ``p`` from a seeded RNG (probability mode), carries
an optional argument, and counts how often it actually fired so tests can assert it. Only the
catalogue of faults, a few settings and the wording of spec errors differ, so those are class
attributes and small hooks of :class:`FaultRegistry`; everything else lives here once.

Spec string: comma-separated ``name[=value]`` items; ``value`` is ``N`` (count, default 1),
``pX`` (probability X in 0..1) or ``X%``, optionally followed by ``:ARG``. ``seed=N`` sets the
RNG seed; subclasses may accept more settings (:meth:`FaultRegistry._apply_setting`).
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

#: name -> (default argument, one-line description)
FaultCatalogue = dict[str, tuple[float | None, str]]


@dataclass
class Fault:
    """One armed fault. Exactly one of ``remaining`` (count mode) or ``probability`` is set."""

    name: str
    remaining: int | None = None
    probability: float | None = None
    arg: float | None = None


class FaultRegistry:
    """Thread-safe registry of armed faults, shared by an emulator app and by tests at runtime.

    Subclasses set :attr:`catalogue` (the faults they know) and may override the settings hooks
    (:meth:`_apply_setting`, :meth:`_apply_control_settings`, :meth:`_reset_settings`,
    :meth:`_settings_snapshot`) to add settings beside ``seed``.
    """

    #: The faults this emulator knows: name -> (default argument, description).
    catalogue: ClassVar[FaultCatalogue] = {}
    #: How a bad spec item is named in its error ("bad {spec_label} item 'x=1': ...").
    spec_label: ClassVar[str] = "fault"
    #: Whether errors in *settings* items and in ``:ARG`` also name the item. The emulators'
    #: control endpoints answer these messages verbatim, so each keeps its own wording.
    spec_errors_name_settings: ClassVar[bool] = False

    def __init__(self, spec: str | None = None, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._fired: dict[str, int] = {}
        self.seed = seed
        self._rng = random.Random(seed)
        self._reset_settings()
        if spec:
            self.configure(spec)

    # --- arming ------------------------------------------------------------------------------
    def set(self, name: str, count: int | None = None, *, probability: float | None = None,
            arg: float | None = None) -> None:
        """Arm ``name`` for the next ``count`` requests (default 1) or with ``probability``."""
        if name not in self.catalogue:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(self.catalogue))}")
        if probability is not None and count is not None:
            raise ValueError("give either count or probability, not both")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        if probability is None and count is None:
            count = 1
        if count is not None and count < 0:
            raise ValueError("count must be >= 0")
        default_arg = self.catalogue[name][0]
        with self._lock:
            self._faults[name] = Fault(name, remaining=count, probability=probability,
                                       arg=default_arg if arg is None else float(arg))

    def configure(self, spec: str) -> None:
        """Apply a spec string (see the module docstring)."""
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name, _, value = item.partition("=")
            self._configure_item(item, name.strip(), value.strip())

    def _configure_item(self, item: str, name: str, value: str) -> None:
        try:
            if self._apply_setting(name, value):
                return
            mode, _, arg = value.partition(":")
            arg_value = float(arg) if arg else None
        except ValueError as exc:
            if not self.spec_errors_name_settings:
                raise
            raise self._bad_item(item, exc) from None
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
            raise self._bad_item(item, exc) from None

    def _bad_item(self, item: str, exc: ValueError) -> ValueError:
        return ValueError(f"bad {self.spec_label} item {item!r}: {exc}")

    def apply_control(self, body: dict[str, Any]) -> None:
        """Apply a ``POST /_emulator/faults`` body: ``clear``, ``seed``, settings, ``spec``, then
        ``faults`` (name -> ``{"count", "probability", "arg"}``, or null to disarm).

        Raises ValueError, TypeError or AttributeError for a malformed body (the endpoint
        answers them as 400).
        """
        if body.get("clear"):
            self.clear()
        if body.get("seed") is not None:
            self.reseed(int(body["seed"]))
        self._apply_control_settings(body)
        if body.get("spec"):
            self.configure(str(body["spec"]))
        for name, f in (body.get("faults") or {}).items():
            if f is None:
                self.clear(name)
                continue
            self.set(name, f.get("count"), probability=f.get("probability"), arg=f.get("arg"))

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
            self._reset_settings()

    # --- settings hooks (``seed`` only, unless a subclass adds more) --------------------------
    def _apply_setting(self, name: str, value: str) -> bool:
        """Apply spec item ``name=value`` if it is a setting; False when it names a fault."""
        if name == "seed":
            self.reseed(int(value))
            return True
        return False

    def _apply_control_settings(self, body: dict[str, Any]) -> None:
        """Apply the settings of a control-endpoint body (besides ``seed``)."""

    def _reset_settings(self) -> None:
        """Restore the settings' defaults (called at construction and, under the lock, by reset)."""

    def _settings_snapshot(self) -> dict[str, Any]:
        """The settings for :meth:`snapshot`, between ``fired`` and ``seed`` (under the lock)."""
        return {}

    # --- firing ------------------------------------------------------------------------------
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
        """JSON-able view: armed faults, fired counters, settings and the seed."""
        with self._lock:
            return {
                "faults": {n: asdict(f) for n, f in sorted(self._faults.items())},
                "fired": dict(sorted(self._fired.items())),
                **self._settings_snapshot(),
                "seed": self.seed,
            }
