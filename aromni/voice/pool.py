"""Synthesis on a pool of Ray actors: each actor loads the backend once (on a GPU when ``num_gpus`` > 0) and every
unit task of the build shares the pool.

Kept simple and deterministic: the actors are named by (backend config, index) and found or created by whichever unit
asks first (``get_if_exists``); a reply goes to the actor chosen by its cache key, so the same text always goes to the
same actor; the audio depends only on (backend, model, voice, text) — backends seed per text — never on which actor
or in which order. The cache is read and written by the calling unit, so hits never reach the pool. Without a running
Ray (a unit processed in-process, e.g. in tests) it falls back to synthesising locally.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from aromni.voice import BACKENDS, Synthesizer, VoiceCache, default_cache_dir


class VoiceActor:
    def __init__(self, backend: str, options: dict, root: str | None):
        self.backend = BACKENDS[backend](options, root)

    def synthesise(self, text: str) -> np.ndarray:
        return self.backend.synthesise(text)


class PooledSynthesizer(Synthesizer):
    def __init__(self, backend, cache, connect):
        super().__init__(backend, cache)
        self.connect = connect          # () -> actor handles (found or created by name)
        self.actors = connect()

    def _synthesise(self, text: str, key: str) -> np.ndarray:
        import ray
        from ray.exceptions import RayActorError
        for attempt in (0, 1):
            actor = self.actors[int(key, 16) % len(self.actors)]
            try:
                return ray.get(actor.synthesise.remote(text))
            except RayActorError:  # its owner (another unit's worker) went away: find or start it again, once
                if attempt:
                    raise
                _HANDLES.clear()
                self.actors = self.connect()


# Handles kept for the life of this worker process: a named actor lives as long as its creator holds a reference.
_HANDLES: dict[str, list] = {}


def pooled_synthesizer(backend: str, options: dict, cache_dir, root, actors: int, num_cpus: float,
                       num_gpus: float) -> Synthesizer:
    from aromni.voice import get_synthesizer
    import ray
    if not ray.is_initialized():
        return get_synthesizer(backend, options, cache_dir, root)
    tag = hashlib.sha256(json.dumps([backend, options, str(root)], sort_keys=True, default=str).encode()).hexdigest()[:12]

    def connect() -> list:
        if tag not in _HANDLES:
            cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(VoiceActor)
            _HANDLES[tag] = [cls.options(name=f"aromni-voice-{tag}-{i}", get_if_exists=True).remote(
                backend, options, str(root) if root is not None else None) for i in range(actors)]
        return _HANDLES[tag]
    return PooledSynthesizer(BACKENDS[backend](options, root),
                             VoiceCache(cache_dir if cache_dir is not None else default_cache_dir()), connect)


def shutdown_pools() -> int:
    """Kill this Ray job's voice actors (they hold their CPUs/GPUs until killed or Ray shuts down); returns how many.
    Call it after a build in a process that goes on using Ray (tests, notebooks); ``aromni build`` exits anyway."""
    import ray
    if not ray.is_initialized():
        return 0
    killed = 0
    for name in ray.util.list_named_actors():
        if name.startswith("aromni-voice-"):
            try:
                ray.kill(ray.get_actor(name))
                killed += 1
            except ValueError:  # already gone
                pass
    _HANDLES.clear()
    return killed
