"""Executors run a build's units: in-process (``local``) or as Ray tasks (``ray``); ``pools`` is the one lifecycle
of the actor pools (tokenizers and voice) that units share. Each unit is ``run_unit``: process it, write its part.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from aromni.pipeline.stats import UnitStats


@dataclass
class UnitsResult:
    stats: dict[str, UnitStats] = field(default_factory=dict)   # part stem -> stats, for every finished unit
    failed: list[str] = field(default_factory=list)              # "<unit label>: <error>" of units that raised
