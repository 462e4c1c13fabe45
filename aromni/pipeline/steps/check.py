"""The last steps of a unit: the length rule and the row grammar (the one place either is checked), then one row
per id."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.pipeline.steps.base import Drop, Item, Step, StepReject, StepStats, Work, in_batches
from aromni.sample import check_rows
from aromni.tasks import get_task


@dataclass
class CheckStats(StepStats):
    too_long: int = 0
    too_short: int = 0
    grammar_error: int = 0


def length_problem(n: int, task: str, f) -> tuple[str, str] | None:
    """(reason, message) when a row of ``n`` tokens breaks the recipe's length rule, else None.
    aromni: min_tokens <= n <= limit; upstream (AR-Omni pretrain.py): 0 < n < limit. The limit is max_chat_tokens
    for dialogs (whose renderer already dropped trailing exchanges to fit), max_tokens for the rest."""
    key = "max_chat_tokens" if get_task(task).dialog else "max_tokens"
    limit = getattr(f, key)
    if f.length_rule == "upstream":
        if n >= limit:
            return "too_long", f"{n} tokens >= {key} {limit} (length_rule: upstream keeps 0 < n < {limit})"
        if n <= 0:
            return "too_short", f"{n} tokens (length_rule: upstream keeps 0 < n < {limit})"
        return None
    if n > limit:
        return "too_long", f"{n} tokens > {key} {limit}"
    if n < f.min_tokens:
        return "too_short", f"{n} tokens < min_tokens {f.min_tokens}"
    return None


class Check(Step):
    """Length rule, then the grammar (segments cover the row, spans well formed: a failure is a bug, never silent).

    Rows are checked ``batch_rows`` at a time with ``check_rows`` (the grammar over the batch's flat ids), in the
    order they came (``in_batches``)."""
    name = "check"
    uses_rng = False
    Stats = CheckStats
    batch_rows = 256

    def __init__(self, recipe, layout: Layout = AR_OMNI_V0_1):
        super().__init__(None, recipe)
        self.layout = layout

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        for group in in_batches(items, self.batch_rows):
            yield from self._check(group) if isinstance(group, list) else (group,)

    def _check(self, batch: list[Work]) -> Iterator[Item]:
        length = [length_problem(w.row.n_tokens, w.row.task, self.recipe.filters) for w in batch]
        fits = [w for w, bad in zip(batch, length) if bad is None]
        grammar = iter(check_rows([(w.row.input_ids, w.row.segments) for w in fits], self.layout))
        for w, bad in zip(batch, length):
            if bad is not None:
                setattr(self.stats, bad[0], getattr(self.stats, bad[0]) + 1)
                yield Drop(w, *bad)
                continue
            problems = next(grammar)
            if problems:
                self.stats.grammar_error += 1
                yield Drop(w, "grammar_error", "; ".join(problems))
                continue
            yield w


@dataclass
class UniqueStats(StepStats):
    duplicate_id: int = 0


class UniqueIds(Step):
    """One id is one row: a later item of the unit with an earlier row's id is rejected (the first is kept)."""
    name = "unique_ids"
    uses_rng = False
    Stats = UniqueStats

    def __init__(self, recipe, unit_label: str):
        super().__init__(None, recipe)
        self.label, self.ids = unit_label, set()

    def process(self, work: Work, rng) -> None:
        if work.row.id in self.ids:
            self.stats.duplicate_id += 1
            raise StepReject("duplicate_id", f"an earlier item of {self.label} has the id {work.row.id}; it is kept")
        self.ids.add(work.row.id)
