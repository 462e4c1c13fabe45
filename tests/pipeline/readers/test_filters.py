"""Filters every recipe can use, each counted under its own reason (the audio ones are in test_speech_readers)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from tests.pipeline.readers.published import run_source


def test_image_min_size_and_min_tokens():
    r = run_source("laion", "laion-aesthetics-v2-5plus", ["image_caption"], filters={"min_image_side": 90})
    assert r["rejected"]["image_too_small"] == 8 and r["written"] == 0      # the 96x80 pictures
    r = run_source("journeydb", "JourneyDB/data/train", ["image_caption"], filters={"min_tokens": 1100})
    assert r["rejected"]["too_short"] == 5 and r["written"] == 0


def test_empty_text_and_duplicates_within_a_unit(tmp_path):
    d = tmp_path / "ufw"
    d.mkdir()
    rows = [{"content": "The same page.", "score": 0.9, "source": "a"}, {"content": "\u3000\n \t", "score": 0.9},
            {"content": "The same page.", "score": 0.8, "source": "b"}, {"content": "Another page.", "score": 0.1}]
    pq.write_table(pa.Table.from_pylist(rows), d / "part.parquet")
    r = run_source("ultrafineweb", "ufw", ["text_to_text"], root=tmp_path)
    assert (r["read"], r["written"], r["rejected"]) == (4, 2, {"duplicate": 1, "empty_text": 1})
    r = run_source("ultrafineweb", "ufw", ["text_to_text"], {"min_score": 0.5}, filters={"dedup": False}, root=tmp_path)
    assert (r["written"], r["rejected"]) == (2, {"empty_text": 1, "low_score": 1})
