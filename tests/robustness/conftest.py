"""Shared fixtures: one split copy of the demo corpus and one uninterrupted reference build of it, made once."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from robust_corpus import build_env, demo_corpus, run_build, snapshot, split_copy, write_recipe  # noqa: E402


@dataclass
class Reference:
    recipe: Path
    out: Path
    snap: dict
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def ray_tmp():
    # Ray's unix sockets must fit in 107 bytes: a short folder, not pytest's deep tmp path.
    d = Path(tempfile.mkdtemp(prefix="aro6-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def build_environ(ray_tmp) -> dict:
    return build_env(ray_tmp)


@pytest.fixture(scope="session")
def demo_src(tmp_path_factory) -> Path:
    return demo_corpus(tmp_path_factory.mktemp("demo_corpus"))


@pytest.fixture(scope="session")
def small_recipe(demo_src, tmp_path_factory) -> Path:
    """The demo corpus cut into 9 units (3 tars, 3+3 row groups), and recipes/demo.yaml pointed at it."""
    root = tmp_path_factory.mktemp("small")
    data = split_copy(demo_src, root / "data")
    return write_recipe(root / "recipe.yaml", data)


@pytest.fixture(scope="session")
def reference(small_recipe, tmp_path_factory, build_environ) -> Reference:
    """An uninterrupted build: what every crashed, resumed or retried build must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("reference") / "out"
    r = run_build(small_recipe, out, build_environ)
    assert r.returncode == 0, r.stderr[-3000:]
    return Reference(small_recipe, out, snapshot(out), r.stdout, r.stderr)
