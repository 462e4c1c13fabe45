"""The cosyvoice2 backend on a tiny RANDOM model in the published directory layout (built once per session)."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("cosyvoice", reason="needs the aromni[cosyvoice] extra (make test installs it)")

from aromni.voice import SAMPLE_RATE, Synthesizer, VoiceCache, VoiceError  # noqa: E402
from aromni.voice.cosyvoice2 import AR_OMNI_PROMPT, LAYOUT, CosyVoice2Backend, hash_dir  # noqa: E402
from aromni.voice.espeak import espeak_speak  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from aromni.voice.tiny_cosyvoice2 import write_tiny_cosyvoice2
    root = tmp_path_factory.mktemp("cosyvoice2")
    model = write_tiny_cosyvoice2(root / "CosyVoice2-tiny")
    x, sr = espeak_speak(AR_OMNI_PROMPT, rate=260)            # the reference speaker: a real spoken clip
    sf.write(root / "reference.wav", x, sr)
    return {"model_dir": str(model), "reference_audio": str(root / "reference.wav")}


@pytest.fixture(scope="module")
def backend(tiny):
    return CosyVoice2Backend(tiny)


def test_published_layout_zero_shot_synthesis_and_cache(backend, tiny, tmp_path):
    import torch
    py_state, torch_state = random.getstate(), torch.random.get_rng_state()
    s = Synthesizer(backend, VoiceCache(tmp_path))
    wave, sr, rec = s.speak("Hello there, how are you?")
    assert sr == SAMPLE_RATE and wave.dtype == np.float32 and np.all(np.isfinite(wave))
    assert 0.1 < len(wave) / sr < 10 and np.abs(wave).max() > 0
    assert rec["backend"] == "cosyvoice2" and rec["stand_in"] is True
    assert rec["model_sha256"] == hash_dir(backend.model_dir) and AR_OMNI_PROMPT in rec["voice"]
    assert random.getstate() == py_state and torch.equal(torch.random.get_rng_state(), torch_state)
    # a rerun (new process: new backend object) synthesises nothing: the model is never even loaded
    fresh = CosyVoice2Backend(tiny)
    w2, _, rec2 = Synthesizer(fresh, VoiceCache(tmp_path)).speak("Hello there, how are you?")
    assert fresh._model is None and np.array_equal(wave, w2) and rec2 == rec


def test_same_text_same_audio(backend):
    assert np.array_equal(backend.synthesise("Hi."), backend.synthesise("Hi."))


def test_llm_thread_failure_is_raised_not_swallowed(backend, monkeypatch):
    _, model, _, _ = backend._load()

    def broken(*a, **k):
        raise RuntimeError("boom in the LLM thread")
        yield  # pragma: no cover
    monkeypatch.setattr(model.llm, "inference", broken)
    with pytest.raises(VoiceError, match="boom in the LLM thread"):
        backend.synthesise("Hello.")


def test_incomplete_directory_is_a_clear_error_never_a_download(tiny, tmp_path):
    with pytest.raises(VoiceError, match="the directory itself"):
        CosyVoice2Backend({**tiny, "model_dir": str(tmp_path / "iic/CosyVoice2-0.5B")})
    partial = tmp_path / "partial"
    shutil.copytree(tiny["model_dir"], partial)
    (partial / "llm.pt").unlink()
    shutil.rmtree(partial / "CosyVoice-BlankEN")
    with pytest.raises(VoiceError, match=r"missing \['llm.pt', 'CosyVoice-BlankEN'\]"):
        CosyVoice2Backend({**tiny, "model_dir": str(partial)})
    with pytest.raises(VoiceError, match="reference_audio"):
        CosyVoice2Backend({**tiny, "reference_audio": str(tmp_path / "none.wav")})
    assert set(LAYOUT) <= {p.name for p in (tmp_path / "partial").iterdir()} | {"llm.pt", "CosyVoice-BlankEN"}
