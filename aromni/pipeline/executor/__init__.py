"""Executors run a build's units: in-process (``local``) or as Ray tasks (``ray``); ``pools`` is the one lifecycle
of the actor pools (tokenizers and voice) that units share. Each unit is ``run_unit``: process it, write its part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from aromni.pipeline.stats import UnitStats


@dataclass
class UnitsResult:
    stats: dict[str, UnitStats] = field(default_factory=dict)   # part stem -> stats, for every finished unit
    failed: list[str] = field(default_factory=list)              # "<unit label>: <error>" of units that raised

    def collect(self, pu, get: Callable[[], dict], progress) -> None:
        """Record one unit's outcome: ``get()`` returns its stats dict or raises its error. A unit's bug must not
        lose the other units: it is kept as a failure (reported, retried on rerun) and the build goes on."""
        try:
            st = UnitStats.from_dict(get())
        except Exception as e:  # noqa: BLE001 - any error of a unit's code
            self.fail(pu, error_text(e), progress)
            return
        self.stats[pu.part_stem] = st
        progress.advance(st)

    def fail(self, pu, why: str, progress) -> None:
        self.failed.append(f"{pu.unit.label}: {why}")
        progress.advance(None)

    def record(self, pus: list, outcomes, progress) -> None:
        """A task's units and what ``unit_task.run_units`` returned for them (``("ok", stats)`` or ``("error",
        "Type: message")`` each), or the exception that ended the whole task (its worker died): then every one of
        its units failed with it."""
        if isinstance(outcomes, BaseException):
            outcomes = [("error", error_text(outcomes))] * len(pus)
        for pu, (kind, value) in zip(pus, outcomes):
            if kind == "ok":
                self.collect(pu, lambda v=value: v, progress)
            else:
                self.fail(pu, value, progress)


def error_text(e: BaseException) -> str:
    """``Type: last line of the message``: how a failed unit is reported."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[-1][:300] if lines else ''}"
