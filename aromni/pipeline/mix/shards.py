"""Shard stage (one task per shard) and the per-source rejects (one task per source).

A shard holds blocks [b0, b1): for group g the positions [b0*r_g, b1*r_g) of its (repeated) rank sequence, which
are a few contiguous slices of the order buckets. The task reads only those row groups, interleaves the groups in
ratio blocks (g1 g2 g3 g1 ...), writes the shard (content-defined chunking + page index, so a rebuild dedupes on
content-addressed storage such as the Hub's) and returns its manifest entry and its totals.
"""
from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aromni.io.atomic import join, open_atomic, out_fs, write_bytes
from aromni.pipeline.mix import scratch as scr
from aromni.pipeline.mix.dedup import read_parquet
from aromni.pipeline.mix.index import ROW_GROUP
from aromni.pipeline.mix.order import bucket_path
from aromni.pipeline.parts import DATA, REJECTS, parquet_bytes, part_paths
from aromni.sample import DICTIONARY_COLUMNS, REJECT_SCHEMA


def shard_name(s: int, n: int) -> str:
    return f"{DATA}/train-{s:05d}-of-{n:05d}.parquet"


def _gather(fs, scratch: str, segments: list[tuple[int, int, int, int]]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The batches of the order buckets that ``segments`` ((bucket, first row, end row, rep), any groups) touch, each
    read once (a small group repeated under ``all_exhausted`` asks for the same rows many times), as one table, and
    for every segment row in segment order its row in that table and its rep."""
    # every segment row at once (a repeated small group is thousands of segments): its bucket row, then its batch
    seg = np.array(segments, dtype=np.int64).reshape(-1, 4)
    j, a, b, rep = seg.T
    length = b - a
    r = np.arange(length.sum(), dtype=np.int64) - np.repeat(np.cumsum(length) - length, length) + np.repeat(a, length)
    batch, at = np.unique(np.repeat(j, length) << 32 | r // ROW_GROUP, return_inverse=True)
    tables, first, n = [], [], 0
    for bucket, ks in itertools.groupby(batch.tolist(), key=lambda x: x >> 32):
        reader = scr.Reader(fs, bucket_path(scratch, bucket))
        try:
            for x in ks:
                tables.append(reader.batches([x & 0xFFFFFFFF]))
                first.append(n)
                n += tables[-1].num_rows
        finally:
            reader.close()
    base = pa.concat_tables(tables).combine_chunks() if tables else None
    return base, np.asarray(first, dtype=np.int64)[at.reshape(-1)] + r % ROW_GROUP, np.repeat(rep, length)


def _with_rep_suffix(ids: pa.Array, reps: np.ndarray) -> pa.Array:
    """``id@repK`` for the rows a group repeats (rep K > 0), the id itself for rep 0: one vectorised join."""
    if not reps.any():
        return ids
    uniq = np.unique(reps)
    suffix = pa.DictionaryArray.from_arrays(pa.array(np.searchsorted(uniq, reps).astype(np.int32)),
                                            pa.array(["" if r == 0 else f"@rep{r}" for r in uniq.tolist()]))
    return pc.binary_join_element_wise(ids, suffix.cast(pa.string()), "")


def shard_parquet_options(output) -> dict:
    """pyarrow.parquet.write_table options of a shard: the recipe's compression and row groups, statistics, a page
    index and content-defined chunking (so a rebuild dedupes on content-addressed storage such as the Hub's);
    dictionaries only for ``sample.DICTIONARY_COLUMNS``."""
    return {"compression": None if output.compression == "none" else output.compression,
            "compression_level": output.compression_level if output.compression in ("zstd", "gzip") else None,
            "row_group_size": output.row_group_rows, "write_statistics": True, "write_page_index": True,
            "use_content_defined_chunking": True, "use_dictionary": DICTIONARY_COLUMNS}


def interleave(base: list[int], rs: list[int], n_blocks: int) -> np.ndarray:
    """Row indices of a shard's blocks in the concatenated per-group tables (group g starts at base[g], r_g rows per
    block): in each block g1 g2 g3 g1 g2 g3 ... while a group has rows left in the block."""
    pattern = [(gi, i) for i in range(max(rs)) for gi, r in enumerate(rs) if i < r]
    g = np.array([p[0] for p in pattern], np.int64)
    i = np.array([p[1] for p in pattern], np.int64)
    blk = np.arange(n_blocks, dtype=np.int64)[:, None]
    return (np.asarray(base[:len(rs)], np.int64)[g][None, :] + blk * np.asarray(rs, np.int64)[g][None, :]
            + i[None, :]).ravel()


def write_shard(out: str, scratch: str, s: int, n_shards: int, b0: int, b1: int, ratio: dict,
                segments: dict, output) -> dict:
    """``segments``: group -> [(bucket, first row, end row, rep)] in rank order."""
    fs, root = out_fs(out)
    order = [seg for g in ratio for seg in segments[g]]
    base, rows, reps = _gather(fs, scratch, order)
    counts = [sum(b - a for _, a, b, _ in segments[g]) for g in ratio]
    at = interleave(list(itertools.accumulate([0] + counts)), list(ratio.values()), b1 - b0)
    rows, reps = rows[at], reps[at]
    table = base.take(pa.array(rows))
    if reps.any():
        table = table.set_column(table.column_names.index("id"), "id",
                                 _with_rep_suffix(table.column("id").combine_chunks(), reps))
    keep = [c for c in table.column_names if not c.startswith("_")]
    sums = table.group_by(["task", "_g", "source"]).aggregate([("n_tokens", "sum"), ("n_tokens", "count")])
    table = table.select(keep).combine_chunks()
    data = parquet_bytes(table, **shard_parquet_options(output))
    name = shard_name(s, n_shards)
    write_bytes(fs, join(root, name), data)
    return {"shard": {"path": name, "rows": table.num_rows, "tokens": int(pc.sum(table.column("n_tokens")).as_py() or 0),
                      "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
            "totals": [(r["task"], r["_g"], r["source"], r["n_tokens_count"], r["n_tokens_sum"] or 0)
                       for r in sums.to_pylist()]}


def write_source_rejects(out: str, source: str, stems: list[str], units: dict[int, str], drop_files: list[str]
                         ) -> dict:
    """rejects/<source>.parquet: the units' rejects part by part, then the mix's drops (in unit, row order).
    ``units``: part index -> unit label for this source's parts."""
    fs, root = out_fs(out)
    path = f"{REJECTS}/{source}.parquet"
    rows = 0
    with open_atomic(fs, join(root, path)) as f, pq.ParquetWriter(f, REJECT_SCHEMA, compression="zstd") as w:
        for stem in stems:  # streamed part by part: millions of rejects (LAION's failed downloads) never all in memory
            with fs.open(part_paths(out, stem)["rejects"], "rb") as pf:   # ParquetFile: see dedup.read_parquet
                t = pq.ParquetFile(pf).read().cast(REJECT_SCHEMA)
            if t.num_rows:
                w.write_table(t)
                rows += t.num_rows
        d = read_parquet(fs, drop_files, ["_pr", "id", "kept", "reason"]) if units else None
        if d is not None and d.num_rows:
            part = pc.shift_right(d.column("_pr"), pa.scalar(32, pa.uint64()))
            d = d.filter(pc.is_in(part, value_set=pa.array(sorted(units), pa.uint64())))
            d = d.take(pc.sort_indices(d, sort_keys=[("_pr", "ascending")]))
            recs = []
            for pr, i, kept, reason in zip(*(d.column(c).to_pylist() for c in ("_pr", "id", "kept", "reason"))):
                what = ("the same id as a row of an earlier unit" if reason == "duplicate_id"
                        else f"near-duplicate of {kept}" if reason == "near_duplicate" else f"same content as {kept}")
                recs.append({"id": i, "source": source, "unit": units[pr >> 32], "reason": reason,
                             "message": f"{what}, which is kept (first in mixing order)"})
            if recs:
                w.write_table(pa.Table.from_pylist(recs, schema=REJECT_SCHEMA))
                rows += len(recs)
    return {"path": path, "rows": rows}


def remove_other_shards(out: str, names: set[str]) -> None:
    fs, root = out_fs(out)
    d = join(root, DATA)
    if not fs.exists(d):
        return
    for p in fs.ls(d, detail=False):
        if p.endswith(".parquet") and f"{DATA}/{p.rsplit('/', 1)[-1]}" not in names:
            fs.rm(p)
