"""AnyInstruct (speech_conv jsonl + speech.tar, part1 json + tars), VoiceAssistant-400K (parquet, multi-round),
UltraChat (jsonl): dialogs become chat rows with the user's speech, transcripts and replies in place."""
from __future__ import annotations

import io

import pytest
import soundfile as sf

from aromni.pipeline.readers import READERS, Example
from aromni.sample import check_row
from tests.pipeline.readers.published import fixture_tree, run_source, unit_level


@pytest.fixture(scope="module")
def tree():
    return fixture_tree()


def count(ids, *markers):
    return [ids.count(m) for m in markers]


def test_anyinstruct_speech_conv_and_part1(tree):
    root, expect = tree
    r = run_source("anyinstruct", "AnyInstruct", ["chat"], {"unit_bytes": 600, "dialogs_per_unit": 2})
    assert r["units"] >= 4                     # jsonl byte ranges + the JSON array cut in two-dialog units
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["anyinstruct"])
    conv = [x for x in r["rows"] if x.meta["subset"] == "speech_conv"]
    assert len(conv) == 4 and all(check_row(x.input_ids, x.segments) == [] for x in r["rows"])
    two = next(x for x in conv if x.meta["kept_turns"] == 4)
    # two exchanges, each: user speech, <-Ins-> transcript <-Res-> reply, reply speech, <eom>
    assert count(two.input_ids, 12821, 12840, 12841, 12830, 12831) == [4, 2, 2, 2, 2]
    assert [t["speech"] for t in two.meta["turns"]][0].startswith("chunk_00000/")
    part = [x for x in r["rows"] if x.meta["subset"] == "part1"]
    assert sorted(x.input_ids.count(8197) for x in part) == [1, 1]     # the user's image; the assistant's image
    drawn = next(x for x in part if x.meta["kept_turns"] == 4)
    image = next(s for s in drawn.segments if s.modality == "image")
    assert image.role == "assistant"                                    # a generated image is a target


def test_anyinstruct_one_subset_folder(tree):
    root, _ = tree
    reader = READERS["anyinstruct"]("a", root / "AnyInstruct" / "speech_conv", {})
    items = [x for u in reader.units() for x in reader.read(u)]
    assert len(items) == 5 and sum(isinstance(x, Example) for x in items) == 4
    assert items[0].turns[0].role == "user" and items[0].turns[1].role == "assistant"
    assert sf.info(io.BytesIO(items[0].turns[0].audio)).format == "MP3"     # the mp3 member, found by its path


def test_voiceassistant_multi_round(tree):
    root, expect = tree
    r = run_source("voiceassistant", "VoiceAssistant-400K/data", ["chat"])
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["voiceassistant"])
    by_id = {x.id: x for x in r["rows"]}
    assert set(by_id) == {"voiceassistant/identity/0", "voiceassistant/alpaca/1"}
    two = by_id["voiceassistant/alpaca/1"]
    assert two.meta["rounds"] == 2 and count(two.input_ids, 12821, 12840, 12831) == [2, 2, 2]
    single = run_source("voiceassistant", "VoiceAssistant-400K/data", ["chat"], {"multi_round": False})
    assert single["read"] == 4 and {x.id for x in single["rows"]} >= {"voiceassistant/alpaca/1/0",
                                                                       "voiceassistant/alpaca/1/1"}


def test_ultrachat_text_dialogs(tree):
    root, expect = tree
    r = run_source("ultrachat", "ultrachat", ["chat"])
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["ultrachat"])
    assert r["dropped_turns"] == expect["ultrachat"]["dropped_turns"]
    odd = next(x for x in r["rows"] if x.id == "ultrachat/2")
    assert odd.meta["dropped_reasons"] == {"unanswered": 1} and odd.meta["kept_turns"] == 2
    assert all(12840 not in x.input_ids and 12821 not in x.input_ids for x in r["rows"])   # text only


def test_chat_length_limit_drops_whole_turns(tree):
    r = run_source("anyinstruct", "AnyInstruct/speech_conv", ["chat"], filters={"max_chat_tokens": 150})
    assert r["dropped_turns"] > 0 and all(len(x.input_ids) <= 150 and x.input_ids[-1] == 12831 for x in r["rows"])
    assert all(x.meta["kept_turns"] == 2 for x in r["rows"])
    tiny = run_source("anyinstruct", "AnyInstruct/speech_conv", ["chat"], filters={"max_chat_tokens": 40})
    assert tiny["written"] == 0 and tiny["rejected"] == {"missing_audio": 1, "too_long": 4}
