"""Chameleon's text BPE from its published file layouts; the IMGIMG c -> c+4 check at load."""
from __future__ import annotations

import json
import shutil

import pytest

from aromni.model.text import image_token_name, load_text_tokenizer
from aromni.model.checkpoint import sha256_file
from tests.fixtures.golden_bpe import write_golden_bpe


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return write_golden_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json")


def test_meta_and_hf_layouts_load_the_same_vocabulary(bpe, tmp_path):
    meta_root = tmp_path / "chameleon-7b"                       # Meta: <root>/tokenizer/text_tokenizer.json
    (meta_root / "tokenizer").mkdir(parents=True)
    shutil.copy(bpe, meta_root / "tokenizer" / "text_tokenizer.json")
    hf_dir = tmp_path / "Anole-7b-v0.1-hf"                      # HF: <dir>/tokenizer.json
    hf_dir.mkdir()
    shutil.copy(bpe, hf_dir / "tokenizer.json")
    toks = [load_text_tokenizer(p) for p in (bpe, meta_root, hf_dir, meta_root / "tokenizer" / "text_tokenizer.json")]
    ids = [t.encode("USER: This is input") for t in toks]
    assert all(i == ids[0] for i in ids) and ids[0]
    assert toks[1].identity["sha256"] == sha256_file(bpe) and toks[1].identity["kind"] == "chameleon-bpe"


def test_encode_adds_no_special_tokens_and_round_trips(bpe):
    tok = load_text_tokenizer(bpe, stand_in=True)
    ids = tok.encode(" GPT:")
    assert 0 not in ids and 2 not in ids
    assert tok.decode(ids) == " GPT:"
    assert tok.identity["stand_in"] is True
    assert tok.vocab_size > 16384


def test_image_names_must_map_code_c_to_id_c_plus_4(bpe, tmp_path):
    data = json.loads(bpe.read_text())
    vocab = data["model"]["vocab"]
    assert vocab[image_token_name(0)] == 4 and vocab[image_token_name(8191)] == 8195
    # swap two image names: a vocabulary whose IMGIMG ids are not c+4 is refused at load
    a, b = image_token_name(9), image_token_name(10)
    vocab[a], vocab[b] = vocab[b], vocab[a]
    for t in data.get("added_tokens", []):
        if t["content"] in (a, b):
            t["content"] = b if t["content"] == a else a
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"c -> id c\+4"):
        load_text_tokenizer(bad)
    with pytest.raises(FileNotFoundError):
        load_text_tokenizer(tmp_path / "nowhere")
