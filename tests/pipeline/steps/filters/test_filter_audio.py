"""Audio quality on synthetic audio with known properties: tones, clipped sines, silence, noise at known SNRs, espeak speech."""
from __future__ import annotations

import numpy as np
import pytest

from aromni.pipeline.readers.base import Example, Turn
from aromni.pipeline.steps import STEPS
from aromni.pipeline.steps.filters.audio import clipping_ratio, speech_activity, speech_rate, wada_snr
from aromni.pipeline.steps.media import MediaError
from aromni.voice.espeak import espeak_speak

SR = 16000
TEXT = "The box was thrown beside the parked truck and the children laughed."


@pytest.fixture(scope="module")
def speech():
    import soxr
    x, sr = espeak_speak(TEXT)
    x = soxr.resample(x, sr, SR).astype(np.float32)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def sine(seconds=1.0, f=440.0, amp=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


def with_noise(x, snr_db, seed=0):
    n = np.random.default_rng(seed).standard_normal(len(x))
    return (x + n * np.sqrt(np.mean(x.astype(np.float64) ** 2) / 10 ** (snr_db / 10))).astype(np.float32)


def test_clipping_ratio_sees_flat_tops_not_a_clean_tone():
    s = sine()
    assert clipping_ratio(s) == 0.0
    clipped = np.clip(2 * s, -0.5, 0.5)            # half of each period is flat at the rail
    assert 0.45 < clipping_ratio(clipped) < 0.75
    assert clipping_ratio(0.1 * clipped) == pytest.approx(clipping_ratio(clipped))  # clipped, then attenuated
    assert clipping_ratio(np.zeros(100)) == 0.0


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_wada_snr_recovers_the_mixed_snr(speech, snr):
    assert abs(wada_snr(with_noise(speech, snr)) - snr) < 4.0


def test_wada_snr_orders_and_clamps(speech):
    est = [wada_snr(with_noise(speech, d)) for d in (0, 5, 10, 20, 30)]
    assert est == sorted(est)
    assert wada_snr(np.random.default_rng(1).standard_normal(SR)) < -5   # noise alone
    assert wada_snr(np.zeros(SR)) == -20.0


def test_vad_finds_speech_and_not_silence_or_noise(speech):
    segs, frac = speech_activity(speech, SR)
    assert frac > 0.7 and segs[0][0] < 0.2
    padded = np.concatenate([np.zeros(3 * SR, np.float32), speech, np.zeros(3 * SR, np.float32)])
    segs2, frac2 = speech_activity(padded, SR)
    assert frac2 < 0.5 and 2.8 < segs2[0][0] < 3.3
    assert speech_activity(np.zeros(2 * SR, np.float32), SR) == ([], 0.0)
    assert speech_activity(sine(2.0), SR)[1] < 0.2


def test_speech_rate():
    assert speech_rate("ab cd", 2.0) == 2.0 and speech_rate("ab cd", 2.0, "words") == 1.0


def ex(text, wave, task="speech_to_text"):
    e = Example(key="k", text=text)
    e.id, e.task = "mls/k", task
    return e, {"speech": (wave, SR)}


def test_step_keeps_clean_speech_and_records_meta(speech):
    step = STEPS["audio_quality"]({})
    e, m = ex(TEXT, speech)
    step.apply(e, m, None)
    q = e.meta["audio_quality"]
    assert q["clipping"] == 0 and q["speech_fraction"] > 0.7 and q["snr_db"] > 30 and 10 < q["rate"] < 25
    assert step.stats["kept"] == 1
    assert {k for k in step.stats if k.startswith("hist.")} == {
        f"hist.{q}.{b}" for q, b in (("clipping", 0), ("speech_fraction", 0.9), ("snr_db", 95), ("rate", 14))}


@pytest.mark.parametrize("case,reason", [("clipped", "clipping"), ("silent", "mostly_silence"),
                                         ("noisy", "low_snr"), ("misaligned", "speech_rate")])
def test_step_rejects_with_its_reason(speech, case, reason):
    step = STEPS["audio_quality"]({"min_snr_db": 10})
    wave, text = speech, TEXT
    if case == "clipped":
        wave = np.clip(3 * speech, -0.5, 0.5)
    elif case == "silent":
        wave = np.concatenate([np.zeros(20 * SR, np.float32), speech])
    elif case == "noisy":
        wave = with_noise(speech, 0.0)
    else:
        text = TEXT * 6                             # a transcript six times too long for the audio
    e, m = ex(text, wave)
    with pytest.raises(MediaError) as err:
        step.apply(e, m, None)
    assert err.value.reason == reason and step.stats[f"rejected.{reason}"] == 1
    assert "audio_quality" in e.meta                # the measurement is recorded even on a reject


def test_trim_silence_cuts_to_the_speech_and_dialog_turns_are_measured(speech):
    step = STEPS["audio_quality"]({"trim_silence": True, "trim_pad_s": 0.1})
    padded = np.concatenate([np.zeros(2 * SR, np.float32), speech, np.zeros(SR, np.float32)])
    e = Example(key="d", turns=[Turn("user", TEXT), Turn("assistant", "Sure.")])
    e.id = "va/d"
    media = {"turns": [{"speech": (padded, SR)}, {}]}
    step.apply(e, media, None)
    trimmed, _ = media["turns"][0]["speech"]
    assert len(speech) <= len(trimmed) + int(0.1 * SR) and len(trimmed) < len(padded) - 2 * SR
    assert e.turns[0].meta["audio_quality"]["trimmed_s"] > 2.5 and step.stats["trimmed"] == 1
