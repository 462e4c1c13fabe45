"""Shared fixtures: the demo corpus and one demo build per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray in tests stays on loopback

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """The demo corpus: the repo's demo_data/ when `make` made it, else made fresh in a temp dir."""
    d = ROOT / "demo_data"
    if (d / "tokenizer" / "tokenizer.json").exists() and (d / "laion" / "00000.tar").exists() \
            and (d / "eval" / "README.txt").exists():  # a demo_data made before the demo had eval sets: make afresh
        return d
    from aromni.demo import make_demo_corpus
    out = tmp_path_factory.mktemp("demo_data")
    make_demo_corpus(out)
    return out


@pytest.fixture(scope="session")
def demo_recipe(demo_corpus):
    from aromni.recipe import load_recipe
    return load_recipe(ROOT / "recipes" / "demo.yaml", [f"data_root={demo_corpus}"])


@pytest.fixture(scope="session")
def demo_build(demo_recipe, tmp_path_factory):
    """One demo build shared by every test that only reads it. Returns (out_dir, BuildReport)."""
    from aromni.pipeline.build import build
    out = tmp_path_factory.mktemp("demo_build")
    rep = build(demo_recipe, out, workers=2, progress=False)
    return out, rep


@pytest.fixture(scope="session")
def demo_text_tokenizer(demo_corpus):
    from aromni.model.text import load_text_tokenizer
    return load_text_tokenizer(demo_corpus / "tokenizer" / "tokenizer.json", stand_in=True)
