"""A unit's stats: what it read, wrote and rejected (by reason), and each step's counts.

Written as the unit's done marker (parts/<stem>.done.json, via ``to_dict``) and read back with ``from_dict``; the
manifest's accounting and the mix read these fields, never string keys of their own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class UnitStats:
    unit: str
    unit_id: str
    source: str
    group: str
    read: int = 0
    written: int = 0
    rejected: dict[str, int] = field(default_factory=dict)   # reason -> count
    tokens: int = 0
    seconds: float = 0.0
    circuit_breaker: str | None = None
    dropped_turns: int = 0                                   # chat: turns cut to fit or unpaired
    steps: dict[str, dict] = field(default_factory=dict)     # step name -> its counts

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def reconciles(self) -> bool:
        return self.read == self.written + self.n_rejected

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rejected"] = dict(sorted(self.rejected.items()))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UnitStats":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def moved_to_rejected(self, reason: str, rows: int, tokens: int) -> "UnitStats":
        """A copy with ``rows`` written rows (``tokens`` tokens) counted as rejected for ``reason`` (mix decisions)."""
        rejected = dict(self.rejected)
        rejected[reason] = rejected.get(reason, 0) + rows
        return dataclasses.replace(self, written=self.written - rows, tokens=self.tokens - tokens,
                                   rejected=dict(sorted(rejected.items())))
