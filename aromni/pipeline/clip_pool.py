"""CLIP scoring on a pool of Ray actors (the ``clip_score`` step with ``actors`` > 0).

The build's driver starts the pool before any unit runs (``aromni.pipeline.executor.pools``, one lifecycle with the
tokenizer and voice pools): each actor loads the checkpoint once (on a GPU when ``num_gpus`` > 0) and reports its
device, or the loader's error, which fails the build before any unit. Units get the handles and never load CLIP.

A unit sends its own batch per call (the images and captions of up to ``batch_size`` of its items, in read order) and
the actor scores exactly that batch, as the in-process scorer would: a score never depends on which other units are
running, on arrival order or on the actor count. Calls are served one at a time per actor.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass

import numpy as np

READY_TIMEOUT_S = 600


class ClipPoolError(RuntimeError):
    """The CLIP actors could not start; the message names the checkpoint and the loader's error."""


def clip_tag(path: str, device: str | None, batch_size: int) -> str:
    """Which pool serves a clip_score step: the same (checkpoint, device, batch_size) share one."""
    return hashlib.sha256(json.dumps([str(path), device, batch_size]).encode()).hexdigest()[:12]


class ClipActor:
    def __init__(self, path: str, device: str | None, batch_size: int, num_cpus: float):
        import torch

        from aromni.model.clip import ClipScorer
        torch.set_num_threads(max(1, int(num_cpus)))
        # Reproducible numerics on GPU, as the tokenizer actors: no TF32, no autotuned algorithm choice.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        self.error, self.scorer = None, None
        self.stats = {"items": 0, "calls": 0}
        try:
            self.scorer = ClipScorer(path, device, batch_size)
        except Exception as e:  # noqa: BLE001 - reported by ready(), so the driver fails the build with it
            self.error = str(e) if type(e).__name__ == "ClipError" else f"{type(e).__name__}: {e}"

    def ready(self) -> dict:
        if self.error:
            return {"error": self.error}
        return {"device": str(self.scorer.device), "pid": os.getpid()}

    def score(self, images: list, texts: list[str]) -> np.ndarray:
        self.stats["items"] += len(images)
        self.stats["calls"] += 1
        return self.scorer.score(images, texts)

    def get_stats(self) -> dict:
        return dict(self.stats)


@dataclass
class ClipPool:
    tag: str
    path: str
    handles: list
    devices: list[str]

    @classmethod
    def start(cls, ray, path: str, device: str | None, batch_size: int, actors: int, num_cpus: float,
              num_gpus: float, timeout_s: float = READY_TIMEOUT_S) -> "ClipPool":
        actor_cls = ray.remote(ClipActor)
        handles = [actor_cls.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(path, device, batch_size, num_cpus)
                   for _ in range(actors)]
        pool = cls(clip_tag(path, device, batch_size), path, handles, [])
        try:
            infos = ray.get([h.ready.remote() for h in handles], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            pool.stop()
            raise ClipPoolError(f"CLIP actors ({path}) did not start within {timeout_s:g} s (is the cluster short "
                                f"of the CPUs/GPUs they ask for? see `ray status`)") from None
        errors = [i["error"] for i in infos if i.get("error")]
        if errors:
            pool.stop()
            raise ClipPoolError(errors[0] if path in errors[0] else f"CLIP checkpoint {path}: {errors[0]}")
        pool.devices = [i["device"] for i in infos]
        return pool

    def stop(self) -> None:
        import ray
        for h in self.handles:
            ray.kill(h)
        self.handles = []


class PooledClipScorer:
    """Stands in a unit for ``ClipScorer``: the same ``score(images, texts)``, answered by one of the pool's actors."""

    def __init__(self, handles: list):
        self.handles = list(handles)
        self._next = itertools.count(os.getpid())   # spread processes over actors; any actor gives the same scores

    def score(self, images: list, texts: list[str]) -> np.ndarray:
        import ray
        if not images:
            return np.zeros(0, np.float32)
        # RGB before pickling: the actor converts anyway, and a palette or CMYK image gets no cheaper to send
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        handle = self.handles[next(self._next) % len(self.handles)]
        return ray.get(handle.score.remote(rgb, list(texts)))
