"""`aromni infer` end to end on the tiny model: files written, latencies printed, bad input refused clearly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

from aromni.cli import app

runner = CliRunner()


def infer(*args):
    return runner.invoke(app, ["infer", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("stream", [False, True])
def test_tts_writes_audio_and_prints_ftl_rtf(tiny_model_dir, tmp_path, stream):
    out = tmp_path / "x.wav"
    r = infer("--task", "tts", "--text", "hello", "--model", tiny_model_dir, "--out", out, "--max-new-tokens", 50,
              *(["--stream"] if stream else []))
    assert r.exit_code == 0, r.output
    assert "FTL" in r.output and "RTF" in r.output and "stand_in: true" in r.output
    wave, sr = sf.read(str(out))
    assert sr == 24000 and len(wave) == 600 * 49   # 50 ids = <boa> + 49 codes (the random model never says <eoa>)
    side = json.loads((tmp_path / "x.wav.json").read_text())
    assert side["stand_in"] is True and side["ids"][0] == 12821 and side["metrics"]["rtf"] > 0
    if stream:
        assert "chunk 2" in r.output and side["metrics"]["first_audio_s"] > 0


@pytest.mark.slow
def test_t2i_writes_a_512_png(tiny_model_dir, tmp_path):
    out = tmp_path / "fox.png"
    r = infer("--task", "t2i", "--text", "a red fox", "--model", tiny_model_dir, "--out", out)
    assert r.exit_code == 0, r.output
    img = Image.open(out)
    assert img.size == (512, 512) and json.loads(img.text["aromni"])["stand_in"] is True
    ids = json.loads((tmp_path / "fox.png.json").read_text())["ids"]
    assert ids[0] == 8197 and ids[1025] == 8196 and len(ids) == 1027 and ids[-1] in (2, 12831)


def test_chat_from_json(tiny_model_dir, tmp_path):
    t = np.arange(6000) / 24000
    sf.write(str(tmp_path / "q.wav"), (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 24000)
    Image.new("RGB", (80, 80), (10, 200, 10)).save(tmp_path / "g.png")
    msgs = [{"role": "user", "text": "hi", "audio": "q.wav"}, {"role": "assistant", "text": "hello"},
            {"role": "user", "image": "g.png", "text": "what is this?"}, {"text": "thanks"}]
    (tmp_path / "chat.json").write_text(json.dumps(msgs))
    out = tmp_path / "replies"
    r = infer("--task", "chat", "--messages", tmp_path / "chat.json", "--model", tiny_model_dir, "--out", out,
              "--max-new-tokens", 8)
    assert r.exit_code == 0, r.output
    # the first user message is answered by the given assistant message: two generated replies
    assert sorted(p.name for p in out.glob("reply*.txt")) == ["reply1.txt", "reply2.txt"]
    second = json.loads((out / "reply2.json").read_text())
    assert second["metrics"]["turn"] == 2 and second["metrics"]["prefilled_tokens"] < 20
    assert second["metrics"]["new_tokens"] <= 8  # --max-new-tokens reaches the chat


def test_bad_input_is_refused_with_a_reason(tiny_model_dir, tmp_path):
    r = infer("--task", "tts", "--model", tiny_model_dir, "--out", tmp_path / "x.wav")
    assert r.exit_code == 2 and "needs --text" in r.output
    r = infer("--task", "t2i", "--text", "fox", "--model", tiny_model_dir, "--out", tmp_path / "x.png",
              "--max-new-tokens", 100)
    assert r.exit_code == 1 and "no room for an image" in r.output
    r = infer("--task", "sing", "--model", tiny_model_dir)
    assert r.exit_code == 2 and "unknown --task" in r.output
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "x", "video": "y.mp4"}]))
    r = infer("--task", "chat", "--messages", tmp_path / "bad.json", "--model", tiny_model_dir, "--out", tmp_path)
    assert r.exit_code == 1 and "unknown keys" in r.output
