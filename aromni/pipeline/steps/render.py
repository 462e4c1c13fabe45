"""Render: an example's text and codes -> ids + segments (``work.row``), with the one task renderer.

Single-turn tasks put the example's text on the side the task table names (``text: response | input``) and its
codes on the side its pieces name; chat renders the turns, dropping whole trailing exchanges to fit
``filters.max_chat_tokens``. Imported rows (``example.tokens``) become rows as they are.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.pipeline.steps.base import Item, StepReject, Step, StepStats, Work, in_batches
from aromni.sample import Sample
from aromni.tasks import DialogTooLong, DialogTurn, TemplateError, get_task, pair_turns, render, render_dialog
from aromni.tasks.render import single_plan, single_turns


@dataclass
class RenderStats(StepStats):
    rows: int = 0
    dropped_turns: int = 0   # chat: turns cut to fit max_chat_tokens, plus unpaired ones


class Render(Step):
    name = "render"
    uses_rng = False
    Stats = RenderStats

    batch_rows = 256   # texts encoded per call

    def __init__(self, source, tok, recipe, layout: Layout = AR_OMNI_V0_1):
        super().__init__(None, recipe)
        self.source, self._encode, self.layout = source, tok.text.encode, layout
        self._encode_batch = getattr(tok.text, "encode_batch", None)   # a tokenizer without one: text by text
        self._literals: dict[str, list[int]] = {}   # template pieces and instructions: the same few strings
        self._plans: dict[tuple, object] = {}       # (task, has image, has speech) -> SinglePlan | None

    def encoder(self, work: Work):
        """Text -> ids for the renderer (dialogs, and rows no plan fits), with the template pieces and instructions
        (the same few strings in every row) encoded once."""
        def encode(s: str) -> list[int]:
            got = self._literals.get(s)
            if got is not None:
                return got
            ids = self._encode(s)
            if len(self._literals) < 4096 and len(s) < 200:   # literals are short; documents are not kept
                self._literals[s] = ids
            return ids
        return encode

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        """Each batch's single-turn texts are encoded in one call first (``work.text_ids``), then rendered."""
        for group in in_batches(items, self.batch_rows):
            if not isinstance(group, list):
                yield group
                continue
            todo = [w for w in group if _plain_text(w.example) is not None]
            texts = [w.example.text for w in todo]
            for w, ids in zip(todo, self._encode_batch(texts) if self._encode_batch else map(self._encode, texts)):
                w.text_ids = ids
            for w in group:
                yield self.apply_one(w)

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
        image, speech = work.codes.get("image"), work.codes.get("speech")
        try:
            text = _plain_text(ex)
            text_ids = None if text is None else work.text_ids if work.text_ids is not None else self._encode(text)
            plan = self._plan(task, image is not None, speech is not None) if text_ids else None
            if plan is not None:
                ids, segments = plan.render(text_ids, image, speech, self.layout)
            else:   # a blank text, one of no tokens or a missing medium: the renderer says what is wrong
                r = render(task, single_turns(task, ex.text, image, speech), self.encoder(work),
                           instruction=self.source.instruction, layout=self.layout)
                ids, segments = r.ids, r.segments
        except (TemplateError, ValueError) as e:
            raise StepReject("template_error", str(e)) from None
        meta = dict(ex.meta)
        meta["instruction"] = self.source.instruction if self.source.instruction is not None else task.instruction
        return Sample(ex.id, self.source.name, ex.task, ids, segments, meta)

    def _plan(self, task, has_image: bool, has_speech: bool):
        """The task's single-turn plan for rows with these media (recorded on first use; None: render each)."""
        key = (task.name, has_image, has_speech)
        if key not in self._plans:
            self._plans[key] = single_plan(task, self._encode, instruction=self.source.instruction,
                                           has_image=has_image, has_speech=has_speech, layout=self.layout)
        return self._plans[key]

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


def _plain_text(ex) -> str | None:
    """A single-turn example's text when it has one that is not blank (what the batch encodes and a plan renders)."""
    if ex.tokens is not None or get_task(ex.task).dialog or not isinstance(ex.text, str) or not ex.text.strip():
        return None
    return ex.text


def kept_turn_indices(roles: list[str], kept_turns: int) -> list[int]:
    """The indices of the turns a rendered dialog kept: its first ``kept_turns // 2`` exchanges."""
    pairs, _ = pair_turns(roles)
    return [i for pair in pairs[: kept_turns // 2] for i in pair]
