"""Near-duplicate stage of the mix (a ``near_dup`` step in the recipe): stages (b)-(d) of
``aromni.pipeline.steps.filters.near_dup`` over the fingerprints the units wrote, partitioned like exact dedup.

- ``index_batch`` (index.py, reading each part once) flattens each part's fingerprints into (key, _k, id, _pr,
  n_tokens, image_hash) rows, written sorted by key: ``near/<batch>.arrow``.
- ``near_pairs``: one task per key range (keys are uniform hashes, so ranges are balanced without sampling). Rows
  that exact dedup dropped leave first (a dropped copy must not link or be kept); then the candidate pairs of each
  bucket: ``pairs/<range>.arrow``.
- ``near_resolve``: one task over all pairs (a few per near-duplicate, not per row): union-find; every row of a
  cluster but the first in mixing order, (order key, id), is dropped as ``near_duplicate`` naming the kept id, in the
  drop list the order and rejects stages read like the exact-dedup ones.

Deterministic: a key's whole bucket lies in one range, every bucket's pairs depend only on its members, and the
clusters only on the set of pairs, so the drops are the same for any range count, batch split or worker count.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from aromni.io.atomic import join, out_fs
from aromni.pipeline.mix import scratch as scr
from aromni.pipeline.mix.dedup import _write_drops, read_parquet
from aromni.pipeline.steps.filters.near_dup import REASON, candidate_pairs, resolve_clusters

RANGE_KEYS = 400_000  # keys per range: what one pairs task holds (a few tens of MB)
PAIRS_SCHEMA = pa.schema([("a_order", pa.uint64()), ("a_id", pa.string()), ("a_pr", pa.uint64()),
                          ("a_nt", pa.int32()), ("b_order", pa.uint64()), ("b_id", pa.string()),
                          ("b_pr", pa.uint64()), ("b_nt", pa.int32())])


def pairs_path(scratch: str, j: int) -> str:
    return join(scratch, "pairs", f"{j:06d}.arrow")


def near_drops_path(scratch: str) -> str:
    return join(scratch, "drops", "near.parquet")


def near_pairs(out: str, scratch: str, j: int, n: int, key_files: list[str], exact_drops: list[str],
               max_hamming: int) -> int:
    """Range j of n of the key space -> its candidate pairs (a_* the bucket's earlier row). Returns the pair count."""
    fs, _ = out_fs(out)
    t = scr.read_range(fs, key_files, None, "key", *scr.range_bounds(j, n))
    pairs = pa.table({c: pa.array([], PAIRS_SCHEMA.field(c).type) for c in PAIRS_SCHEMA.names}, schema=PAIRS_SCHEMA)
    if t is not None and t.num_rows:
        gone = read_parquet(fs, exact_drops, ["_pr"])
        if gone is not None and gone.num_rows:
            t = t.filter(pc.invert(pc.is_in(t.column("_pr"), value_set=gone.column("_pr").combine_chunks())))
        cand = candidate_pairs(t.select(["key", "_k", "id", "image_hash"]).rename_columns(
            ["key", "order", "id", "image_hash"]), max_hamming)
        if cand.num_rows:
            # ids are unique here (duplicate ids left with the exact drops): id -> (_pr, n_tokens)
            ids = t.column("id")
            first = pc.index_in(cand.column("a_id"), value_set=ids)
            other = pc.index_in(cand.column("b_id"), value_set=ids)
            pairs = pa.table({"a_order": cand.column("a_order"), "a_id": cand.column("a_id"),
                              "a_pr": t.column("_pr").take(first), "a_nt": t.column("n_tokens").take(first),
                              "b_order": cand.column("b_order"), "b_id": cand.column("b_id"),
                              "b_pr": t.column("_pr").take(other), "b_nt": t.column("n_tokens").take(other)},
                             schema=PAIRS_SCHEMA)
    scr.write_sorted(fs, pairs_path(scratch, j), pairs, None, 1 << 20)
    return pairs.num_rows


def near_resolve(out: str, scratch: str, pair_files: list[str]) -> dict:
    """All pairs -> clusters -> the drop list (``drops/near.parquet``); returns per-part counts like dedup's."""
    fs, _ = out_fs(out)
    tables = [scr.read_all(fs, p) for p in pair_files]
    tables = [t for t in tables if t.num_rows]
    dropped = resolve_clusters(tables)
    info: dict[str, tuple[int, int, int]] = {}
    for t in tables:
        for side in ("a", "b"):
            for i, o, pr, nt in zip(*(t.column(f"{side}_{c}").to_pylist() for c in ("id", "order", "pr", "nt"))):
                info[i] = (o, pr, nt)
    ids = sorted(dropped)
    d = pa.table({"_pr": pa.array([info[i][1] for i in ids], pa.uint64()),
                  "_k": pa.array([info[i][0] for i in ids], pa.uint64()), "id": pa.array(ids, pa.string()),
                  "n_tokens": pa.array([info[i][2] for i in ids], pa.int32()),
                  "kept": pa.array([dropped[i] for i in ids], pa.string()),
                  "reason": pa.array([REASON] * len(ids), pa.string())})
    return _write_drops(fs, near_drops_path(scratch), d)
