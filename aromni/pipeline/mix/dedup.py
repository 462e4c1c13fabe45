"""Dedup stage: exact duplicates, partitioned by hash so no task sees more than its range.

Ids first (one task per range of the order key: equal ids have equal keys, so they meet in one task): among rows
sharing an id the first in mixing order (key, id, unit order, row) stays, the others are ``duplicate_id``. Then
content (one task per range of the content-hash bucket key), among the rows that survived the id pass: among rows
sharing a content hash the first in mixing order stays, the others are ``duplicate``. Each task writes its drop list
(``drops/*.parquet``: ``_pr``, ``_k``, id, n_tokens, kept, reason) and returns per-part counts.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aromni.io.atomic import join, out_fs, write_bytes
from aromni.pipeline.mix import scratch as scr
from aromni.pipeline.mix.index import ORDER
from aromni.pipeline.parts import parquet_bytes

DROP_SCHEMA = pa.schema([("_pr", pa.uint64()), ("_k", pa.uint64()), ("id", pa.string()), ("n_tokens", pa.int32()),
                         ("kept", pa.string()), ("reason", pa.string())])


def read_parquet(fs, files: list[str], columns: list[str]) -> pa.Table | None:
    """``columns`` of the small parquet files ``files`` (drop lists), or None when there are none. Read with
    ParquetFile, not pq.read_table: that one loads pyarrow.dataset, whose import (~0.4 s) every Ray worker would pay
    on its first mix task."""
    pieces = []
    for path in files:
        with fs.open(path, "rb") as f:
            pieces.append(pq.ParquetFile(f).read(columns=columns))
    return pa.concat_tables(pieces).combine_chunks() if pieces else None


def in_range(t: pa.Table, field: str, j: int, n: int) -> pa.Table:
    """The rows of ``t`` whose uint64 ``field`` lies in the j-th of n equal ranges of [0, 2**64)."""
    lo, hi = scr.range_bounds(j, n)
    keep = pc.greater_equal(t.column(field), pa.scalar(lo, pa.uint64()))
    if hi is not None:
        keep = pc.and_(keep, pc.less(t.column(field), pa.scalar(hi, pa.uint64())))
    return t.filter(keep)


def _first_of_runs(keys: pa.Array) -> np.ndarray:
    """For a sorted key column: True where a row starts a run of equal keys."""
    k = keys.to_numpy(zero_copy_only=False)
    start = np.ones(len(k), dtype=bool)
    if len(k) > 1:
        start[1:] = k[1:] != k[:-1]
    return start


def _write_drops(fs, path: str, t: pa.Table) -> dict:
    write_bytes(fs, path, parquet_bytes(t.select(DROP_SCHEMA.names).cast(DROP_SCHEMA), compression="zstd"),
                durable=False)   # scratch
    counts: dict[int, dict[str, list[int]]] = {}
    for pr, n, reason in zip(t.column("_pr").to_pylist(), t.column("n_tokens").to_pylist(),
                             t.column("reason").to_pylist()):
        c = counts.setdefault(pr >> 32, {}).setdefault(reason, [0, 0])
        c[0] += 1
        c[1] += n
    return counts


def dedup_ids(out: str, scratch: str, j: int, n: int, row_files: list[str]) -> dict:
    fs, _ = out_fs(out)
    t = scr.read_range(fs, row_files, ["_k", "id", "_pr", "n_tokens"], "_k", *scr.range_bounds(j, n))
    if t is None or t.num_rows == 0:
        t = DROP_SCHEMA.empty_table().drop_columns(["kept", "reason"])
    t = t.take(pc.sort_indices(t, sort_keys=ORDER))
    lose = ~_first_of_runs(t.column("id").combine_chunks())
    d = t.filter(pa.array(lose))
    d = d.append_column("kept", d.column("id")).append_column("reason", pa.array(["duplicate_id"] * d.num_rows,
                                                                                 pa.string()))
    return _write_drops(fs, join(scratch, "drops", f"id-{j:06d}.parquet"), d)


def dedup_content(out: str, scratch: str, c: int, n: int, content_files: list[str], id_drop_files: list[str]) -> dict:
    fs, _ = out_fs(out)
    t = scr.read_range(fs, content_files, ["_cb", "_ch", "_k", "id", "_pr", "n_tokens"], "_cb", *scr.range_bounds(c, n))
    if t is None or t.num_rows == 0:
        return _write_drops(fs, join(scratch, "drops", f"content-{c:06d}.parquet"), DROP_SCHEMA.empty_table())
    gone = read_parquet(fs, id_drop_files, ["_pr"])
    if gone is not None and gone.num_rows:
        t = t.filter(pc.invert(pc.is_in(t.column("_pr"), value_set=gone.column("_pr").combine_chunks())))
    t = t.take(pc.sort_indices(t, sort_keys=[("_cb", "ascending"), ("_ch", "ascending")] + ORDER))
    start = _first_of_runs(t.column("_ch").combine_chunks())
    first = np.maximum.accumulate(np.where(start, np.arange(len(start)), 0))
    kept = t.column("id").take(pa.array(first))
    lose = pa.array(~start)
    d = t.filter(lose).append_column("kept", kept.filter(lose))
    d = d.append_column("reason", pa.array(["duplicate"] * d.num_rows, pa.string()))
    return _write_drops(fs, join(scratch, "drops", f"content-{c:06d}.parquet"), d)


def dedup_all(out: str, scratch: str, row_files: list[str], content_files: list[str]) -> list[dict]:
    """Both passes over the whole key space in one task (a build small enough for one range): the same drop lists
    as one ``dedup_ids`` task and one ``dedup_content`` task."""
    ids = dedup_ids(out, scratch, 0, 1, row_files)
    return [ids, dedup_content(out, scratch, 0, 1, content_files, [join(scratch, "drops", "id-000000.parquet")])]
