"""Index stage: read each part once, add the order key, and write the batch's rows sorted by it.

One task per batch of parts (a few tens of MB). Its outputs, in the mix's scratch folder (Arrow IPC, see scratch.py):
``rows/<batch>.arrow``: every row of the batch, all columns plus ``_k`` (hash(seed, id), uint64), ``_pr`` (part
index << 32 | row) and ``_g`` (the group), sorted by (``_k``, id, ``_pr``) in small record batches, so any range of the
order key is a few batches of it; ``content/<batch>.arrow``: (``_ch``, ``_k``, id, ``_pr``, n_tokens) sorted by
``_cb`` (a uniform 64-bit key of the content hash: its ranges partition the content dedup; taken from the hash's own
hex digits, or a sha256 of it when it is not hex).
"""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aromni.io.atomic import join, out_fs
from aromni.pipeline.mix.scratch import hex_bucket_keys, write_sorted
from aromni.pipeline.parts import part_paths

ROW_GROUP = 2048          # scratch record batches: the granularity of a range read
ORDER = [("_k", "ascending"), ("id", "ascending"), ("_pr", "ascending")]


def rows_path(scratch: str, batch: int) -> str:
    return join(scratch, "rows", f"{batch:06d}.arrow")


def content_path(scratch: str, batch: int) -> str:
    return join(scratch, "content", f"{batch:06d}.arrow")


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


def content_hashes(t: pa.Table) -> pa.Array:
    """The rows' content hash, from the ``content_hash`` column ("" = none). Parts are always of the current row
    format: the format is part of every unit's id, so a part written by older code is never reused."""
    return pc.if_else(pc.equal(t.column("content_hash"), ""), pa.scalar(None, pa.string()),
                      t.column("content_hash")).combine_chunks()


def index_batch(out: str, scratch: str, batch: int, parts: list[tuple[int, str, str]], seed, content: bool) -> dict:
    """``parts``: (part index, stem, group). Returns {"rows": n, "bytes": size of rows written}."""
    fs, _ = out_fs(out)
    tables, chs = [], []
    for k, stem, group in parts:
        with fs.open(part_paths(out, stem)["rows"], "rb") as f:  # ParquetFile: see dedup.read_parquet
            t = pq.ParquetFile(f).read()
        n = t.num_rows
        if n == 0:
            continue
        ch = content_hashes(t) if content else pa.nulls(n, pa.string())
        t = (t.append_column("_k", order_keys(seed, t.column("id").to_pylist()))
              .append_column("_pr", pa.array([(k << 32) | r for r in range(n)], pa.uint64()))
              .append_column("_g", pa.array([group] * n, pa.string())))
        tables.append(t)
        chs.append(ch)
    if not tables:
        return {"rows": 0}
    t = pa.concat_tables(tables, promote_options="default").combine_chunks()  # take on one chunk: ~3x faster
    ch = pa.concat_arrays(chs)
    order = pc.sort_indices(t, sort_keys=ORDER)
    t, ch = t.take(order), ch.take(order)
    write_sorted(fs, rows_path(scratch, batch), t, "_k", ROW_GROUP)
    if content:
        c = pa.table({"_cb": _bucket_keys(ch), "_ch": ch, "_k": t.column("_k"), "id": t.column("id"), "_pr": t.column("_pr"),
                      "n_tokens": t.column("n_tokens")}).filter(pc.is_valid(ch))
        c = c.take(pc.sort_indices(c, sort_keys=[("_cb", "ascending"), ("_ch", "ascending")] + ORDER))
        write_sorted(fs, content_path(scratch, batch), c, "_cb", ROW_GROUP * 4)
    return {"rows": t.num_rows}
