"""The decoding grammar, checked against an independent reading of reference §5 over random models and settings."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aromni.infer.cfg import Guidance
from aromni.infer.generate import Options, Session
from aromni.infer.state import (IMAGE, SPEECH, TEXT, Constraints, DecodeError, DecodeState, VocabMasks)
from aromni.layout import AR_OMNI_V0_1 as L
from aromni.layout import Layout

from .conftest import FakeLM

PROMPT = [L.bos, 20000, 20001, L.eoh, 20002]
MARKERS = [L.boi, L.eoi, L.boa, L.eoa, L.eos, L.eom, L.ins, L.res]


# The grammar test runs many random models; with 16-code images an image fits in a short reply, so every
# transition (and the room rule) is exercised cheaply. The real 1024-code layout is tested below.
L16 = Layout(image_tokens=16)


def check_reply(reply: list[int], prompt_len: int, max_len: int, c: Constraints, text_vocab: int | None,
                L: Layout = L) -> None:
    """Reference §5 read directly, one id at a time: raises AssertionError at the first id the grammar forbids."""
    mode, span, images, speeches = "text", 0, 0, 0
    for k, t in enumerate(reply):
        pos = prompt_len + k          # index of t in the whole sequence
        where = f"id {t} at reply position {k} in mode {mode}"
        if k == 0 and c.start is not None:
            assert t == c.start, where
        if mode == "image":
            if span < L.image_tokens:
                assert L.image_code_start <= t <= L.image_code_end, where
                span += 1
            else:
                assert t == L.eoi, where
                mode = "text"
        elif mode == "speech":
            if L.speech_code_start <= t <= L.speech_code_end:
                span += 1
            else:
                assert t == L.eoa and span > 0, where
                mode = "text"
        else:
            assert not L.is_image_code(t) and not L.is_speech_code(t) and t not in (L.eoi, L.eoa, L.bos, L.pad), where
            if t == L.boi:
                assert c.images is None or images < c.images, where
                assert pos + L.image_tokens + 2 <= max_len, f"{where}: an image opened without room for 1026 ids"
                mode, span, images = "image", 0, images + 1
            elif t == L.boa:
                assert c.speech is None or speeches < c.speech, where
                mode, span, speeches = "speech", 0, speeches + 1
            elif t in (L.eos, L.eom):
                assert k == len(reply) - 1, f"{where}: ids after a stop"
            else:
                assert c.text, f"{where}: text in a reply that allows none"
                if text_vocab is not None:
                    assert t < text_vocab, where
    # an image is never left open: it only opens with room to finish
    assert mode != "image", "reply ended inside an image"


constraints = st.builds(
    Constraints, text=st.booleans(), images=st.sampled_from([None, 0, 1, 2]), speech=st.sampled_from([None, 0, 1]),
    start=st.sampled_from([None, L.boa, L.boi]), greedy=st.booleans(), image_greedy=st.booleans())
biases = st.fixed_dictionaries({m: st.floats(0, 30) for m in MARKERS})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), c=constraints, bias=biases, max_new=st.integers(1, 70),
       text_vocab=st.sampled_from([None, 17000]), cfg=st.booleans())
def test_decoding_never_breaks_the_grammar(seed, c, bias, max_new, text_vocab, cfg):
    lm = FakeLM(seed, bias)
    s = Session(lm, L16, text_vocab_size=text_vocab)
    s.extend(PROMPT)
    opts = Options(max_new_tokens=max_new, seed=seed, guidance=Guidance(enabled=cfg))
    no_room = max_new < L16.image_tokens + 2
    if (c.start == L16.boa and c.speech == 0) or (c.start == L16.boi and (c.images == 0 or no_room)):
        with pytest.raises(DecodeError, match="contradict|no room"):
            list(s.generate(c, opts))
        return
    reply = [step.token for step in s.generate(c, opts)]
    assert 1 <= len(reply) <= max_new
    check_reply(reply, len(PROMPT), len(PROMPT) + max_new, c, text_vocab, L16)
    assert s.tokens == PROMPT + reply
    # the state is a function of the ids: replaying the reply reaches the loop's end state
    end = DecodeState.after_prompt(PROMPT, s.masks, c, len(PROMPT) + max_new).replay(reply)
    assert end.length == len(PROMPT) + len(reply)
    assert end.done == (reply[-1] in L16.stop_ids)


@pytest.mark.parametrize("room", [-1, 0, 1])
def test_images_open_only_with_room_and_are_exactly_1024_codes(room):
    """The model wants an image above all else; it gets one exactly when all 1026 ids fit."""
    lm = FakeLM(room + 7, {L.boi: 60.0, L.eos: 40.0})  # boi first, else stop
    s = Session(lm, L)
    s.extend(PROMPT)
    max_new = L.image_tokens + 2 + room
    opts = Options(max_new_tokens=max_new, guidance=Guidance(enabled=False))  # guidance: tested below
    reply = [x.token for x in s.generate(Constraints(images=None), opts)]
    check_reply(reply, len(PROMPT), len(PROMPT) + max_new, Constraints(), None)
    if room >= 0:
        assert reply[0] == L.boi and reply[1 + L.image_tokens] == L.eoi
        assert all(L.is_image_code(t) for t in reply[1:1 + L.image_tokens])
    else:
        assert reply == [L.eos]  # no room: <boi> is masked, the next best is to stop


def test_forced_image_without_room_is_refused():
    s = Session(FakeLM(0), L)
    s.extend(PROMPT)
    with pytest.raises(DecodeError, match="no room for an image"):
        list(s.generate(Constraints(text=False, images=1, start=L.boi), Options(max_new_tokens=1025)))


def test_guided_rows_stay_in_step():
    """Three rows decode the image; FakeLM asserts masks/positions at every batched step, and the rows end with
    the same 1024 codes (one sampled id shared by all rows)."""
    lm = FakeLM(3)
    s = Session(lm, L)
    prompt = [L.bos, 20000, L.boi] + [L.image_code_start + i % 50 for i in range(L.image_tokens)] + [L.eoi, 20001]
    s.extend(prompt)
    c = Constraints(text=False, images=1, start=L.boi)
    seen_rows = []
    orig = lm.stack_caches

    def spy(caches, length):
        cache = orig(caches, length)
        seen_rows.append(cache)
        return cache
    lm.stack_caches = spy
    reply = [x.token for x in s.generate(c, Options(max_new_tokens=L.image_tokens + 3))]
    assert reply[0] == L.boi and reply[L.image_tokens + 1] == L.eoi
    (cache,) = seen_rows
    codes = reply[1:1 + L.image_tokens]
    width = len(prompt) + 1  # the full row: prompt + <boi>, the longest row
    full, img, unc = ([t for t in r if t is not None] for r in cache.rows)
    # the guided rows got every code but the last (after guidance ends, only the session forwards)
    assert img == [L.bos, L.boi, *prompt[3:3 + L.image_tokens], L.eoi, L.boi, *codes[:-1]]
    assert unc == [L.bos, L.boi, *codes[:-1]]
    assert all(len(r) == width + L.image_tokens - 1 for r in cache.rows[1:])
    # row 0 is the session's row: it went on alone, with every id of the reply but the final stop
    assert full[:width + L.image_tokens - 1] == prompt + [L.boi] + codes[:-1]
    assert s.cache.rows == [full] and full == prompt + reply[:-1]


def test_mode_switches_and_greedy_markers():
    masks = VocabMasks(L, L.vocab_size)
    s = DecodeState.after_prompt(PROMPT, masks, Constraints(), 4096)
    assert s.mode == TEXT and not s.greedy
    s.advance(L.boa)
    assert s.mode == SPEECH and s.greedy and not s.allowed()[L.eoa]   # a span needs a code before <eoa>
    s.advance(L.speech_code_start)
    assert s.allowed()[L.eoa] and not s.allowed()[L.eos] and not s.allowed()[20000]
    s.advance(L.eoa)
    assert s.mode == TEXT and not s.greedy
    s.advance(L.ins)
    assert s.greedy
    s.advance(L.res)
    assert not s.greedy
    s.advance(L.boi)
    assert s.mode == IMAGE and int(s.allowed().sum()) == L.image_codebook and s.forced is None
    for _ in range(L.image_tokens):
        s.advance(L.image_code_start)
    assert s.forced == L.eoi and int(s.allowed().sum()) == 1
    with pytest.raises(DecodeError):
        s.advance(L.image_code_start)
    s.advance(L.eoi)
    s.advance(L.eom)
    assert s.done
    with pytest.raises(DecodeError):
        s.allowed()


def test_masks_are_the_spec_sets():
    m = VocabMasks(L, L.vocab_size, text_vocab_size=20000)
    assert m.image_codes.nonzero().reshape(-1).tolist() == list(range(4, 8196))
    assert m.speech_codes.nonzero().reshape(-1).tolist() == list(range(8724, 12820))
    everything = m.text_mode(True, True, True)
    assert everything[[L.eos, L.eom, L.boi, L.boa, 8198, 12830, 19999]].all()
    assert not everything[[L.bos, L.pad, L.eoi, L.eoa, 4, 8195, 8724, 12819, 20000]].any()
    none = m.text_mode(False, False, False)
    assert none.nonzero().reshape(-1).tolist() == sorted(L.stop_ids)
    assert m.text_mode(True, True, True) is everything  # built once
    assert torch.equal(m.ids(m.image_codes), torch.arange(4, 8196))


def test_a_prompt_that_opens_an_image_is_continued_with_guidance():
    lm = FakeLM(1)
    s = Session(lm, L16)
    prompt = [L16.bos, 20000, L16.eoh, L16.boi, 4, 5]
    s.extend(prompt)
    reply = [x.token for x in s.generate(Constraints(), Options(max_new_tokens=40))]
    assert all(L16.is_image_code(t) for t in reply[:14]) and reply[14] == L16.eoi   # 2 + 14 = 16 codes
    assert lm.batched == 13  # guided from the first new code on; the 14th (last) closes the rows
