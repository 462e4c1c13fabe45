"""Run units as Ray tasks: at most ``limit`` in flight, results taken as they finish (the shards never depend on
the order: the mix reads parts in plan order)."""
from __future__ import annotations

import math
import os
from collections import deque

from aromni.pipeline.executor import UnitsResult
from aromni.pipeline.executor.unit_task import run_units as run_units_task


class RayStartError(RuntimeError):
    """Ray could not start or join a cluster; the message says what to do."""


def init_ray(workers: int | None, ray_address: str | None, extra_cpus: float = 0.0):
    """``extra_cpus``: logical CPUs the actor pools reserve, added on top of the unit workers' locally."""
    import ray
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return ray
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, AuthenticationError
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise RayStartError(f"cannot join the Ray cluster at {address}: {last}. Check the address (ray status "
                                f"on the head node); if the cluster uses token authentication (Ray's default for "
                                f"`ray start`), run with RAY_AUTH_MODE=token and the cluster's token in "
                                f"~/.ray/auth_token or RAY_AUTH_TOKEN.") from None
    else:
        # address="local": always a fresh local instance, never a cluster some other process left running
        ray.init(address="local", num_cpus=(workers or os.cpu_count() or 1) + math.ceil(extra_cpus),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a cluster address (Ray itself retries for long)."""
    import socket
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or address == "auto":
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayStartError(f"cannot join the Ray cluster at {address}: nothing answers there ({e}). Start one with "
                            f"`ray start --head`, or leave out --ray-address / RAY_ADDRESS to run locally.") from None


def run_units(ray, recipe_dict: dict, todo: list, out: str, progress, pools=None, limit: int = 1,
              ahead: int = 0, per_task: int = 1) -> UnitsResult:
    """``limit`` tasks in flight, plus ``ahead`` queued in Ray (only where Ray's resources bound the concurrency);
    each task runs ``per_task`` consecutive units (``unit_task.run_units``: one dispatch for all, an outcome each)."""
    res = UnitsResult()
    task = ray.remote(num_cpus=1, max_retries=3)(run_units_task)
    pending: dict = {}
    queue = deque(todo[i:i + per_task] for i in range(0, len(todo), max(1, per_task)))
    while queue or pending:
        while queue and len(pending) < max(1, limit) + ahead:
            pus = queue.popleft()
            pending[task.remote(recipe_dict, pus, out, pools)] = pus
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            pus = pending.pop(ref)
            try:
                outcomes = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the task itself died (its worker, after Ray's retries)
                outcomes = e
            res.record(pus, outcomes, progress)
    return res


def units_per_task(n_units: int, limit: int, pooled: bool) -> int:
    """Units per Ray task: up to 4 when there are many (a task costs the driver, Ray and the worker a few ms, a text
    unit of 500 rows ~80 ms), while every worker still gets >= 16 tasks so the last ones end close together; 1 where
    actor pools do the model work (units are long, and balance matters more)."""
    if pooled:
        return 1
    return max(1, min(4, n_units // (16 * max(1, limit))))
