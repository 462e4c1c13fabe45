"""Contracts §6 / issue 15.3: every reader declares what its examples carry; `aromni readers` prints it."""
from __future__ import annotations

from aromni.pipeline.readers import READERS
from aromni.pipeline.readers.base import CARRIES

EXPECTED = {
    "laion": {"text", "image"}, "journeydb": {"text", "image"},
    "gigaspeech": {"text", "speech"}, "common_voice": {"text", "speech"}, "mls": {"text", "speech"},
    "ultrafineweb": {"text"},
    "ultrachat": {"dialog", "text"}, "voiceassistant": {"dialog", "text", "speech"},
    "anyinstruct": {"dialog", "text", "speech", "image"}, "aromni_instruct": {"dialog", "tokens"},
}


def test_every_reader_declares_what_it_carries():
    assert set(READERS) == set(EXPECTED)
    for name, cls in READERS.items():
        assert cls.carries == frozenset(EXPECTED[name]) and cls.carries <= CARRIES, name


def test_the_readers_listing_shows_it():
    text = READERS["ultrafineweb"].describe()
    assert text.startswith(READERS["ultrafineweb"].layout_doc.strip()) and text.endswith("carries: text")
    assert READERS["gigaspeech"].describe().endswith("carries: speech, text")
