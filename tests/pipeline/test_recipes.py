"""recipes/pretrain.yaml and recipes/instruct.yaml, end to end on a tree of every source in its published layout:
`aromni build` succeeds, `aromni validate` passes, and every input item is in a shard or in rejects with its reason."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from aromni.cli import app
from aromni.hashing import stable_hash
from aromni.recipe import load_recipe
from tests.pipeline.readers.published import STANDIN_TOKENIZERS, fixture_tree

ROOT = Path(__file__).resolve().parents[2]
READERS = {"laion", "journeydb", "gigaspeech", "common_voice", "mls", "ultrafineweb", "anyinstruct", "voiceassistant",
           "ultrachat", "aromni_instruct"}


def run(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def build(recipe: str, out: Path, *overrides) -> dict:
    root, _ = fixture_tree()
    run("build", ROOT / "recipes" / recipe, f"data_root={root}", *STANDIN_TOKENIZERS, *overrides, "--out", out,
        "--no-progress", "--workers", "2")
    assert "ok:" in run("validate", out)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    # without its quality filter steps: the published-layout tree has no evaluation sets, and its synthetic clips and
    # short texts are not what audio_quality/language judge (tests/pipeline/steps/filters cover them on real layouts)
    return out, build("pretrain.yaml", out, "steps=[]")


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    out = tmp_path_factory.mktemp("instruct")
    # the paper's steps minus DEMAND noise (its audiomentations JIT costs ~25 s per worker; issue 5's tests cover it);
    # replies are spoken by espeak-ng instead of CosyVoice2
    voice = f"steps=[{{name: voice, options: {{backend: espeak, cache_dir: {tmp_path_factory.mktemp('voice')}}}}}]"
    return out, build("instruct.yaml", out, voice)


def accounted(out: Path, m: dict) -> None:
    """Manifest accounting == the fixture writers' expectations, and == the reject files, per source and reason."""
    _, expect = fixture_tree()
    for src, a in m["accounting"].items():
        want = expect[src]
        assert (a["read"], a["written"], a["rejected"]) == (want["read"], want["written"], want["rejected"]), src
        rejects = pq.read_table(out / "rejects" / f"{src}.parquet").to_pylist()
        assert dict(Counter(r["reason"] for r in rejects)) == a["rejected"], src
        assert all(r["id"].startswith(f"{src}/") and r["message"] for r in rejects)


@pytest.mark.slow
def test_pretrain_recipe_builds_validates_and_reconciles(pretrain):
    out, m = pretrain
    accounted(out, m)
    rows = pq.read_table(out / "data").to_pylist()
    groups = Counter(m["accounting"][r["source"]]["group"] for r in rows)
    assert groups == {"text": 7, "image_text": 7, "speech_text": 7}        # 1:1:1, stopped by the text group (7)
    assert m["mixing"]["groups"]["image_text"]["available"] == 11 and m["mixing"]["stop"] == "first_exhausted"
    assert {r["task"] for r in rows} <= {"text_to_text", "image_caption", "text_to_image", "speech_to_text",
                                         "text_to_speech"}
    assert all(len(r["input_ids"]) <= 1300 for r in rows) and m["stand_in_tokenizers"]


@pytest.mark.slow
def test_duplicates_across_units_are_dropped_at_mix_time(pretrain):
    """LAION sample 0 is re-crawled under another key in another shard: one copy stays, the first in mixing order."""
    out, m = pretrain
    dups = [r for r in pq.read_table(out / "rejects" / "laion.parquet").to_pylist() if r["reason"] == "duplicate"]
    assert len(dups) == 1
    pair = ["laion/000000000", "laion/000010000"]
    kept = min(pair, key=lambda i: (stable_hash(m["recipe"]["mixing"]["seed"], i), i))
    assert dups[0]["id"] == ({*pair} - {kept}).pop() and kept in dups[0]["message"]
    unit_written = sum(u["written"] for u in m["units"] if u["source"] == "laion")
    assert unit_written == m["accounting"]["laion"]["written"] == 6


