"""Run units one after another in this process (no Ray): tests, debugging, and builds whose units are all done."""
from __future__ import annotations

from aromni.pipeline.executor import UnitsResult
from aromni.pipeline.executor.unit_task import run_unit
from aromni.pipeline.stats import UnitStats


def run_units(recipe_dict: dict, todo: list, out: str, progress, pools=None) -> UnitsResult:
    res = UnitsResult()
    for pu in todo:
        try:
            st = UnitStats.from_dict(run_unit(recipe_dict, pu, out, pools))
        except Exception as e:  # noqa: BLE001 - a unit's bug must not lose the other units
            res.failed.append(f"{pu.unit.label}: {type(e).__name__}: {str(e).splitlines()[-1][:300]}")
            progress.advance(None)
            continue
        res.stats[pu.part_stem] = st
        progress.advance(st)
    return res
