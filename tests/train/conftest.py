"""Fixtures for the trainer: the session's demo build, a tiny random Chameleon sized to its ids, recipe overrides."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "recipes" / "train_tiny.yaml"


@pytest.fixture(scope="session")
def shards_dir(demo_build) -> Path:
    return demo_build[0]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, shards_dir) -> Path:
    """A tiny random Chameleon (real vocabulary map, swin-norm) whose vocabulary just covers the demo's ids: the
    stand-in BPE's ids stay far below 65,536, and a smaller lm_head keeps CPU steps cheap."""
    import numpy as np
    import pyarrow.parquet as pq

    from aromni.model.chameleon import write_tiny_chameleon
    top = max(int(np.max(pq.read_table(f, columns=["input_ids"]).column(0).combine_chunks().values))
              for f in sorted((shards_dir / "data").glob("*.parquet")))
    vocab = max(16384, (top // 1024 + 1) * 1024)
    return write_tiny_chameleon(tmp_path_factory.mktemp("tiny_lm"), seed=0, vocab_size=vocab)


def tiny_overrides(shards_dir: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """train_tiny.yaml pointed at the session's data and model; 24-step schedule."""
    return [f"data.path={shards_dir}", f"model.path={model}", f"output_dir={out}", "data.prefetch=0",
            "ds.scheduler.params.total_num_steps=24", "ds.scheduler.params.warmup_num_steps=2",
            "ds.optimizer.params.lr=0.004", "ds.scheduler.params.warmup_max_lr=0.004", "train.keep_checkpoints=10",
            "train.save_every=4", *extra]
