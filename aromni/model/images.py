"""Image pre-processing shared by every image tokenizer and the pipeline's decode step."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB: EXIF orientation applied, transparency blended onto white exactly as Meta's
    ``_whiten_transparency`` does ((1-a)*255 + a*rgb, truncated), 16-bit scaled down, CMYK/palette/grey converted."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF must not lose the picture
        pass
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        return Image.fromarray((a / top * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    rgba = np.asarray(img.convert("RGBA"))
    if not (rgba[..., 3] < 255).any():
        return img.convert("RGB")
    alpha = rgba[..., 3:4] / 255.0
    return Image.fromarray(((1 - alpha) * 255 + alpha * rgba[..., :3]).astype(np.uint8), "RGB")
