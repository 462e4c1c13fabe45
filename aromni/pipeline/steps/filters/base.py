"""What every quality filter shares: per-source scoping, counted decisions, histograms of what was measured.

A filter is two layers so it ports to any step interface in minutes:
- pure measurement functions (numbers in, numbers out; no Example, no recipe) in each filter's module, and
- a thin ``Step`` subclass that reads the example, calls them, records the measurement in ``meta`` and keeps or
  rejects (raising ``TextError``/``MediaError`` with the filter's reason, which today's unit turns into a reject).
"""
from __future__ import annotations

import bisect
from collections import Counter

from pydantic import Field

from aromni.pipeline.steps.base import Step, StepOptions


class FilterOptions(StepOptions):
    sources: list[str] | None = Field(None, description="apply only to these sources (by name); default: every source")


class FilterStats(Counter):
    """Flat, summable counts (so units merge with ``+``, and today's unit writes them as they are):
    ``checked``, ``kept``, ``rejected.<reason>``, ``skipped.<why>`` and ``hist.<quantity>.<bin start>`` — a histogram
    of each measured quantity over fixed bins (the same in every unit), for ``aromni stats`` to draw with the
    threshold."""

    def reject(self, reason: str) -> None:
        self[f"rejected.{reason}"] += 1

    def skip(self, why: str) -> None:
        self[f"skipped.{why}"] += 1

    def observe(self, quantity: str, value: float, edges: tuple[float, ...]) -> None:
        """Count ``value`` in the bin of ``edges`` (sorted bin starts; below the first goes to the first)."""
        i = max(0, bisect.bisect_right(edges, value) - 1)
        self[f"hist.{quantity}.{edges[i]:g}"] += 1

    def to_dict(self) -> dict:
        return dict(sorted(self.items()))


def linear_edges(lo: float, hi: float, n: int) -> tuple[float, ...]:
    step = (hi - lo) / n
    return tuple(round(lo + i * step, 6) for i in range(n))


def source_of(example) -> str:
    """The source name: today's unit sets ``example.id = f"{source}/{key}"`` before the steps run."""
    return (example.id or "").split("/", 1)[0]


def example_texts(example) -> list[tuple[str, str]]:
    """(field, text) of every text the example holds: its text (caption / transcript / document) and every dialog
    turn's."""
    out = []
    if isinstance(example.text, str) and example.text.strip():
        out.append(("text", example.text))
    for i, t in enumerate(example.turns or []):
        if isinstance(t.text, str) and t.text.strip():
            out.append((f"turns[{i}]", t.text))
    return out


class FilterStep(Step):
    """A step with a ``sources`` scope and ``FilterStats``. Subclasses implement ``check(example, media)``."""
    Options = FilterOptions

    def __init__(self, options, recipe=None):
        super().__init__(options, recipe)
        self.stats = FilterStats()
        if recipe is not None:
            bad = self.source_problems(self.opts, recipe, f"steps[{self.name}].options")
            if bad:
                raise ValueError("; ".join(bad))

    @classmethod
    def source_problems(cls, opts, recipe, key: str) -> list[str]:
        """A ``sources`` entry that names no source of the recipe would silently filter nothing: say so."""
        names = [s.name for s in recipe.sources]
        unknown = [n for n in (opts.sources or []) if n not in names]
        return [f"{key}.sources: unknown source(s) {unknown}; the recipe has {names}"] if unknown else []

    @classmethod
    def recipe_problems(cls, opts, recipe, key: str) -> list[str]:
        """Everything the recipe check (exit 2) should say about this step: unknown sources, missing files."""
        return cls.source_problems(opts, recipe, key) + cls.path_problems(opts, recipe.resolve, key)

    @classmethod
    def path_problems(cls, opts, resolve, key: str) -> list[str]:
        """Problems with the files the options name (for the recipe check, before a build starts; exit 2), each
        message starting with its recipe key under ``key`` (e.g. ``steps[3].options``). Default: none."""
        return []

    def applies_to(self, example) -> bool:
        return self.opts.sources is None or source_of(example) in self.opts.sources

    def apply(self, example, media: dict, rng) -> None:
        if not self.applies_to(example):
            return
        self.stats["checked"] += 1
        self.check(example, media)  # raises to reject (counted by the subclass with stats.reject)
        self.stats["kept"] += 1

    def check(self, example, media: dict) -> None:
        raise NotImplementedError
