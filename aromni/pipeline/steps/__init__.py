"""Per-example steps that run after decoding and before tokenizing (noise, voice synthesis, ...).

A step is a small class, chosen in the recipe by name (``steps: [{name: ..., options: {...}}]``), never imported from
a recipe. Contract: ``apply(example, media, rng)`` mutates the example / its decoded media in place, records what it
did in ``example.meta`` (so a row says how it was made), and raises ``MediaError``/``TextError`` to reject the example
with a reason. ``rng`` is seeded by hash(recipe seed, step name, example id): reruns are identical, examples differ.
"""
from __future__ import annotations

from typing import ClassVar

from aromni.registry import Registry, StrictOptions


class StepOptions(StrictOptions):
    """A step's ``steps[].options``."""


STEPS: Registry = Registry()
register_step = STEPS.register


class Step:
    name: ClassVar[str]
    Options: ClassVar[type[StepOptions]] = StepOptions

    def __init__(self, options: dict | None, recipe=None):
        self.opts = self.Options(**(options or {}))
        self.recipe = recipe

    def apply(self, example, media: dict, rng) -> None:
        raise NotImplementedError


def build_steps(recipe) -> list[Step]:
    return [STEPS[s.name](s.options, recipe) for s in recipe.steps]


# the registered steps (imported last: they subclass Step)
from aromni.pipeline.steps import filters, noise, voice  # noqa: E402,F401
