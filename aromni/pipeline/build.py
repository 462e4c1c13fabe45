"""``aromni build``: plan -> tokenize units on Ray -> mix -> manifest.

The driver plans and mixes; Ray runs one task per unit. A unit's output is a part file plus a done marker, so a
rerun on the same ``--out`` redoes only units without a marker, and the final shards depend only on the parts
(never on worker count or completion order).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from aromni.layout import AR_OMNI_V0_1
from aromni.pipeline import mix as mixing
from aromni.pipeline.manifest import (MANIFEST, build_manifest, read_manifest, totals, write_manifest,
                                      write_rejects)
from aromni.pipeline.parts import PARTS, existing_stems, part_paths, read_done, write_part
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
    write_part(Path(out), pu.part_stem, result, recipe)
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
    out = Path(out)
    # Workers may run elsewhere (a cluster, another cwd): they get absolute paths.
    run_recipe = recipe.model_copy(update={"data_root": str(Path(recipe.data_root).expanduser().resolve())})
    check_paths(run_recipe)
    tok = tokenizers_for(run_recipe)
    tok_ids = tok.identities
    units = plan(run_recipe, tok_ids)
    _check_existing(out, recipe, units, force)
    out.mkdir(parents=True, exist_ok=True)

    todo = [u for u in units if read_done(out, u.part_stem) is None]
    stats_by_stem: dict[str, dict] = {u.part_stem: read_done(out, u.part_stem) for u in units if u not in todo}
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
                    pending[task.remote(recipe_dict, pu, str(out), pools or None)] = pu
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
    stem_group = {u.part_stem: recipe.sources[u.source_index].group for u in units}
    dups = mixing.find_duplicates(recipe, out, stems, content=recipe.filters.dedup)
    stats, dup_rejects = mixing.account_duplicates(stats, stems, dups)
    groups = mixing.order_groups(recipe, out, stems, stem_group, skip=dups)
    blocks, mix_report = mixing.select(recipe, groups)
    # manifest.json means "finished, and it describes data/": none while the shards are being rewritten
    (out / MANIFEST).unlink(missing_ok=True)
    shards = mixing.write_shards(recipe, out, stems, mixing.shard_blocks(recipe, blocks))
    import pyarrow.parquet as pq
    totals_ = totals((pq.read_table(out / s["path"], columns=["task", "source", "n_tokens"]) for s in shards), recipe)
    by_source: dict[str, list[str]] = {}
    for u in units:
        by_source.setdefault(u.unit.source, []).append(u.part_stem)
    rejects = write_rejects(out, recipe, by_source, dup_rejects)
    manifest = build_manifest(recipe, AR_OMNI_V0_1, tok_ids, shards, stats, mix_report, totals_, rejects)
    write_manifest(out, manifest)
    return BuildReport(out, manifest, len(units), len(units) - len(todo), time.perf_counter() - t0)


def _check_existing(out: Path, recipe: Recipe, units: list[PlannedUnit], force: bool) -> None:
    """Never mix parts of another recipe or of changed inputs into this build."""
    if not out.exists():
        return
    planned = {u.part_stem for u in units}
    stale = sorted(existing_stems(out) - planned)
    changed = False
    if (out / MANIFEST).exists():
        try:
            changed = read_manifest(out).get("recipe_sha256") != recipe.sha256()
        except (OSError, ValueError):
            changed = True
    if not (stale or changed):
        _clean_temp(out)
        return
    if not force:
        why = []
        if changed:
            why.append("its manifest was built from a different recipe")
        if stale:
            why.append(f"it holds {len(stale)} unit part(s) that this recipe and these inputs do not produce "
                       f"(e.g. {stale[0]})")
        raise BuildError(f"{out} already holds another build: {'; '.join(why)}. Use a new --out, or --force to "
                         f"discard what does not belong to this recipe.")
    for stem in stale:
        for p in part_paths(out, stem).values():
            p.unlink(missing_ok=True)
    _clean_temp(out)


def _clean_temp(out: Path) -> None:
    """Temp files of a killed run are never promoted; remove them."""
    for p in out.rglob(".*.tmp-*"):
        p.unlink(missing_ok=True)


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


def remove_build(out: Path) -> None:
    for sub in (PARTS, mixing.DATA, "rejects"):
        shutil.rmtree(Path(out) / sub, ignore_errors=True)
    (Path(out) / MANIFEST).unlink(missing_ok=True)


__all__ = ["build", "BuildError", "BuildReport", "RecipeError"]
