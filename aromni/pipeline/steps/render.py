"""Render: an example's text and codes -> ids + segments (``work.row``), with the one task renderer.

Single-turn tasks put the example's text on the side the task table names (``text: response | input``) and its
codes on the side its pieces name; chat renders the turns, dropping whole trailing exchanges to fit
``filters.max_chat_tokens``. Imported rows (``example.tokens``) become rows as they are.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.pipeline.steps.base import StepReject, Step, StepStats, Work
from aromni.sample import Sample
from aromni.tasks import DialogTooLong, DialogTurn, TemplateError, get_task, pair_turns, render, render_dialog
from aromni.tasks.render import single_turns


@dataclass
class RenderStats(StepStats):
    rows: int = 0
    dropped_turns: int = 0   # chat: turns cut to fit max_chat_tokens, plus unpaired ones


class Render(Step):
    name = "render"
    uses_rng = False
    Stats = RenderStats

    def __init__(self, source, tok, recipe, layout: Layout = AR_OMNI_V0_1):
        super().__init__(None, recipe)
        self.source, self._encode, self.layout = source, tok.text.encode, layout
        self._literals: dict[str, list[int]] = {}   # template pieces and instructions: the same few strings

    def encoder(self, work: Work):
        """Text -> ids, with the template pieces and instructions (the same few strings in every row) encoded once.
        (Encoding a batch's texts with the library's encode_batch was measured slower here: 2 ms per call of 8 texts
        against 0.11 ms per text on this 2-core machine, its thread pool costs more than it saves.)"""
        def encode(s: str) -> list[int]:
            got = self._literals.get(s)
            if got is not None:
                return got
            ids = self._encode(s)
            if len(self._literals) < 4096 and len(s) < 200:   # literals are short; documents are not kept
                self._literals[s] = ids
            return ids
        return encode

    def process(self, work: Work, rng) -> None:
        ex = work.example
        if ex.tokens is not None:
            ids, segs = ex.tokens
            row = Sample(ex.id, self.source.name, ex.task, list(ids), list(segs), dict(ex.meta))
        elif get_task(ex.task).dialog:
            row = self._dialog(work)
        else:
            row = self._single(work)
        row.content_hash = work.content_hash
        work.row = row
        self.stats.rows += 1

    def _single(self, work: Work) -> Sample:
        ex, task = work.example, get_task(work.example.task)
        try:
            r = render(task, single_turns(task, ex.text, work.codes.get("image"), work.codes.get("speech")),
                       self.encoder(work), instruction=self.source.instruction, layout=self.layout)
        except (TemplateError, ValueError) as e:
            raise StepReject("template_error", str(e)) from None
        meta = dict(ex.meta)
        meta["instruction"] = self.source.instruction if self.source.instruction is not None else task.instruction
        return Sample(ex.id, self.source.name, ex.task, r.ids, r.segments, meta)

    def _dialog(self, work: Work) -> Sample:
        ex, f = work.example, self.recipe.filters
        codes = work.codes.get("turns") or []
        turns = [DialogTurn(t.role, t.text or "", *((codes[i] if i < len(codes) else {}).get(k) for k in
                                                    ("image", "speech"))) for i, t in enumerate(ex.turns)]
        try:
            r = render_dialog(turns, self.encoder(work), max_tokens=f.max_chat_tokens, instruction=self.source.instruction,
                              by_reply=self.source.chat_instruction == "by_reply", layout=self.layout)
        except DialogTooLong as e:
            raise StepReject("too_long", str(e)) from None
        except (TemplateError, ValueError) as e:
            raise StepReject("bad_dialog", str(e)) from None
        self.stats.dropped_turns += r.dropped_turns
        meta = dict(ex.meta)
        meta.update(kept_turns=r.kept_turns, dropped_turns=r.dropped_turns)
        if r.instructions:  # the append text was used
            meta["instruction"] = r.instructions[0] if len(set(r.instructions)) == 1 else r.instructions
        if r.dropped:
            meta["dropped_reasons"] = dict(sorted(Counter(r.dropped).items()))
        kept = kept_turn_indices([t.role for t in ex.turns], r.kept_turns)
        if any(ex.turns[i].meta for i in kept):  # only the turns in the row: a dropped turn's voice/noise is not
            meta["turns"] = [{"role": ex.turns[i].role, **ex.turns[i].meta} for i in kept]
        return Sample(ex.id, self.source.name, ex.task, r.ids, r.segments, meta)


def kept_turn_indices(roles: list[str], kept_turns: int) -> list[int]:
    """The indices of the turns a rendered dialog kept: its first ``kept_turns // 2`` exchanges."""
    pairs, _ = pair_turns(roles)
    return [i for pair in pairs[: kept_turns // 2] for i in pair]
