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


def _reference_clean(text: str) -> str:
    """The clean-up's definition, written the plain way: control characters -> space, NFC, every run of spaces and
    tabs -> one space, three or more newlines -> two, stripped."""
    import re
    import unicodedata
    t = unicodedata.normalize("NFC", re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", " ", text))
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", t)).strip()


def test_whitespace_runs_equal_the_plain_definition():
    import random
    rng = random.Random(0)
    alphabet = [" ", " ", "\t", "\n", "\r", "\x00", "\x1f", "\x85", "a", "b", "e\u0301", "\u00e9", "\ufffd", "\u3000"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    texts += ["a  b", "a\tb", "a \t b", "a\t\t b", " x ", "a\n\n\nb", "a \n\n\n\n b", "\t\ta"]
    compared = 0
    for t in texts:
        want = _reference_clean(t)
        if not want:
            with pytest.raises(TextError):
                clean_text(t, 1, None)
            continue
        assert clean_text(t, 1, None)[0] == want, repr(t)
        compared += 1
    assert compared > 2000
