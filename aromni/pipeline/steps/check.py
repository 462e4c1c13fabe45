"""The last steps of a unit: the length rule and the row grammar (the one place either is checked), then one row
per id."""
from __future__ import annotations

from dataclasses import dataclass

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.pipeline.steps.base import Step, StepReject, StepStats, Work
from aromni.sample import check_row
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
    """Length rule, then the grammar (segments cover the row, spans well formed: a failure is a bug, never silent)."""
    name = "check"
    uses_rng = False
    Stats = CheckStats

    def __init__(self, recipe, layout: Layout = AR_OMNI_V0_1):
        super().__init__(None, recipe)
        self.layout = layout

    def process(self, work: Work, rng) -> None:
        row = work.row
        bad = length_problem(row.n_tokens, row.task, self.recipe.filters)
        if bad:
            setattr(self.stats, bad[0], getattr(self.stats, bad[0]) + 1)
            raise StepReject(*bad)
        problems = check_row(row.input_ids, row.segments, self.layout)
        if problems:
            self.stats.grammar_error += 1
            raise StepReject("grammar_error", "; ".join(problems))


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
