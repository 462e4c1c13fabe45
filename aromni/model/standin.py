"""Deterministic STAND-IN image and speech tokenizers for the demo and fast tests.

They are not VQGAN or WavTokenizer: they produce ids in the right ranges at the right rates (1024 codes per image,
40 codes per second of audio) from simple signal features, so a build can run where no checkpoint exists. Their
``identity`` says ``stand_in: true`` and every output that uses them says so.

- image: the picture is squared (centre crop) and shrunk to 32x32; each cell's RGB is quantised to 5+4+4 bits = one
  of 8192 codes. decode() reverses that into a blocky 512x512 picture, so `aromni show` still shows something.
- speech: audio is resampled to 24 kHz and cut in 600-sample frames (40/s); each frame's loudness (64 levels) and
  zero-crossing rate (64 levels) give one of 4096 codes. decode() makes noise with that loudness envelope.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model.images import to_rgb8


class StandInImageTokenizer:
    def __init__(self, layout: Layout = AR_OMNI_V0_1):
        self.layout = layout
        self.side = int(round(layout.image_tokens ** 0.5))

    @property
    def identity(self) -> dict:
        return {"kind": "standin-image", "stand_in": True,
                "note": "STAND-IN: 32x32 colour quantisation, not the Chameleon VQGAN"}

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        out = []
        for img in images:
            img = to_rgb8(img)
            w, h = img.size
            s = min(w, h)
            img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            a = np.asarray(img.resize((self.side, self.side), Image.Resampling.BOX), dtype=np.int64)
            codes = (a[..., 0] >> 3) << 8 | (a[..., 1] >> 4) << 4 | (a[..., 2] >> 4)
            out.append(torch.from_numpy(codes.reshape(-1)))
        return torch.stack(out) if out else torch.zeros(0, self.layout.image_tokens, dtype=torch.long)

    def decode(self, codes) -> list[Image.Image]:
        imgs = []
        for row in torch.as_tensor(codes).reshape(-1, self.layout.image_tokens).numpy():
            r = ((row >> 8) & 31) << 3 | 4
            g = ((row >> 4) & 15) << 4 | 8
            b = (row & 15) << 4 | 8
            a = np.stack([r, g, b], -1).reshape(self.side, self.side, 3).astype(np.uint8)
            imgs.append(Image.fromarray(a).resize((512, 512), Image.Resampling.NEAREST))
        return imgs


def to_mono_24k(wave, sr: int, target: int = 24000) -> np.ndarray:
    """Downmix to mono (channels last or first) and resample with soxr."""
    import soxr

    x = np.asarray(wave, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1 if x.shape[1] <= 8 else 0)
    if sr != target:
        x = soxr.resample(x, sr, target).astype(np.float32)
    return x


class StandInSpeechTokenizer:
    def __init__(self, layout: Layout = AR_OMNI_V0_1):
        self.layout = layout
        self.sample_rate = layout.speech_sample_rate
        self.hop = self.sample_rate // layout.speech_rate

    @property
    def identity(self) -> dict:
        return {"kind": "standin-speech", "stand_in": True,
                "note": "STAND-IN: loudness x zero-crossing frames at 40/s, not WavTokenizer"}

    def encode(self, audios: list[tuple[np.ndarray, int]]) -> list[torch.Tensor]:
        out = []
        for wave, sr in audios:
            x = to_mono_24k(wave, sr, self.sample_rate)
            n = max(1, int(np.ceil(len(x) / self.hop)))
            x = np.pad(x, (0, n * self.hop - len(x))).reshape(n, self.hop)
            rms = np.sqrt((x.astype(np.float64) ** 2).mean(1) + 1e-12)
            loud = np.clip((20 * np.log10(rms) + 80) / 80 * 63, 0, 63).astype(np.int64)
            zcr = (np.abs(np.diff(np.signbit(x), axis=1)).sum(1) * 63 // (self.hop - 1)).astype(np.int64)
            out.append(torch.from_numpy(loud << 6 | np.clip(zcr, 0, 63)))
        return out

    def decode(self, codes) -> tuple[np.ndarray, int]:
        c = np.asarray(codes, dtype=np.int64).reshape(-1)
        amp = 10 ** (((c >> 6) / 63 * 80 - 80) / 20)
        rng = np.random.default_rng(0)
        noise = rng.standard_normal((len(c), self.hop)).astype(np.float32)
        return (noise * amp[:, None]).reshape(-1).astype(np.float32), self.sample_rate
