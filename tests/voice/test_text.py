"""The speakable-reply rule: normalisation for the ear, unspeakable replies rejected with their reason, long ones trimmed."""
from __future__ import annotations

import pytest

from aromni.voice.text import Unspeakable, normalise, speakable, trim_to


@pytest.mark.parametrize("text,expected", [
    ("It costs $5 and 50% off.", "It costs five dollars and fifty percent off."),
    ("Meet Dr. Smith at 10:30 on the 3rd floor.", "Meet Doctor Smith at ten thirty on the third floor."),
    ("Born in 1999, e.g. last century.", "Born in nineteen ninety-nine, for example last century."),
    ("Pi is 3.14 and a million is 1,000,000.", "Pi is three point one four and a million is one million."),
    ("Salt & pepper, 21 °C", "Salt and pepper, twenty-one degrees Celsius"),
])
def test_normalise_speaks_numbers_symbols_and_abbreviations(text, expected):
    assert normalise(text) == expected


def test_markdown_is_unwrapped_and_recorded():
    s = speakable("## Tips\n- **Drink** water\n- See [the guide](http://x.org/g) daily")
    assert s.text == "Tips. Drink water. See the guide daily"
    assert s.info["spoken_text"] == s.text and "removed_chars" not in s.info


@pytest.mark.parametrize("reply,reason", [
    ("```python\nprint('hi')\nfor i in range(3):\n    pass\n```", "unspeakable_code"),
    ("| a | b |\n|---|---|\n| 1 | 2 |", "unspeakable_table"),
    ("https://example.org/a/very/long/path?x=1", "unspeakable_url"),
    ("   ", "unspeakable_empty"),
    ("Here:\n```\n" + "x = compute(y) + 1\n" * 10 + "```", "unspeakable_code"),  # mostly code: would not match
])
def test_unspeakable_replies_have_a_reason(reply, reason):
    with pytest.raises(Unspeakable) as e:
        speakable(reply)
    assert e.value.reason == reason


def test_a_little_code_is_trimmed_not_rejected():
    reply = "Use the print function to show text on the screen, it is the simplest way.\n```\nprint(1)\n```"
    s = speakable(reply)
    assert "print(1)" not in s.text and s.info["removed_chars"]["code"] > 0
    assert s.text.startswith("Use the print function")


def test_long_replies_trim_at_a_sentence_or_reject():
    reply = " ".join(f"This is sentence number {i}." for i in range(60))
    s = speakable(reply, max_chars=200)
    assert len(s.text) <= 200 and s.text.endswith(".") and s.info["trimmed_from_chars"] > 200
    with pytest.raises(Unspeakable) as e:
        speakable(reply, max_chars=200, long_replies="reject")
    assert e.value.reason == "reply_too_long"
    assert trim_to("word " * 100, 50).count(" ") < 10  # no sentence end: a word boundary


def test_plain_reply_is_spoken_as_is():
    s = speakable("Sure, I can help with that.")
    assert s.text == "Sure, I can help with that." and s.info == {}
