"""``aromni build``: plan -> tokenize units on Ray -> mix -> manifest.

The driver plans and mixes; Ray runs one task per unit. A unit's output is a part file plus a done marker, so a
rerun on the same ``--out`` redoes only units without a marker, and the final shards depend only on the parts
(never on worker count or completion order).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from aromni.layout import AR_OMNI_V0_1
from aromni.io.atomic import OutputError, build_lock, check_writable, normalize
from aromni.pipeline.manifest import build_manifest, write_manifest
from aromni.pipeline.mix import PartRef, run_mix
from aromni.pipeline.parts import OutError, check_existing, read_done, remove_build, write_part  # noqa: F401
from aromni.pipeline.plan import PlannedUnit, plan
from aromni.recipe import Recipe, RecipeError, check_paths, parse_recipe


class BuildError(RuntimeError):
    """A build that cannot go on; the message says why and what to do."""


@dataclass
class BuildReport:
    out: Path
    manifest: dict
    units_total: int
    units_skipped: int
    seconds: float
    failed_units: list[str] = field(default_factory=list)


_TOKENIZER_CACHE: dict[str, object] = {}


def _tokenizers_cfg(recipe: Recipe):
    """The recipe's tokenizers section with absolute checkpoint paths."""
    cfg = recipe.tokenizers.model_copy(deep=True)
    for kind in ("text", "image", "speech"):
        c = getattr(cfg, kind)
        if c is not None and c.path is not None:
            c.path = str(recipe.resolve(c.path))
    return cfg


def tokenizers_for(recipe: Recipe, pools=None):
    """Load the recipe's tokenizers once per process (Ray reuses worker processes across units). Model tokenizers
    load lazily (config only); with ``pools`` their encode goes to the build's actor pools instead."""
    import json

    from aromni.model import load_tokenizers
    from aromni.pipeline.pools import attach
    cfg = _tokenizers_cfg(recipe)
    key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    if key not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[key] = load_tokenizers(cfg, AR_OMNI_V0_1)
    return attach(_TOKENIZER_CACHE[key], pools)


def run_unit(recipe_dict: dict, pu: PlannedUnit, out: str, pools=None) -> dict:
    """Process one unit and write its part; returns the unit's stats. Runs inside a Ray worker."""
    from aromni.pipeline.unit import process_unit
    recipe = parse_recipe(recipe_dict)
    tok = tokenizers_for(recipe, pools)
    result = process_unit(recipe, recipe.sources[pu.source_index], pu.unit, tok, pu.uid)
    write_part(out, pu.part_stem, result, recipe)
    return result.stats


