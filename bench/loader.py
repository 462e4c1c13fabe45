"""How fast the trainer's loader turns shards into packed batches, against a raw pyarrow read of the same shards.

    .venv/bin/python bench/loader.py                    # synthetic shards in the real row schema, 6k, 24k, 96k rows
    .venv/bin/python bench/loader.py --rows 24000       # one size
    .venv/bin/python bench/loader.py --data runs/demo   # an existing build (small: numbers are noisy)

Goal (issue 17): <= 1.5x the raw read time (issue 8 asked >= 1M tokens/s per core and <= 1.2x), at every size. Each size
is measured on its own shards (2000 rows a file, written as `aromni build` writes them: zstd, row groups of 512 rows),
so fixed costs show as what they are: the shard index (footers and every row's length, read once per run) and the one
row group a loader's epoch decodes twice (its last window takes the first samples of the next epoch: 8% more decoding at
6k rows, 0.5% at 96k; a run of several epochs decodes it once per epoch, as the raw read does). The breakdown line says
where the loader's time goes inside one real epoch (each stage's exclusive time, so they add up to the total): the shard
index, reading + decoding row groups, deriving labels/weights/perceptual positions per row group as one byte of flags a
token (aromni.train.labels.derive_flags), planning windows, collating micro-batches (int32 ids + flags: the trainer
widens them on its device; the last line says what that widening would cost on this CPU), and the rest of building a
window. Times are CPU seconds of this process (the machine may be shared), with pyarrow on one thread so both sides run
on one core. The two sides alternate --repeat times; the goal is judged on the median of each loader run's ratio to the
raw read just before it (this machine's speed drifts by 20-30% within minutes: a pair shares the drift), and the best of
each side is printed beside it. "raw read" reads the columns the loader needs (input_ids, segments, task) for every row
group, with the loader's reader settings (no pre-buffering for local files), and touches the token buffers.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aromni.layout import AR_OMNI_V0_1 as L  # noqa: E402
from aromni.pipeline.mix.shards import shard_parquet_options  # noqa: E402
from aromni.recipe import OutputConfig  # noqa: E402
from aromni.sample import Sample, Segment, rows_to_table  # noqa: E402
from aromni.train.loader import Loader, ShardSet  # noqa: E402  (imported before any timing)


SHARD_OPTIONS = shard_parquet_options(OutputConfig())     # zstd 3, row groups of 512, dictionaries for task/source


def synthetic_rows(n: int, seed: int = 0) -> list[Sample]:
    """Rows shaped like the paper's 1:1:1 mix: text documents, text<->image, text<->speech."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 3
        text = lambda k: (16384 + rng.integers(0, 48000, k)).tolist()   # noqa: E731
        if kind == 0:
            body = [0] + text(int(rng.integers(200, 1200))) + [2]
            segs = [Segment("assistant", "text", 0, len(body))]
            task = "text_to_text"
        elif kind == 1:
            prompt = [0] + text(int(rng.integers(10, 40))) + [L.eoh]
            img = [L.boi] + (4 + rng.integers(0, 8192, 1024)).tolist() + [L.eoi]
            body = prompt + img + [2]
            segs = [Segment("user", "text", 0, len(prompt)), Segment("assistant", "image", len(prompt),
                                                                       len(prompt) + 1026),
                    Segment("assistant", "text", len(prompt) + 1026, len(body))]
            task = "text_to_image"
        else:
            speech = [L.boa] + (L.speech_code_start + rng.integers(0, 4096, int(rng.integers(80, 600)))).tolist() \
                + [L.eoa]
            head = [0] + text(8)
            tail = [L.eoh] + text(int(rng.integers(10, 60))) + [2]
            body = head + speech + tail
            segs = [Segment("user", "text", 0, len(head)),
                    Segment("user", "speech", len(head), len(head) + len(speech)),
                    Segment("assistant", "text", len(head) + len(speech), len(body))]
            task = "speech_to_text"
        out.append(Sample(f"bench/{seed}/{i}", "bench", task, body, segs))
    return out


