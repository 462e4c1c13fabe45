"""``aromni build``: plan -> run units -> mix -> manifest, each one call.

The driver plans, starts the actor pools and mixes; an executor runs the units and the mix's tasks:
``executor.ray`` (Ray tasks, with the actor pools; a cluster), ``executor.processes`` (a pool of worker processes on
this machine) or ``executor.local`` (in-process, one unit after another). ``auto`` picks Ray where a cluster is
named or already running, or where the recipe runs models in actor pools, and the process pool otherwise. A unit's
output is a part file plus a done marker, so a rerun on the same ``--out`` redoes only units without a marker, and
the final shards depend only on the parts (never on worker count, executor or completion order).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aromni.io import paths
from aromni.io.atomic import OutputError, build_lock, check_writable, normalize
from aromni.layout import AR_OMNI_V0_1
from aromni.pipeline.executor import UnitsResult, local
from aromni.pipeline.executor import ray as ray_executor
from aromni.pipeline.executor.pools import (PoolError, check_voices, cpu_demand, plan_pools, pool_line, pools_stopped,
                                            requested_pools, start_pools)
from aromni.pipeline.executor.processes import ProcessTasks, WorkerDied
from aromni.pipeline.executor.ray import RayStartError
from aromni.pipeline.executor.ray import init_ray as _init_ray
from aromni.pipeline.executor.unit_task import tokenizers_cfg, tokenizers_for
from aromni.pipeline.manifest import build_manifest, write_manifest
from aromni.pipeline.mix import PartRef, run_mix
from aromni.pipeline.parts import check_existing, read_done, remove_build  # noqa: F401 - remove_build: API
from aromni.pipeline.plan import PlannedUnit, plan
from aromni.pipeline.pool_sizing import local_resources
from aromni.pipeline.stats import UnitStats
from aromni.pipeline.steps.filters.near_dup import REASON as NEAR_DUP_REASON
from aromni.pipeline.unit import relative_to_root
from aromni.recipe import Recipe, RecipeError, check_paths

__all__ = ["build", "BuildError", "BuildReport", "RecipeError", "tokenizers_for", "EXECUTORS"]

EXECUTORS = ("auto", "ray", "processes", "local")


class BuildError(RuntimeError):
    """A build that cannot go on; the message says why and what to do."""


@dataclass
class BuildReport:
    out: str
    manifest: dict
    units_total: int
    units_skipped: int
    seconds: float
    dropped_turns: int = 0                          # chat: turns cut to fit max_chat_tokens or unpaired, all sources
    voice: dict = field(default_factory=dict)       # the voice steps' counts: synthesised, cache_hits, seconds, ...
    # what this run's actor pools got (pool, kind, actors, requested, num_cpus, num_gpus, device[, sized_from]); also
    # printed. Not in the manifest: it describes the run (cluster, rerun), not the data, and the manifest of the
    # same recipe and inputs stays the same on any cluster
    pools: list = field(default_factory=list)
    executor: str = ""                              # what ran the units and the mix: ray, processes or local


def build(recipe: Recipe, out: str | Path, *, workers: int | None = None, ray_address: str | None = None,
          force: bool = False, progress: bool = True, console=None, executor: str = "auto") -> BuildReport:
    """``executor`` (``EXECUTORS``): ray (Ray tasks, with the actor pools), processes (``workers`` processes on this
    machine; models, if any, load in each), local (in this process, one unit after another, models loaded here:
    tests and debugging), or auto (``choose_executor``). Every executor gives the same bytes."""
    if executor not in EXECUTORS:
        raise BuildError(f"unknown executor {executor!r}: one of {', '.join(EXECUTORS)}")
    t0 = time.perf_counter()
    out = normalize(out)   # a URL that went through pathlib (a Path option) gets its slash back
    # Workers may run elsewhere (a cluster, another cwd): they get absolute paths.
    root = recipe.data_root if paths.is_url(recipe.data_root) else str(Path(recipe.data_root).expanduser().resolve())
    run_recipe = recipe.model_copy(update={"data_root": root})
    check_paths(run_recipe)
    tok = tokenizers_for(run_recipe)
    units = plan(run_recipe, tok.identities)
    try:
        check_writable(out)
        with build_lock(out):   # one build per --out at a time; the second is refused, naming the first
            check_existing(out, recipe, [u.part_stem for u in units], force)
            return _build_locked(recipe, run_recipe, out, units, tok, workers, ray_address, progress, console,
                                 executor, t0)
    except OutputError as e:
        raise BuildError(str(e)) from None


def _build_locked(recipe, run_recipe, out, units, tok, workers, ray_address, progress, console, executor, t0):
    done = {u.part_stem: st for u in units if (st := read_done(out, u.part_stem)) is not None}
    todo = [u for u in units if u.part_stem not in done]
    pool_report: list[dict] = []   # what this run's actor pools got (none when nothing is left to do)
    try:  # a voice model that cannot load fails here, before any unit, not inside one
        voices = check_voices(run_recipe)
    except PoolError as e:
        raise BuildError(str(e)) from None
    executor = choose_executor(executor, run_recipe, tok, ray_address)
    with contextlib.ExitStack() as stack:
        processes = stack.enter_context(ProcessTasks(workers)) if executor == "processes" else None
        if executor == "local":
            with _progress(progress, console, len(units), len(units) - len(todo)) as bar:
                result = local.run_units(run_recipe.to_dict(), todo, out, bar)
        else:
            result = run_units(run_recipe, todo, out, tok, workers, ray_address, progress, console, len(units),
                               pool_report=pool_report, processes=processes)
        if result.failed:
            raise BuildError(f"{len(result.failed)} unit(s) failed (their inputs are not accounted for yet); "
                             f"finished units are kept, rerun the same command to retry them:\n  "
                             + "\n  ".join(result.failed[:10]))
        stats = [result.stats[u.part_stem] if u.part_stem in result.stats else UnitStats.from_dict(done[u.part_stem])
                 for u in units]
        check_not_empty(recipe, stats)

        # rejects name units relative to data_root, as the units' own rejects do (the resolved root: symlinks
        # followed)
        rel = relative_to_root(run_recipe)
        try:
            mixed = run_mix(recipe, out, [PartRef(u.part_stem, u.unit.source, recipe.sources[u.source_index].group,
                                                  rel(u.unit.label), st.written) for u, st in zip(units, stats)],
                            tasks=processes or _ray_if_running())
        except WorkerDied as e:
            raise BuildError(f"a mix task failed: {e}; rerun the same command (finished units are kept)") from None
    stats = [_move_dropped(st, mixed.dropped.get(u.part_stem, {})) for st, u in zip(stats, units)]
    manifest = build_manifest(recipe, AR_OMNI_V0_1, tok.identities, mixed.shards, stats, mixed.report, mixed.totals,
                              [r["path"] for r in mixed.rejects.values()], voices=voices)
    write_manifest(out, manifest)
    return BuildReport(out, manifest, len(units), len(units) - len(todo), time.perf_counter() - t0,
                       dropped_turns=sum(st.dropped_turns for st in stats), voice=_voice_counts(stats),
                       pools=pool_report, executor=executor)


def choose_executor(executor: str, recipe: Recipe, tok, ray_address: str | None = None) -> str:
    """``auto``: Ray where the build joins a cluster (an address, RAY_ADDRESS, a Ray this process already runs) or
    the recipe runs models in actor pools (model tokenizers, voice or CLIP actors: they batch across units, on the
    GPUs); otherwise the process pool, which starts in a fraction of a second where a local Ray takes seconds.
    Any other value is kept."""
    if executor != "auto":
        return executor
    # the recipe's own tokenizer settings: which pools it asks for needs no checkpoint fetched (tokenizers_cfg)
    if _joins_cluster(ray_address) or requested_pools(recipe, recipe.tokenizers, tok):
        return "ray"
    return "processes"


def run_units(recipe: Recipe, todo: list[PlannedUnit], out: str, tok, workers, ray_address, progress, console,
              total: int, pool_report: list | None = None, processes: ProcessTasks | None = None) -> UnitsResult:
    """The units still to do, on ``processes`` (a local process pool) or else on Ray (with the actor pools every
    unit shares); nothing to do starts nothing. ``pool_report`` gets what each pool got (printed on ``console``
    too)."""
    if not todo:
        return UnitsResult()
    if processes is not None:
        with _progress(progress, console, total, total - len(todo)) as bar:
            return processes.run_units(recipe.to_dict(), todo, out, bar,
                                       ray_executor.units_per_task(len(todo), processes.cpus, pooled=False))
    tok_cfg = tokenizers_cfg(recipe)
    try:
        # actors: auto is sized from the cluster: the one joined (or already running), else this machine, for which
        # the local Ray is then started with the pools' CPUs on top of the workers'
        ray = _init_ray(workers, ray_address) if _joins_cluster(ray_address) else None
        specs = plan_pools(recipe, tok_cfg, tok, ray.cluster_resources() if ray else local_resources)
        pool_cpus = cpu_demand(specs)
        ray = ray or _init_ray(workers, ray_address, pool_cpus)
        pools = start_pools(recipe, tok_cfg, tok, ray, specs)
    except (RayStartError, PoolError) as e:
        raise BuildError(str(e)) from None
    if pool_report is not None:
        pool_report.extend(pools.report)
    if console is not None:
        for d in pools.report:
            console.print(pool_line(d), highlight=False, soft_wrap=True)
    unit_cpus = int(ray.cluster_resources().get("CPU", 1) - pool_cpus)
    limit = workers or unit_cpus
    # Where Ray's CPUs already bound how many units run at once (the local Ray started for this build, or no
    # --workers), a second task per worker waits in Ray's queue: a worker that finishes starts its next unit without
    # a round trip to this driver. With --workers below a cluster's CPUs, exactly that many are in flight.
    ahead = limit if unit_cpus <= limit else 0
    with pools_stopped(pools), _progress(progress, console, total, total - len(todo)) as bar:
        return ray_executor.run_units(ray, recipe.to_dict(), todo, out, bar, pools, limit, ahead,
                                      ray_executor.units_per_task(len(todo), limit, pooled=bool(specs)))


def _joins_cluster(ray_address) -> bool:
    """Whether _init_ray joins a cluster (an address, RAY_ADDRESS, or a Ray this process already runs) rather than
    starting a local one sized for this build."""
    return bool(ray_address or os.environ.get("RAY_ADDRESS")) or _ray_if_running() is not None


def _ray_if_running():
    """The Ray this build already runs (units ran, or a cluster was named) for the mix; none is started for it."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def check_not_empty(recipe: Recipe, stats: list[UnitStats]) -> None:
    """A source that yields no rows is an error (a wrong reader or path looks like a green build otherwise), unless
    it says ``allow_empty: true``."""
    empty = []
    for i, s in enumerate(recipe.sources):
        mine = [st for st in stats if st.source == s.name]
        if s.allow_empty or sum(st.written for st in mine):
            continue
        reasons: Counter = Counter()
        for st in mine:
            reasons.update(st.rejected)
        top = ", ".join(f"{r} {n}" for r, n in reasons.most_common(3)) or "nothing rejected"
        empty.append(f"sources[{i}] {s.name} (reader {s.reader}): read {sum(st.read for st in mine)}, wrote 0; "
                     f"top reject reasons: {top}")
    if empty:
        raise BuildError("source(s) that yield no rows (a wrong reader or path?); set allow_empty: true on a source "
                         "to accept it:\n  " + "\n  ".join(empty))


