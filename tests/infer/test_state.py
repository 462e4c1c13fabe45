"""The decoding grammar, checked against an independent reading of reference §5 over random models and settings."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aromni.infer.cfg import Guidance
from aromni.infer.generate import Options, Session
from aromni.infer.outputs import split_reply
from aromni.infer.state import (IMAGE, SPEECH, TEXT, Constraints, DecodeError, DecodeState, VocabMasks,
                                unused_reserved_ids)
from aromni.layout import AR_OMNI_V0_1 as L
from aromni.layout import Layout
from aromni.model.text import chameleon_special_tokens

from .conftest import FakeLM

PROMPT = [L.bos, 20000, 20001, L.eoh, 20002]
MARKERS = [L.boi, L.eoi, L.boa, L.eoa, L.eos, L.eom, L.ins, L.res]


# The grammar test runs many random models; with 16-code images an image fits in a short reply, so every
# transition (and the room rule) is exercised cheaply. The real 1024-code layout is tested below.
L16 = Layout(image_tokens=16)
# Chameleon's names for ids 0..16383 (<reservedNNNNN> from 8198 on): the placeholders no layout id uses
RESERVED_UNUSED = frozenset(unused_reserved_ids({n: i for i, n in enumerate(chameleon_special_tokens(L))}, L))


def check_reply(reply: list[int], prompt_len: int, max_len: int, c: Constraints, text_vocab: int | None,
                L: Layout = L, unused: frozenset = frozenset()) -> None:
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
            elif t in (L.eos, L.eom):   # a stop closes the span and ends the reply (upstream's splitter)
                assert span > 0 and k == len(reply) - 1, where
                mode = "done"
            else:
                assert t == L.eoa and span > 0, where
                mode = "text"
        else:
            assert not L.is_image_code(t) and not L.is_speech_code(t) and t not in (L.eoi, L.eoa, L.bos, L.pad), where
            if t == L.boi:
                assert c.images is None or images < c.images, where
                # upstream: <boi> is disallowed at index >= max_seq_len - 1026
                assert pos < max_len - (L.image_tokens + 2), f"{where}: an image opened without room for 1026 ids + stop"
                mode, span, images = "image", 0, images + 1
            elif t == L.boa:
                assert c.speech is None or speeches < c.speech, where
                mode, span, speeches = "speech", 0, speeches + 1
            elif t in (L.eos, L.eom):
                assert k == len(reply) - 1, f"{where}: ids after a stop"
            else:
                assert c.text, f"{where}: text in a reply that allows none"
                assert t not in unused, f"{where}: an unused reserved id"
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
       text_vocab=st.sampled_from([None, 17000]), cfg=st.booleans(), reserved=st.booleans())
def test_decoding_never_breaks_the_grammar(seed, c, bias, max_new, text_vocab, cfg, reserved):
    lm = FakeLM(seed, bias)
    unused = RESERVED_UNUSED if reserved else frozenset()
    s = Session(lm, L16, masks=VocabMasks(L16, lm.vocab_size, text_vocab, unused=unused))
    s.extend(PROMPT)
    opts = Options(max_new_tokens=max_new, seed=seed, guidance=Guidance(enabled=cfg))
    no_room = max_new < L16.image_tokens + 3
    if (c.start == L16.boa and c.speech == 0) or (c.start == L16.boi and (c.images == 0 or no_room)):
        with pytest.raises(DecodeError, match="contradict|no room"):
            list(s.generate(c, opts))
        return
    reply = [step.token for step in s.generate(c, opts)]
    assert 1 <= len(reply) <= max_new
    check_reply(reply, len(PROMPT), len(PROMPT) + max_new, c, text_vocab, L16, unused)
    assert s.tokens == PROMPT + reply
    # the state is a function of the ids: replaying the reply reaches the loop's end state
    end = DecodeState.after_prompt(PROMPT, s.masks, c, len(PROMPT) + max_new).replay(reply)
    assert end.length == len(PROMPT) + len(reply)
    assert end.done == (reply[-1] in L16.stop_ids)


@pytest.mark.parametrize("room", [-1, 0, 1])
def test_images_open_only_with_room_and_are_exactly_1024_codes(room):
    """The model wants an image above all else; it gets one exactly when all 1026 ids and a stop fit (upstream:
    <boi> disallowed at index >= max_seq_len - 1026)."""
    lm = FakeLM(room + 7, {L.boi: 60.0, L.eos: 40.0})  # boi first, else stop
    s = Session(lm, L)
    s.extend(PROMPT)
    max_new = L.image_tokens + 3 + room
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
    assert s.allowed()[L.eoa] and s.allowed()[L.eos] and not s.allowed()[20000]   # a stop may close the span
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


# ---- one property test per decoding rule of issue 18 -------------------------------------------------------------
def test_unused_reserved_ids_are_the_placeholders_only():
    """<reservedNNNNN> ids that are neither speech codes nor markers; Chameleon's 8198..16383 hold 4096 codes and
    the layout's markers, the other 4090 are placeholders."""
    assert len(RESERVED_UNUSED) == (16384 - 8198) - L.speech_codebook - 6   # eoa boa eoh eom ins res
    assert not RESERVED_UNUSED & {L.eoa, L.boa, L.eoh, L.eom, L.ins, L.res}
    assert not any(L.is_speech_code(i) for i in RESERVED_UNUSED)
    assert {8198, 8723, 12822, 12829, 12832, 12839, 12842, 16383} <= RESERVED_UNUSED


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), weight=st.floats(0, 40), c=constraints)
def test_reserved_placeholders_are_never_sampled(seed, weight, c):
    """A model that puts its mass on the placeholders (as the undertrained demo model does) still gets none."""
    bias = {i: weight for i in sorted(RESERVED_UNUSED)[::97]}
    lm = FakeLM(seed, bias)
    s = Session(lm, L16, masks=VocabMasks(L16, lm.vocab_size, unused=RESERVED_UNUSED))
    s.extend(PROMPT)
    try:
        reply = [x.token for x in s.generate(c, Options(max_new_tokens=30, seed=seed))]
    except DecodeError:
        return   # contradictory constraints: covered above
    assert not set(reply) & RESERVED_UNUSED
    # markers and speech codes keep their rules: the markers stay sampleable in text mode
    m = s.masks.text_mode(True, True, True)
    assert m[[L.eoh, L.ins, L.res, L.eom, L.boa, L.boi]].all() and not m[sorted(RESERVED_UNUSED)].any()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), stop=st.sampled_from([L.eos, L.eom]), codes=st.integers(1, 12),
       max_new=st.integers(20, 60))
