"""Streaming speech: the chunks concatenate to the non-streamed audio."""
from __future__ import annotations

import numpy as np
import pytest

from aromni.infer.generate import Step
from aromni.infer.stream import ChunkedSpeech, SpeechStream
from aromni.layout import AR_OMNI_V0_1 as L
from aromni.model.standin import StandInSpeechTokenizer

HOP = L.speech_sample_rate // L.speech_rate


def lookahead_decoder(reach: int):
    """A vocoder stand-in whose frame i depends on codes i-3 .. i+reach (like a non-causal convolution)."""
    def decode(codes):
        c = np.asarray(codes, dtype=np.float64)
        padded = np.concatenate([np.zeros(3), c, np.zeros(reach)])
        frames = np.array([padded[i:i + 4 + reach].sum() for i in range(len(c))])
        ramp = np.linspace(0, 1, HOP, endpoint=False)
        return (frames[:, None] * (1 + ramp[None])).reshape(-1).astype(np.float32), L.speech_sample_rate
    return decode


@pytest.mark.parametrize("n", [1, 9, 10, 11, 57, 300])
def test_chunks_concatenate_to_the_full_decode(n):
    codes = list(np.random.default_rng(n).integers(0, 4096, n))
    decode = lookahead_decoder(2)
    cs = ChunkedSpeech(decode, HOP, first=10, growth=1.5, max_chunk=40, lookahead=2)
    pieces = [p for c in codes if (p := cs.push(c)) is not None] + [cs.finish()]
    assert np.array_equal(np.concatenate(pieces), decode(codes)[0])
    if n >= 11:
        assert len(pieces) >= 2 and len(pieces[0]) == (10 - 2) * HOP  # first audio after `first` codes


def test_too_little_lookahead_is_visible():
    """The holdback matters: with less lookahead than the decoder's reach the chunks differ from the full decode."""
    codes = list(range(1, 60))
    decode = lookahead_decoder(2)
    cs = ChunkedSpeech(decode, HOP, first=5, lookahead=0)
    pieces = [p for c in codes if (p := cs.push(c)) is not None] + [cs.finish()]
    assert not np.array_equal(np.concatenate(pieces), decode(codes)[0])


def test_speech_stream_over_steps_with_the_standin_vocoder():
    tok = StandInSpeechTokenizer(L)
    rng = np.random.default_rng(0)
    span1, span2 = rng.integers(0, 4096, 95).tolist(), rng.integers(0, 4096, 7).tolist()
    ids = [20000, L.boa, *L.speech_ids(span1), L.eoa, 20001, L.boa, *L.speech_ids(span2)]  # the 2nd span is cut
    steps = [Step(t, "text", 0.01 * i) for i, t in enumerate(ids)]
    s = SpeechStream(steps, tok.decode, L, t0=0.0, first=10)
    chunks = list(s)
    assert [c.span for c in chunks if c.final] == [0, 1]
    for k, span in enumerate((span1, span2)):
        assert np.array_equal(s.audio[k], tok.decode(span)[0])
    assert s.tokens == ids
    m = s.metrics
    assert m.first_token_s == 0.0 and m.first_speech_token_s == pytest.approx(0.02)
    assert m.audio_s == pytest.approx((95 + 7) / 40) and m.rtf is not None
