"""Batched generation: several prompts in one decode give, greedy, the same replies as one prompt at a time, for
text, speech and guided images (three CFG rows per prompt)."""
from __future__ import annotations

import pytest
import torch

from aromni.infer.batch import generate_batch
from aromni.infer.cfg import Guidance
from aromni.infer.generate import Options, Session
from aromni.infer.lm import ChameleonLM
from aromni.infer.state import Constraints, VocabMasks
from aromni.layout import Layout
from aromni.model.chameleon import load_chameleon

L16 = Layout(image_tokens=16)   # 16-code images: a guided image fits in a short test


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return ChameleonLM(load_chameleon(tiny_model_dir, dtype=torch.float64))


PROMPTS = [[0, 300, 301, 12830, 302], [0, 310, 12830, 311, 312, 313, 314], [0, 320, 12830]]


@pytest.mark.parametrize("c, guided", [
    (Constraints(greedy=True, stop_ids=()), False),                                  # text (any id), no early stop
    (Constraints(text=False, images=0, speech=1, start=L16.boa, greedy=True), False),  # tts
    (Constraints(text=False, images=1, speech=0, start=L16.boi, image_greedy=True), True),  # t2i, CFG rows
], ids=["text", "speech", "guided-image"])
def test_batched_greedy_equals_one_by_one(lm, c, guided):
    masks = VocabMasks(L16, lm.vocab_size)
    opts = Options(max_new_tokens=L16.image_tokens + 3 if guided else 12, guidance=Guidance(enabled=guided))
    single = []
    for p in PROMPTS:
        s = Session(lm, L16, masks=masks)
        s.extend(p)
        single.append([x.token for x in s.generate(c, opts)])
    res = generate_batch(lm, PROMPTS, masks, c, opts, L16)
    assert res.ids == single
    if guided:
        assert all(r[0] == L16.boi and r[L16.image_tokens + 1] == L16.eoi for r in res.ids)


@pytest.mark.parametrize("task", ["tts", "caption"])
def test_omni_batch_replies_in_order_as_alone(omni, task, tmp_path):
    """Omni.batch gives each input the reply it gets alone (tts and caption decode greedy), in input order."""
    import numpy as np
    from PIL import Image
    if task == "tts":
        inputs = ["hello world", "a red fox", "this is a test"]
    else:
        inputs = []
        for i in range(2):
            inputs.append(tmp_path / f"{i}.png")
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(inputs[-1])
    batched = omni.batch(task, inputs, max_new_tokens=10)
    one = [getattr(omni, task)(x, max_new_tokens=10) for x in inputs]
    assert [r.ids for r in batched] == [r.ids for r in one]
    assert batched[0].metrics["batch_size"] == len(inputs)


def test_sampled_batch_equals_sampled_alone(lm):
    masks = VocabMasks(L16, lm.vocab_size)
    c, opts = Constraints(stop_ids=()), Options(max_new_tokens=15, seed=11)
    single = []
    for p in PROMPTS:
        s = Session(lm, L16, masks=masks)
        s.extend(p)
        single.append([x.token for x in s.generate(c, opts)])
    assert generate_batch(lm, PROMPTS, masks, c, opts, L16).ids == single
