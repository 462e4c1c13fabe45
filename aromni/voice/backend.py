"""Voice backends: the base class, the registry, the cache-backed ``Synthesizer`` (the package's __init__ imports
the backends so they register)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from aromni.registry import Registry, StrictOptions
from aromni.voice.cache import VoiceCache, cache_key, default_cache_dir

SAMPLE_RATE = 24000  # what every backend returns: WavTokenizer's rate, AR-Omni's reply rate


class VoiceError(RuntimeError):
    """A backend that cannot load or synthesise; the message says why and what to do."""


class BackendOptions(StrictOptions):
    """A voice backend's options."""


BACKENDS: Registry = Registry()
register_backend = BACKENDS.register


class VoiceBackend:
    name: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    stand_in: bool = False  # True when the model is not a released checkpoint (said in every record)

    def __init__(self, options: dict | BackendOptions | None = None, root: Path | None = None):
        self.opts = options if isinstance(options, BackendOptions) else self.Options(**(options or {}))
        self.root = Path(root) if root is not None else Path(".")  # relative paths are resolved against this

    def model_sha256(self) -> str:
        raise NotImplementedError

    def voice(self) -> str:
        """A string naming everything about the voice the audio depends on (speaker, rate, reference clip hash)."""
        raise NotImplementedError

    def synthesise(self, text: str) -> np.ndarray:
        """Speak ``text`` (already normalised); float32 mono at ``SAMPLE_RATE``. Raises VoiceError."""
        raise NotImplementedError

    def identity(self) -> dict:
        out = {"backend": self.name, "model_sha256": self.model_sha256(), "voice": self.voice()}
        if self.stand_in:
            out["stand_in"] = True
        return out


class Synthesizer:
    """backend + cache. ``speak`` -> (waveform, rate, record for meta)."""

    def __init__(self, backend: VoiceBackend, cache: VoiceCache):
        self.backend, self.cache = backend, cache
        self._identity: dict | None = None
        self.synthesised_seconds = 0.0

    @property
    def identity(self) -> dict:
        if self._identity is None:
            self._identity = self.backend.identity()
        return self._identity

    def key(self, text: str) -> str:
        i = self.identity
        return cache_key(i["backend"], i["model_sha256"], i["voice"], text)

    def speak(self, text: str) -> tuple[np.ndarray, int, dict]:
        key = self.key(text)
        record = {**self.identity, "cache_key": key}
        got = self.cache.get(key)
        if got is not None:
            return got[0], got[1], record
        wave = np.asarray(self._synthesise(text, key), dtype=np.float32).reshape(-1)
        if wave.size == 0 or not np.all(np.isfinite(wave)):
            raise VoiceError(f"{self.backend.name} returned {'no audio' if wave.size == 0 else 'non-finite samples'}")
        self.cache.put(key, wave, SAMPLE_RATE, {**record, "text": text})
        self.synthesised_seconds += len(wave) / SAMPLE_RATE
        # what a later hit returns (float32 WAV is exact): a first build and its rerun give the same rows
        return wave, SAMPLE_RATE, record

    def _synthesise(self, text: str, key: str) -> np.ndarray:
        return self.backend.synthesise(text)


_SYNTHS: dict[str, Synthesizer] = {}


def get_synthesizer(backend: str, options: dict | None, cache_dir: str | Path | None = None,
                    root: Path | None = None) -> Synthesizer:
    """One loaded backend per (backend, options, cache, root) per process."""
    if backend not in BACKENDS:
        raise VoiceError(f"unknown voice backend {backend!r}; allowed: {sorted(BACKENDS)}")
    k = json.dumps([backend, options or {}, str(cache_dir), str(root)], sort_keys=True, default=str)
    if k not in _SYNTHS:
        _SYNTHS[k] = Synthesizer(BACKENDS[backend](options, root),
                                 VoiceCache(cache_dir if cache_dir is not None else default_cache_dir()))
    return _SYNTHS[k]