def write_shards(n_rows: int, d: Path, per_shard: int = 2000) -> Path:
    """``n_rows`` synthetic rows in shards of ``per_shard`` (each shard's rows from its own seed: memory stays one
    shard's), written as ``aromni build`` writes its shards (the default recipe's output options)."""
    (d / "data").mkdir(parents=True, exist_ok=True)
    n = (n_rows + per_shard - 1) // per_shard
    for k in range(n):
        t = rows_to_table(synthetic_rows(min(per_shard, n_rows - k * per_shard), seed=k))
        pq.write_table(t, d / "data" / f"train-{k:05d}-of-{n:05d}.parquet", **SHARD_OPTIONS)
    return d


def one_array(col: pa.ChunkedArray) -> pa.Array:
    """A row group's column without a copy (combine_chunks copies even one chunk; the loader does not)."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def raw_read(files: list[str]) -> int:
    tokens = 0
    for f in files:
        pf = pq.ParquetFile(f, pre_buffer=False)      # (as the loader reads local files)
        for i in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(i, columns=["input_ids", "segments", "task"], use_threads=False)
            ids = one_array(t.column("input_ids"))
            tokens += len(ids.values.to_numpy())
            one_array(t.column("segments")).values.field("start").to_numpy()
    return tokens


def loader_epoch(path: str, train_batch: int, micro: int, max_len: int) -> tuple[int, int]:
    shards = ShardSet(path)
    ld = Loader(shards, rank=0, world=1, micro_batch=micro, train_batch=train_batch, max_len=max_len, pack=True)
    tokens = windows = 0
    while ld.consumed < len(shards):
        w = ld.next_window()
        tokens += w.tokens
        windows += 1
    return tokens, windows


def widen_cpu(path: str, train_batch: int, micro: int, max_len: int) -> float:
    """CPU seconds to widen one epoch's compact batches into the model's tensors on the CPU (Batch.to("cpu")):
    what the trainer does on its device instead; not part of the loader's time, printed so it is not hidden."""
    shards = ShardSet(path)
    ld = Loader(shards, rank=0, world=1, micro_batch=micro, train_batch=train_batch, max_len=max_len, pack=True)
    batches = []
    while ld.consumed < len(shards):
        batches += ld.next_window().micro
    t = time.process_time()
    for m in batches:
        m.to("cpu")
    return time.process_time() - t


def breakdown(path: str, train_batch: int, micro: int, max_len: int) -> dict:
    """CPU seconds of each loader stage inside one real epoch (exclusive: a row group read inside a collate counts
    as read); "index" is the shard set's set-up (footers, every row's length), "window" the rest of build_window
    (micro-batch slots, this rank's weight sum) and of the epoch's loop."""
    from aromni.train import labels as labels_mod
    from aromni.train import loader as loader_mod
    out = dict.fromkeys(("index", "read", "derive", "plan", "collate", "window"), 0.0)
    stack, mark, calls = ["window"], [time.process_time()], dict.fromkeys(out, 0)

    def wrap(owner, name, stage):
        fn = getattr(owner, name)

        def timed_stage(*a, **k):
            calls[stage] += 1
            now = time.process_time()
            out[stack[-1]] += now - mark[0]
            stack.append(stage)
            mark[0] = now
            try:
                return fn(*a, **k)
            finally:
                now = time.process_time()
                out[stack.pop()] += now - mark[0]
                mark[0] = now
        setattr(owner, name, timed_stage)
        return fn

    collate = "_collate_pieces"
    saved = [(ShardSet, "__init__", wrap(ShardSet, "__init__", "index")),
             (ShardSet, "row_group", wrap(ShardSet, "row_group", "read")),
             (loader_mod, "derive_flags", wrap(loader_mod, "derive_flags", "derive")),
             (Loader, "plan", wrap(Loader, "plan", "plan")),
             (Loader, collate, wrap(Loader, collate, "collate"))]
    try:
        mark[0] = time.process_time()
        loader_epoch(path, train_batch, micro, max_len)
        out["window"] += time.process_time() - mark[0]
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    assert labels_mod.derive_flags is loader_mod.derive_flags
    return out, calls["read"]


