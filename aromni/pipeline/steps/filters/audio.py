"""``audio_quality``: clipping, speech activity, SNR and speech rate of every speech segment, measured on the decoded
waveform — list it BEFORE ``noise`` in ``steps`` so DEMAND augmentation never trips it.

Measurements (pure functions, waveform in, number out):
- ``clipping_ratio``: the fraction of samples sitting in flat runs (>= ``min_run`` consecutive samples) at the
  waveform's own peak level. A clean tone touches its peak in isolated samples; a clipped one sits there for runs.
  Scale-free, so audio that was clipped and then attenuated is still caught.
- ``speech_activity``: silero-vad (the ONNX model inside the silero-vad wheel, CPU, one thread, loaded once per
  process: no download) -> speech segments in seconds and the speech fraction of the duration.
- ``wada_snr``: WADA-SNR — C. Kim and R. M. Stern, "Robust Signal-to-Noise Ratio Estimation Based on Waveform
  Amplitude Distribution Analysis", Interspeech 2008. Clean speech amplitude is modelled as Gamma-distributed with
  shape 0.4, noise as Gaussian; the statistic G = log E|z| - E log|z| of the noisy waveform z is a monotonic function
  of the SNR, tabulated (as in the paper) by simulating that model at -20..100 dB, and inverted by interpolation.
- ``speech_rate``: characters (non-space) or words of the transcript per second of speech (the VAD's first speech
  onset to last offset when available, else the whole duration): catches transcripts that do not belong to the audio.

Recorded as ``meta["audio_quality"]`` of the segment (the example's meta for single-turn speech, the turn's for
dialogs): ``{clipping, speech_fraction, snr_db, rate, rate_unit[, trimmed_s]}``. Reasons: ``clipping``,
``mostly_silence``, ``low_snr``, ``speech_rate``. ``trim_silence`` cuts leading/trailing non-speech (keeping
``trim_pad_s``) from the waveform the tokenizer will see.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field

from aromni.pipeline.steps.base import register_step
from aromni.pipeline.steps.filters.base import FilterOptions, FilterStep, linear_edges
from aromni.pipeline.steps.media import MediaError

VAD_RATE = 16000
SNR_EDGES = linear_edges(-20.0, 100.0, 24)
FRACTION_EDGES = linear_edges(0.0, 1.0, 20)
RATE_EDGES = linear_edges(0.0, 40.0, 40)


def clipping_ratio(wave: np.ndarray, min_run: int = 3, tol: float = 1e-4) -> float:
    """Fraction of samples in runs of >= ``min_run`` consecutive samples within ``tol`` (relative) of the peak |x|."""
    x = np.abs(np.asarray(wave, dtype=np.float32))
    if len(x) == 0:
        return 0.0
    peak = float(x.max())
    if peak <= 0:
        return 0.0
    at = x >= peak * (1 - tol)
    # run lengths of True stretches
    d = np.diff(np.concatenate(([0], at.view(np.int8), [0])))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    lengths = ends - starts
    return float(lengths[lengths >= min_run].sum() / len(x))


@lru_cache(maxsize=1)
def _wada_table(shape: float = 0.4, n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(SNR dB grid, G at each SNR) for Gamma(shape) speech + Gaussian noise: the paper's lookup table, recomputed
    deterministically (fixed seed) instead of pasted."""
    rng = np.random.default_rng(seed)
    s = rng.gamma(shape, 1.0, n) * rng.choice((-1.0, 1.0), n)
    g = rng.standard_normal(n)
    power = float(np.mean(s ** 2))
    snrs = np.arange(-20.0, 101.0, 1.0)
    vals = []
    for d in snrs:
        z = np.abs(s + g * np.sqrt(power / 10 ** (d / 10)))
        z = np.maximum(z, 1e-10)
        vals.append(np.log(z.mean()) - np.log(z).mean())
    return snrs, np.asarray(vals)


def wada_snr(wave: np.ndarray) -> float:
    """WADA-SNR estimate in dB, clamped to [-20, 100]."""
    x = np.asarray(wave, dtype=np.float64)
    peak = np.abs(x).max() if len(x) else 0.0
    if peak <= 0:
        return -20.0
    z = np.maximum(np.abs(x / peak), 1e-10)
    g = np.log(z.mean()) - np.log(z).mean()
    snrs, table = _wada_table()
    if g <= table[0]:
        return float(snrs[0])
    if g >= table[-1]:
        return float(snrs[-1])
    return float(np.interp(g, table, snrs))  # G grows with the SNR


@lru_cache(maxsize=1)
def vad_model():
    from silero_vad import load_silero_vad
    return load_silero_vad(onnx=True)  # the wheel's ONNX file, CPUExecutionProvider, one thread


def speech_activity(wave: np.ndarray, sr: int, threshold: float = 0.5) -> tuple[list[tuple[float, float]], float]:
    """(speech segments as (start_s, end_s), speech fraction of the duration) by silero-vad at 16 kHz."""
    import torch
    from silero_vad import get_speech_timestamps

    x = np.asarray(wave, dtype=np.float32)
    if len(x) == 0:
        return [], 0.0
    if sr != VAD_RATE:
        import soxr
        x = soxr.resample(x, sr, VAD_RATE).astype(np.float32)
    ts = get_speech_timestamps(torch.from_numpy(x), vad_model(), threshold=threshold, sampling_rate=VAD_RATE)
    segs = [(t["start"] / VAD_RATE, t["end"] / VAD_RATE) for t in ts]
    total = len(x) / VAD_RATE
    return segs, float(sum(e - s for s, e in segs) / total)


