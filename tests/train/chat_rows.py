"""A small build of chat rows in aromni's row schema, rendered by the real dialog template: spoken and typed user
turns, assistant replies in text, speech and images, and a user turn that shows an image. The demo build has no
chat rows, so the perceptual loss on chat image spans is trained and tested on this.

    PYTHONPATH=$PWD .venv/bin/python -m tests.train.chat_rows runs/chat-demo   # for `aromni train ... data.path=`
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from aromni.layout import AR_OMNI_V0_1 as L
from aromni.sample import Sample, rows_to_table
from aromni.tasks import DialogTurn, render_dialog

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "demo_data" / "tokenizer" / "tokenizer.json"
WORDS = "the cat sat on a warm mat near the window and looked at birds in the garden".split()


def dialogs(n: int, seed: int = 0) -> list[list[DialogTurn]]:
    rng = np.random.default_rng(seed)
    text = lambda k: " ".join(rng.choice(WORDS, k))                          # noqa: E731
    image = lambda: rng.integers(0, L.image_codebook, L.image_tokens).tolist()   # noqa: E731
    speech = lambda: rng.integers(0, 4096, int(rng.integers(20, 60))).tolist()   # noqa: E731
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:      # spoken request, the assistant answers with a picture
            turns = [DialogTurn("user", text(6), speech_codes=speech()), DialogTurn("assistant", text(4), image_codes=image())]
        elif kind == 1:    # typed request with an image, spoken reply; then a typed follow-up answered with a picture
            turns = [DialogTurn("user", text(5), image_codes=image()), DialogTurn("assistant", text(8), speech_codes=speech()),
                     DialogTurn("user", text(4)), DialogTurn("assistant", text(3), image_codes=image())]
        else:              # text only
            turns = [DialogTurn("user", text(7)), DialogTurn("assistant", text(9))]
        out.append(turns)
    return out


def write_chat_build(out: str | Path, n: int = 12, seed: int = 0, tokenizer: Path = TOKENIZER) -> Path:
    """out/data/chat-00000-of-00001.parquet + a manifest naming the (stand-in) text tokenizer."""
    from aromni.model.text import load_text_tokenizer
    tok = load_text_tokenizer(tokenizer, stand_in=True)
    samples = []
    for i, turns in enumerate(dialogs(n, seed)):
        r = render_dialog(turns, tok.encode, max_tokens=4096)
        samples.append(Sample(f"chat/{i}", "chat_demo", "chat", r.ids, r.segments))
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    name = "data/chat-00000-of-00001.parquet"
    pq.write_table(rows_to_table(samples), out / name, row_group_size=4)
    (out / "manifest.json").write_text(json.dumps({
        "shards": [{"path": name, "rows": len(samples)}], "stand_in_tokenizers": True,
        "tokenizers": {"text": {"path": str(tokenizer), "stand_in": True}}}, indent=1))
    return out


if __name__ == "__main__":
    print(write_chat_build(sys.argv[1] if len(sys.argv) > 1 else "runs/chat-demo"))
