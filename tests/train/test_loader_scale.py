"""The loader at a dataset's scale of files: from a bucket (a real S3-API server on loopback) it gives the windows a
local copy gives, its index fetches footers and lengths, not shards, and an epoch fetches each byte about once; over
many shards the files it keeps open stay bounded."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from aromni.pipeline.mix.shards import shard_parquet_options
from aromni.recipe import OutputConfig
from aromni.sample import Sample, Segment, rows_to_table
from aromni.train.loader import Loader, ShardSet
from tests.io.s3server import s3  # noqa: F401 - fixture


def text_rows(n: int, seed: int) -> list[Sample]:
    """Pretraining-sized text rows (200-1000 tokens), so a shard's bytes are mostly tokens, as in a real build."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        body = [0] + (16384 + rng.integers(0, 48000, int(rng.integers(200, 1000)))).tolist() + [2]
        out.append(Sample(f"t/{seed}/{i}", "text", "text_to_text", body, [Segment("assistant", "text", 0, len(body))]))
    return out


def write_shards(d: Path, n_files: int, rows: int) -> Path:
    (d / "data").mkdir(parents=True)
    for k in range(n_files):
        pq.write_table(rows_to_table(text_rows(rows, k)), d / "data" / f"train-{k:05d}-of-{n_files:05d}.parquet",
                       **{**shard_parquet_options(OutputConfig()), "row_group_size": 100})
    return d


def window_digests(shards: ShardSet, **kw) -> list[str]:
    ld = Loader(shards, rank=0, world=1, micro_batch=4, train_batch=8, max_len=1300, **kw)
    out = []
    while ld.consumed < 2 * len(shards):
        w = ld.next_window()
        h = hashlib.sha256(repr((w.start, w.end, w.samples, w.weight_sum)).encode())
        for m in w.micro:
            h.update(m.ids.numpy().tobytes() + m.flags.numpy().tobytes())
        out.append(h.hexdigest())
    return out


def test_a_bucket_build_loads_as_the_local_copy_and_fetches_each_byte_about_once(s3, tmp_path, monkeypatch):
    local = write_shards(tmp_path / "build", 3, 300)
    fs = s3.fs()
    fs.mkdir("lab")
    for p in sorted((local / "data").glob("*.parquet")):
        fs.put(str(p), f"lab/build/data/{p.name}")
    import s3fs
    fetched: list[int] = []
    fetch = s3fs.core.S3File._fetch_range
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", lambda self, a, b: fetched.append(b - a) or fetch(self, a, b))
    shard_bytes = sum(p.stat().st_size for p in (local / "data").glob("*.parquet"))

    remote = ShardSet("s3://lab/build")
    # the index: each file's footer (pyarrow reads its last 64 KiB) and its n_tokens column; fsspec's read-ahead
    # cache fetched 75% of the shards here, and would have kept them
    assert sum(fetched) < 0.15 * shard_bytes, (sum(fetched), shard_bytes)
    there = ShardSet(str(local))
    assert remote.fingerprint == there.fingerprint and np.array_equal(remote.lengths, there.lengths)
    fetched.clear()
    assert window_digests(remote) == window_digests(there)
    # two epochs: each row group once an epoch, plus the footers of files opened again and the row group the
    # second epoch's last window reads past its end
    assert sum(fetched) < 2.3 * shard_bytes, (sum(fetched), shard_bytes)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts this process's open descriptors in /proc")
def test_open_files_stay_bounded_over_many_shards(tmp_path, monkeypatch):
    d = write_shards(tmp_path, 40, 12)
    want = window_digests(ShardSet(str(d)), shuffle=True, seed=1)   # (the default: 8 open at most)
    monkeypatch.setattr(ShardSet, "open_files", 3)
    before = len(os.listdir("/proc/self/fd"))
    shards = ShardSet(str(d))
    assert window_digests(shards, shuffle=True, seed=1) == want     # files closed and opened again read the same
    assert len(shards._pf) <= 3 and len(os.listdir("/proc/self/fd")) <= before + 3
