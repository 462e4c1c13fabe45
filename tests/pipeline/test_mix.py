"""Mixing: ratio-proportional counts, stop rules, every shard holding the ratio exactly."""
from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import yaml

from aromni.pipeline.mix import MixError, RowRef, select, shard_blocks
from aromni.recipe import parse_recipe

DEMO = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml").read_text())


def recipe(*overrides):
    return parse_recipe(copy.deepcopy(DEMO), list(overrides))


def groups(**sizes):
    return {g: [RowRef(i, f"{g}/{i}", 0, i, 10 + i % 7) for i in range(n)] for g, n in sizes.items()}


def group_of(ref):
    return ref.id.split("/")[0]


def test_first_exhausted_stops_at_smallest_group():
    blocks, rep = select(recipe(), groups(text=50, image_text=7, speech_text=20))
    assert rep["blocks"] == 7
    assert {g: v["used"] for g, v in rep["groups"].items()} == {"text": 7, "image_text": 7, "speech_text": 7}
    assert all(Counter(map(group_of, b)) == {"text": 1, "image_text": 1, "speech_text": 1} for b in blocks)
    # rows are taken in the group's order: the first 7 of each
    assert [r.id for b in blocks for r in b if group_of(r) == "text"] == [f"text/{i}" for i in range(7)]


def test_all_exhausted_repeats_and_marks_repetition():
    blocks, rep = select(recipe("mixing.stop=all_exhausted"), groups(text=10, image_text=3, speech_text=4))
    assert rep["blocks"] == 10
    assert rep["groups"]["image_text"] == {"ratio": 1, "available": 3, "used": 10, "unique_used": 3, "repeated": 7}
    reps = [r.rep for b in blocks for r in b if group_of(r) == "image_text"]
    assert reps == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    with pytest.raises(MixError, match="empty group"):
        select(recipe("mixing.stop=all_exhausted"), groups(text=10, image_text=0, speech_text=4))


def test_unequal_ratio_and_interleaving():
    r = recipe("mixing.ratio={text: 2, image_text: 1, speech_text: 1}")
    blocks, rep = select(r, groups(text=9, image_text=9, speech_text=9))
    assert rep["blocks"] == 4
    assert [group_of(x) for x in blocks[0]] == ["text", "image_text", "speech_text", "text"]


@pytest.mark.parametrize("shard_rows", [3, 7, 12, 100])
def test_every_shard_holds_the_ratio(shard_rows):
    r = recipe(f"mixing.shard_rows={shard_rows}")
    blocks, _ = select(r, groups(text=40, image_text=25, speech_text=31))
    shards = shard_blocks(r, blocks)
    assert sum(len(s) for s in shards) == 75
    for s in shards:
        c = Counter(map(group_of, s))
        assert c["text"] == c["image_text"] == c["speech_text"]
    assert all(len(s) == max(3, shard_rows // 3 * 3) for s in shards[:-1])


def test_shard_by_tokens():
    r = recipe("mixing.shard_rows=null", "mixing.shard_tokens=100")
    blocks, _ = select(r, groups(text=30, image_text=30, speech_text=30))
    shards = shard_blocks(r, blocks)
    assert all(sum(x.tokens for x in s) >= 100 for s in shards[:-1])
    assert all(sum(x.tokens for x in s[:-3]) < 100 for s in shards)
