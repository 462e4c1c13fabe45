"""The Step contract: a unit is a list of steps, each a generator over the unit's items (datatrove's shape).

Items flowing through a unit are
- ``Work``: one example on its way to a row (the reader's ``Example``, its decoded ``media``, its ``codes``, then its
  ``row``),
- ``Drop``: an example a step rejected, with a reason (it flows on, untouched, to the unit's reject sink), and
- the reader's own ``Rejected`` items (passed on the same way).

A step::

    class MyStep(Step):
        name = "my_step"                 # the recipe's `steps: [{name: my_step, options: {...}}]`
        Options = MyOptions              # a StrictOptions model: unknown keys are recipe errors naming the key
        stage = "decoded"                # where a recipe step goes: "decoded" (after decode and dedup, before the
                                         # tokenizers: media are decoded, e.g. noise, voice, media filters) or
                                         # "rendered" (after render, before the length/grammar check: work.row set)
        Stats = MyStats                  # a dataclass of counts (StepStats): its own typed stats

        def process(self, work, rng):    # the easy way: one example at a time, mutate it in place, or raise
            ...                          #   MediaError / TextError / StepReject(reason, message) to reject it

        # or, for a step that needs the stream (batching, look-ahead), override run():
        def run(self, items):            # yield every item: Work on, Drop/Rejected untouched, and one Drop per
            ...                          #   example you reject; never swallow an item (read = written + rejected)

``rng`` is seeded by hash(recipe seed, step name, example id): reruns are identical, examples differ. Steps written
against the older interface, ``apply(example, media, rng)`` with a ``Counter`` as ``self.stats``, run unchanged
(``process`` calls ``apply``); port one by renaming ``apply`` to ``process(work, rng)`` and reading
``work.example`` / ``work.media``, and give it a Stats dataclass.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np

from aromni.hashing import stable_hash
from aromni.pipeline.readers import Example, Rejected
from aromni.pipeline.steps.media import MediaError
from aromni.pipeline.steps.text import TextError
from aromni.registry import Registry, StrictOptions
from aromni.sample import Sample

STAGES = ("decoded", "rendered")


class StepOptions(StrictOptions):
    """A step's ``steps[].options``."""


class StepReject(Exception):
    """Raised by ``process`` to reject the example with a reason (short, snake_case: a column in stats)."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class Work:
    """One example on its way to a row."""
    example: Example
    seq: int                                     # position in the unit's read order
    media: dict = field(default_factory=dict)    # decoded: {"image": PIL} | {"speech": (wave, sr)} | {"turns": [...]}
    codes: dict = field(default_factory=dict)    # tokenized, shaped like media: {"image": [...]} | {"turns": [...]}
    content_hash: str = ""
    text_ids: list[int] | None = None            # the example's text, encoded in a batch (Render)
    row: Sample | None = None
    signature: tuple | None = None               # near_dup: (bucket keys, image hash), for the mix's near-dedup


@dataclass
class Drop:
    """An example a step rejected."""
    work: Work
    reason: str
    message: str = ""


Item = Work | Drop | Rejected


@dataclass
class StepStats:
    """A step's counts. Subclass with int fields (and dict fields for counts by name); ``to_dict`` drops zeros."""

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                out.update({f"{f.name}_{k}": n for k, n in v.items() if n})
            elif v:
                out[f.name] = v
        return dict(sorted(out.items()))


def stats_dict(stats: Any) -> dict:
    """A step's stats as a JSON-able dict (StepStats dataclass, or a Counter/dict of older steps)."""
    if stats is None:
        return {}
    if hasattr(stats, "to_dict"):
        return stats.to_dict()
    return dict(sorted((k, v) for k, v in dict(stats).items() if v))


class Step:
    name: ClassVar[str]
    Options: ClassVar[type[StepOptions]] = StepOptions
    Stats: ClassVar[type | None] = None
    stage: ClassVar[str] = "decoded"
    uses_rng: ClassVar[bool] = True   # False: process gets rng=None (no generator is made per example)

    def __init__(self, options: dict | None = None, recipe=None):
        self.opts = self.Options(**(options or {}))
        self.recipe = recipe
        self.seed = recipe.seed if recipe is not None else 0
        self.stats: Any = self.Stats() if self.Stats is not None else Counter()

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            yield self.apply_one(item) if isinstance(item, Work) else item

    def apply_one(self, work: Work) -> Work | Drop:
        """``process`` one example: the example on, or its Drop when the step rejects it."""
        rng = (np.random.default_rng(stable_hash(self.seed, self.name, work.example.id)) if self.uses_rng
               else None)
        try:
            self.process(work, rng)
        except (MediaError, TextError, StepReject) as e:
            return Drop(work, e.reason, e.message)
        return work

    def process(self, work: Work, rng) -> None:
        """One example; the default calls the older ``apply(example, media, rng)``."""
        self.apply(work.example, work.media, rng)

    def apply(self, example, media: dict, rng) -> None:
        raise NotImplementedError(f"step {self.name} defines neither run, process nor apply")


def in_batches(items: Iterable[Item], size: int) -> Iterator[list[Work] | Drop | Rejected]:
    """The stream as lists of up to ``size`` consecutive examples (for a step that works on many at once); any other
    item (a reject) ends the list and comes on its own, so items leave in the order they came and a reject is never
    held back behind examples."""
    batch: list[Work] = []
    for item in items:
        if isinstance(item, Work):
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
            continue
        if batch:
            yield batch
            batch = []
        yield item
    if batch:
        yield batch


STEPS: Registry = Registry()
register_step = STEPS.register


def build_steps(recipe) -> list[Step]:
    """The recipe's ``steps:``, in order, each with its options."""
    return [STEPS[s.name](s.options, recipe) for s in recipe.steps]