@pytest.mark.slow
def test_instruct_recipe_builds_validates_and_every_item_is_somewhere(instruct):
    out, m = instruct
    accounted(out, m)
    rows = pq.read_table(out / "data").to_pylist()
    rejected = {s: {r["id"] for r in pq.read_table(out / "rejects" / f"{s}.parquet").to_pylist()} for s in m["accounting"]}
    for src, a in m["accounting"].items():
        ids = {r["id"] for r in rows if r["source"] == src}
        assert len(ids) == a["written"] and not ids & rejected[src]        # one group, ratio 1: every row used once
    assert all(r["task"] == "chat" and r["input_ids"][-1] == 12831 and len(r["input_ids"]) <= 3456 for r in rows)
    assert m["accounting"]["ultrachat"]["units"] == 2
    assert m["accounting"]["ultrachat"]["dropped_turns"] == fixture_tree()[1]["ultrachat"]["dropped_turns"] == 1


@pytest.mark.slow
def test_instruct_rows_have_spoken_replies_and_assistant_only_labels(instruct):
    from aromni.sample import LossPolicy, labels_and_weights
    out, _ = instruct
    rows = pq.read_table(out / "data").to_pylist()
    va = next(r for r in rows if r["id"] == "voiceassistant/alpaca/1")
    speech = [(s["role"], s["end"] - s["start"]) for s in va["segments"] if s["modality"] == "speech"]
    assert [r for r, _ in speech] == ["user", "assistant", "user", "assistant"]   # the voice step spoke the replies
    meta = json.loads(va["meta"])
    assert meta["turns"][1]["voice"]["backend"] == "espeak" and meta["kept_turns"] == 4
    labels, _ = labels_and_weights(va["input_ids"], va["segments"], "chat", LossPolicy(on="assistant"))
    first_target = next(i for i, y in enumerate(labels) if y != -100)
    assert va["input_ids"][first_target] == 12840                             # loss starts at <-Ins->
    text_only = [r for r in rows if r["source"] == "ultrachat"]
    assert text_only and all(12821 not in r["input_ids"] for r in text_only)


def test_readers_cli_lists_all_ten_with_layouts():
    info = json.loads(run("readers", "--json"))
    assert set(info) == READERS
    for name, r in info.items():
        assert len(r["layout"]) > 150 and "path:" in r["layout"], name
    text = run("readers", "journeydb")
    assert "train_anno_realease_repath.jsonl" in text and "options.text" in text
    assert "mls_{lang}[_opus]" in run("readers", "mls")                   # printed verbatim, not as rich markup


@pytest.mark.parametrize("recipe", ["pretrain.yaml", "instruct.yaml"])
def test_shipped_recipes_parse_and_say_how_to_run_them(recipe):
    path = ROOT / "recipes" / recipe
    r = load_recipe(path)                                 # the real tokenizer kinds and steps, as shipped
    head = path.read_text().split("\nname:")[0]
    assert f"aromni build recipes/{recipe}" in head and "aromni validate" in head
    for s in r.sources:
        assert not Path(s.path).is_absolute() and s.path.split("/")[0] in head, s.name
    raw = yaml.safe_load(path.read_text())
    assert raw["data_root"] == "/data/ar-omni" and "EDIT ME" in path.read_text()
    if recipe == "pretrain.yaml":
        assert r.mixing.ratio == {"text": 1, "image_text": 1, "speech_text": 1} and r.filters.max_tokens == 1300
        assert {s.reader for s in r.sources} == {"ultrafineweb", "laion", "journeydb", "gigaspeech", "common_voice",
                                                 "mls"}
        assert [s.name for s in r.steps] == ["audio_quality", "language", "decontaminate", "clip_score", "near_dup"]
    else:
        assert r.filters.max_chat_tokens == 3456 and [s.name for s in r.steps] == ["audio_quality", "language",
                                                                                       "decontaminate", "noise", "voice",
                                                                                       "near_dup"]
        assert {s.reader for s in r.sources} == {"anyinstruct", "voiceassistant", "ultrachat", "aromni_instruct"}
