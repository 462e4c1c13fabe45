"""Run a build's units, then the mix's tasks, on a pool of worker processes on this machine (no Ray).

What ``executor: auto`` picks for a build that joins no cluster and runs no actor pool (model tokenizers, voice
or CLIP in actors need Ray's). It does what the Ray executor does on one node (one unit task at a time per worker,
a second one queued, several units per task when there are many, each unit's outcome on its own, a task whose
worker died retried three times, alone) without starting a Ray instance: on this 2-core machine Ray's local start is
~2.7 s and its shutdown ~1.4 s, and its per-task bookkeeping (raylet, object store, core worker threads) costs the
units CPU; the 320 k-row text build of bench/vs_datasets.py took 7 s less (28.3 vs 35.7 s, same shards).

On Linux workers are forked, as datasets' ``map(num_proc=)`` and PyTorch's DataLoader fork theirs: they start in
milliseconds with aromni already imported, and a user's script needs no ``if __name__ == "__main__":`` guard (a
spawned worker re-runs the main script: a build started from a script without one would start itself again). What
the driver holds by then is fork-safe: it has not run the text tokenizer (its thread pool would be disabled in the
child: a worker sets TOKENIZERS_PARALLELISM=false anyway), Arrow re-creates its thread pools after a fork, fsspec
drops its cached filesystems and event loop in a forked child; torch is not imported by a build that needs no
actor pool. Elsewhere (macOS, Windows: fork is unsafe or absent) they are spawned. The pool starts on first use (a
resumed build whose units are all done still gets one for its mix) and is shut down by ``with``.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from aromni.pipeline.executor import UnitsResult
from aromni.pipeline.executor.unit_task import run_units as run_units_task

RETRIES = 3   # a call whose worker died is run again this many times (Ray's max_retries for the same tasks)


class WorkerDied(RuntimeError):
    """A call's worker process died (killed, out of memory, a crash in native code) on every try."""


def _init_worker() -> None:
    # A worker owns one CPU (see unit_task.run_unit); set before any tokenizer call in the process.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ctrl-C reaches the whole process group: the driver handles it (and stops the workers); a worker would only
    # print a traceback from wherever it was waiting.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def usable_cpus() -> int:
    """The CPUs this process may run on (a Slurm job's or taskset's share, not the whole node's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ProcessTasks:
    """``with ProcessTasks(workers) as tasks:`` ``tasks.run_units(...)`` for the units, ``tasks.run`` /
    ``tasks.together`` for the mix's stages (the interface mix.run_mix takes), ``tasks.cpus`` for its sizing."""

    def __init__(self, workers: int | None = None):
        self.cpus = max(1, int(workers or usable_cpus()))
        self._pool: ProcessPoolExecutor | None = None
        self._others: set = set()

    def __enter__(self) -> "ProcessTasks":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:   # Ctrl-C or a failed build: stop now, not after the units in flight (finished parts are kept)
            self._restart(kill=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._others = set(multiprocessing.active_children())   # children this pool did not start
            self._pool = ProcessPoolExecutor(self.cpus, mp_context=multiprocessing.get_context(method),
                                             initializer=_init_worker)
        return self._pool

    def _restart(self, kill: bool = False) -> None:
        """Drop the pool: after a worker died it is broken (every pending call fails with BrokenProcessPool), and
        the next call gets a fresh one. ``kill``: its workers are terminated, not waited for."""
        if self._pool is None:
            return
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        if kill:
            for p in set(multiprocessing.active_children()) - self._others:
                p.terminate()
            for p in set(multiprocessing.active_children()) - self._others:
                p.join(5)

    def calls(self, calls: list[tuple[Callable, tuple]], on_done: Callable[[int, object], None],
              in_flight: int | None = None) -> None:
        """Run ``fn(*args)`` for every call, at most ``in_flight`` submitted at once (default: all), and give each
        result to ``on_done(index, result)`` as it finishes; an exception the call raised is its result (a unit's
        own error is already an outcome inside ``unit_task.run_units``).

        A worker that dies takes the whole pool with it, and which call it was running is not known: every call
        in flight then becomes a suspect, and suspects run again one at a time, alone on a fresh pool, before
        anything else. A suspect that breaks the pool alone has a try counted; after ``RETRIES`` more tries its
        result is WorkerDied. The others finish normally, so a crashing input fails only its own unit (as a Ray
        task's retries would)."""
        queue = deque(range(len(calls)))
        suspects: deque[tuple[int, int]] = deque()   # (call, tries that broke the pool while it ran alone)
        pending: dict[Future, int] = {}
        limit = in_flight or len(calls) or 1
        while queue or pending or suspects:
            if suspects and not pending:
                self._run_alone(calls, suspects, on_done)
                continue
            while queue and not suspects and len(pending) < limit:
                i = queue.popleft()
                fn, args = calls[i]
                try:
                    pending[self._executor().submit(fn, *args)] = i
                except BrokenProcessPool:   # it broke since the last wait: the others' results say which
                    queue.appendleft(i)
                    break
            if not pending:
                continue
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            broke = False
            for f in done:
                i = pending.pop(f)
                try:
                    result = f.result()
                except BrokenProcessPool:
                    broke = True
                    suspects.append((i, 0))
                    continue
                except Exception as e:  # noqa: BLE001 - the call's own error is its outcome
                    result = e
                on_done(i, result)
            if broke:   # every call still in flight went down with the pool
                suspects.extend((i, 0) for i in pending.values())
                pending.clear()
                self._restart()

    def _run_alone(self, calls, suspects: deque, on_done) -> None:
        """The next suspect, alone on the pool (nothing else in flight)."""
        i, tries = suspects.popleft()
        fn, args = calls[i]
        try:
            result = self._executor().submit(fn, *args).result()
        except BrokenProcessPool:
            self._restart()
            if tries < RETRIES:
                suspects.append((i, tries + 1))
            else:
                on_done(i, WorkerDied(f"its worker process died each of the {RETRIES + 1} times it ran (killed, "
                                      f"out of memory, or a crash in native code)"))
            return
        except Exception as e:  # noqa: BLE001 - the call's own error is its outcome
            result = e
        on_done(i, result)

    def run_units(self, recipe_dict: dict, todo: list, out: str, progress, per_task: int = 1) -> UnitsResult:
        """The units, ``per_task`` consecutive ones per call; two calls per worker in flight (one running, one
        queued: a worker that finishes starts its next one at once)."""
        res = UnitsResult()
        chunks = [todo[i:i + per_task] for i in range(0, len(todo), max(1, per_task))]

        self.calls([(run_units_task, (recipe_dict, c, out)) for c in chunks],
                   lambda i, outcomes: res.record(chunks[i], outcomes, progress), in_flight=2 * self.cpus)
        return res

    def together(self, stages: list[tuple[Callable, list[tuple]]]) -> list[list]:
        """Every call of every stage at once; each stage's results in its arguments' order. A call that raised (or
        whose worker died on every try) raises here."""
        flat = [(fn, a) for fn, args in stages for a in args]
        results: list = [None] * len(flat)

        def done(i: int, result) -> None:
            results[i] = result

        self.calls(flat, done)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        out, k = [], 0
        for _, args in stages:
            out.append(results[k:k + len(args)])
            k += len(args)
        return out

    def run(self, fn: Callable, args: list[tuple]) -> list:
        return self.together([(fn, args)])[0]
