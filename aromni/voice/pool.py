"""Synthesis on a pool of Ray actors: each actor loads the backend once (on a GPU when ``num_gpus`` > 0) and every
unit task of the build shares the pool.

The build's driver starts the pool before any unit runs and stops it when the units are done
(``aromni.pipeline.executor.pools``); units get its handles. A reply goes to the actor chosen by its cache key, so
the same text always goes to the same actor; the audio depends only on (backend, model, voice, text) — backends seed
per text — never on which actor or in which order. The cache is read and written by the calling unit, so hits never
reach the pool.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from aromni.voice.backend import BACKENDS, Synthesizer, VoiceCache, VoiceError

READY_TIMEOUT_S = 600


def voice_tag(backend: str, options: dict, root) -> str:
    """Which pool serves a voice step: the same (backend, options, root) share one."""
    return hashlib.sha256(json.dumps([backend, options, str(root)], sort_keys=True,
                                     default=str).encode()).hexdigest()[:12]


class VoiceActor:
    def __init__(self, backend: str, options: dict, root: str | None):
        self.error = None
        try:
            self.backend = BACKENDS[backend](options, root)
            check = getattr(self.backend, "check", None)
            if check is not None:
                check()
        except Exception as e:  # noqa: BLE001 - reported by ready(), so the driver fails the build with it
            self.error = f"{type(e).__name__}: {e}"

    def ready(self) -> dict:
        return {"error": self.error} if self.error else {}

    def synthesise(self, text: str) -> np.ndarray:
        return self.backend.synthesise(text)


@dataclass
class VoicePool:
    tag: str
    handles: list

    @classmethod
    def start(cls, ray, tag: str, backend: str, options: dict, root, actors: int, num_cpus: float,
              num_gpus: float, timeout_s: float = READY_TIMEOUT_S) -> "VoicePool":
        actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(VoiceActor)
        pool = cls(tag, [actor_cls.options(name=f"aromni-voice-{tag}-{i}").remote(
            backend, options, str(root) if root is not None else None) for i in range(actors)])
        try:
            for info in ray.get([h.ready.remote() for h in pool.handles], timeout=timeout_s):
                if info.get("error"):
                    raise VoiceError(info["error"])
        except ray.exceptions.GetTimeoutError:
            pool.stop()
            raise VoiceError(f"voice actors did not start within {timeout_s:g} s (is the cluster short of the "
                             f"CPUs/GPUs they ask for? see `ray status`)") from None
        except VoiceError:
            pool.stop()
            raise
        return pool

    def stop(self) -> None:
        import ray
        for h in self.handles:
            ray.kill(h)
        self.handles = []


class PooledSynthesizer(Synthesizer):
    """A Synthesizer whose misses go to the pool's actors."""

    def __init__(self, backend, cache: VoiceCache, handles: list):
        super().__init__(backend, cache)
        self.handles = list(handles)

    def _synthesise(self, text: str, key: str) -> np.ndarray:
        import ray
        return ray.get(self.handles[int(key, 16) % len(self.handles)].synthesise.remote(text))
