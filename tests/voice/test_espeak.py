"""The espeak backend: real espeak-ng speech, 24 kHz, deterministic, its identity names the voice and the data."""
from __future__ import annotations

import numpy as np
import pytest

from aromni.voice import SAMPLE_RATE, VoiceError, get_synthesizer
from aromni.voice.espeak import EspeakBackend


def test_espeak_speaks_at_24khz_deterministically():
    b = EspeakBackend({"voice": "en-gb", "rate": 170})
    w1 = b.synthesise("The birch canoe slid on the smooth planks.")
    w2 = b.synthesise("The birch canoe slid on the smooth planks.")
    assert w1.dtype == np.float32 and np.array_equal(w1, w2)
    assert 1.0 < len(w1) / SAMPLE_RATE < 5.0 and np.abs(w1).max() > 0.05
    shorter = b.synthesise("Planks.")
    assert len(shorter) < len(w1) / 2
    ident = b.identity()
    assert ident["backend"] == "espeak" and ident["voice"] == "espeak-ng:en-gb:s170:p50"
    assert len(ident["model_sha256"]) == 64 and "stand_in" not in ident


def test_text_starting_with_a_dash_is_spoken_not_parsed_as_an_option():
    assert len(EspeakBackend().synthesise("-v is not an option here")) > SAMPLE_RATE // 2


def test_unknown_voice_is_a_clear_error(tmp_path):
    with pytest.raises(VoiceError, match="espeak-ng failed"):
        EspeakBackend({"voice": "xx-nonexistent"}).synthesise("Hello.")


def test_get_synthesizer_reuses_one_backend_per_process(tmp_path):
    a = get_synthesizer("espeak", {"voice": "en-us"}, tmp_path)
    assert a is get_synthesizer("espeak", {"voice": "en-us"}, tmp_path)
    assert a is not get_synthesizer("espeak", {"voice": "en-gb"}, tmp_path)
    with pytest.raises(VoiceError, match="unknown voice backend"):
        get_synthesizer("festival", {}, tmp_path)