def _move_dropped(st: UnitStats, dropped: dict) -> UnitStats:
    """Rows the mix dropped (duplicates across units) move from written to rejected: read = written + rejected. The
    near_dup step's own counts take its decisions too (kept -> rejected.near_duplicate), so the step shows in stats
    and the card like every filter: checked = kept + rejected."""
    for reason, d in sorted(dropped.items()):
        st = st.moved_to_rejected(reason, d["rows"], d["tokens"])
        if reason == NEAR_DUP_REASON and "near_dup" in st.steps:
            c = dict(st.steps["near_dup"])
            c["kept"] = c.get("kept", 0) - d["rows"]
            c[f"rejected.{reason}"] = c.get(f"rejected.{reason}", 0) + d["rows"]
            st = dataclasses.replace(st, steps={**st.steps, "near_dup": dict(sorted((k, v) for k, v in c.items() if v))})
    return st


def _voice_counts(stats: list[UnitStats]) -> dict:
    total: Counter = Counter()
    for st in stats:
        total.update(st.steps.get("voice", {}))
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in sorted(total.items())}


class _progress:
    """A rich progress bar over units with samples written/rejected and ETA; silent when disabled."""

    def __init__(self, enabled: bool, console, total: int, done: int):
        self.enabled, self.console, self.total, self.done = enabled, console, total, done
        self.written = self.rejected = 0

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.p = Progress(TextColumn("[bold]units"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[samples]}"), TimeElapsedColumn(), TextColumn("ETA"),
                              TimeRemainingColumn(), console=self.console, transient=False)
            self.p.__enter__()
            self.t = self.p.add_task("units", total=self.total, completed=self.done, samples="")
        return self

    def advance(self, st: UnitStats | None):
        if st:
            self.written += st.written
            self.rejected += st.n_rejected
        if self.enabled:
            self.p.update(self.t, advance=1, samples=f"{self.written} samples, {self.rejected} rejected")

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)