def speech_rate(text: str, seconds: float, unit: Literal["chars", "words"] = "chars") -> float:
    """Non-space characters (or words) of ``text`` per second."""
    n = len(text.split()) if unit == "words" else sum(1 for c in text if not c.isspace())
    return n / seconds if seconds > 0 else float("inf")


class AudioQualityOptions(FilterOptions):
    max_clipping: float | None = Field(0.01, ge=0, le=1,
                                       description="reject (clipping) above this ratio; null: measure only")
    clip_min_run: int = Field(3, ge=2, description="flat run length at the peak that counts as clipped")
    vad: bool = Field(True, description="run silero-vad (speech fraction, trimming, the rate's duration)")
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    min_speech_fraction: float | None = Field(0.2, ge=0, le=1, description="reject (mostly_silence) below this")
    trim_silence: bool = Field(False, description="cut leading/trailing non-speech from the waveform")
    trim_pad_s: float = Field(0.1, ge=0, description="silence kept around the speech when trimming")
    min_snr_db: float | None = Field(None, description="reject (low_snr) below this WADA-SNR; null: measure only")
    rate_unit: Literal["chars", "words"] = "chars"
    rate_range: tuple[float, float] | None = Field((2.0, 30.0), description="reject (speech_rate) outside; "
                                                   "null: measure only. Read speech is 10-18 chars/s")


def measure(wave: np.ndarray, sr: int, text: str | None, o: AudioQualityOptions
            ) -> tuple[dict, list[tuple[float, float]]]:
    """Every measurement of one segment (for meta) and the VAD's speech segments."""
    m: dict = {"clipping": round(clipping_ratio(wave, o.clip_min_run), 5), "snr_db": round(wada_snr(wave), 2)}
    seconds = len(wave) / sr
    segs: list[tuple[float, float]] = []
    span = seconds
    if o.vad:
        segs, frac = speech_activity(wave, sr, o.vad_threshold)
        m["speech_fraction"] = round(frac, 4)
        if segs:
            span = segs[-1][1] - segs[0][0]
    if text:
        m["rate"] = round(speech_rate(text, span, o.rate_unit), 3) if span > 0 else None
        m["rate_unit"] = o.rate_unit
    return m, segs


def verdict(m: dict, o: AudioQualityOptions) -> tuple[str, str] | None:
    """(reason, message) of the first failed check, or None."""
    if o.max_clipping is not None and m["clipping"] > o.max_clipping:
        return "clipping", f"clipping ratio {m['clipping']:.4f} > {o.max_clipping}"
    if o.min_speech_fraction is not None and "speech_fraction" in m and m["speech_fraction"] < o.min_speech_fraction:
        return "mostly_silence", f"speech fraction {m['speech_fraction']:.3f} < {o.min_speech_fraction}"
    if o.min_snr_db is not None and m["snr_db"] < o.min_snr_db:
        return "low_snr", f"WADA-SNR {m['snr_db']:.1f} dB < {o.min_snr_db}"
    if o.rate_range is not None and "rate" in m:
        lo, hi = o.rate_range
        r = m["rate"]
        if r is None or not lo <= r <= hi:
            return "speech_rate", f"{r} {o.rate_unit}/s of transcript outside [{lo}, {hi}]"
    return None


@register_step
class AudioQualityStep(FilterStep):
    name = "audio_quality"
    Options = AudioQualityOptions

    def segments(self, example, media: dict):
        """(media dict holding 'speech', transcript or None, meta dict) for every speech segment."""
        if "speech" in media:
            yield media, example.text, example.meta
        for turn, m in zip(example.turns or [], media.get("turns") or []):
            if "speech" in m:
                yield m, turn.text or None, turn.meta

    def check(self, example, media: dict) -> None:
        o = self.opts
        for where, (m, text, meta) in enumerate(self.segments(example, media)):
            wave, sr = m["speech"]
            q, segs = measure(wave, sr, text, o)
            if o.trim_silence and segs:
                a = max(0, int((segs[0][0] - o.trim_pad_s) * sr))
                b = min(len(wave), int(np.ceil((segs[-1][1] + o.trim_pad_s) * sr)))
                if b - a < len(wave):
                    m["speech"] = (wave[a:b], sr)
                    q["trimmed_s"] = round((len(wave) - (b - a)) / sr, 3)
                    self.stats["trimmed"] += 1
            meta["audio_quality"] = q
            for k, edges in (("clipping", FRACTION_EDGES), ("speech_fraction", FRACTION_EDGES),
                             ("snr_db", SNR_EDGES), ("rate", RATE_EDGES)):
                if q.get(k) is not None:
                    self.stats.observe(k, q[k], edges)
            bad = verdict(q, o)
            if bad:
                self.stats.reject(bad[0])
                raise MediaError(bad[0], f"speech segment {where}: {bad[1]}")
