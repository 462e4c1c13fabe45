"""``clip_score``: the CLIP similarity of an image and its caption (image_caption / text_to_image examples), from a
local checkpoint in transformers' CLIPModel/CLIPProcessor format (``aromni.model.clip``); reason ``low_clip_score``.

LAION rows already carry the similarity img2dataset kept (``meta["similarity"]``, computed by LAION with CLIP
ViT-B/32): it is used as it is unless ``recompute: true`` (then the checkpoint scores every pair, and no checkpoint is
needed when ``recompute`` is false and every row has one — rows without it are scored by the checkpoint if ``path`` is
set, else kept and counted as ``skipped.no_score``). Recorded: ``meta["clip_score"] = {"score": s, "from":
"metadata" | "model"}``. Scores of one checkpoint are comparable only among themselves: pick ``min_score`` for the
checkpoint (LAION-5B kept >= 0.28 with ViT-B/32, LAION-400M >= 0.3).

Batching: ``run`` holds the unit's items in read order until ``batch_size`` of them need the model (or
``4 * batch_size`` items are held), scores those with one call and lets every held item go on in its order. A batch is
made of the unit's own items only, so its composition — and every score — depends only on the unit, never on the
worker count. With ``actors`` > 0 the build's driver starts a pool of CLIP actors (``aromni.pipeline.clip_pool``) and
the unit sends each batch to one of them; without a pool (``actors: 0``, the local executor, tests) the checkpoint is
loaded in the unit's process, once, on first use.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

from pydantic import Field

from aromni.pipeline.clip_pool import PooledClipScorer, clip_tag
from aromni.pipeline.pool_sizing import CPUS_PER_ACTOR, Actors
from aromni.pipeline.steps.base import Drop, Item, Work, register_step
from aromni.pipeline.steps.filters.base import FilterOptions, FilterStep, linear_edges
from aromni.pipeline.steps.text import TextError

REASON = "low_clip_score"
SCORE_EDGES = linear_edges(-0.2, 0.6, 40)
IMAGE_TEXT_TASKS = ("image_caption", "text_to_image")
HOLD_FACTOR = 4   # at most this many batches' worth of items are held waiting for a full batch


class ClipScoreOptions(FilterOptions):
    path: str | None = Field(None, description="CLIP checkpoint dir (save_pretrained layout), relative to data_root")
    min_score: float = Field(0.28, ge=-1, le=1, description="reject (low_clip_score) below this cosine similarity")
    recompute: bool = Field(False, description="score with the checkpoint even where LAION metadata has a similarity")
    metadata_key: str = Field("similarity", description="the meta key holding a precomputed similarity")
    batch_size: int = Field(32, ge=1, description="pairs per model call (one unit's items, in read order)")
    device: str | None = Field(None, description="cpu / cuda; default: CUDA when present")
    actors: Actors = Field(0, description="Ray actors scoring for the whole build (0: in the unit's process; "
                                          "auto: one per GPU with num_gpus > 0, else one per cpus_per_actor CPUs)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs each actor reserves")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each actor reserves (a fraction shares a GPU)")
    cpus_per_actor: float = Field(CPUS_PER_ACTOR, gt=0, description="actors: auto without GPUs: one per this many CPUs")

    def model_post_init(self, _):
        if self.recompute and not self.path:
            raise ValueError("recompute: true needs a CLIP checkpoint `path`")
        if self.actors and not self.path:
            raise ValueError("actors needs a CLIP checkpoint `path` (only the model is run on actors)")


@register_step
class ClipScoreStep(FilterStep):
    name = "clip_score"
    Options = ClipScoreOptions

    def __init__(self, options, recipe=None):
        super().__init__(options, recipe)
        self.checkpoint = None
        if self.opts.path:
            self.checkpoint = str(recipe.resolve(self.opts.path)) if recipe is not None else self.opts.path
        self._scorer = None
        self.batches = 0   # model calls this unit made (not a stat: it must not change the manifest)

    @property
    def pool_tag(self) -> str | None:
        """The CLIP pool this step asks the driver for (None: it scores in-process)."""
        if not (self.opts.actors and self.checkpoint):
            return None
        return clip_tag(self.checkpoint, self.opts.device, self.opts.batch_size)

    def attach_pools(self, pools) -> None:
        """Score on the build's CLIP actors (started by the driver) when this step asked for some."""
        pool = getattr(pools, "clip", {}).get(self.pool_tag) if self.pool_tag else None
        if pool is not None and pool.handles:
            self._scorer = PooledClipScorer(pool.handles)

    @property
    def scorer(self):
        """The model, loaded on first use (a unit whose rows all carry LAION's similarity never loads it)."""
        if self._scorer is None and self.checkpoint:
            from aromni.model.clip import load_clip
            self._scorer = load_clip(self.checkpoint, self.opts.device, self.opts.batch_size)
        return self._scorer

    @classmethod
    def path_problems(cls, opts, resolve, key: str) -> list[str]:
        if opts.path and not os.path.isfile(os.path.join(str(resolve(opts.path)), "config.json")):
            return [f"{key}.path: {resolve(opts.path)} is not a CLIP checkpoint folder (no config.json)"]
        return []

    # -- measuring -------------------------------------------------------------------------------------------------

    def _metadata_score(self, example) -> float | None:
        s = example.meta.get(self.opts.metadata_key)
        return float(s) if not self.opts.recompute and isinstance(s, (int, float)) else None

    def needs_model(self, example, media: dict) -> bool:
        return (self.checkpoint is not None and self._metadata_score(example) is None
                and media.get("image") is not None and bool(example.text))

    def score_batch(self, pairs: list) -> list[float | None]:
        """Score of each (example, media): metadata where allowed, else the model (all model pairs in one call,
        split into ``batch_size`` by the scorer); None when neither. Records ``meta["clip_score"]``."""
        scores: list[float | None] = [None] * len(pairs)
        todo = []
        for i, (ex, media) in enumerate(pairs):
            meta_score = self._metadata_score(ex)
            if meta_score is not None:
                scores[i] = meta_score
                ex.meta["clip_score"] = {"score": round(meta_score, 4), "from": "metadata"}
            elif self.needs_model(ex, media):
                todo.append(i)
        if todo:
            self.batches += 1
            got = self.scorer.score([pairs[i][1]["image"] for i in todo], [pairs[i][0].text for i in todo])
            for i, s in zip(todo, got.tolist()):
                scores[i] = s
                pairs[i][0].meta["clip_score"] = {"score": round(s, 4), "from": "model"}
        return scores

    # -- deciding --------------------------------------------------------------------------------------------------

    @staticmethod
    def is_image_text(example, media: dict) -> bool:
        return example.task in IMAGE_TEXT_TASKS and media.get("image") is not None

    def judge(self, example, media: dict, score: float | None) -> None:
        """Keep or reject one example given its score (counts; raises TextError to reject)."""
        if not self.is_image_text(example, media):
            self.stats.skip("not_image_text")
            return
        if score is None:
            self.stats.skip("no_score")
            return
        self.stats.observe("clip_score", score, SCORE_EDGES)
        self.stats[f"from.{example.meta['clip_score']['from']}"] += 1
        if score < self.opts.min_score:
            self.stats.reject(REASON)
            raise TextError(REASON, f"CLIP score {score:.3f} < {self.opts.min_score} "
                                    f"({example.meta['clip_score']['from']})")

    def check(self, example, media: dict) -> None:
        """One example (the per-example interface, ``apply``): a batch of one."""
        score = self.score_batch([(example, media)])[0] if self.is_image_text(example, media) else None
        self.judge(example, media, score)

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        """Every item comes out once, in the order it came in: Work kept, or a Drop (low_clip_score)."""
        held: list[Item] = []
        wanting = 0   # held items that need the model
        limit = self.opts.batch_size
        for item in items:
            held.append(item)
            if isinstance(item, Work) and self.applies_to(item.example) \
                    and self.is_image_text(item.example, item.media) and self.needs_model(item.example, item.media):
                wanting += 1
            if wanting >= limit or len(held) >= HOLD_FACTOR * limit:
                yield from self._flush(held)
                held, wanting = [], 0
        yield from self._flush(held)

    def _flush(self, held: list[Item]) -> Iterator[Item]:
        mine = [w for w in held if isinstance(w, Work) and self.applies_to(w.example)
                and self.is_image_text(w.example, w.media)]
        scores = dict(zip((id(w) for w in mine), self.score_batch([(w.example, w.media) for w in mine])))
        for item in held:
            if not isinstance(item, Work) or not self.applies_to(item.example):
                yield item
                continue
            self.stats["checked"] += 1
            try:
                self.judge(item.example, item.media, scores.get(id(item)))
            except TextError as e:
                yield Drop(item, e.reason, e.message)
                continue
            self.stats["kept"] += 1
            yield item
