"""Decode and check media: encoded image bytes -> RGB PIL image, encoded audio -> mono float32 waveform + rate.

Everything a user would expect to be repaired is repaired (CMYK, palette, alpha, 16-bit -> RGB; EXIF rotation;
stereo -> mono); everything else raises ``MediaError(reason, message)`` which the unit turns into a reject.

Memory is bounded before anything is decoded: an image's size comes from its header (``Image.open`` reads only
that) and one over ``max_pixels`` (a budget well under Pillow's bomb limit: a 4096 x 4096 RGB image is 48 MiB
decoded) is ``image_too_large``; a clip's length comes from ``soundfile.info`` and one over ``max_seconds`` is
``audio_too_long`` before a sample is decoded (and decoding reads at most that many frames whatever the header says).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from aromni.model.images import to_rgb8

# Pillow's decompression-bomb guard stays on: above this many pixels an image is refused, never decoded.
Image.MAX_IMAGE_PIXELS = 89_478_485
# Our own budget per image, checked from the header before load(): 16.8 M pixels (4096 x 4096).
MAX_PIXELS = 4096 * 4096
# Audio: at most this long whatever the filter says (a filter of `inf` must not let a 10-hour clip be decoded).
MAX_DECODE_SECONDS = 3600.0


class MediaError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_image(data: bytes, min_side: int = 1, *, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, dict]:
    """Bytes -> RGB image. Returns the image and what was done to it (for ``meta``). An image whose header claims
    more than ``max_pixels`` is image_too_large without being decoded."""
    if not data:
        raise MediaError("bad_image", "zero-byte image")
    info: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            w, h = img.size
            if w * h > max_pixels:
                raise MediaError("image_too_large", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels} "
                                                    f"(from the header, not decoded)")
            info["format"] = img.format
            info["mode"] = img.mode
            if getattr(img, "n_frames", 1) > 1:
                info["frames"] = img.n_frames  # animated: the first frame is used
            img.seek(0)
            img.load()
    except MediaError:
        raise
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


def decode_audio(data, min_seconds: float = 0.0, max_seconds: float = float("inf"), *,
                 max_decode_seconds: float = MAX_DECODE_SECONDS) -> tuple[np.ndarray, int, dict]:
    """Encoded bytes (WAV/FLAC/OGG/Opus/MP3 via libsndfile) or (waveform, rate) -> mono float32, rate, info.
    A clip whose header says it is longer than ``max_seconds`` is audio_too_long before it is decoded."""
    import soundfile as sf

    info: dict = {}
    if isinstance(data, tuple):
        wave, sr = data
        wave = np.asarray(wave, dtype=np.float32)
    else:
        if not data:
            raise MediaError("bad_audio", "zero-byte audio")
        short = wav_shortfall(data)
        if short:  # libsndfile would quietly decode the part that is there
            raise MediaError("truncated_audio", short)
        try:
            head = sf.info(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - libsndfile errors come in several types
            raise MediaError("bad_audio", f"cannot decode audio: {type(e).__name__}: {e}") from None
        limit = min(max_seconds, max_decode_seconds)
        if head.samplerate > 0 and 0 < head.frames < (1 << 62) and head.frames / head.samplerate > limit:
            raise MediaError("audio_too_long", f"{head.frames / head.samplerate:.2f} s > {limit} s (from the "
                                               f"header, not decoded)")
        cap = int(limit * head.samplerate) + 1 if head.samplerate > 0 else -1
        try:
            wave, sr = sf.read(io.BytesIO(data), frames=cap, dtype="float32", always_2d=True)
            info["format"] = head.format
        except Exception as e:  # noqa: BLE001 - libsndfile errors come in several types
            raise MediaError("bad_audio", f"cannot decode audio: {type(e).__name__}: {e}") from None
        if sr > 0 and len(wave) >= cap > 0:  # a header without a length (streamed): stopped at the limit
            raise MediaError("audio_too_long", f"more than {limit} s (decoding stopped there)")
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


def wav_shortfall(data: bytes) -> str | None:
    """Why a WAV's header promises more than the file holds, or None. Checks the RIFF size (a streaming writer's 0 /
    0xFFFFFFFF placeholders excepted) and the data chunk's size: a claim past the end of the file - a 10-hour data
    chunk, 0xFFFFFFFF never patched, an RF64 ds64 size - is a truncated file libsndfile would quietly cut."""
    tag = data[:4]
    if tag not in (b"RIFF", b"RIFX", b"RF64") or len(data) < 12 or data[8:12] != b"WAVE":
        return None
    order = "big" if tag == b"RIFX" else "little"
    riff = int.from_bytes(data[4:8], order)
    if tag != b"RF64" and riff not in (0, 0xFFFFFFFF) and riff + 8 > len(data) + 1:
        return f"the WAV header promises {riff + 8} bytes, the file has {len(data)}"
    ds64_data = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], order)
        body = pos + 8
        if cid == b"ds64" and len(data) >= body + 16:
            ds64_data = int.from_bytes(data[body + 8:body + 16], "little")
        if cid == b"data":
            if tag == b"RF64" and size == 0xFFFFFFFF and ds64_data is not None:
                size = ds64_data
            if body + size > len(data) + 1:
                return (f"the WAV data chunk claims {size} bytes, the file holds {len(data) - body} after the header "
                        f"(truncated)")
            return None
        pos = body + size + (size & 1)
    return None
