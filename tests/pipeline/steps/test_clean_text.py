"""clean_text: what was cut from a long document is recorded (issue 15.7, first half)."""
from __future__ import annotations

import pytest

from aromni.pipeline.steps.text import TextError, clean_text


def test_a_cut_records_how_many_characters_went():
    doc = " ".join(f"word{i}" for i in range(1000))  # 6,889 characters
    out, info = clean_text(doc, 1, 100)
    assert len(out) <= 100 and doc.startswith(out) and not out.endswith(" ")
    assert info["truncated_chars"] == len(doc) - len(out) and info["original_chars"] == len(doc)


def test_no_cut_no_record():
    out, info = clean_text("a short text", 1, 100)
    assert out == "a short text" and "truncated_chars" not in info
    with pytest.raises(TextError):
        clean_text("  ", 1, 100)
