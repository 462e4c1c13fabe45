"""Plan: every source split into units, each with the id its output is stored under."""
from __future__ import annotations

from dataclasses import dataclass

from aromni.pipeline.readers import READERS, Unit
from aromni.pipeline.unit import unit_id
from aromni.recipe import Recipe, RecipeError


@dataclass(frozen=True)
class PlannedUnit:
    source_index: int
    unit: Unit
    uid: str

    @property
    def part_stem(self) -> str:
        return f"{self.unit.source}/{self.uid}"


def plan(recipe: Recipe, tokenizer_ids: dict) -> list[PlannedUnit]:
    out = []
    for i, s in enumerate(recipe.sources):
        reader = READERS[s.reader](s.name, recipe.resolve(s.path), s.options)
        units = reader.units()
        if not units:
            raise RecipeError(f"sources[{i}].path: no input files for reader {s.reader} at {recipe.resolve(s.path)}")
        if s.max_units:
            units = units[: s.max_units]
        out += [PlannedUnit(i, u, unit_id(recipe, s, u, tokenizer_ids)) for u in units]
    return out
