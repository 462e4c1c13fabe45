"""Index stage: read each part once, add the order key, and write the batch's rows grouped by order-key range.

One task per batch of parts (a few tens of MB). Its outputs, in the mix's scratch folder (Arrow IPC, see scratch.py):
``rows/<batch>.arrow``: every row of the batch, all columns plus ``_k`` (hash(seed, id), uint64), ``_pr`` (part
index << 32 | row) and ``_g`` (the group), grouped by order-key range (the ranges the dedup and order tasks read: each
gets exactly its rows and sorts them itself); ``content/<batch>.arrow``: (``_cb``, ``_ch``, ``_k``, id, ``_pr``,
n_tokens) grouped the same way by ``_cb`` (a uniform 64-bit key of the content hash: its ranges partition the content
dedup; taken from the hash's own hex digits, or a sha256 of it when it is not hex); with a ``near_dup`` step,
``near/<batch>.arrow``: the parts' fingerprints, one row per bucket key (key, ``_k``, id, ``_pr``, n_tokens,
image_hash), sorted by key (mix/near.py).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aromni.io.atomic import join, out_fs
from aromni.pipeline.mix.scratch import hex_bucket_keys, write_by_range, write_sorted
from aromni.pipeline.parts import part_paths

ROW_GROUP = 2048          # scratch record batches: the granularity of a range read
KEY_ROWS = 8192           # near-dup key files: the granularity of a key-range read
ORDER = [("_k", "ascending"), ("id", "ascending"), ("_pr", "ascending")]


def rows_path(scratch: str, batch: int) -> str:
    return join(scratch, "rows", f"{batch:06d}.arrow")


def content_path(scratch: str, batch: int) -> str:
    return join(scratch, "content", f"{batch:06d}.arrow")


def keys_path(scratch: str, batch: int) -> str:
    return join(scratch, "near", f"{batch:06d}.arrow")


def part_keys(fs, out: str, stem: str, k: int, t: pa.Table, order: pa.Array) -> pa.Table | None:
    """One part's fingerprints as key rows. ``t``: the part's rows (in part order), ``order``: their order keys."""
    with fs.open(part_paths(out, stem)["near_dup"], "rb") as f:  # ParquetFile: see dedup.read_parquet
        sig = pq.ParquetFile(f).read().combine_chunks()
    if sig.num_rows == 0:
        return None
    rows = sig.column("row").chunk(0)
    if pc.max(rows).as_py() >= t.num_rows:
        raise ValueError(f"{stem}: fingerprints name row {pc.max(rows).as_py()} of a part of {t.num_rows} rows")
    n = pc.list_value_length(sig.column("keys")).fill_null(0).to_numpy(zero_copy_only=False)
    each = pa.array(np.repeat(np.arange(sig.num_rows), n))        # one entry per key: its fingerprint row
    at = rows.take(each).cast(pa.int64())                         # ... and its row in the part
    return pa.table({"key": pc.list_flatten(sig.column("keys")), "_k": order.take(at), "id": t.column("id").take(at),
                     "_pr": pc.bit_wise_or(pa.scalar(k << 32, pa.uint64()), at.cast(pa.uint64())),
                     "n_tokens": t.column("n_tokens").take(at), "image_hash": sig.column("image_hash").take(each)})


def write_keys(fs, scratch: str, batch: int, pieces: list[pa.Table]) -> int:
    if not pieces:
        return 0
    t = pa.concat_tables(pieces).combine_chunks()
    t = t.take(pc.sort_indices(t, sort_keys=[("key", "ascending"), ("_k", "ascending"), ("id", "ascending")]))
    write_sorted(fs, keys_path(scratch, batch), t, "key", KEY_ROWS)
    return t.num_rows


def order_keys(seed, ids: list[str]) -> pa.Array:
    """stable_hash(seed, id) for every id (the same value as aromni's stable_hash, inlined for speed)."""
    pre = f"{seed}\x1f"
    return pa.array([int.from_bytes(hashlib.sha256((pre + i).encode("utf-8", "surrogatepass")).digest()[:8], "big")
                     for i in ids], pa.uint64())


def _bucket_keys(ch: pa.Array) -> pa.Array:
    fast = hex_bucket_keys(ch)
    if fast is not None:
        return fast
    return pa.array([None if c is None else int.from_bytes(hashlib.sha256(c.encode("utf-8", "surrogatepass"))
                                                            .digest()[:8], "big") for c in ch.to_pylist()],
                    pa.uint64())


def index_batch(out: str, scratch: str, batch: int, parts: list[tuple[int, str, str]], seed, content: bool,
                near: bool = False, ranges: int = 1) -> dict:
    """``parts``: (part index, stem, group). Returns {"rows": rows written, "keys": near-dup key rows written}.
    With ``near`` (a near_dup step), also the parts' fingerprints as key rows (mix/near.py). ``ranges``: how many
    key ranges the dedup and order stages read; the files are grouped by them (each task sorts its own range)."""
    fs, _ = out_fs(out)
    tables, keys = [], []
    for k, stem, group in parts:
        with fs.open(part_paths(out, stem)["rows"], "rb") as f:  # ParquetFile: see dedup.read_parquet
            t = pq.ParquetFile(f).read()
        n = t.num_rows
        if n == 0:
            continue
        t = (t.append_column("_k", order_keys(seed, t.column("id").to_pylist()))
              .append_column("_pr", pa.array(np.uint64(k << 32) | np.arange(n, dtype=np.uint64)))
              .append_column("_g", pa.array([group] * n, pa.string())))
        tables.append(t)
        if near and (kt := part_keys(fs, out, stem, k, t, t.column("_k"))) is not None:
            keys.append(kt)
    n_keys = write_keys(fs, scratch, batch, keys)
    if not tables:
        return {"rows": 0, "keys": 0}
    t = pa.concat_tables(tables, promote_options="default").combine_chunks()
    write_by_range(fs, rows_path(scratch, batch), t, "_k", ROW_GROUP, ranges)
    if content:   # rows with a content hash ("" = none: imported rows), keyed by a uniform key of it
        c = t.select(["content_hash", "_k", "id", "_pr", "n_tokens"]).rename_columns(
            ["_ch", "_k", "id", "_pr", "n_tokens"]).filter(pc.not_equal(t.column("content_hash"), ""))
        c = c.add_column(0, "_cb", _bucket_keys(c.column("_ch").combine_chunks()))
        write_by_range(fs, content_path(scratch, batch), c, "_cb", ROW_GROUP * 4, ranges)
    return {"rows": t.num_rows, "keys": n_keys}
