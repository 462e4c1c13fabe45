"""`aromni convert` and `aromni infer --model META_DIR`: a tiny random checkpoint in Meta's layout runs every task
(converted once into the cache), and `--say` speaks a chat turn with the voice backend."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aromni.cli import app  # noqa: E402
from aromni.model.meta_checkpoint import write_tiny_meta_chameleon  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory):
    return write_tiny_meta_chameleon(tmp_path_factory.mktemp("meta") / "AR-Omni-tiny", seed=5)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AROMNI_CACHE", str(tmp_path_factory.getbasetemp() / "aromni-cache"))


def infer(*args):
    return runner.invoke(app, ["infer", *map(str, args)], catch_exceptions=False)


def test_convert_command_writes_a_loadable_hf_dir(meta_dir, tmp_path):
    r = runner.invoke(app, ["convert", str(meta_dir), str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()
    r = runner.invoke(app, ["convert", str(meta_dir), str(tmp_path / "hf")])
    assert r.exit_code == 2 and "not empty" in r.output
    r = infer("--task", "tts", "--text", "hello", "--model", tmp_path / "hf", "--out", tmp_path / "a.wav",
              "--max-new-tokens", 12)
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_every_task_runs_on_a_meta_format_checkpoint(meta_dir, tmp_path):
    wav = tmp_path / "in.wav"
    sf.write(str(wav), np.random.default_rng(0).normal(0, 0.1, 24000).astype(np.float32), 24000)
    png = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png)
    runs = {
        "tts": ["--text", "hello", "--out", tmp_path / "tts.wav", "--max-new-tokens", 20],
        "asr": ["--audio", wav, "--out", tmp_path / "asr.txt", "--max-new-tokens", 10],
        "caption": ["--image", png, "--out", tmp_path / "cap.txt", "--max-new-tokens", 10],
        "t2i": ["--text", "a red fox", "--out", tmp_path / "fox.png", "--no-cfg"],
        "chat": ["--say", "hello there", "--out", tmp_path / "chat", "--max-new-tokens", 16],
    }
    for task, args in runs.items():
        r = infer("--task", task, "--model", meta_dir, *args)
        assert r.exit_code == 0, (task, r.output)
        assert "stand_in: true" in r.output or task == "chat", (task, r.output)
    side = json.loads((tmp_path / "fox.png.json").read_text())
    assert side["model"]["format"] == "meta" and side["stand_in"] is True
    assert Image.open(tmp_path / "fox.png").size == (64, 64)   # the tiny VQGAN's resolution, decoded from tokenizer/


def test_say_speaks_the_turn_and_records_how(meta_dir, tmp_path):
    out = tmp_path / "chat"
    r = infer("--task", "chat", "--model", meta_dir, "--say", "what is a rainbow", "--out", out,
              "--max-new-tokens", 8, "--silence-head", 0.2, "--silence-tail", 0.1)
    assert r.exit_code == 0, r.output
    side = json.loads((out / "reply1.json").read_text())
    spoken = side["spoken_input"]
    assert spoken["said"] == "what is a rainbow" and spoken["voice"]["backend"] == "espeak"
    assert spoken["silence_head_codes"] == 8 and spoken["silence_tail_codes"] == 4   # 40 codes/s
    assert spoken["codes"] >= 20 and spoken["speech_tokenizer_stand_in"] is True and side["stand_in"]
    r = infer("--task", "chat", "--model", meta_dir, "--say", "x", "--out", out, "--voice", "cosyvoice2")
    assert r.exit_code == 2 and "--voice-model" in r.output
    r = infer("--task", "tts", "--model", meta_dir, "--say", "x", "--text", "y", "--out", tmp_path / "a.wav")
    assert r.exit_code == 2 and "--say is for --task chat" in r.output


@pytest.mark.slow
def test_say_with_cosyvoice2_and_a_reference_speaker(meta_dir, tmp_path):
    """Upstream's recipe: CosyVoice2 (here the tiny RANDOM model in the published layout) with a reference clip and
    its prompt text; the reply records the voice's identity (stand-in, since the weights are random)."""
    pytest.importorskip("cosyvoice")
    from aromni.voice.cosyvoice2 import AR_OMNI_PROMPT
    from aromni.voice.espeak import espeak_speak
    from aromni.voice.tiny_cosyvoice2 import write_tiny_cosyvoice2
    voice_dir = write_tiny_cosyvoice2(tmp_path / "CosyVoice2-tiny")
    x, sr = espeak_speak(AR_OMNI_PROMPT, rate=260)
    sf.write(str(tmp_path / "ref.wav"), x, sr)
    out = tmp_path / "chat"
    r = infer("--task", "chat", "--model", meta_dir, "--say", "hello there", "--out", out, "--max-new-tokens", 6,
              "--voice", "cosyvoice2", "--voice-model", voice_dir, "--voice-ref", tmp_path / "ref.wav")
    assert r.exit_code == 0, r.output
    spoken = json.loads((out / "reply1.json").read_text())["spoken_input"]
    assert spoken["voice"]["backend"] == "cosyvoice2" and spoken["voice"]["stand_in"] is True
    assert AR_OMNI_PROMPT in spoken["voice"]["voice"] and spoken["codes"] > 0
