"""run_mix: the mix's stages, in-process or as Ray tasks, and the driver's small bookkeeping (O(units + shards))."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from aromni.io.atomic import join, out_fs
from aromni.pipeline.mix.dedup import dedup_all, dedup_content, dedup_ids
from aromni.pipeline.mix.index import content_path, index_batch, keys_path, rows_path
from aromni.pipeline.mix.near import RANGE_KEYS, near_drops_path, near_pairs, near_resolve, pairs_path
from aromni.pipeline.mix.order import Ranks, block_tokens, order_range, shard_bounds
from aromni.pipeline.mix.shards import remove_other_shards, shard_name, write_shard, write_source_rejects
from aromni.pipeline.parts import PARTS, part_paths, remove_manifest
from aromni.pipeline.steps.filters.near_dup import NearDupStepOptions

SCRATCH = ".mix"
BATCH_BYTES = 16 << 20      # parts read together by one index task (compressed bytes) ...
BATCH_PARTS = 16            # ... and at most this many, so even a small build has tasks for every worker
RANGE_ROWS = 50_000         # rows per order-key range: what one dedup / order task holds (at most) ...
MIN_RANGE_ROWS = 5_000      # ... and at least, when splitting finer only to give every CPU a task


class MixError(RuntimeError):
    pass


@dataclass(frozen=True)
class PartRef:
    stem: str      # "<source>/<unit id>"
    source: str
    group: str
    unit: str      # the unit's label, for rejects
    rows: int      # rows in the part (its unit's stats): sizes the key ranges before the index stage


@dataclass
class MixResult:
    shards: list[dict]
    report: dict
    totals: dict
    dropped: dict = field(default_factory=dict)    # stem -> reason -> {"rows", "tokens"}
    rejects: dict = field(default_factory=dict)    # source -> {"path", "rows"}
    seconds: dict = field(default_factory=dict)    # wall time per stage (index, dedup, order + rejects, shards, cleanup)


def _cpus(tasks) -> int:
    """How many tasks can run at once: the pool's workers, the Ray cluster's CPUs, or 1 in-process."""
    if tasks is None:
        return 1
    if hasattr(tasks, "together"):   # executor.processes.ProcessTasks
        return tasks.cpus
    return max(1, int(tasks.cluster_resources().get("CPU", 1)))


def _runner(tasks):
    """map(fn, argument tuples) in-process (``tasks`` None), on a local process pool (executor.processes), or as
    Ray tasks (``tasks`` the ray module; 1 CPU each, retried: every task rewrites whole files). ``run.together([(fn,
    args), ...])`` runs independent stages as one wave (one round trip, no idle worker between)."""
    if tasks is None:
        def run(fn, args):
            return [fn(*a) for a in args]
        run.together = lambda stages: [run(fn, args) for fn, args in stages]
        return run
    if hasattr(tasks, "together"):
        def run(fn, args):
            return tasks.run(fn, args)
        run.together = tasks.together
        return run
    ray = tasks
    cache = {}

    def remote(fn):
        if fn not in cache:
            cache[fn] = ray.remote(num_cpus=1, max_retries=3)(fn)
        return cache[fn]

    def together(stages):
        refs = [[remote(fn).remote(*a) for a in args] for fn, args in stages]
        return [ray.get(r) for r in refs]

    def run(fn, args):
        return together([(fn, args)])[0]
    run.together = together
    return run


def _batches(fs, out: str, parts: list[PartRef], cpus: int = 1) -> list[list[tuple[int, str, str]]]:
    """Consecutive parts of about BATCH_BYTES each, smaller when that would leave CPUs idle (at least two batches per
    CPU while there are parts for them). Sizes come from one listing per source folder, not per part. The batching
    changes only the scratch layout, never the shards (tested)."""
    sizes = {}
    for folder in sorted({p.stem.rsplit("/", 1)[0] for p in parts}):
        for info in fs.ls(join(out_fs(out)[1], PARTS, folder), detail=True):
            sizes[info["name"]] = info.get("size") or 0
    size = [sizes.get(part_paths(out, p.stem)["rows"], 0) for p in parts]
    max_bytes = min(BATCH_BYTES, max(1, sum(size) // (2 * cpus))) if cpus > 1 else BATCH_BYTES
    max_parts = min(BATCH_PARTS, max(1, math.ceil(len(parts) / (2 * cpus)))) if cpus > 1 else BATCH_PARTS
    batches, cur, acc = [], [], 0
    for k, p in enumerate(parts):
        cur.append((k, p.stem, p.group))
        acc += size[k]
        if acc >= max_bytes or len(cur) >= max_parts:
            batches.append(cur)
            cur, acc = [], 0
    if cur:
        batches.append(cur)
    return batches


def _n_ranges(rows: int, cpus: int) -> int:
    """Order-key ranges for the dedup and order stages: RANGE_ROWS rows each at most, and one per CPU while each
    still holds MIN_RANGE_ROWS; beyond one wave, a whole number of waves (7 ranges on 2 CPUs left one idle for the
    last one)."""
    n = max(1, math.ceil(rows / RANGE_ROWS), min(cpus, rows // MIN_RANGE_ROWS))
    return math.ceil(n / cpus) * cpus if n > cpus else n


def run_mix(recipe, out: str, parts: list[PartRef], tasks=None) -> MixResult:
    """``tasks``: where the stages run: None (this process), an ``executor.processes.ProcessTasks`` pool, or the
    ray module (a running Ray). Where they run changes nothing in the shards (tested)."""
    out = str(out)
    fs, root = out_fs(out)
    scratch = join(root, SCRATCH)
    run = _runner(tasks)
    m = recipe.mixing
    ratio = dict(m.ratio)
    content = bool(recipe.filters.dedup)
    near = near_options(recipe)
    if fs.exists(scratch):  # a killed mix's leftovers: everything below is recomputed
        fs.rm(scratch, recursive=True)
    remove_manifest(out)

    clock, seconds = time.perf_counter(), {}

    def lap(stage):
        nonlocal clock
        now = time.perf_counter()
        seconds[stage], clock = round(now - clock, 3), now

    # 1. index: each part read once, rows grouped by order-key range
    cpus = _cpus(tasks)
    batches = _batches(fs, out, parts, cpus)
    expected = sum(p.rows for p in parts)   # the units' stats: the ranges are known before the index, which groups
    n_ranges = _n_ranges(expected, cpus)      # its files by them (exact range reads)
    idx = run(index_batch, [(out, scratch, b, bp, m.seed, content, near is not None, n_ranges)
                            for b, bp in enumerate(batches)])
    total = sum(r["rows"] for r in idx)
    if total != expected:
        raise MixError(f"the parts hold {total} rows, their units' stats say {expected}: a part changed after its "
                       f"unit finished; rebuild with --force")
    row_files = [rows_path(scratch, b) for b, r in enumerate(idx) if r["rows"]]
    content_files = [content_path(scratch, b) for b, r in enumerate(idx) if r["rows"]] if content else []
    lap("index")

    # 2. dedup: ids per order-key range, then content per content-bucket range
    dropped: dict[int, dict] = {}
    id_drops = [join(scratch, "drops", f"id-{j:06d}.parquet") for j in range(n_ranges)]
    drop_files = list(id_drops)
    if content and n_ranges == 1:   # one task does both passes: one wave of tasks fewer
        counts = run(dedup_all, [(out, scratch, row_files, content_files)])[0]
    else:
        counts = run(dedup_ids, [(out, scratch, j, n_ranges, row_files) for j in range(n_ranges)])
        if content:
            counts += run(dedup_content, [(out, scratch, c, n_ranges, content_files, id_drops)
                                          for c in range(n_ranges)])
    if content:
        drop_files += [join(scratch, "drops", f"content-{c:06d}.parquet") for c in range(n_ranges)]
    lap("dedup")

    # 2b. near-duplicates (a near_dup step): pairs per key range among the rows exact dedup kept, then clusters
    if near is not None:
        key_files = [keys_path(scratch, b) for b, r in enumerate(idx) if r.get("keys")]
        n_key_ranges = max(1, math.ceil(sum(r.get("keys", 0) for r in idx) / RANGE_KEYS))
        run(near_pairs, [(out, scratch, j, n_key_ranges, key_files, drop_files, near.max_hamming)
                         for j in range(n_key_ranges)])
        counts += run(near_resolve, [(out, scratch, [pairs_path(scratch, j) for j in range(n_key_ranges)])])
        drop_files.append(near_drops_path(scratch))
        lap("near_dup")
    for c in counts:
        for k, reasons in c.items():
            for reason, (rows, tokens) in reasons.items():
                d = dropped.setdefault(k, {}).setdefault(reason, {"rows": 0, "tokens": 0})
                d["rows"] += rows
                d["tokens"] += tokens

    # 3. order: surviving rows per range sorted by group; counts -> ranks
    # (the per-source rejects need only the drops: they run in the same wave as the order tasks)
    by_source: dict[str, list[int]] = {}
    for k, p in enumerate(parts):
        by_source.setdefault(p.source, []).append(k)
    per_range, rej = run.together([
        (order_range, [(out, scratch, j, n_ranges, row_files, drop_files) for j in range(n_ranges)]),
        (write_source_rejects, [(out, s.name, [parts[k].stem for k in by_source.get(s.name, [])],
                                 {k: parts[k].unit for k in by_source.get(s.name, [])}, drop_files)
                                for s in recipe.sources])])
    ranks = Ranks(per_range, ratio)
    lap("order")
    avail = {g: ranks.available(g) for g in ratio}
    if m.stop == "first_exhausted":
        n_blocks = min(avail[g] // ratio[g] for g in ratio)
    else:
        empty = [g for g in ratio if avail[g] == 0]
        if empty:
            raise MixError(f"mixing.stop=all_exhausted cannot repeat empty group(s) {empty}: no rows were written "
                           f"for them (see rejects)")
        n_blocks = max(math.ceil(avail[g] / ratio[g]) for g in ratio)
    report = {"stop": m.stop, "seed": m.seed, "blocks": n_blocks, "groups": {
        g: {"ratio": ratio[g], "available": avail[g], "used": n_blocks * ratio[g],
            "unique_used": min(avail[g], n_blocks * ratio[g]), "repeated": max(0, n_blocks * ratio[g] - avail[g])}
        for g in ratio}}

    # 4. shards: each a run of whole blocks, reading only its rank ranges
    if m.shard_tokens:
        tok = run(block_tokens, [(out, scratch, ranks.off, ratio, n_blocks)])[0]
        bounds = shard_bounds(n_blocks, block_tok=tok, shard_tokens=m.shard_tokens)
    else:
        bounds = shard_bounds(n_blocks, per=max(1, (m.shard_rows or 0) // max(1, sum(ratio.values()))))
    n = len(bounds)
    remove_other_shards(out, {shard_name(s, n) for s in range(n)})
    args = [(out, scratch, s, n, b0, b1, ratio, {g: ranks.segments(g, b0 * r, b1 * r) for g, r in ratio.items()},
             recipe.output) for s, (b0, b1) in enumerate(bounds)]
    written = run(write_shard, args)
    lap("shards")

    # 5. totals and drops from the tasks' stats
    fs.rm(scratch, recursive=True)
    lap("cleanup")
    return MixResult(shards=[w["shard"] for w in written], report=report,
                     totals=_totals(w["totals"] for w in written),
                     dropped={parts[k].stem: dict(sorted(v.items())) for k, v in sorted(dropped.items())},
                     rejects={s.name: r for s, r in zip(recipe.sources, rej)}, seconds=seconds)


def near_options(recipe):
    """The options of the recipe's near_dup step, or None without one."""
    for s in recipe.steps:
        if s.name == "near_dup":
            return NearDupStepOptions(**(s.options or {}))
    return None


def _totals(per_shard) -> dict:
    by = {"task": {}, "group": {}, "source": {}}
    for rows in per_shard:
        for task, group, source, n, tokens in rows:
            for k, v in (("task", task), ("group", group), ("source", source)):
                e = by[k].setdefault(v, {"rows": 0, "tokens": 0})
                e["rows"] += n
                e["tokens"] += tokens
    return {k: dict(sorted(d.items())) for k, d in by.items()}
