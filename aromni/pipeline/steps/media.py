"""Decode and check media: encoded image bytes -> RGB PIL image, encoded audio -> mono float32 waveform + rate.

Everything a user would expect to be repaired is repaired (CMYK, palette, alpha, 16-bit -> RGB; EXIF rotation;
stereo -> mono); everything else raises ``MediaError(reason, message)`` which the unit turns into a reject.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from aromni.model.images import to_rgb8

# Pillow's decompression-bomb guard stays on: above this many pixels an image is refused, never decoded.
Image.MAX_IMAGE_PIXELS = 89_478_485


class MediaError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_image(data: bytes, min_side: int = 1) -> tuple[Image.Image, dict]:
    """Bytes -> RGB image. Returns the image and what was done to it (for ``meta``)."""
    if not data:
        raise MediaError("bad_image", "zero-byte image")
    info: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            info["format"] = img.format
            info["mode"] = img.mode
            if getattr(img, "n_frames", 1) > 1:
                info["frames"] = img.n_frames  # animated: the first frame is used
            img.seek(0)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError("image_too_large", f"decompression bomb guard: {e}") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise MediaError("bad_image", f"cannot decode image: {type(e).__name__}: {e}") from None
    try:
        orientation = img.getexif().get(0x0112, 1)
        if orientation not in (None, 1):  # the camera was turned: show the picture the way it was taken
            img = ImageOps.exif_transpose(img)
            info["exif_transposed"] = True
            info["exif_orientation"] = int(orientation)
    except Exception:  # noqa: BLE001 - broken EXIF must not lose the picture
        info["exif_error"] = True
    rgb = to_rgb8(img)
    w, h = rgb.size
    info["size"] = [w, h]
    if min(w, h) < min_side:
        raise MediaError("image_too_small", f"{w}x{h} is smaller than {min_side} px on a side")
    return rgb, info


def decode_audio(data, min_seconds: float = 0.0, max_seconds: float = float("inf")) -> tuple[np.ndarray, int, dict]:
    """Encoded bytes (WAV/FLAC/OGG/Opus/MP3 via libsndfile) or (waveform, rate) -> mono float32, rate, info."""
    import soundfile as sf

    info: dict = {}
    if isinstance(data, tuple):
        wave, sr = data
        wave = np.asarray(wave, dtype=np.float32)
    else:
        if not data:
            raise MediaError("bad_audio", "zero-byte audio")
        declared = _riff_bytes(data)
        if declared > len(data) + 1:  # libsndfile would quietly decode the part that is there
            raise MediaError("truncated_audio", f"the WAV header promises {declared} bytes, the file has {len(data)}")
        try:
            wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
            info["format"] = sf.info(io.BytesIO(data)).format
        except Exception as e:  # noqa: BLE001 - libsndfile errors come in several types
            raise MediaError("bad_audio", f"cannot decode audio: {type(e).__name__}: {e}") from None
    if wave.ndim == 2:
        if wave.shape[1] > 1:
            info["channels"] = int(wave.shape[1])
        wave = wave.mean(axis=1)
    if sr <= 0:
        raise MediaError("bad_audio", f"sample rate {sr}")
    info["sample_rate"] = int(sr)
    if not np.all(np.isfinite(wave)):
        raise MediaError("bad_audio", "audio contains NaN or infinite samples")
    dur = len(wave) / sr
    info["seconds"] = round(dur, 3)
    if dur < min_seconds:
        raise MediaError("audio_too_short", f"{dur:.2f} s < {min_seconds} s")
    if dur > max_seconds:
        raise MediaError("audio_too_long", f"{dur:.2f} s > {max_seconds} s")
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    clipped = float(np.mean(np.abs(wave) >= 0.999)) if len(wave) else 0.0
    if clipped > 0.001:  # kept (a user would keep loud speech), but said so
        info["clipped_fraction"] = round(clipped, 4)
    if peak < 1e-4:
        raise MediaError("silent_audio", f"peak amplitude {peak:.2e}")
    if peak > 1.0:
        wave = wave / peak
        info["normalised_from_peak"] = round(peak, 3)
    return wave.astype(np.float32), int(sr), info


def _riff_bytes(data: bytes) -> int:
    """The size a WAV (RIFF) header promises, 0 when unknown (not RIFF, or a streaming writer's 0 / 0xFFFFFFFF)."""
    if data[:4] not in (b"RIFF", b"RIFX") or len(data) < 8:
        return 0
    size = int.from_bytes(data[4:8], "little" if data[:4] == b"RIFF" else "big")
    return 0 if size in (0, 0xFFFFFFFF) else size + 8
