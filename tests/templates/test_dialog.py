"""Chat rows: golden ids of a two-turn dialog, labels on the assistant only, whole-turn dropping to a length limit."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aromni.sample import LossPolicy, check_row, labels_and_weights
from aromni.tasks import TemplateError, default_instruction
from aromni.tasks import DialogTooLong, DialogTurn, pair_turns, render_dialog

APPEND = "Please acknowledge the user's vocal input, create a textual response."
IMG = [(3 * i) % 8192 for i in range(1024)]
IMG_IDS = [8197, *[c + 4 for c in IMG], 8196]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from aromni.model.text import load_text_tokenizer, write_chameleon_style_bpe
    texts = ["USER:", "GPT:", APPEND, "hello there, how are you", "I am fine, thank you", "draw a cat",
             "here is a cat"] * 3
    p = write_chameleon_style_bpe(texts, tmp_path_factory.mktemp("bpe") / "tokenizer.json", vocab_size=300)
    return load_text_tokenizer(p, stand_in=True)


def two_turns():
    return [DialogTurn("user", "hello there, how are you", speech_codes=[0, 1, 4095]),
            DialogTurn("assistant", "I am fine, thank you", speech_codes=[7, 8]),
            DialogTurn("user", "draw a cat", image_codes=IMG),
            DialogTurn("assistant", "here is a cat")]


def test_two_turn_dialog_golden_ids(tok):
    """Reference §2: [0] "USER:" speech {append} [12830] "GPT:" [12840] transcript [12841] reply speech [12831], then a
    typed turn with an image: "USER:" image {text} [12830] "GPT:" reply [12831]. Every text piece encoded on its own."""
    e = tok.encode
    want = ([0, *e("USER:"), 12821, 8724, 8725, 12819, 12820, *e(APPEND), 12830, *e("GPT:"),
             12840, *e("hello there, how are you"), 12841, *e("I am fine, thank you"), 12821, 8731, 8732, 12820, 12831,
             *e("USER:"), *IMG_IDS, *e("draw a cat"), 12830, *e("GPT:"),
             *e("here is a cat"), 12831])
    r = render_dialog(two_turns(), e)
    assert r.ids == want
    assert (r.kept_turns, r.dropped_turns) == (4, 0)
    # segments: roles alternate user/assistant per part, spans are their own segments
    n_user1 = 1 + len(e("USER:"))
    a1 = n_user1 + 5 + len(e(APPEND)) + 1 + len(e("GPT:"))
    a1_text_end = a1 + 1 + len(e("hello there, how are you")) + 1 + len(e("I am fine, thank you"))
    u2 = a1_text_end + 4 + 1
    img_start = u2 + len(e("USER:"))
    a2 = img_start + 1026 + len(e("draw a cat")) + 1 + len(e("GPT:"))
    assert [(s.role, s.modality, s.start, s.end) for s in r.segments] == [
        ("user", "text", 0, n_user1), ("user", "speech", n_user1, n_user1 + 5), ("user", "text", n_user1 + 5, a1),
        ("assistant", "text", a1, a1_text_end), ("assistant", "speech", a1_text_end, a1_text_end + 4),
        ("assistant", "text", a1_text_end + 4, u2), ("user", "text", u2, img_start),
        ("user", "image", img_start, img_start + 1026), ("user", "text", img_start + 1026, a2),
        ("assistant", "text", a2, len(want))]
    assert check_row(r.ids, r.segments) == []


def test_labels_fall_on_assistant_parts_only(tok):
    r = render_dialog(two_turns(), tok.encode)
    labels, w = labels_and_weights(r.ids, r.segments, "chat", LossPolicy(on="assistant"))
    targets = [i for i, y in zip(r.ids, labels) if y != -100]
    # the assistant parts: <-Ins-> transcript <-Res-> reply speech <eom>, then reply <eom>
    e = tok.encode
    assert targets == [12840, *e("hello there, how are you"), 12841, *e("I am fine, thank you"), 12821, 8731, 8732,
                       12820, 12831, *e("here is a cat"), 12831]
    assert all(y == -100 for i, y in zip(r.ids, labels) if i in (12830, 0, 8197, 8724))


def test_pieces_are_encoded_one_by_one(tok):
    r = render_dialog(two_turns()[:2], tok.encode)
    start = r.ids.index(12840) + 1
    joined = tok.encode("hello there, how are you" + "I am fine, thank you")
    assert r.ids[start:start + len(joined) + 1] != joined


def test_trailing_turns_are_dropped_whole_to_fit(tok):
    full = render_dialog(two_turns(), tok.encode)
    first_end = full.ids.index(12831) + 1
    for limit in (first_end, first_end + 1, len(full.ids) - 1):
        r = render_dialog(two_turns(), tok.encode, max_tokens=limit)
        assert r.ids == full.ids[:first_end] and r.ids[-1] == 12831      # never cut inside the image span
        assert (r.kept_turns, r.dropped_turns, r.dropped) == (2, 2, ["too_long", "too_long"])
        assert check_row(r.ids, r.segments) == []
    with pytest.raises(DialogTooLong):
        render_dialog(two_turns(), tok.encode, max_tokens=first_end - 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 3), st.booleans()), min_size=1, max_size=5),
       st.integers(20, 4000))
def test_any_dialog_fits_and_ends_on_a_turn(tok, exchanges, limit):
    """Property: within the limit, a prefix of whole exchanges of the unlimited row, grammatical, ending in <eom>."""
    turns = []
    for spoke, image, n_reply_codes, typed in exchanges:
        turns.append(DialogTurn("user", "draw a cat" if typed or not spoke else "",
                                image_codes=IMG if image else None, speech_codes=[1, 2, 3] if spoke else None))
        turns.append(DialogTurn("assistant", "here is a cat", speech_codes=list(range(n_reply_codes)) or None))
    full = render_dialog(turns, tok.encode)
    try:
        r = render_dialog(turns, tok.encode, max_tokens=limit)
    except DialogTooLong:
        assert full.ids.index(12831) + 1 > limit
        return
    assert len(r.ids) <= limit and r.ids == full.ids[:len(r.ids)] and r.ids[-1] == 12831
    assert r.kept_turns + r.dropped_turns == len(turns) and r.kept_turns == 2 * r.ids.count(12831)
    assert check_row(r.ids, r.segments) == []


def test_turn_pairing():
    assert pair_turns(["assistant", "user", "assistant", "user"]) == ([(1, 2)], [(0, "leading_assistant"),
                                                                                 (3, "unanswered")])
    with pytest.raises(TemplateError, match="alternate"):
        pair_turns(["user", "user", "assistant"])
    with pytest.raises(TemplateError, match="no user turn"):
        render_dialog([DialogTurn("user", "hi")], str.split)


def test_spoken_block_needs_a_transcript_and_instruction_override(tok):
    r = render_dialog([DialogTurn("user", "", speech_codes=[5]), DialogTurn("assistant", "ok")], tok.encode,
                      instruction="Listen.")
    assert 12840 not in r.ids and 12841 not in r.ids             # no transcript: no <-Ins-> block
    assert tok.encode("Listen.") == r.ids[r.ids.index(12820) + 1:r.ids.index(12830)]
    assert default_instruction("chat") == APPEND


UPSTREAM_APPEND = {  # upstream's strings (inference_chat.py default; README infer_test.json); speech: aromni's
    "text": "Please acknowledge the user's vocal input, create a textual response.",
    "image": "Please transcribe the user's vocal input, create a picture of it.",
    "speech": "Please acknowledge the user's vocal input, create a spoken response.",
}


@pytest.mark.parametrize("reply,modality", [
    (DialogTurn("assistant", "fine"), "text"),
    (DialogTurn("assistant", "fine", speech_codes=[7, 8]), "speech"),
    (DialogTurn("assistant", "here", image_codes=IMG), "image"),
])
def test_chat_instruction_by_reply_modality_golden_ids(tok, reply, modality):
    """by_reply: a spoken user turn is followed by the append text for its reply's modality; the default stays the
    one fixed text (upstream's DEFAULT_USER_APPEND_TEXT) whatever the reply."""
    e = tok.encode
    user = DialogTurn("user", "draw a cat", speech_codes=[0, 1])
    r = render_dialog([user, reply], e, by_reply=True)
    head = [0, *e("USER:"), 12821, 8724, 8725, 12820]
    want_user = head + [*e(UPSTREAM_APPEND[modality]), 12830, *e("GPT:")]
    assert r.ids[:len(want_user)] == want_user
    assert r.instructions == [UPSTREAM_APPEND[modality]]
    fixed = render_dialog([user, reply], e)
    assert fixed.ids[:len(head) + len(e(APPEND)) + 1] == head + [*e(APPEND), 12830]
    if modality == "text":
        assert r.ids == fixed.ids
    else:
        assert r.ids != fixed.ids
