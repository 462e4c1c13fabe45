"""How many actors an actor pool gets: a number from the recipe, or ``actors: auto`` sized from the cluster.

``auto`` is one actor per GPU of the cluster when the pool asks for GPUs (``num_gpus`` > 0; a fraction shares a GPU:
floor(GPUs / num_gpus) actors), else one per ``cpus_per_actor`` CPUs; at least 1, and never so many that the pools
leave no CPU for the unit tasks (CPUs that earlier pools of the same build reserved count as taken). Pure: the
cluster comes in as a ``{"CPU": n, "GPU": m}`` dict (``ray.cluster_resources()``), so it is tested with fake ones.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import PlainValidator

AUTO = "auto"


def _actors(minimum: int):
    """A recipe field ``actors: N`` (N >= ``minimum``) or ``actors: auto``; one plain message when it is neither."""
    def check(v):
        if v == AUTO or (isinstance(v, int) and not isinstance(v, bool) and v >= minimum):
            return v
        raise ValueError(f"actors must be an integer >= {minimum} or 'auto', got {v!r}")
    return Annotated[Union[int, Literal["auto"]], PlainValidator(check)]


Actors = _actors(0)          # 0: in the unit's process (voice, clip_score)
PooledActors = _actors(1)    # the model tokenizers always run on actors
CPUS_PER_ACTOR = 8.0
EPS = 1e-9   # floor(2 / 0.5) must be 4 whatever the float rounding


def size_actors(actors: int | str, num_cpus: float, num_gpus: float, cpus_per_actor: float,
                resources: dict, reserved_cpus: float = 0.0) -> int:
    """The actor count for one pool. ``reserved_cpus``: CPUs that other pools of the build already take."""
    if actors != AUTO:
        return int(actors)
    cpus = float(resources.get("CPU", 0)) - reserved_cpus
    if num_gpus > 0:
        n = math.floor(float(resources.get("GPU", 0)) / num_gpus + EPS)
    else:
        n = math.floor(cpus / cpus_per_actor + EPS)
    if num_cpus > 0:  # leave at least one CPU for unit tasks
        n = min(n, math.floor((cpus - 1) / num_cpus + EPS))
    return max(1, n)


def size_all(requests: list[tuple[int | str, float, float, float]], resources: dict) -> list[int]:
    """Each pool's count, in order: fixed pools first reserve their CPUs, then each ``auto`` pool is sized from
    what is left (in the given order), so that together they still leave a CPU for the units."""
    reserved = sum(a * c for a, c, _, _ in requests if a != AUTO)
    out = []
    for actors, num_cpus, num_gpus, per_actor in requests:
        n = size_actors(actors, num_cpus, num_gpus, per_actor, resources, reserved)
        if actors == AUTO:
            reserved += n * num_cpus
        out.append(n)
    return out


def local_resources(cpus: int | None = None, gpus: int | None = None) -> dict:
    """The resources a local Ray started by the build would see: this machine's CPUs and CUDA devices."""
    import os
    if gpus is None:
        try:
            import torch
            gpus = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no usable CUDA runtime: no GPUs
            gpus = 0
    return {"CPU": float(cpus if cpus is not None else (os.cpu_count() or 1)), "GPU": float(gpus)}
