"""CLIP scoring from a local transformers-format checkpoint (a tiny RANDOM CLIP saved with save_pretrained)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aromni.model.clip import ClipError, ClipScorer, write_random_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_random_clip(tmp_path_factory.mktemp("clip"))


def images(n):
    return [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(n)]


def test_scores_are_cosines_of_the_model_embeddings(clip_dir):
    s = ClipScorer(clip_dir, device="cpu", batch_size=2)
    ims, texts = images(3), ["a photo of a dog", "a red car on the beach", "cat"]
    got = s.score(ims, texts)
    assert got.shape == (3,) and np.all(np.abs(got) <= 1) and s.stand_in
    # the same pairs one at a time, and by hand from the model's features
    one = np.concatenate([s.score([im], [t]) for im, t in zip(ims, texts)])
    np.testing.assert_allclose(got, one, atol=1e-5)
    with torch.inference_mode():
        b = s.processor(text=[texts[1]], images=[ims[1]], return_tensors="pt", padding=True)
        out = s.model(**b)
    ref = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert got[1] == pytest.approx(ref, abs=1e-5)
    assert len(set(np.round(got, 6))) == 3        # different pairs, different scores


def test_mismatched_lengths(clip_dir):
    with pytest.raises(ValueError):
        ClipScorer(clip_dir, device="cpu").score(images(2), ["a"])


def test_a_dir_that_does_not_load_names_the_path(tmp_path, clip_dir):
    with pytest.raises(ClipError, match=str(tmp_path / "nope")):
        ClipScorer(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ClipError, match=f"{broken}.*does not load"):
        ClipScorer(broken)
    assert issubclass(ClipError, ValueError)
