"""Every task from Python on the tiny model (stand-in image/speech tokenizers), replies bounded in length."""
from __future__ import annotations

import json

import numpy as np
import soundfile as sf
from PIL import Image

from aromni.infer.prompts import Message
from aromni.layout import AR_OMNI_V0_1 as L


def speech_wav(path, seconds=0.5):
    t = np.arange(int(24000 * seconds)) / 24000
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24000)
    return path


def test_tts_and_its_stream_give_the_same_audio(omni):
    reply = omni.tts("hello world", max_new_tokens=80)
    assert reply.ids[0] == L.boa and all(L.is_speech_code(t) for t in reply.ids[1:] if t not in (L.eoa, L.eos))
    assert len(reply.audio) == 600 * sum(len(p.ids) for p in reply.parts if p.kind == "speech") > 0
    assert reply.metrics["rtf"] > 0 and reply.metrics["first_token_s"] > 0
    assert reply.provenance["stand_in"] is True
    stream = omni.tts_stream("hello world", max_new_tokens=80)
    chunks = list(stream)
    assert len(chunks) >= 2                    # it streamed
    assert stream.reply.ids == reply.ids       # greedy: the same ids
    assert np.array_equal(np.concatenate([c.samples for c in chunks]), reply.audio)
    m = stream.metrics
    assert m.first_token_s <= m.first_speech_token_s <= m.first_audio_s <= m.last_audio_s and m.rtf > 0


def test_asr_and_caption_answer_in_text(omni, tmp_path):
    r = omni.asr(speech_wav(tmp_path / "a.wav"), max_new_tokens=10)
    assert r.ids and not any(L.is_speech_code(t) or L.is_image_code(t) or t in (L.boi, L.boa) for t in r.ids)
    assert r.metrics["context_tokens"] > 20     # the 0.5 s of speech is in the prompt (20 codes + markers)
    img = tmp_path / "red.png"
    Image.new("RGB", (90, 60), (200, 20, 20)).save(img)
    c = omni.caption(img, max_new_tokens=10)
    assert c.metrics["context_tokens"] > 1024 and not any(t in (L.boi, L.boa) for t in c.ids)
    assert isinstance(c.text, str)


def test_chat_keeps_the_cache_between_turns(omni, tmp_path):
    chat = omni.chat(max_new_tokens=12)
    r1 = chat.send(Message(text="hello"), audio=speech_wav(tmp_path / "q.wav", 0.25))
    ctx1 = len(chat.session.tokens)
    r2 = chat.send(Message(text="and a picture"), image=Image.new("RGB", (64, 64), (0, 0, 255)))
    assert r2.metrics["turn"] == 2
    # turn 2 forwards only its own ids: the history (turn 1 and its reply) was already in the KV cache
    new_turn = len(chat.session.tokens) - len(r2.ids) - ctx1
    assert r2.metrics["prefilled_tokens"] == new_turn + 1   # + reply 1's last id, not forwarded at its stop
    # reply 1 was closed as an assistant turn: <eom> (a final <eos> becomes <eom>, a cut reply gets one)
    assert L.eom in chat.session.tokens[ctx1 - 1:ctx1 + 2] and L.eos not in chat.session.tokens[:ctx1 + 2]
    assert r1.metrics["turn"] == 1


def test_reply_parts_are_decoded(omni):
    enc = omni.tok.text.encode
    heard, said = enc("hello world"), enc("a test")
    ids = [L.ins, *heard, L.res, *said, L.boa, *L.speech_ids([7, 8, 9]), L.eoa, L.boi, *L.image_ids([5] * 1024),
           L.eoi, L.eom]
    r = omni.decode_reply(ids)
    assert (r.transcript, r.text) == ("hello world", "a test")
    assert len(r.audio) == 3 * 600 and r.images[0].size == (512, 512)


def test_real_format_tokenizers_are_found_in_the_model_dir(tiny_model_dir, tmp_path):
    """Meta-layout VQGAN in tokenizer/ and a WavTokenizer in wavtokenizer/ (random weights, real file formats) are
    picked up through the registries without flags; speech and pictures decode through them."""
    import warnings
    from aromni.infer.tasks import Omni
    from aromni.model.random_checkpoints import write_meta_vqgan, write_wavtokenizer
    d = tmp_path / "model"
    d.mkdir()
    for f in tiny_model_dir.iterdir():
        (d / f.name).symlink_to(f)
    write_meta_vqgan(d / "tokenizer")
    write_wavtokenizer(d / "wavtokenizer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        omni = Omni.load(d)
    assert not [w for w in caught if "STAND-IN" in str(w.message)]
    ident = omni.provenance["tokenizers"]
    assert (ident["image"]["kind"], ident["speech"]["kind"]) == ("chameleon-vqgan", "wavtokenizer")
    reply = omni.tts("hello", max_new_tokens=41)
    assert len(reply.audio) == 40 * 600
    streamed = np.concatenate([c.samples for c in omni.tts_stream("hello", max_new_tokens=41)])
    assert len(streamed) == len(reply.audio)   # equal only approximately: WavTokenizer attends globally
    img = omni.decode_reply([L.boi, *L.image_ids([7] * 1024), L.eoi]).images[0]
    assert img.size == (omni.tok.image.resolution,) * 2


def test_chat_never_samples_the_tokenizers_placeholders(omni):
    """The loaded tokenizer's <reservedNNNNN> ids without a layout job are out of text mode; markers stay in."""
    from aromni.infer.state import RESERVED_NAME
    L = omni.layout
    vocab = omni.tok.text._tok.get_vocab(with_added_tokens=True)
    placeholders = [i for n, i in vocab.items() if RESERVED_NAME.fullmatch(n) and not L.is_speech_code(i)
                    and i not in L.markers.values()]
    m = omni.session().masks.text_mode(True, True, True)
    assert len(placeholders) > 4000 and not m[placeholders].any()
    assert m[[L.eoh, L.ins, L.res, L.eom]].all()
    reply = omni.chat(max_new_tokens=40, seed=3).send(Message(text="hello"))
    assert not set(reply.ids) & set(placeholders)


def test_reply_json_takes_the_text_tokenizers_stand_in_flag_from_the_builds_manifest(tiny_model_dir, tmp_path):
    """A trained model dir carries the data's tokenizer.json; its note names the data. The reply's provenance
    must say stand-in when the build's manifest did (it used to say stand_in: false for the text tokenizer)."""
    import shutil
    import warnings

    from aromni.infer.tasks import Omni
    from aromni.hashing import file_sha256
    model = tmp_path / "final"
    shutil.copytree(tiny_model_dir, model)
    build = tmp_path / "build"
    build.mkdir()
    sha = file_sha256(model / "tokenizer.json")
    (build / "manifest.json").write_text(json.dumps(
        {"tokenizers": {"text": {"kind": "chameleon-bpe", "path": "x", "sha256": sha, "stand_in": True}}}))
    (model / "aromni_model.json").write_text(json.dumps({"stand_in": False, "data": str(build)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        omni = Omni.load(model)
    p = omni.tts("hi", max_new_tokens=4).provenance
    assert p["tokenizers"]["text"]["stand_in"] is True and p["stand_in"] is True
    assert p["text_tokenizer_recorded_in"] == str(build / "manifest.json")
    # a record for ANOTHER tokenizer file (sha differs) is not taken for this one
    (build / "manifest.json").write_text(json.dumps({"tokenizers": {"text": {"sha256": "0" * 64, "stand_in": True}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = Omni.load(model)
    assert other.tok.text.stand_in is False and other.provenance["text_tokenizer_recorded_in"] is None