def test_a_stop_id_closes_a_speech_span_and_ends_the_reply(seed, stop, codes, max_new):
    """Inside a speech span, after >= 1 code, <eos>/<eom> are allowed next to <eoa>: the span ends with the reply
    and the splitter takes it as complete speech (upstream tolerates a missing <eoa>)."""
    masks = VocabMasks(L, L.vocab_size)
    s = DecodeState.after_prompt(PROMPT, masks, Constraints(), 4096)
    s.advance(L.boa)
    assert not s.allowed()[stop]                       # not before the first code
    for k in range(codes):
        s.advance(L.speech_code_start + k)
        assert s.allowed()[[stop, L.eoa]].all() and not s.allowed()[[L.boi, L.boa, 20000]].any()
    s.advance(stop)
    assert s.done
    # through the loop: a model that wants to stop mid-speech does stop (it no longer runs to max_new_tokens)
    lm = FakeLM(seed, {stop: 25.0, L.eoa: -1e4, L.boa: 30.0})
    sess = Session(lm, L)
    sess.extend(PROMPT)
    reply = [x.token for x in sess.generate(Constraints(start=L.boa, greedy=True), Options(max_new_tokens=max_new))]
    assert reply[0] == L.boa and reply[-1] == stop and len(reply) < max_new
    (speech, _text) = split_reply(reply, L)
    assert speech.kind == "speech" and speech.complete and speech.ids == reply[1:-1]


@settings(max_examples=60, deadline=None)
@given(default=st.booleans(), before=st.lists(st.sampled_from([L.ins, L.res, 20000, "speech"]), max_size=6))
def test_greedy_switch_restarts_from_the_default_after_an_image(default, before):
    """Whatever markers set the greedy switch before an image, after its <eoi> it is the task's default again
    (upstream builds a new TextDecoder, with a fresh FiniteTransTokenSelector)."""
    masks = VocabMasks(L16, L16.vocab_size)
    s = DecodeState.after_prompt(PROMPT, masks, Constraints(greedy=default), 4096)
    for t in before:
        for i in ([L16.boa, L16.speech_code_start, L16.eoa] if t == "speech" else [t]):
            s.advance(i)
    s.advance(L16.boi)
    for _ in range(L16.image_tokens):
        s.advance(L16.image_code_start)
    s.advance(L16.eoi)
    assert s.mode == TEXT and s.greedy == default
    s.advance(L16.ins)            # and the markers still switch it afterwards
    assert s.greedy


@settings(max_examples=100, deadline=None)
@given(max_len=st.integers(30, 200), used=st.integers(0, 200))
def test_image_room_rule_is_upstreams(max_len, used):
    """<boi> is allowed exactly when length < max_len - (image ids + 2) (upstream: disallowed at or after index
    max_seq_len - 1026), and advancing by it is refused otherwise."""
    masks = VocabMasks(L16, L16.vocab_size)
    prompt = [L16.bos] + [20000] * used
    s = DecodeState.after_prompt(prompt, masks, Constraints(), max_len)
    fits = len(prompt) < max_len - (L16.image_tokens + 2)
    assert bool(s.allowed()[L16.boi]) == fits
    if not fits:
        with pytest.raises(DecodeError):
            s.advance(L16.boi)
    else:
        s.advance(L16.boi)
        for _ in range(L16.image_tokens):
            s.advance(L16.image_code_start)
        s.advance(L16.eoi)
        assert s.room >= 1 and s.allowed()[L16.eos]   # the stop after the image still fits
