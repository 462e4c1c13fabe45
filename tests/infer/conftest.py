"""Fixtures for the decoder: a tiny random Chameleon in HF format with a Chameleon-layout BPE beside it, and a fake
language model (random logits, bookkeeping caches) cheap enough for property tests over whole image spans."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aromni.layout import AR_OMNI_V0_1  # noqa: E402

BPE_TEXTS = ["hello world, this is a test.", "Convert this text into speech. This is input: ",
             "USER: GPT: Describe this image.", "Can you please convert this speech into written text?",
             "Create a picture that matches the essence of this text.", "a red fox in the snow"] * 4


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from aromni.model.chameleon import write_tiny_chameleon
    from aromni.model.text import write_chameleon_style_bpe
    d = tmp_path_factory.mktemp("tiny_omni")
    write_tiny_chameleon(d, seed=0)
    write_chameleon_style_bpe(BPE_TEXTS, d / "tokenizer.json", vocab_size=300)
    return d


@pytest.fixture(scope="session")
def omni(tiny_model_dir):
    import warnings
    from aromni.infer.tasks import Omni
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Omni.load(tiny_model_dir)


class FakeCache:
    """Per row: the ids it holds (None = left padding). Lets tests check that rows stay in step."""

    def __init__(self, rows=None):
        self.rows = rows if rows is not None else [[]]

    def length(self) -> int:
        return len(self.rows[0])


class FakeLM:
    """Random logits (seeded), with extra weight on chosen ids so that images, speech and stops all happen.

    Every forward checks the batch bookkeeping that a real model would silently get wrong: the attention mask
    covers cache + new ids and hides exactly the padding, and each row's position is its count of real ids."""
    device = "cpu"

    def __init__(self, seed: int = 0, bias: dict[int, float] | None = None, vocab_size: int = AR_OMNI_V0_1.vocab_size,
                 max_len: int = 4096):
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab_size, self.max_len = vocab_size, max_len
        self.bias = bias or {}
        self.calls = 0
        self.batched = 0   # calls with the three guided rows

    def new_cache(self):
        return FakeCache()

    def forward(self, ids, cache, attention_mask=None, position_ids=None, vocab=None):
        ids = ids.tolist()
        assert len(ids) == len(cache.rows), "batch size differs from the cache's rows"
        if attention_mask is not None:
            assert attention_mask.shape == (len(ids), cache.length() + len(ids[0]))
            for row, m in zip(cache.rows, attention_mask.tolist()):
                assert m[:len(row)] == [0 if t is None else 1 for t in row]
        if position_ids is not None:
            for row, p in zip(cache.rows, position_ids.tolist()):
                assert p[0] == sum(t is not None for t in row)
        for row, new in zip(cache.rows, ids):
            row.extend(new)
        self.calls += 1
        self.batched += len(ids) == 3
        lo, hi = vocab if vocab is not None else (0, self.vocab_size - 1)
        logits = torch.randn(len(ids), hi - lo + 1, generator=self.gen) * 4  # peaked, as a trained model's
        for i, b in self.bias.items():
            if lo <= i <= hi:
                logits[:, i - lo] += b
        return logits

    @staticmethod
    def cache_length(cache) -> int:
        return cache.length()

    @staticmethod
    def stack_caches(caches, length):
        rows = []
        for c in caches:
            for r in c.rows:
                rows.append([None] * (length - len(r)) + list(r))
        return FakeCache(rows)

    @staticmethod
    def crop(cache, n):
        for r in cache.rows:
            del r[-n:]

    @staticmethod
    def select_rows(cache, rows):
        return FakeCache([cache.rows[i] for i in rows])


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Decoding runs many small ops; with several intra-op threads on a busy machine they spin against each other
    (10x slower here). One thread for these tests, restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
