"""``clip_score``: the CLIP similarity of an image and its caption (image_caption / text_to_image examples), from a
local checkpoint in transformers' CLIPModel/CLIPProcessor format (``aromni.model.clip``); reason ``low_clip_score``.

LAION rows already carry the similarity img2dataset kept (``meta["similarity"]``, computed by LAION with CLIP
ViT-B/32): it is used as it is unless ``recompute: true`` (then the checkpoint scores every pair, and no checkpoint is
needed when ``recompute`` is false and every row has one — rows without it are scored by the checkpoint if ``path`` is
set, else kept and counted as ``skipped.no_score``). Recorded: ``meta["clip_score"] = {"score": s, "from":
"metadata" | "model"}``. Scores of one checkpoint are comparable only among themselves: pick ``min_score`` for the
checkpoint (LAION-5B kept >= 0.28 with ViT-B/32, LAION-400M >= 0.3).

Batching: ``score_batch(pairs)`` scores many (example, media) pairs in batches of ``batch_size``; today's per-example
``apply`` calls it with one pair (the step interface has no batches yet); the unit rewrite's batched ``run`` calls it
with many.
"""
from __future__ import annotations

from pydantic import Field

from aromni.pipeline.steps.base import register_step
from aromni.pipeline.steps.filters.base import FilterOptions, FilterStep, linear_edges
from aromni.pipeline.steps.text import TextError

REASON = "low_clip_score"
SCORE_EDGES = linear_edges(-0.2, 0.6, 40)


class ClipScoreOptions(FilterOptions):
    path: str | None = Field(None, description="CLIP checkpoint dir (save_pretrained layout), relative to data_root")
    min_score: float = Field(0.28, ge=-1, le=1, description="reject (low_clip_score) below this cosine similarity")
    recompute: bool = Field(False, description="score with the checkpoint even where LAION metadata has a similarity")
    metadata_key: str = Field("similarity", description="the meta key holding a precomputed similarity")
    batch_size: int = Field(32, ge=1)
    device: str | None = Field(None, description="cpu / cuda; default: CUDA when present")

    def model_post_init(self, _):
        if self.recompute and not self.path:
            raise ValueError("recompute: true needs a CLIP checkpoint `path`")


@register_step
class ClipScoreStep(FilterStep):
    name = "clip_score"
    Options = ClipScoreOptions

    def __init__(self, options, recipe=None):
        super().__init__(options, recipe)
        self.scorer = None
        if self.opts.path:
            from aromni.model.clip import load_clip
            path = str(recipe.resolve(self.opts.path)) if recipe is not None else self.opts.path
            self.scorer = load_clip(path, self.opts.device, self.opts.batch_size)

    @classmethod
    def path_problems(cls, opts, resolve, key: str) -> list[str]:
        import os
        if opts.path and not os.path.isfile(os.path.join(str(resolve(opts.path)), "config.json")):
            return [f"{key}.path: {resolve(opts.path)} is not a CLIP checkpoint folder (no config.json)"]
        return []

    def score_batch(self, pairs: list) -> list[float | None]:
        """Score of each (example, media): metadata where allowed, else the model (batched); None when neither."""
        o = self.opts
        scores: list[float | None] = [None] * len(pairs)
        todo = []
        for i, (ex, media) in enumerate(pairs):
            meta_score = ex.meta.get(o.metadata_key)
            if not o.recompute and isinstance(meta_score, (int, float)):
                scores[i] = float(meta_score)
                ex.meta["clip_score"] = {"score": round(float(meta_score), 4), "from": "metadata"}
            elif self.scorer is not None and media.get("image") is not None and ex.text:
                todo.append(i)
        if todo:
            got = self.scorer.score([pairs[i][1]["image"] for i in todo], [pairs[i][0].text for i in todo])
            for i, s in zip(todo, got.tolist()):
                scores[i] = s
                pairs[i][0].meta["clip_score"] = {"score": round(s, 4), "from": "model"}
        return scores

    def check(self, example, media: dict) -> None:
        if example.task not in ("image_caption", "text_to_image") or media.get("image") is None:
            self.stats.skip("not_image_text")
            return
        (score,) = self.score_batch([(example, media)])
        if score is None:
            self.stats.skip("no_score")
            return
        self.stats.observe("clip_score", score, SCORE_EDGES)
        self.stats[f"from.{example.meta['clip_score']['from']}"] += 1
        if score < self.opts.min_score:
            self.stats.reject(REASON)
            raise TextError(REASON, f"CLIP score {score:.3f} < {self.opts.min_score} "
                                    f"({example.meta['clip_score']['from']})")
