"""GigaSpeech (original json + opus, HF parquet), Common Voice (tsv + mp3, old and new columns), MLS (opus tree)."""
from __future__ import annotations

import pytest

from aromni.pipeline.readers import READERS
from aromni.pipeline.readers.gigaspeech import normalise_transcript
from tests.pipeline.readers.published import (fixture_tree, run_source, unit_level, write_common_voice,
                                              write_gigaspeech_hf)


@pytest.fixture(scope="module")
def tree():
    return fixture_tree()


def test_gigaspeech_original_release(tree):
    root, expect = tree
    r = run_source("gigaspeech", "GigaSpeech", ["speech_to_text"], {"subset": "XL", "audios_per_unit": 2})
    assert r["units"] == 2                      # 3 recordings, 2 per unit: cut at a byte offset of GigaSpeech.json
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["gigaspeech"])
    row = next(x for x in r["rows"] if x.id == "gigaspeech/POD0000000001_S0001")
    assert row.meta["transcript"] == "Glue the sheet to the dark blue background."
    assert 0.75 <= row.meta["audio"]["seconds"] <= 0.85 and row.meta["aid"] == "POD0000000001"
    sub = run_source("gigaspeech", "GigaSpeech", ["speech_to_text"], {"subset": "L"})
    assert sub["rejected"]["not_in_subset"] == 3   # the S0000 segments are XL only


def test_gigaspeech_hf_parquet(tmp_path):
    write_gigaspeech_hf(tmp_path)
    reader = READERS["gigaspeech"]("g", tmp_path / "gigaspeech-hf" / "data", {})
    items = [x for u in reader.units() for x in reader.read(u)]
    assert [type(x).__name__ for x in items] == ["Example"] * 3 + ["Rejected"]
    assert items[0].text == "The birch canoe slid on the smooth planks." and items[-1].reason == "garbage_only"
    assert normalise_transcript("WHAT <COMMA> I SAID <QUESTIONMARK> <SIL>") == "What, I said?"


@pytest.mark.parametrize("old", [False, True])
def test_common_voice_tsv_columns_votes_and_mp3(tree, tmp_path, old):
    root, expect = (tree if not old else (tmp_path, None))
    if old:
        expect = {"common_voice": write_common_voice(tmp_path, old=True)}
    folder = "cv-corpus-5.1-2020-06-22/en" if old else "cv-corpus-20.0-2024-12-06/en"
    r = run_source("common_voice", folder, ["speech_to_text"], {"min_vote_margin": 1, "unit_bytes": 200}, root=root)
    assert r["units"] > 2                                     # tiny byte ranges: the tsv is split, nothing lost
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["common_voice"])
    row = r["rows"][0]
    assert row.id == "common_voice/common_voice_en_1000" and row.meta["audio"]["sample_rate"] == 48000
    assert ("sentence_id" in row.meta) == (not old) and row.meta["age"] == "twenties"


def test_mls_opus_tree(tree):
    root, expect = tree
    r = run_source("mls", "mls_english_opus/train", ["speech_to_text"], {"unit_bytes": 64})
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["mls"])
    row = r["rows"][0]
    assert row.meta["speaker"] == "4800" and row.meta["path"].endswith(".opus")
    assert row.meta["transcript"] == "the birch canoe slid on the smooth planks"
    reader = READERS["mls"]("mls", root / "mls_english_opus", {"split": "train"})
    assert reader.files() == [str(root / "mls_english_opus" / "train" / "transcripts.txt")]


def test_speech_filters_count_under_their_own_reason(tree):
    r = run_source("mls", "mls_english_opus/train", ["speech_to_text"], filters={"min_audio_seconds": 2.0})
    assert r["rejected"] == {"missing_audio": 1, "audio_too_short": 4}
    r = run_source("mls", "mls_english_opus/train", ["speech_to_text"], filters={"max_audio_seconds": 0.5})
    assert r["rejected"] == {"missing_audio": 1, "audio_too_long": 4}
    r = run_source("common_voice", "cv-corpus-20.0-2024-12-06/en", ["text_to_speech"], filters={"max_tokens": 30})
    assert r["rejected"] == {"missing_audio": 1, "too_long": 5}


@pytest.mark.parametrize("split", ["invalidated", "other", "reported"])
def test_common_voice_unvalidated_splits_get_the_vote_rule(tmp_path, split):
    """Issue 15.4: clips the community voted down are not training data by default: the unvalidated splits apply
    Common Voice's rule (up >= 2, up - down >= 1) unless a vote option is given explicitly."""
    write_common_voice(tmp_path)
    lang = tmp_path / "cv-corpus-20.0-2024-12-06" / "en"
    rows = (lang / "validated.tsv").read_text().splitlines()
    cols = rows[0].split("\t")
    out = [rows[0]]
    for i, line in enumerate(rows[1:5]):  # votes (up, down): voted down, unvoted, one vote, validated
        cells = line.split("\t")
        cells[cols.index("up_votes")], cells[cols.index("down_votes")] = [("0", "2"), ("0", "0"), ("1", "0"),
                                                                          ("2", "0")][i]
        out.append("\t".join(cells))
    (lang / f"{split}.tsv").write_text("\n".join(out) + "\n")
    reader = READERS["common_voice"]("cv", lang, {"split": split})
    items = [x for u in reader.units() for x in reader.read(u)]
    assert [getattr(x, "reason", "ok") for x in items] == ["votes", "votes", "votes", "ok"]
    # an explicit vote option replaces the rule (here: keep anything not voted down twice)
    reader = READERS["common_voice"]("cv", lang, {"split": split, "max_down_votes": 1})
    assert [getattr(x, "reason", "ok") for u in reader.units() for x in reader.read(u)] == ["votes", "ok", "ok", "ok"]
    assert "vote rule" in READERS["common_voice"].layout_doc