def _init_ray(workers: int | None, ray_address: str | None, extra_cpus: float = 0.0):
    """``extra_cpus``: logical CPUs the tokenizer actor pools reserve, added on top of the unit workers' locally."""
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
            raise BuildError(f"cannot join the Ray cluster at {address}: {last}. Check the address (ray status on the "
                             f"head node); if the cluster uses token authentication (Ray's default for `ray start`), "
                             f"run with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token or "
                             f"RAY_AUTH_TOKEN.") from None
    else:
        # address="local": always a fresh local instance, never a cluster some other process left running
        ray.init(address="local", num_cpus=(workers or os.cpu_count() or 1) + math.ceil(extra_cpus),
                 include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
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
        raise BuildError(f"cannot join the Ray cluster at {address}: nothing answers there ({e}). Start one with "
                         f"`ray start --head`, or leave out --ray-address / RAY_ADDRESS to run locally.") from None


def build(recipe: Recipe, out: str | Path, *, workers: int | None = None, ray_address: str | None = None,
          force: bool = False, progress: bool = True, console=None) -> BuildReport:
    t0 = time.perf_counter()
    out = normalize(out)   # a URL that went through pathlib (the CLI's Path option) gets its slash back
    # Workers may run elsewhere (a cluster, another cwd): they get absolute paths.
    run_recipe = recipe.model_copy(update={"data_root": str(Path(recipe.data_root).expanduser().resolve())})
    check_paths(run_recipe)
    tok = tokenizers_for(run_recipe)
    tok_ids = tok.identities
    units = plan(run_recipe, tok_ids)
    try:
        check_writable(out)
        with build_lock(out):
            check_existing(out, recipe, [u.part_stem for u in units], force)
            return _build_locked(recipe, run_recipe, out, units, tok, tok_ids, workers, ray_address, progress,
                                 console, t0)
    except OutputError as e:
        raise BuildError(str(e)) from None


def _build_locked(recipe, run_recipe, out, units, tok, tok_ids, workers, ray_address, progress, console, t0):
    done = {u.part_stem: read_done(out, u.part_stem) for u in units}   # each verified once (size + sha256)
    todo = [u for u in units if done[u.part_stem] is None]
    stats_by_stem: dict[str, dict] = {s: st for s, st in done.items() if st is not None}
    failed: list[str] = []
    if todo:
        from aromni.pipeline.pools import PoolError, cpu_demand, start_pools
        tok_cfg = _tokenizers_cfg(run_recipe)
        pool_cpus = cpu_demand(tok_cfg, tok)
        ray = _init_ray(workers, ray_address, pool_cpus)
        try:  # model tokenizers (VQGAN, WavTokenizer) run in actor pools shared by all units
            pools = start_pools(tok_cfg, tok, ray)
        except PoolError as e:
            raise BuildError(str(e)) from None
        task = ray.remote(num_cpus=1, max_retries=3)(run_unit)
        recipe_dict = run_recipe.to_dict()
        limit = workers or int(ray.cluster_resources().get("CPU", 1) - pool_cpus)
        pending: dict = {}
        queue = list(todo)
        with pools_stopped(pools), _progress(progress, console, len(units), len(units) - len(todo)) as bar:
            while queue or pending:
                while queue and len(pending) < max(1, limit):
                    pu = queue.pop(0)
                    pending[task.remote(recipe_dict, pu, out, pools or None)] = pu
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    pu = pending.pop(ref)
                    try:
                        st = ray.get(ref)
                        stats_by_stem[pu.part_stem] = st
                        bar.advance(st)
                    except Exception as e:  # noqa: BLE001 - a unit's bug must not lose the other units
                        failed.append(f"{pu.unit.label}: {type(e).__name__}: {str(e).splitlines()[-1][:300]}")
                        bar.advance(None)
    if failed:
        raise BuildError(f"{len(failed)} unit(s) failed (their inputs are not accounted for yet); finished units are "
                         f"kept, rerun the same command to retry them:\n  " + "\n  ".join(failed[:10]))

    stems = [u.part_stem for u in units]
    stats = [stats_by_stem[s] for s in stems]
    refs = [PartRef(u.part_stem, u.unit.source, recipe.sources[u.source_index].group, u.unit.label) for u in units]
    mixed = run_mix(recipe, out, refs, ray=_ray_if_running())
    stats = [_apply_dropped(st, mixed.dropped.get(s)) for s, st in zip(stems, stats)]
    rejects = [r["path"] for r in mixed.rejects.values()]
    manifest = build_manifest(recipe, AR_OMNI_V0_1, tok_ids, mixed.shards, stats, mixed.report, mixed.totals, rejects)
    write_manifest(out, manifest)
    return BuildReport(out, manifest, len(units), len(units) - len(todo), time.perf_counter() - t0)


def _ray_if_running():
    """The mix runs as Ray tasks when this build already has Ray (units ran, or a cluster was named); a rerun whose
    units are all done mixes in-process rather than start Ray for it. Both give the same bytes."""
    import ray
    return ray if ray.is_initialized() else None


def _apply_dropped(st: dict, dropped: dict | None) -> dict:
    """Rows the mix dropped (duplicates) move from written to rejected, so read = written + rejected holds."""
    if not dropped:
        return st
    st = dict(st, rejected=dict(st["rejected"]))
    for reason, d in dropped.items():
        st["written"] -= d["rows"]
        st["tokens"] -= d["tokens"]
        st["rejected"][reason] = st["rejected"].get(reason, 0) + d["rows"]
    st["rejected"] = dict(sorted(st["rejected"].items()))
    return st


class pools_stopped:
    """Stop the tokenizer and voice actors when the units are done (or the build fails)."""

    def __init__(self, pools):
        self.pools = pools

    def __enter__(self):
        return self.pools

    def __exit__(self, *exc):
        self.pools.stop()
        from aromni.voice.pool import shutdown_pools
        shutdown_pools()  # voice actors (started by units, named) would otherwise hold their CPUs until Ray exits


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

    def advance(self, st: dict | None):
        if st:
            self.written += st["written"]
            self.rejected += sum(st["rejected"].values())
        if self.enabled:
            self.p.update(self.t, advance=1, samples=f"{self.written} samples, {self.rejected} rejected")

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)


__all__ = ["build", "BuildError", "BuildReport", "RecipeError"]
