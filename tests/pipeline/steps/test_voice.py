"""The voice step: assistant replies spoken in one voice (espeak here), recorded in meta, cached across reruns; and the
instruction recipe end to end with noise + voice."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from aromni.pipeline.readers.base import Example, Turn
from aromni.pipeline.steps.text import TextError
from aromni.pipeline.steps.voice import VoiceStep
from aromni.voice import SAMPLE_RATE, VoiceError

USER_SPEECH = (0.2 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32), 16000)


def dialog(key, replies, user_speech=True, reply_audio=None):
    turns, media = [], []
    for q, a in replies:
        turns += [Turn("user", q, audio=USER_SPEECH if user_speech else None), Turn("assistant", a, audio=reply_audio)]
        media += [{"speech": USER_SPEECH} if user_speech else {}, {"speech": reply_audio} if reply_audio else {}]
    ex = Example(key, turns=turns)
    ex.id, ex.task = f"src/{key}", "chat"
    return ex, {"turns": media}


def step(tmp_path, **opts):
    return VoiceStep({"backend": "espeak", "cache_dir": str(tmp_path / "cache"), **opts})


def test_replies_are_spoken_recorded_and_cached(tmp_path, monkeypatch):
    s = step(tmp_path)
    ex, media = dialog("d1", [("Hi.", "Hello, I have 3 apples."), ("And?", "That is all.")])
    s.apply(ex, media, None)
    wave, sr = media["turns"][1]["speech"]
    assert sr == SAMPLE_RATE == 24000 and wave.dtype == np.float32 and len(wave) > SAMPLE_RATE // 2
    rec = ex.turns[1].meta["voice"]
    assert rec["backend"] == "espeak" and rec["voice"] == "espeak-ng:en-us:s160:p50" and len(rec["cache_key"]) == 64
    assert rec["spoken_text"] == "Hello, I have three apples." and "spoken_text" not in ex.turns[3].meta["voice"]
    assert media["turns"][0]["speech"] is USER_SPEECH and "voice" not in ex.turns[0].meta
    assert s.stats["synthesised"] == 2 and set(s.stats) == {"synthesised", "synthesised_seconds"}
    assert s.stats["synthesised_seconds"] > 0   # seconds of speech made (the build summary shows them)
    # a rerun (a new step over the same cache) must not call the backend at all
    monkeypatch.setattr(s.synth.backend, "synthesise", lambda text: (_ for _ in ()).throw(AssertionError(text)))
    again = step(tmp_path)
    ex2, media2 = dialog("d1", [("Hi.", "Hello, I have 3 apples."), ("And?", "That is all.")])
    again.apply(ex2, media2, None)
    assert again.stats == {"cache_hits": 2}
    assert np.array_equal(media2["turns"][1]["speech"][0], wave) and ex2.turns[1].meta == ex.turns[1].meta


def test_which_turns_get_a_voice(tmp_path):
    s = step(tmp_path)
    ex, media = dialog("t", [("Hi.", "Hello.")], user_speech=False)              # a text-only dialog stays text
    s.apply(ex, media, None)
    assert media["turns"][1] == {} and s.stats["skipped_text_dialogs"] == 1
    step(tmp_path, which="all_dialogs").apply(ex, media, None)
    assert "speech" in media["turns"][1]
    own = (np.ones(8000, np.float32) * 0.1, 16000)
    ex, media = dialog("r", [("Hi.", "Hello.")], reply_audio=own)               # the source's own reply audio
    step(tmp_path, resynthesise=False).apply(ex, media, None)
    assert media["turns"][1]["speech"] is own and "voice" not in ex.turns[1].meta
    step(tmp_path).apply(ex, media, None)                                       # default: one voice for all
    assert media["turns"][1]["speech"][1] == SAMPLE_RATE and ex.turns[1].meta["voice"]["backend"] == "espeak"


def test_unspeakable_replies_are_rejected_or_left_as_text(tmp_path):
    code = "```python\nimport os\nprint(os.getcwd())\n```"
    ex, media = dialog("c", [("Show code.", code)])
    s = step(tmp_path)
    with pytest.raises(TextError) as e:
        s.apply(ex, media, None)
    assert e.value.reason == "unspeakable_code" and "assistant turn 1" in e.value.message
    assert s.stats == {"unspeakable_code": 1}
    ex, media = dialog("c", [("Show code.", code), ("Thanks.", "You are welcome.")])
    step(tmp_path, unspeakable="text_only").apply(ex, media, None)
    assert "speech" not in media["turns"][1] and ex.turns[1].meta["voice"] == {"skipped": "unspeakable_code"}
    assert "speech" in media["turns"][3]


def test_bad_backend_options_fail_at_recipe_time(tmp_path):
    from aromni.recipe import RecipeError, parse_recipe
    base = {"name": "t", "tokenizers": {"text": {"path": "x.json"}},
            "sources": [{"name": "s", "reader": "ultrachat", "path": "u", "tasks": ["chat"]}],
            "mixing": {"ratio": {"dialog": 1}}}
    with pytest.raises(RecipeError, match="unknown voice backend 'festival'"):
        parse_recipe({**base, "steps": [{"name": "voice", "options": {"backend": "festival"}}]})
    with pytest.raises(RecipeError, match="steps\\[0\\].options"):
        parse_recipe({**base, "steps": [{"name": "voice", "options": {"backend_options": {"speaker": "x"}}}]})
    with pytest.raises(VoiceError, match="not a CosyVoice2 model directory"):
        VoiceStep({"backend": "cosyvoice2", "cache_dir": str(tmp_path),
                   "backend_options": {"model_dir": str(tmp_path / "none"), "reference_audio": "r.wav"}})


# ---- the instruction recipe, end to end ---------------------------------------------------------------------------
def build_instruct(root, out, noise, cache, voice_extra=""):
    from aromni.pipeline.build import build
    from aromni.recipe import load_recipe
    from tests.pipeline.readers.published import STANDIN_TOKENIZERS
    from tests.pipeline.test_recipes import ROOT
    recipe = load_recipe(ROOT / "recipes" / "instruct.yaml", [
        f"data_root={root}", *STANDIN_TOKENIZERS, f"steps[3].options.path={noise}",
        f"steps[4].options={{backend: espeak, cache_dir: {cache}{voice_extra}}}"])
    # noise and voice only: the recipe's quality filters (steps 0-2) need evaluation sets this tree does not have
    recipe = recipe.model_copy(update={"steps": recipe.steps[3:]})
    return build(recipe, out, workers=2, progress=False)


@pytest.mark.slow
def test_instruct_recipe_noisy_user_speech_spoken_replies_and_a_rerun_that_synthesises_nothing(tmp_path):
    from aromni.pipeline.validate import validate
    from aromni.voice.demand import write_demo_noise
    from tests.pipeline.readers.published import fixture_tree
    root, _ = fixture_tree()
    noise = write_demo_noise(tmp_path / "demand", environments=("OOFFICE", "DLIVING"), seconds=3.0)
    import ray
    try:                                                         # synthesis on a Ray actor the driver starts
        first = build_instruct(root, tmp_path / "a", noise, tmp_path / "cache", ", actors: 1")
        # the build stops its voice actor itself: it must not keep its CPU for later builds
        assert not [n for n in ray.util.list_named_actors() if n.startswith("aromni-voice-")]
    finally:
        ray.shutdown()
    assert validate(tmp_path / "a").ok
    rows = pq.read_table(tmp_path / "a" / "data").to_pylist()
    spoken = 0
    for r in rows:
        if r["source"] == "aromni_instruct":                    # imported token rows: no audio to process
            continue
        meta = json.loads(r["meta"])
        kept = [t for t in meta.get("turns", [])][: 2 * meta["kept_turns"]]
        speech_segments = [s for s in r["segments"] if s["modality"] == "speech"]
        noised = [t for t in kept if "noise" in t]
        voiced = [t for t in kept if "voice" in t]
        assert len(speech_segments) == len(noised) + len(voiced), r["id"]   # every speech segment says how it was made
        for t in noised:
            assert t["role"] == "user" and t["noise"]["stand_in"] and 5 <= t["noise"]["snr_db"] <= 20
            assert t["noise"]["env"] in ("OOFFICE", "DLIVING")
        for t in voiced:
            assert t["role"] == "assistant" and t["voice"]["backend"] == "espeak"
        spoken += len(voiced)
    assert spoken >= 8
    assert first.voice["synthesised"] > 0 and first.voice["synthesised_seconds"] > 0   # what the build summary shows
    voice_id, = first.manifest["voices"]     # the voice model's identity, beside the tokenizers'
    assert voice_id["backend"] == "espeak" and voice_id["model_sha256"] and voice_id["stand_in"] is not False
    assert sum(st.get("steps", {}).get("voice", {}).get("synthesised", 0) for st in _unit_stats(tmp_path / "a")) > 0
    # a second build (new output, same cache, in-process synthesis): nothing is synthesised, the shards are identical
    build_instruct(root, tmp_path / "b", noise, tmp_path / "cache")
    stats_b = _unit_stats(tmp_path / "b")
    assert sum(st.get("steps", {}).get("voice", {}).get("synthesised", 0) for st in stats_b) == 0
    assert sum(st.get("steps", {}).get("voice", {}).get("cache_hits", 0) for st in stats_b) == spoken
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b") and first.manifest["rows"] == len(rows)


def _unit_stats(out):
    return [json.loads(p.read_text()) for p in (out / "parts").rglob("*.done.json")]


def _hashes(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))}
