"""``filters.split_long: paragraphs`` (issue 15 item 7): a text_to_text document whose rendered row is over the
length rule becomes several rows, cut at paragraph boundaries (blank lines), each within the rule.

The default (``drop``) is the paper's rule: the long row is rejected ``too_long`` by the length check. With
``paragraphs`` each piece is rendered with the same template and packed greedily: paragraphs are added to a piece
while its rendered row still passes ``length_problem`` (so the limit is exact, template and BOS/EOS included). A
single paragraph that is over the limit alone stays one piece and is rejected ``too_long`` by the check, as before.

Piece ``k`` (from 0) of the document ``<source>/<key>`` is the row ``<source>/<key>#k``; its meta holds
``split: {from, part, parts}``. Accounting: the unit counts each extra piece as read (``read = written + rejected``
still holds per source), and the step's stats say how many: ``documents`` split, ``extra_rows`` added (documents read
from the source = read - extra_rows), ``unsplittable`` (one paragraph: left to the check).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from aromni.pipeline.steps.base import Drop, Item, Step, StepReject, StepStats, Work
from aromni.pipeline.steps.check import length_problem
from aromni.pipeline.steps.render import Render

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
TASK = "text_to_text"


@dataclass
class SplitStats(StepStats):
    documents: int = 0      # long documents turned into several rows
    extra_rows: int = 0     # rows beyond the first of each split document
    unsplittable: int = 0   # over the limit but a single paragraph: rejected too_long by the check


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in PARAGRAPH_BREAK.split(text) if p.strip()]


class SplitLong(Step):
    """After render: text_to_text rows over the length rule -> one row per paragraph group."""
    name = "split_long"
    uses_rng = False
    Stats = SplitStats

    def __init__(self, recipe, render: Render, on_split: Callable[[Work, list[Work]], None]):
        super().__init__(None, recipe)
        self.render, self.on_split = render, on_split   # on_split: the unit re-registers the pieces it tracks

    def _fits(self, work: Work) -> bool:
        return length_problem(work.row.n_tokens, TASK, self.recipe.filters) is None

    def _piece(self, work: Work, text: str, k: int) -> Work:
        ex = work.example
        piece = dataclasses.replace(ex, key=f"{ex.key}#{k}", id=f"{ex.id}#{k}", text=text,
                                    meta={**ex.meta, "split": {"from": ex.id, "part": k}})
        w = Work(piece, work.seq, content_hash=work.content_hash)
        w.row = self.render._single(w)
        w.row.content_hash = work.content_hash
        return w

    def split(self, work: Work) -> list[Work]:
        """Greedy packing: the longest run of paragraphs whose rendered row passes the length rule, then the next."""
        pieces: list[Work] = []
        cur: list[str] = []
        cur_work: Work | None = None
        for p in paragraphs(work.example.text):
            cand = self._piece(work, "\n\n".join(cur + [p]), len(pieces))
            if not cur or self._fits(cand):
                cur, cur_work = cur + [p], cand
                continue
            pieces.append(cur_work)
            cur, cur_work = [p], self._piece(work, p, len(pieces))
        pieces.append(cur_work)
        for w in pieces:
            w.example.meta["split"]["parts"] = len(pieces)
            w.row.meta["split"] = w.example.meta["split"]
        return pieces

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if not isinstance(item, Work) or item.row is None or item.example.task != TASK \
                    or not isinstance(item.example.text, str) or self._fits(item):
                yield item
                continue
            if len(paragraphs(item.example.text)) < 2:
                self.stats.unsplittable += 1
                yield item
                continue
            try:
                pieces = self.split(item)
            except StepReject as e:  # a template error on a piece: the document is rejected as a whole
                yield Drop(item, e.reason, e.message)
                continue
            self.stats.documents += 1
            self.stats.extra_rows += len(pieces) - 1
            self.on_split(item, pieces)
            yield from pieces
