"""Run units one after another in this process (no Ray): tests, debugging, and builds whose units are all done."""
from __future__ import annotations

from aromni.pipeline.executor import UnitsResult
from aromni.pipeline.executor.unit_task import run_unit


def run_units(recipe_dict: dict, todo: list, out: str, progress, pools=None) -> UnitsResult:
    res = UnitsResult()
    for pu in todo:
        res.collect(pu, lambda: run_unit(recipe_dict, pu, out, pools), progress)
    return res
