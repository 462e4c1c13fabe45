"""Content-addressed cache of synthesised replies: a rerun or a second recipe never synthesises the same reply twice.

Key = sha256 of (backend, model sha256, voice, text) — everything the audio depends on and nothing else (not the
example id, not the recipe). Layout: ``{root}/{key[:2]}/{key}.wav`` (32-bit float WAV, 24 kHz mono, so a hit returns
bit-for-bit the samples a miss produced and a rebuild is byte-identical) and ``{key}.json`` (what made it). Writes go to
a temp name and are renamed, so concurrent workers and killed runs never leave a half file under a real key.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def cache_key(backend: str, model_sha256: str, voice: str, text: str) -> str:
    payload = json.dumps([backend, model_sha256, voice, text], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("AROMNI_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "aromni")
    return Path(base).expanduser() / "voice"


class VoiceCache:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.wav", d / f"{key}.json"

    def get(self, key: str) -> tuple[np.ndarray, int] | None:
        import soundfile as sf
        wav, _ = self._paths(key)
        try:
            wave, sr = sf.read(wav, dtype="float32")
        except (OSError, RuntimeError, sf.LibsndfileError):  # absent or unreadable: synthesise again
            self.misses += 1
            return None
        self.hits += 1
        return wave, int(sr)

    def put(self, key: str, wave: np.ndarray, sr: int, record: dict) -> None:
        import soundfile as sf
        wav, meta = self._paths(key)
        wav.parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp-{os.getpid()}"
        tmp_wav, tmp_meta = wav.with_name(wav.name + tag), meta.with_name(meta.name + tag)
        sf.write(tmp_wav, np.asarray(wave, dtype=np.float32), sr, subtype="FLOAT", format="WAV")
        tmp_meta.write_text(json.dumps({**record, "key": key, "sample_rate": sr,
                                        "seconds": round(len(wave) / sr, 3)}, ensure_ascii=False, indent=1))
        os.replace(tmp_meta, meta)
        os.replace(tmp_wav, wav)  # the wav last: its presence is what makes a hit

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.wav")) if self.root.exists() else 0
