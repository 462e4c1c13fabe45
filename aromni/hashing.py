"""Hashes that are the same on every machine and every Python run (the bottom layer: no aromni imports).

``stable_hash`` seeds every per-example choice (task, noise, voice, mixing order, loader shuffles); ``file_sha256``
is the identity of checkpoints, shards and voice models in a manifest.
"""
from __future__ import annotations

import hashlib
import os


def stable_hash(*parts) -> int:
    """A 64-bit hash of the parts that is the same on every machine and Python run (unlike hash())."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_sha256(root: str | os.PathLike) -> str:
    """One sha256 over a directory: every file's relative path and content sha256, in sorted path order (a model
    directory's identity, independent of where it lies)."""
    h = hashlib.sha256()
    base = os.fspath(root)
    files = sorted(os.path.relpath(os.path.join(d, f), base) for d, _, fs in os.walk(base) for f in fs)
    for rel in files:
        h.update(f"{rel}\x1f{file_sha256(os.path.join(base, rel))}\x1e".encode("utf-8", "surrogatepass"))
    return h.hexdigest()
