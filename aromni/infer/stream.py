"""Streaming speech: decode a speech span in growing chunks while its codes are generated.

``ChunkedSpeech`` decodes the whole prefix of the span each time a chunk is due (so the vocoder always sees its
left context) and emits only the samples it will not revise: everything up to ``lookahead`` codes before the end
of the prefix. At the end of the span the full span is decoded once and the rest is emitted. For a decoder whose
output at a frame depends on at most ``lookahead`` codes to its right (the stand-in: 0; a convolutional vocoder:
its right receptive field) the chunks concatenate EXACTLY to the non-streamed decode; for a decoder with
global attention (WavTokenizer's attention block) they match up to that attention's reach into the future.

Chunk boundaries grow geometrically (``first``, then x``growth`` up to ``max_chunk`` codes per chunk), so the total
decoding work stays a small multiple of one full decode while the first audio comes after only ``first`` codes.

``SpeechStream`` wraps a reply's ``Step`` iterator and yields ``AudioChunk``s, measuring first-token latency
(request -> first generated id), first-audio latency (request -> first chunk) and the real-time factor
(wall time to the last chunk / seconds of audio).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from aromni.layout import AR_OMNI_V0_1, Layout


@dataclass
class AudioChunk:
    samples: np.ndarray
    sample_rate: int
    span: int            # which speech span of the reply (0-based)
    start: int           # offset of samples[0] within its span
    final: bool          # the span's last chunk
    t: float             # seconds since the request


class ChunkedSpeech:
    """One speech span, decoded incrementally. ``decode(codes) -> (wave, sample_rate)`` is the tokenizer's."""

    def __init__(self, decode: Callable, hop: int, first: int = 10, growth: float = 2.0, max_chunk: int = 100,
                 lookahead: int = 4, sample_rate: int = AR_OMNI_V0_1.speech_sample_rate):
        if first < 1 or growth < 1 or max_chunk < 1 or lookahead < 0:
            raise ValueError("first >= 1, growth >= 1, max_chunk >= 1, lookahead >= 0")
        self.decode, self.hop, self.growth, self.max_chunk, self.lookahead = decode, hop, growth, max_chunk, lookahead
        self.codes: list[int] = []
        self.emitted = 0
        self.next_at = first
        self.sample_rate = sample_rate

    def push(self, code: int) -> np.ndarray | None:
        """Add one code; returns new samples when a chunk is due, else None."""
        self.codes.append(int(code))
        n = len(self.codes)
        if n < self.next_at:
            return None
        self.next_at = n + int(min(self.max_chunk, max(1, round(n * (self.growth - 1)))))
        return self._emit(final=False)

    def finish(self) -> np.ndarray:
        """The rest of the span, from one decode of all its codes."""
        return self._emit(final=True) if self.codes else np.zeros(0, dtype=np.float32)

    def _emit(self, final: bool) -> np.ndarray:
        wave, sr = self.decode(self.codes)
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        self.sample_rate = int(sr)
        upto = len(wave) if final else min(len(wave), max(0, (len(self.codes) - self.lookahead) * self.hop))
        upto = max(upto, self.emitted)
        piece = wave[self.emitted:upto]
        self.emitted = upto
        return piece


@dataclass
class StreamMetrics:
    first_token_s: float | None = None
    first_speech_token_s: float | None = None
    first_audio_s: float | None = None
    last_audio_s: float | None = None
    audio_s: float = 0.0
    new_tokens: int = 0

    @property
    def rtf(self) -> float | None:
        """Real-time factor: wall time until the last audio sample was ready / seconds of audio (< 1 keeps up)."""
        if not self.audio_s or self.last_audio_s is None:
            return None
        return self.last_audio_s / self.audio_s

    def as_dict(self) -> dict:
        r = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        r["rtf"] = None if self.rtf is None else round(self.rtf, 4)
        return r


class SpeechStream:
    """Iterate a reply's steps, yielding audio chunks of every speech span as they become ready.

    ``speech_codes_of(token)`` maps an id to its code (the layout's), ``decode`` is the speech tokenizer's.
    After iteration, ``tokens`` holds every generated id and ``metrics`` the latencies.
    """

    def __init__(self, steps: Iterable, decode: Callable, layout: Layout = AR_OMNI_V0_1, t0: float | None = None,
                 **chunking):
        self.steps, self.decode, self.layout = steps, decode, layout
        self.t0 = time.perf_counter() if t0 is None else t0
        self.chunking = chunking
        self.tokens: list[int] = []
        self.metrics = StreamMetrics()
        self.spans: list[list[np.ndarray]] = []

    def _chunk(self, samples: np.ndarray, cs: ChunkedSpeech, final: bool) -> AudioChunk:
        now = time.perf_counter() - self.t0
        m = self.metrics
        if len(samples):
            if m.first_audio_s is None:
                m.first_audio_s = now
            m.last_audio_s = now
            m.audio_s += len(samples) / cs.sample_rate
        self.spans[-1].append(samples)
        return AudioChunk(samples, cs.sample_rate, len(self.spans) - 1, cs.emitted - len(samples), final, now)

    def __iter__(self) -> Iterator[AudioChunk]:
        L, m = self.layout, self.metrics
        hop = L.speech_sample_rate // L.speech_rate
        cs: ChunkedSpeech | None = None
        for step in self.steps:
            t = step.token
            self.tokens.append(t)
            m.new_tokens += 1
            if m.first_token_s is None:
                m.first_token_s = step.t
            if t == L.boa:
                cs = ChunkedSpeech(self.decode, hop, sample_rate=L.speech_sample_rate, **self.chunking)
                self.spans.append([])
            elif cs is not None and L.is_speech_code(t):
                if m.first_speech_token_s is None:
                    m.first_speech_token_s = step.t
                piece = cs.push(L.speech_codes([t])[0])
                if piece is not None and len(piece):
                    yield self._chunk(piece, cs, final=False)
            elif cs is not None:  # <eoa> (or anything else) closes the span
                yield self._chunk(cs.finish(), cs, final=True)
                cs = None
        if cs is not None:  # the reply ended inside a span (max_new_tokens)
            yield self._chunk(cs.finish(), cs, final=True)

    @property
    def audio(self) -> list[np.ndarray]:
        """Each span's audio: the concatenation of its chunks."""
        return [np.concatenate(s) if s else np.zeros(0, dtype=np.float32) for s in self.spans]
