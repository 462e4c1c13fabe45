"""Fixtures for the dataset tools: a private copy of the session's demo build per test module (the tools write
README.md, plots/ and show/ into the folder they read, so modules must not share one)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

PLOTS = ["plots/lengths_by_task.png", "plots/mixing.png", "plots/rejects_by_reason.png", "plots/tokens_by_modality.png"]
# one histogram per quantity the demo's filter steps measure (recipes/demo.yaml: audio_quality, language)
FILTER_PLOTS = ["plots/filter_audio_quality_clipping.png", "plots/filter_audio_quality_rate.png",
                "plots/filter_audio_quality_snr_db.png", "plots/filter_audio_quality_speech_fraction.png",
                "plots/filter_language_keep_confidence.png"]


def uploaded(build: Path) -> list[str]:
    """What `aromni publish` must send for a build, in order: card, manifest, shards, rejects, plots."""
    m = json.loads((build / "manifest.json").read_text())
    return ["README.md", "manifest.json", *sorted(s["path"] for s in m["shards"]), *sorted(m["rejects"]), *PLOTS, *FILTER_PLOTS]


def copy_build(src: Path, dst: Path) -> Path:
    """A build folder without its parts/ (the dataset tools never read them)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("parts", "show", "plots", "README.md"))
    return dst


@pytest.fixture(scope="module")
def build_dir(demo_build, tmp_path_factory) -> Path:
    return copy_build(demo_build[0], tmp_path_factory.mktemp("dataset") / "build")


@pytest.fixture
def fresh_build(demo_build, tmp_path) -> Path:
    """A copy a test may damage."""
    return copy_build(demo_build[0], tmp_path / "build")


def edit_manifest(folder: Path, fn) -> None:
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))