def timed(fn, *a):
    c, t = time.process_time(), time.perf_counter()
    r = fn(*a)
    return r, time.process_time() - c, time.perf_counter() - t


def measure(path: Path, args) -> bool:
    """One size: the two sides alternating, the breakdown, the widening line. True when the goals are met."""
    files = sorted(str(p) for p in (path / "data").glob("*.parquet"))
    raw_read(files)                                                     # warm the page cache
    loader_epoch(str(path), args.train_batch, args.micro, args.max_len)  # ... and load the compiled loops
    # the two alternate, so a change in the machine's state (a neighbour on the host, the page cache) lands on both
    raws, loads = [], []
    for _ in range(args.repeat):
        raws.append(timed(raw_read, files))
        loads.append(timed(loader_epoch, str(path), args.train_batch, args.micro, args.max_len))
    tok_raw, c_raw, w_raw = min(raws, key=lambda r: r[1])
    (tok, n_win), c_ld, w_ld = min(loads, key=lambda r: r[1])
    paired = [ld[1] / raw[1] for raw, ld in zip(raws, loads)]
    ratio = float(np.median(paired))
    parts, decoded = breakdown(str(path), args.train_batch, args.micro, args.max_len)
    raw_groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
    widen = min(widen_cpu(str(path), args.train_batch, args.micro, args.max_len) for _ in range(3))
    met = ratio <= 1.5 and tok / c_ld >= 1e6
    print(f"shards: {len(files)} file(s), {raw_groups} row groups, {tok_raw:,} tokens; packed into windows of "
          f"{args.train_batch} rows x {args.max_len} ({n_win} windows, {tok:,} tokens)")
    print(f"  raw pyarrow read : {c_raw:7.3f} s CPU ({w_raw:.3f} s wall)  {tok_raw / c_raw / 1e6:8.2f} M tokens/s/core "
          f"(best of {args.repeat})")
    print(f"  loader -> batches: {c_ld:7.3f} s CPU ({w_ld:.3f} s wall)  {tok / c_ld / 1e6:8.2f} M tokens/s/core")
    print(f"  ratio loader/raw : {ratio:.2f}x, the median of {len(paired)} alternating pairs (range "
          f"{min(paired):.2f}-{max(paired):.2f}x; best vs best {c_ld / c_raw:.2f}x). Goal <= 1.5x: "
          f"{'met' if ratio <= 1.5 else 'NOT met'}; tokens/s goal >= 1M per core: "
          f"{'met' if tok / c_ld >= 1e6 else 'NOT met'}")
    print("  breakdown (CPU s): " + ", ".join(f"{k} {v:.3f} ({v / c_raw:.2f}x raw)" for k, v in parts.items()))
    print(f"  row groups decoded: loader {decoded}, raw read {raw_groups} (the last window reads the next epoch's "
          f"first row group: {(decoded - raw_groups) / raw_groups:.1%} more decoding)")
    print(f"  (batches leave the loader compact: int32 ids + 1 byte of flags a token; the trainer widens them to the "
          f"model's int64/float32 tensors on its device. Widening on this CPU instead: +{widen:.3f} s, "
          f"{widen / c_raw:.1f}x raw)", flush=True)
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="an existing build folder (default: synthetic shards in a temp dir)")
    ap.add_argument("--rows", default="6000,24000,96000", help="synthetic rows, one size or a comma list")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=1300)
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of each side, alternating")
    args = ap.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    torch.set_num_threads(1)       # the widening line: one core too (spinning OpenMP threads inflate CPU time)
    results = []
    if args.data:
        results.append((args.data, measure(Path(args.data), args)))
    else:
        for n in (int(x) for x in args.rows.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                print(f"{n:,} synthetic rows:", flush=True)
                results.append((f"{n:,} rows", measure(write_shards(n, Path(tmp)), args)))
    print("goals (<= 1.5x a raw read, >= 1M tokens/s/core): " +
          ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in results))


if __name__ == "__main__":
    main()
