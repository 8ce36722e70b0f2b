"""Shared generation context: options, dates, and deterministic per-section random streams."""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field

import numpy as np

from athena_pipeline.sandbox.world import WorldOptions

DAY = np.timedelta64(1, "D")
SECOND = np.timedelta64(1, "s")


class IdAllocator:
    """Hands out ids per id space across shards, so a world built in shards has unique ids."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def take(self, name: str, n: int, base: int) -> np.ndarray:
        start = self.used.get(name, 0)
        self.used[name] = start + n
        return base + start + np.arange(1, n + 1, dtype=np.int64)


@dataclass
class Ctx:
    """Generation context for one shard of patients (worlds are built ~25k patients at a time)."""

    options: WorldOptions
    horizon_end: dt.date  # last day the timeline covers (end + horizon_days)
    ids: IdAllocator = field(default_factory=IdAllocator)
    shard: int = 0
    patient_offset: int = 0
    shard_patients: int = 0

    @property
    def start(self) -> np.datetime64:
        return np.datetime64(self.options.start, "D")

    @property
    def end(self) -> np.datetime64:
        return np.datetime64(self.options.end, "D")

    @property
    def horizon(self) -> np.datetime64:
        return np.datetime64(self.horizon_end, "D")

    def rng(self, section: str) -> np.random.Generator:
        """An independent stream per section, so changing one builder never reshuffles another."""
        return np.random.default_rng([self.options.seed, zlib.crc32(section.encode()), self.shard])


def choice_weighted(rng: np.random.Generator, n: int, weights) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return rng.choice(len(w), size=n, p=w / w.sum())


def band_lookup(values: np.ndarray, bands: list[tuple[float, float, float]], default: float = 0.0) -> np.ndarray:
    """Map each value to the rate of the [lo, hi) band it falls in."""
    out = np.full(values.shape, default, dtype=float)
    for lo, hi, rate in bands:
        out[(values >= lo) & (values < hi)] = rate
    return out


def age_years(dob: np.ndarray, on: np.ndarray | np.datetime64) -> np.ndarray:
    """Completed years of age (birthday-exact) at date(s) ``on``; vectorised."""
    dob_y = dob.astype("datetime64[Y]").astype(int) + 1970
    on_arr = np.broadcast_to(np.asarray(on, dtype="datetime64[D]"), dob.shape)
    on_y = on_arr.astype("datetime64[Y]").astype(int) + 1970
    dob_m = dob.astype("datetime64[M]").astype(int) % 12
    on_m = on_arr.astype("datetime64[M]").astype(int) % 12
    dob_d = (dob - dob.astype("datetime64[M]").astype("datetime64[D]")).astype(int)
    on_d = (on_arr - on_arr.astype("datetime64[M]").astype("datetime64[D]")).astype(int)
    before_birthday = (on_m < dob_m) | ((on_m == dob_m) & (on_d < dob_d))
    return on_y - dob_y - before_birthday.astype(int)


def to_weekday(days: np.ndarray) -> np.ndarray:
    """Shift Saturday to Friday and Sunday to Monday (offices are closed at weekends)."""
    dow = (days.astype("datetime64[D]").astype(int) + 3) % 7  # 0 = Monday
    shift = np.where(dow == 5, -1, np.where(dow == 6, 1, 0))
    return days + shift.astype("timedelta64[D]")


def uniform_dates(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Uniform day in [lo, hi] elementwise (hi >= lo assumed)."""
    lo = np.asarray(lo, dtype="datetime64[D]")
    hi = np.asarray(hi, dtype="datetime64[D]")
    span = (hi - lo).astype(int) + 1
    return lo + (rng.random(np.broadcast(lo, hi).shape) * span).astype(int).astype("timedelta64[D]")


def days(n) -> np.ndarray:
    return np.asarray(n).astype(int).astype("timedelta64[D]")


def seconds(n) -> np.ndarray:
    return np.asarray(n).astype(np.int64).astype("timedelta64[s]")


def at_time(d: np.ndarray, secs_after_midnight) -> np.ndarray:
    return d.astype("datetime64[ms]") + seconds(secs_after_midnight)


def money(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x, dtype=float), 2)
