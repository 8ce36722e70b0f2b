"""A sandbox world on disk: its options, its clock and where each rendering lives.

Layout of a world directory::

    world.json         options used to generate it + the world clock (current_date)
    facts.duckdb       the underlying facts (see facts_schema.py); the single source of truth
    dataview.duckdb    rendering A: athenaOne Data View tables (schema ATHENAONE, upper-case names)
    fhir.duckdb        rendering B: FHIR R4 resources as JSON text (table ``resources``) + ``deletions``
    ground_truth.json  headline figures the generator planted, for testing the marts
    emulator/          runtime state of the emulator (bulk export jobs and files); safe to delete

Renderings are always written to a temporary file and moved into place with ``os.replace``,
so a reader never sees a half-written file and a crash never leaves a broken world.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class WorldOptions:
    """Everything that determines a world. Same options => byte-identical facts and renderings."""

    seed: int = 42
    providers: int = 15
    patients: int | None = None  # default: ~1,650 per provider (a typical primary-care panel)
    start: dt.date = dt.date(2023, 11, 24)
    end: dt.date = dt.date(2026, 11, 23)
    practice_id: int = 195900  # athenahealth's shared preview practice id, as a recognisable default

    @property
    def patient_count(self) -> int:
        return self.patients if self.patients is not None else self.providers * 1650

    def to_json(self) -> dict:
        d = asdict(self)
        d["start"] = self.start.isoformat()
        d["end"] = self.end.isoformat()
        d["patients"] = self.patient_count
        return d

    @classmethod
    def from_json(cls, d: dict) -> "WorldOptions":
        return cls(
            seed=int(d["seed"]),
            providers=int(d["providers"]),
            patients=int(d["patients"]),
            start=dt.date.fromisoformat(d["start"]),
            end=dt.date.fromisoformat(d["end"]),
            practice_id=int(d["practice_id"]),
        )


@dataclass
class World:
    """A world directory. ``current_date`` is the world clock: the last simulated day."""

    root: Path
    options: WorldOptions
    current_date: dt.date
    advanced_days: int = 0
    extra: dict = field(default_factory=dict)

    # --- paths -------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.root / "world.json"

    @property
    def facts_path(self) -> Path:
        return self.root / "facts.duckdb"

    @property
    def dataview_path(self) -> Path:
        return self.root / "dataview.duckdb"

    @property
    def fhir_path(self) -> Path:
        return self.root / "fhir.duckdb"

    @property
    def ground_truth_path(self) -> Path:
        return self.root / "ground_truth.json"

    @property
    def emulator_dir(self) -> Path:
        return self.root / "emulator"

    @property
    def practice_id(self) -> int:
        return self.options.practice_id

    @property
    def clock(self) -> dt.datetime:
        """The world's "now" (naive UTC): end of the current day. FHIR transactionTime uses it."""
        return dt.datetime.combine(self.current_date, dt.time(23, 59, 59))

    # --- persistence ---------------------------------------------------------------------
    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {
            "generator_version": GENERATOR_VERSION,
            "options": self.options.to_json(),
            "current_date": self.current_date.isoformat(),
            "advanced_days": self.advanced_days,
            **self.extra,
        }
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.meta_path)

    @classmethod
    def load(cls, root: Path | str) -> "World":
        root = Path(root)
        meta = root / "world.json"
        if not meta.exists():
            raise FileNotFoundError(
                f"{meta} not found: {root} is not a sandbox world "
                "(create one with `athena-pipeline sandbox generate --out DIR`)"
            )
        d = json.loads(meta.read_text())
        extra = {k: v for k, v in d.items()
                 if k not in {"generator_version", "options", "current_date", "advanced_days"}}
        return cls(
            root=root,
            options=WorldOptions.from_json(d["options"]),
            current_date=dt.date.fromisoformat(d["current_date"]),
            advanced_days=int(d.get("advanced_days", 0)),
            extra=extra,
        )
