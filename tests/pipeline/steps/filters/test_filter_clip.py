"""The clip_score step: LAION's similarity is used as it is, the checkpoint scores the rest (or everything on
recompute), low scores are rejected as low_clip_score."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aromni.model.clip import ClipScorer, write_random_clip
from aromni.pipeline.readers.base import Example
from aromni.pipeline.steps import STEPS
from aromni.pipeline.steps.text import TextError


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_random_clip(tmp_path_factory.mktemp("clip"))


def ex(key, text, meta=None, task="image_caption"):
    e = Example(key=key, text=text, meta=dict(meta or {}))
    e.id, e.task = f"laion/{key}", task
    return e, {"image": Image.fromarray(np.random.default_rng(len(key)).integers(0, 255, (48, 48, 3), dtype=np.uint8))}


def test_metadata_similarity_is_used_without_a_model():
    step = STEPS["clip_score"]({"min_score": 0.3})
    e, m = ex("a", "a dog", {"similarity": 0.35})
    step.apply(e, m, None)
    assert e.meta["clip_score"] == {"score": 0.35, "from": "metadata"}
    e2, m2 = ex("b", "a dog", {"similarity": 0.1})
    with pytest.raises(TextError) as err:
        step.apply(e2, m2, None)
    assert err.value.reason == "low_clip_score"
    e3, m3 = ex("c", "a dog")                        # no similarity, no model: kept, counted
    step.apply(e3, m3, None)
    assert step.stats["skipped.no_score"] == 1 and step.stats["rejected.low_clip_score"] == 1


def test_model_scores_rows_without_metadata_and_on_recompute(clip_dir):
    scorer = ClipScorer(clip_dir, device="cpu")
    e, m = ex("d", "a red car", {"similarity": 0.9})
    want = float(scorer.score([m["image"]], ["a red car"])[0])
    step = STEPS["clip_score"]({"path": clip_dir, "recompute": True, "min_score": want - 0.01, "device": "cpu"})
    step.apply(e, m, None)
    assert e.meta["clip_score"]["from"] == "model" and e.meta["clip_score"]["score"] == pytest.approx(want, abs=1e-4)
    strict = STEPS["clip_score"]({"path": clip_dir, "min_score": want + 0.01, "device": "cpu"})
    e2, m2 = ex("d", "a red car")
    with pytest.raises(TextError, match="CLIP score"):
        strict.apply(e2, m2, None)
    # batched scoring gives the one-by-one scores
    pairs = [ex(k, t) for k, t in (("e", "a cat"), ("ff", "the beach"), ("ggg", "a photo of a dog"))]
    batch = strict.score_batch(pairs)
    single = [strict.score_batch([p])[0] for p in pairs]
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_other_tasks_are_skipped_and_bad_options():
    step = STEPS["clip_score"]({})
    e, m = ex("h", "text", task="text_to_text")
    step.apply(e, {}, None)
    assert step.stats["skipped.not_image_text"] == 1
    with pytest.raises(ValueError):
        STEPS["clip_score"].Options(recompute=True)


def test_path_problems_name_the_key(clip_dir, tmp_path):
    cls = STEPS["clip_score"]
    assert cls.path_problems(cls.Options(path=clip_dir), str, "steps[1].options") == []
    assert cls.path_problems(cls.Options(path=str(tmp_path)), str, "steps[1].options") == [
        f"steps[1].options.path: {tmp_path} is not a CLIP checkpoint folder (no config.json)"]
