"""aromni card: README.md that huggingface_hub parses and datasets.load_dataset(DIR) loads (shards only)."""
from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from aromni.dataset.card import size_category, write_card
from aromni.sample import ROW_SCHEMA


@pytest.fixture(scope="module")
def card(build_dir):
    return write_card(build_dir, source_licenses={"laion": "cc-by-4.0"})


def test_card_parses_with_the_front_matter_the_hub_reads(build_dir, card):
    from huggingface_hub import DatasetCard

    path, st = card
    c = DatasetCard.load(path)
    d = c.data.to_dict()
    shards = [s["path"] for s in json.loads((build_dir / "manifest.json").read_text())["shards"]]
    assert d["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": shards}]}]
    assert d["license"] == "other"  # only one of three sources declared
    assert {"image-to-text", "text-to-image", "automatic-speech-recognition", "text-to-speech",
            "text-generation", "any-to-any"} == set(d["task_categories"])
    assert d["size_categories"] == ["n<1K"] and "stand-in-tokenizers" in d["tags"]
    assert [f["name"] for f in d["dataset_info"]["features"]] == ROW_SCHEMA.names
    assert d["dataset_info"]["splits"][0]["num_examples"] == st["rows"]
    body = c.text
    assert "WARNING: STAND-IN tokenizers" in body.split("##")[0]  # said before anything else
    assert "| laion | laion | image_text |" in body and "cc-by-4.0" in body
    assert "not declared" in body  # the other two sources
    for p in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", body):
        assert (build_dir / p).is_file()
    assert "## Recipe" in body and "data_root:" in body


def test_load_dataset_reads_the_shards_not_the_rejects(build_dir, card, tmp_path):
    import datasets

    ds = datasets.load_dataset(str(build_dir), split="train", cache_dir=str(tmp_path / "cache"))
    first = pq.read_table(sorted((build_dir / "data").glob("*.parquet"))[0]).slice(0, 1).to_pylist()[0]
    assert ds.num_rows == card[1]["rows"]
    assert ds.features == datasets.Features.from_arrow_schema(ROW_SCHEMA)
    assert ds[0]["id"] == first["id"] and ds[0]["input_ids"] == first["input_ids"]


def test_declared_licenses_become_the_dataset_license(build_dir, tmp_path):
    from huggingface_hub import DatasetCard

    every = {s: "apache-2.0" for s in ("laion", "gigaspeech", "ultrafineweb")}
    path, _ = write_card(build_dir, source_licenses=every, plots=False)
    assert DatasetCard.load(path).data.license == "apache-2.0"
    path, st = write_card(build_dir, license="cc-by-4.0", repo_id="org/demo", plots=False)
    c = DatasetCard.load(path)
    assert c.data.license == "cc-by-4.0" and "load_dataset('org/demo'" in c.text
    assert len(st["plots"]) == 9 and all(f"]({p})" in c.text for p in st["plots"])  # plots of the first card


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 99_999, 100_000, 10**10)] == \
           ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "n>10B"]


def test_plots_are_redrawn_only_when_stale(build_dir, card):
    import os

    plots = [build_dir / p for p in card[1]["plots"]]
    before = [p.stat().st_mtime_ns for p in plots]
    write_card(build_dir, plots=None)
    assert [p.stat().st_mtime_ns for p in plots] == before  # fresh: kept
    drawn_long_ago = (build_dir / "manifest.json").stat().st_mtime - 3600
    os.utime(plots[0], (drawn_long_ago, drawn_long_ago))  # the build was redone after this plot was drawn
    write_card(build_dir, plots=None)
    assert all(p.stat().st_mtime >= (build_dir / "manifest.json").stat().st_mtime for p in plots)
