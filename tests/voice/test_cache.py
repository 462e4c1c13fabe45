"""The content-addressed synthesis cache: keyed by (backend, model sha256, voice, text) only; a rerun synthesises nothing."""
from __future__ import annotations

import numpy as np
import pytest

from aromni.voice import SAMPLE_RATE, Synthesizer, VoiceBackend, VoiceError
from aromni.voice.cache import VoiceCache, cache_key


class CountingBackend(VoiceBackend):
    """A backend that records every synthesis call (its audio: a text-dependent tone)."""
    name = "counting"

    def __init__(self, voice="v1", model="m1"):
        super().__init__()
        self.calls, self._voice, self._model = [], voice, model

    def model_sha256(self):
        return self._model

    def voice(self):
        return self._voice

    def synthesise(self, text):
        self.calls.append(text)
        t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
        return (0.3 * np.sin(2 * np.pi * (200 + len(text)) * t) + 1e-7 * np.pi).astype(np.float32)


def test_key_depends_on_each_part_and_nothing_else():
    base = cache_key("espeak", "abc", "en-us", "Hello.")
    assert base == cache_key("espeak", "abc", "en-us", "Hello.")
    assert len({base, cache_key("cosyvoice2", "abc", "en-us", "Hello."), cache_key("espeak", "abd", "en-us", "Hello."),
                cache_key("espeak", "abc", "en-gb", "Hello."), cache_key("espeak", "abc", "en-us", "Hello!")}) == 5


def test_rerun_hits_the_cache_and_returns_the_same_samples(tmp_path):
    b = CountingBackend()
    s = Synthesizer(b, VoiceCache(tmp_path))
    w1, sr, rec = s.speak("First reply.")
    assert sr == SAMPLE_RATE and b.calls == ["First reply."]
    # a second process / recipe: a fresh synthesizer and backend over the same cache dir
    b2 = CountingBackend()
    s2 = Synthesizer(b2, VoiceCache(tmp_path))
    w2, _, rec2 = s2.speak("First reply.")
    assert b2.calls == [] and s2.cache.hits == 1 and s2.cache.misses == 0
    assert np.array_equal(w1, w2) and w1.dtype == np.float32   # bit for bit: a rebuild is byte-identical
    assert rec == rec2 and rec["cache_key"] == s.key("First reply.") and rec["voice"] == "v1"
    assert not list(tmp_path.rglob("*.tmp-*"))                  # temp files were renamed into place
    s2.speak("Another reply.")
    assert b2.calls == ["Another reply."] and len(VoiceCache(tmp_path)) == 2


def test_a_changed_voice_or_model_does_not_reuse_audio(tmp_path):
    Synthesizer(CountingBackend(), VoiceCache(tmp_path)).speak("Same text.")
    for b in (CountingBackend(voice="v2"), CountingBackend(model="m2")):
        Synthesizer(b, VoiceCache(tmp_path)).speak("Same text.")
        assert b.calls == ["Same text."]


def test_a_corrupt_entry_is_synthesised_again(tmp_path):
    s = Synthesizer(CountingBackend(), VoiceCache(tmp_path))
    s.speak("Reply.")
    wav = next(tmp_path.rglob("*.wav"))
    wav.write_bytes(b"not a wav")
    b = CountingBackend()
    Synthesizer(b, VoiceCache(tmp_path)).speak("Reply.")
    assert b.calls == ["Reply."]


def test_empty_audio_is_an_error_not_a_cache_entry(tmp_path):
    class Silent(CountingBackend):
        def synthesise(self, text):
            return np.zeros(0, np.float32)
    with pytest.raises(VoiceError, match="no audio"):
        Synthesizer(Silent(), VoiceCache(tmp_path)).speak("Reply.")
    assert len(VoiceCache(tmp_path)) == 0
