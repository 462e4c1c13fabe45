"""Prompts are the training templates' user parts, id for id (reference §2), and replies split as §5 says."""
from __future__ import annotations

import pytest

from aromni.infer.outputs import split_reply
from aromni.infer.prompts import Message, assistant_turn, chat_turn, task_prompt
from aromni.layout import AR_OMNI_V0_1 as L
from aromni.tasks import TemplateError


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    from aromni.model.text import load_text_tokenizer, write_chameleon_style_bpe
    from .conftest import BPE_TEXTS
    p = write_chameleon_style_bpe(BPE_TEXTS, tmp_path_factory.mktemp("bpe") / "tokenizer.json", vocab_size=300)
    return load_text_tokenizer(p).encode


def test_task_prompts_are_reference_section_2(enc):
    img, sp = list(range(1024)), [5, 6, 7]
    assert task_prompt("tts", enc, text="hello") == (
        [0] + enc("USER:") + enc("Convert this text into speech.") + enc("This is input: ") + enc("hello")
        + [12830] + enc("GPT:"))
    assert task_prompt("t2i", enc, text="a fox") == (
        [0] + enc("USER:") + enc("Create a picture that matches the essence of this text.")
        + enc(" This is input: ") + enc("a fox") + [12830] + enc(" GPT:"))
    assert task_prompt("asr", enc, speech_codes=sp) == (
        [0] + enc("USER:") + enc("Can you please convert this speech into written text?")
        + [12821, 8729, 8730, 8731, 12820, 12830] + enc("GPT:"))
    assert task_prompt("caption", enc, image_codes=img, instruction="What is it?") == (
        [0] + enc("USER:") + [8197] + [c + 4 for c in img] + [8196] + enc("What is it?") + [12830] + enc("GPT:"))
    with pytest.raises(TemplateError):
        task_prompt("caption", enc)
    with pytest.raises(TemplateError):
        task_prompt("tts", enc, text="  ")


def test_chat_turns_follow_the_dialog_template(enc):
    from aromni.tasks import default_instruction
    spoken = chat_turn(Message(speech_codes=[1, 2], image_codes=[0] * 1024), enc, first=True)
    assert spoken == ([0] + enc("USER:") + [8197] + [4] * 1024 + [8196] + [12821, 8725, 8726, 12820]
                      + enc(default_instruction("chat")) + [12830] + enc("GPT:"))
    told = chat_turn(Message(text="Answer briefly.", speech_codes=[1]), enc, first=False)
    assert told == enc("USER:") + [12821, 8725, 12820] + enc("Answer briefly.") + [12830] + enc("GPT:")
    assert chat_turn(Message(text="hi"), enc, first=False) == enc("USER:") + enc("hi") + [12830] + enc("GPT:")
    assert assistant_turn(Message("assistant", text="yo", speech_codes=[3]), enc) == enc("yo") + [12821, 8727,
                                                                                                    12820, 12831]
    with pytest.raises(TemplateError):
        chat_turn(Message(text=" "), enc, first=True)


def test_split_reply():
    img = [L.boi] + [4] * 1024 + [L.eoi]
    ids = [100, 101, *img, 102, L.boa, 8724, 8725, L.eoa, 103, L.boa, 8726, L.eos]
    parts = split_reply(ids)
    assert [(p.kind, p.complete) for p in parts] == [("text", True), ("image", True), ("text", True),
                                                      ("speech", True), ("text", True), ("speech", True),
                                                      ("text", True)]   # a stop closes a speech span
    assert parts[0].ids == [100, 101] and parts[1].ids == [4] * 1024 and parts[3].ids == [8724, 8725]
    assert parts[-1].ids == [L.eos]
    assert not split_reply([L.boa, 8726, 8727])[0].complete   # cut by max_new_tokens
    cut = split_reply([L.boi, 4, 5])
    assert cut[0].kind == "image" and not cut[0].complete
