"""Order stage: per range of the order key, the surviving rows sorted by (group, key, id, unit order, row).

Because the key is a uniform hash, equal ranges are balanced partitions with no sampling. Each task writes
``buckets/<j>.arrow`` and returns its per-group row counts; prefix sums of the counts over the ranges give every row
its rank within its group (rank = rows of its group in earlier ranges + its position in its own), with no global sort.
"""
from __future__ import annotations

import bisect

import numpy as np
import pyarrow.compute as pc

from aromni.io.atomic import join, out_fs
from aromni.pipeline.mix import scratch as scr
from aromni.pipeline.mix.dedup import in_range, read_parquet
from aromni.pipeline.mix.index import ORDER, ROW_GROUP


def bucket_path(scratch: str, j: int) -> str:
    return join(scratch, "buckets", f"{j:06d}.arrow")


def order_range(out: str, scratch: str, j: int, n: int, row_files: list[str], drop_files: list[str]) -> dict:
    """Returns {group: rows} for range j."""
    fs, _ = out_fs(out)
    t = scr.read_range(fs, row_files, None, "_k", *scr.range_bounds(j, n))
    if t is None or t.num_rows == 0:
        return {}
    gone = read_parquet(fs, drop_files, ["_pr", "_k"])
    gone = in_range(gone, "_k", j, n) if gone is not None else None
    if gone is not None and gone.num_rows:
        t = t.filter(pc.invert(pc.is_in(t.column("_pr"), value_set=gone.column("_pr").combine_chunks())))
    t = t.take(pc.sort_indices(t, sort_keys=[("_g", "ascending")] + ORDER))
    scr.write_sorted(fs, bucket_path(scratch, j), t, None, ROW_GROUP)
    g, c = np.unique(t.column("_g").to_numpy(zero_copy_only=False), return_counts=True)
    return {str(a): int(b) for a, b in zip(g, c)}


class Ranks:
    """Where each rank of each group lives: bucket j holds ranks [off[g][j], off[g][j+1]) of group g, starting at
    row ``start[j][g]`` of its file (groups are sorted by name inside a bucket). O(ranges x groups) numbers."""

    def __init__(self, counts: list[dict], groups):
        self.n = len(counts)
        self.off = {g: [0] for g in groups}
        self.start = []
        for c in counts:
            for g in groups:
                self.off[g].append(self.off[g][-1] + c.get(g, 0))
            s, acc = {}, 0
            for g in sorted(c):
                s[g] = acc
                acc += c[g]
            self.start.append(s)

    def available(self, g) -> int:
        return self.off[g][-1]

    def segments(self, g, a: int, b: int) -> list[tuple[int, int, int, int]]:
        """Positions [a, b) of group g's (repeated) sequence as (bucket, first row, end row, rep) file slices."""
        avail, off, out = self.available(g), self.off[g], []
        p = a
        while p < b:
            rep, base = divmod(p, avail)
            end = min(avail, base + (b - p))
            x = base
            while x < end:
                j = bisect.bisect_right(off, x) - 1
                y = min(end, off[j + 1])
                s0 = self.start[j][g]
                out.append((j, s0 + x - off[j], s0 + y - off[j], rep))
                x = y
            p += end - base
        return out


def block_tokens(out: str, scratch: str, ranks_off: dict, ratio: dict, n_blocks: int) -> list[int]:
    """Tokens of every block (for ``shard_tokens``): one task reads the buckets' (group, n_tokens) columns. Holds
    4 bytes per used row: the one per-row structure of the mix, in a task, only when shards are cut by tokens."""
    fs, _ = out_fs(out)
    tokens = {g: [] for g in ratio}
    for j in range(len(ranks_off[next(iter(ratio))]) - 1):
        path = bucket_path(scratch, j)
        if not fs.exists(path):
            continue
        t = scr.read_all(fs, path, ["_g", "n_tokens"])
        for g in ratio:
            tokens[g].append(t.filter(pc.equal(t.column("_g"), g)).column("n_tokens").to_numpy().astype(np.int64))
    per_block = np.zeros(n_blocks, dtype=np.int64)
    for g, r in ratio.items():
        tok = np.concatenate(tokens[g]) if tokens[g] else np.zeros(0, np.int64)
        pos = np.arange(n_blocks * r) % max(1, len(tok))
        per_block += tok[pos].reshape(n_blocks, r).sum(axis=1)
    return per_block.tolist()


def shard_bounds(n_blocks: int, per: int | None = None, block_tok: list[int] | None = None,
                 shard_tokens: int | None = None) -> list[tuple[int, int]]:
    """Block ranges of the shards: ``per`` whole blocks each, or closing a shard once it reaches ``shard_tokens``."""
    if block_tok is None:
        return [(b, min(b + per, n_blocks)) for b in range(0, n_blocks, per)]
    cum = np.cumsum(np.asarray(block_tok, dtype=np.int64))
    bounds, b = [], 0
    while b < n_blocks:
        base = cum[b - 1] if b else 0
        e = int(np.searchsorted(cum, base + shard_tokens, side="left")) + 1
        e = min(max(e, b + 1), n_blocks)
        bounds.append((b, e))
        b = e
    return bounds
