"""Test pictures for the image filters: smooth random images (multi-scale noise, so perceptual hashes are stable
under re-encoding but differ between seeds) and their JPEG bytes."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def picture(seed: int, size: int = 128) -> Image.Image:
    r = np.random.default_rng(seed)
    acc = np.zeros((size, size, 3))
    for k in (4, 8, 16):
        acc += np.asarray(Image.fromarray(r.integers(0, 256, (k, k, 3), dtype=np.uint8)).resize((size, size),
                                                                                                Image.BICUBIC), float)
    return Image.fromarray((255 * (acc - acc.min()) / (acc.max() - acc.min())).astype(np.uint8))


def jpeg(im: Image.Image, q: int = 90) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", quality=q)
    return b.getvalue()
