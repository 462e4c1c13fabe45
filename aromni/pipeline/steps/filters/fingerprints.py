"""Fingerprints shared by near-duplicate detection and decontamination: text normalisation and shingles, 64-bit
perceptual image hashes, and the pigeonhole chunk keys that find every hash within a Hamming threshold."""
from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from typing import Sequence

import numpy as np

_SPACE = re.compile(r"\s+")
_DIGIT = re.compile(r"\d")
_PUNCT = re.compile(r"[^\w\s]|_")  # punctuation and symbols (Unicode-aware), one regex pass: the hot path


def normalise_text(text: str, steps: Sequence[str] = ("nfkc", "lower", "punctuation", "whitespace")) -> str:
    if "nfkc" in steps:
        text = unicodedata.normalize("NFKC", text)
    if "lower" in steps:
        text = text.lower()
    if "punctuation" in steps:
        text = _PUNCT.sub(" ", text)
    if "digits" in steps:
        text = _DIGIT.sub("0", text)
    if "whitespace" in steps:
        text = _SPACE.sub(" ", text).strip()
    return text


def shingles(text: str, n: int, kind: str = "word") -> set[bytes]:
    units = text.split() if kind == "word" else list(text)
    if not units:
        return set()
    sep = " " if kind == "word" else ""
    if len(units) <= n:
        return {sep.join(units).encode("utf-8", "surrogatepass")}
    return {sep.join(units[i:i + n]).encode("utf-8", "surrogatepass") for i in range(len(units) - n + 1)}


def image_phash(image, kind: str = "phash") -> int:
    """64-bit perceptual hash of a PIL image or encoded image bytes."""
    import imagehash
    from PIL import Image
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(bytes(image)))
    bits = getattr(imagehash, kind)(image).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def image_chunk_keys(h: int, max_hamming: int) -> list[int]:
    """The pigeonhole keys: 64 bits split into max_hamming + 1 chunks, each (chunk index, chunk bits) hashed; odd."""
    n = max_hamming + 1
    edges = np.linspace(0, 64, n + 1).astype(int)
    bits = f"{h:064b}"
    out = []
    for i in range(n):
        d = hashlib.blake2b(f"{i}:{bits[edges[i]:edges[i + 1]]}".encode(), digest_size=8, person=b"aromni-img").digest()
        out.append(int.from_bytes(d, "little") | 1)
    return out


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
