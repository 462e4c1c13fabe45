"""The noise step: DEMAND noise at the drawn SNR (measured back), reproducible per example, robust to odd trees."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import soundfile as sf
import soxr

from aromni.pipeline.readers.base import Example, Turn
from aromni.pipeline.steps.noise import NoiseStep, add_noise
from aromni.hashing import stable_hash
from aromni.voice.demand import DemandError, scan_demand
from aromni.voice.espeak import espeak_speak


def write_noise(path, seconds, sr, seed):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(size=int(seconds * sr))).astype(np.float32)  # brown-ish noise, like a room's rumble
    x = np.diff(x, prepend=0) * 0.5 + 0.02 * x / max(np.abs(x).max(), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * x / np.abs(x).max(), sr, subtype="PCM_16")


@pytest.fixture(scope="module")
def demand(tmp_path_factory):
    """OOFFICE: 16 kHz, ch05 missing, ch06 too short, ch07 unreadable; DKITCHEN: ch01-02 at 48 kHz only;
    OMEETING: one 1.2 s file (shorter than the speech: looped)."""
    root = tmp_path_factory.mktemp("DEMAND")
    for ch in range(1, 17):
        if ch == 5:
            continue
        p = root / "OOFFICE" / f"ch{ch:02d}.wav"
        if ch == 7:
            p.write_bytes(b"RIFF\x00\x00garbage")
        else:
            write_noise(p, 0.5 if ch == 6 else 4.0, 16000, ch)
    for ch in (1, 2):
        write_noise(root / "DKITCHEN" / f"ch{ch:02d}.wav", 3.0, 48000, 100 + ch)
    write_noise(root / "OMEETING" / "ch01.wav", 1.2, 16000, 200)
    return root


@pytest.fixture(scope="module")
def speech():
    x, sr = espeak_speak("The box was thrown beside the parked truck.")   # 22.05 kHz: resampled to the mixing rate
    return (0.3 * x / np.abs(x).max()).astype(np.float32), sr


def snr_of(clean, noisy):
    n = noisy - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(n.astype(np.float64) ** 2))


@pytest.mark.parametrize("env,snr", [("OOFFICE", 5.0), ("OOFFICE", 17.5), ("DKITCHEN", 10.0), ("OMEETING", 20.0)])
def test_noise_is_mixed_at_the_drawn_snr(demand, speech, env, snr):
    tree = scan_demand(demand, [env])
    wave, sr = speech
    nf = tree.files[0]
    offset = 0.0 if nf.seconds <= len(wave) / sr else 0.3
    noisy, info = add_noise(wave, sr, nf, snr, offset, 16000)
    clean = soxr.resample(wave, sr, 16000)
    assert len(noisy) == len(clean) and info == {}
    assert abs(snr_of(clean, noisy) - snr) < 0.5


def test_tree_problems_are_reported_not_fatal(demand):
    tree = scan_demand(demand, ["OOFFICE", "DKITCHEN", "OMEETING", "DLIVING"])
    names = {f.name for f in tree.files}
    assert "OOFFICE/ch05.wav" not in names and "OOFFICE/ch06.wav" not in names and "OOFFICE/ch07.wav" not in names
    assert {f.rate for f in tree.files if f.env == "DKITCHEN"} == {48000}
    assert len(names) == 13 + 2 + 1
    problems = "\n".join(tree.problems)
    for s in ("OOFFICE/ch05.wav: missing", "OOFFICE/ch06.wav: 0.50 s is shorter", "OOFFICE/ch07.wav: unreadable",
              "DLIVING: folder missing", "DKITCHEN/ch03.wav: missing"):
        assert s in problems
    assert not tree.stand_in


def test_unusable_trees_are_clear_errors(demand, tmp_path):
    with pytest.raises(DemandError, match="does not exist"):
        scan_demand(tmp_path / "nope")
    with pytest.raises(DemandError, match="unknown DEMAND environment"):
        scan_demand(demand, ["KITCHEN"])
    with pytest.raises(DemandError, match="no usable noise file"):
        scan_demand(demand, ["DLIVING", "DWASHING"])


def dialog(key, speech):
    wave, sr = speech
    ex = Example(key, turns=[Turn("user", "Hi.", audio=speech), Turn("assistant", "Hello."),
                             Turn("user", "", audio=speech), Turn("assistant", "Bye.")])
    ex.id, ex.task = f"src/{key}", "chat"
    return ex, {"turns": [{"speech": (wave, sr)}, {}, {"speech": (wave.copy(), sr)}, {}]}


def run(step, ex, media, seed=0):
    step.apply(ex, media, np.random.default_rng(stable_hash(seed, step.name, ex.id)))
    return ex, media


def test_same_seed_same_audio_different_id_different_draw(demand, speech):
    step = NoiseStep({"path": str(demand), "environments": ["OOFFICE", "DKITCHEN", "OMEETING"]})
    a = run(step, *dialog("a", speech))
    a2 = run(step, *dialog("a", speech))
    b = run(step, *dialog("b", speech))
    for t in (0, 2):
        assert np.array_equal(a[1]["turns"][t]["speech"][0], a2[1]["turns"][t]["speech"][0])
        assert a[0].turns[t].meta["noise"] == a2[0].turns[t].meta["noise"]
    rec = [a[0].turns[t].meta["noise"] for t in (0, 2)] + [b[0].turns[t].meta["noise"] for t in (0, 2)]
    assert len({(r["file"], r["snr_db"], r["offset_s"]) for r in rec}) == 4   # every segment its own draw
    assert not np.array_equal(a[1]["turns"][0]["speech"][0], b[1]["turns"][0]["speech"][0])
    assert "noise" not in a[0].turns[1].meta and "speech" not in a[1]["turns"][1]  # assistant turns untouched
    r = rec[0]
    assert r["applied"] and r["sample_rate"] == 16000 and 5.0 <= r["snr_db"] <= 20.0
    assert set(r) >= {"env", "file", "offset_s", "snr_db", "noise_rate"}
    assert a[1]["turns"][0]["speech"][1] == 16000
    assert run(step, *dialog("a", speech), seed=1)[0].turns[0].meta["noise"] != r   # the recipe seed matters too
    assert step.stats["noised"] == 8 and step.stats["tree_problems"] == 3 + 14 + 15


def test_48khz_noise_and_looping_are_recorded(demand, speech):
    ex, media = run(NoiseStep({"path": str(demand), "environments": ["DKITCHEN"]}), *dialog("k", speech))
    assert ex.turns[0].meta["noise"]["noise_rate"] == 48000 and ex.turns[0].meta["noise"]["env"] == "DKITCHEN"
    ex, media = run(NoiseStep({"path": str(demand), "environments": ["OMEETING"]}), *dialog("m", speech))
    r = ex.turns[0].meta["noise"]
    assert r["looped"] and r["offset_s"] == 0.0
    clean = soxr.resample(speech[0], speech[1], 16000)
    assert abs(snr_of(clean, media["turns"][0]["speech"][0]) - r["snr_db"]) < 0.5


def test_probability_targets_and_clean_copy(demand, speech):
    ex, media = run(NoiseStep({"path": str(demand), "environments": ["OOFFICE"], "p": 0.0}), *dialog("p", speech))
    assert ex.turns[0].meta["noise"] == {"applied": False} and media["turns"][0]["speech"][0] is speech[0]
    asr = Example("u1", text="A TRANSCRIPT")
    asr.id, asr.task = "gs/u1", "speech_to_text"
    m = {"speech": speech}
    untouched = copy.deepcopy(m)
    run(NoiseStep({"path": str(demand), "environments": ["OOFFICE"]}), asr, m)   # default: dialogs only
    assert "noise" not in asr.meta and m["speech"][0] is speech[0]
    step = NoiseStep({"path": str(demand), "environments": ["OOFFICE"], "targets": ["speech_to_text"],
                      "keep_clean": True, "snr_db": [10, 10]})
    run(step, asr, m)
    assert asr.meta["noise"]["snr_db"] == 10.0 and np.array_equal(m["speech_clean"][0], untouched["speech"][0])
    ex, media = run(step, *dialog("d", speech))                                     # user_turns not targeted
    assert "noise" not in ex.turns[0].meta


def test_bad_options_are_recipe_errors(demand):
    from aromni.recipe import RecipeError, parse_recipe
    base = {"name": "t", "tokenizers": {"text": {"path": "x.json"}},
            "sources": [{"name": "s", "reader": "ultrachat", "path": "u", "tasks": ["chat"]}],
            "mixing": {"ratio": {"dialog": 1}}}
    for opts, msg in (({"path": "d", "snr_db": [20, 5]}, "snr_db: low 20.0 > high 5.0"),
                      ({"path": "d", "channels": [0, 17]}, "channels must be"),
                      ({"path": "d", "p": 2}, "steps[0].options.p"),
                      ({"snr_db": [5, 20]}, "options.path: required")):
        with pytest.raises(RecipeError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            parse_recipe({**base, "steps": [{"name": "noise", "options": opts}]})
