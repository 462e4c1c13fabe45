"""Tokenize: the batch's images and audio (dialog turns' included) in one call per modality.

Examples with media are held until ``batch_size`` have arrived (rejects, and text rows while nothing is held, pass
straight on, so items leave in read order); a batch that fails is retried item by item so only the culprit is
rejected (``tokenize_error``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from aromni.pipeline.steps.base import Drop, Item, Step, StepStats, Work


@dataclass
class TokenizeStats(StepStats):
    batches: int = 0
    images: int = 0
    clips: int = 0
    retried_batches: int = 0


class Tokenize(Step):
    name = "tokenize"
    Stats = TokenizeStats

    def __init__(self, tok, batch_size: int, recipe=None):
        super().__init__(None, recipe)
        self.tok, self.batch_size = tok, batch_size

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        pending: list[Work] = []
        self.pending = pending   # the unit accounts for these if it stops early (circuit breaker)
        for item in items:
            # rejects, imported rows, and rows with no media while nothing waits (order kept) go straight on
            if not isinstance(item, Work) or item.example.tokens is not None or not (pending or item.media):
                yield item
                continue
            pending.append(item)
            if len(pending) >= self.batch_size:
                yield from self._flush(pending)
                pending.clear()
        yield from self._flush(pending)
        pending.clear()

    def _flush(self, batch: list[Work]) -> Iterator[Item]:
        if not batch:
            return
        self.stats.batches += 1
        failed: dict[int, str] = {}
        for w in batch:
            w.codes = {"turns": [dict() for _ in w.media["turns"]]} if "turns" in w.media else {}
        for kind, model in (("image", self.tok.image), ("speech", self.tok.speech)):
            jobs = [(i, t, v) for i, w in enumerate(batch) for t, v in _media_items(w.media, kind)]
            if not jobs:
                continue
            if model is None:
                for i, _, _ in jobs:
                    failed.setdefault(i, f"recipe has no {kind} tokenizer")
                continue
            try:
                codes = model.encode([v for _, _, v in jobs])
            except Exception:  # noqa: BLE001 - one bad batch is retried item by item to isolate the culprit
                self.stats.retried_batches += 1
                codes = []
                for _, _, v in jobs:
                    try:
                        codes.append(model.encode([v])[0])
                    except Exception as e1:  # noqa: BLE001
                        codes.append(e1)
            for (i, t, _), c in zip(jobs, codes):
                if i in failed:
                    continue
                if isinstance(c, Exception):
                    failed[i] = f"{type(c).__name__}: {c}"
                    continue
                target = batch[i].codes if t is None else batch[i].codes["turns"][t]
                target[kind] = [int(x) for x in c.reshape(-1).tolist()]
                if kind == "image":
                    self.stats.images += 1
                else:
                    self.stats.clips += 1
        # rejects in the order the failures were found, then the batch's rows in read order (as before the split)
        for i in failed:
            yield Drop(batch[i], "tokenize_error", failed[i])
        for i, w in enumerate(batch):
            if i not in failed:
                yield w


def _media_items(media: dict, kind: str):
    """(turn index or None, decoded media) of one kind in an example's media."""
    if kind in media:
        yield None, media[kind]
    for t, m in enumerate(media.get("turns") or []):
        if kind in m:
            yield t, m[kind]
