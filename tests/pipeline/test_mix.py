"""The mix stage (run_mix) on synthetic parts: ratio blocks, stop rules, shards holding the ratio, dedup with the
first in mixing order kept, per-source rejects, and bytes that do not depend on how the work is partitioned."""
from __future__ import annotations

import copy
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from aromni.pipeline.mix import MixError, PartRef, run
from aromni.pipeline.mix import run_mix
from aromni.hashing import stable_hash
from aromni.pipeline.mix import scratch
from aromni.pipeline.mix.index import _bucket_keys, order_keys
from aromni.pipeline.mix.scratch import hex_bucket_keys
from aromni.pipeline.parts import parquet_bytes, part_paths
from aromni.recipe import parse_recipe
from aromni.sample import REJECT_SCHEMA, ROW_SCHEMA

DEMO = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml").read_text())
DEMO["steps"] = []   # these parts are written by hand, not by units: no near_dup fingerprints next to them
SOURCE = {"text": "ultrafineweb", "image_text": "laion", "speech_text": "gigaspeech"}


def recipe(*overrides):
    return parse_recipe(copy.deepcopy(DEMO), list(overrides))


def make_parts(out: Path, sizes: dict[str, int], units: int = 3, content=None) -> list[PartRef]:
    """``units`` parts per group, rows spread over them; ``content(group, i)`` gives a row's content hash."""
    refs = []
    for g, n in sizes.items():
        src = SOURCE[g]
        for u in range(units):
            rows = [i for i in range(n) if i % units == u]
            t = pa.Table.from_pylist([{
                "id": f"{g}/{i}", "source": src, "task": g, "input_ids": [1] * (10 + i % 7), "segments": [],
                "n_tokens": 10 + i % 7,
                "meta": "{}", "content_hash": (content or (lambda g, i: f"{len(g):02x}{i:08x}"))(g, i)}
                for i in rows], schema=ROW_SCHEMA)
            stem = f"{src}/u{u:03d}"
            p = part_paths(str(out), stem)
            Path(p["rows"]).parent.mkdir(parents=True, exist_ok=True)
            Path(p["rows"]).write_bytes(parquet_bytes(t))
            Path(p["rejects"]).write_bytes(parquet_bytes(REJECT_SCHEMA.empty_table()))
            refs.append(PartRef(stem, src, g, f"{src}:u{u}", len(rows)))
    return refs


def shard_rows(out: Path, res) -> list[list[dict]]:
    return [pq.read_table(out / s["path"]).to_pylist() for s in res.shards]


def hashes(out: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))}


def test_order_key_is_stable_hash():
    from aromni.hashing import stable_hash
    ids = ["a", "text/1", "\u00e9\ud800x"]
    assert order_keys(7, ids).to_pylist() == [stable_hash(7, i) for i in ids]


def test_first_exhausted_stops_at_smallest_group_in_hash_order(tmp_path):
    parts = make_parts(tmp_path, {"text": 50, "image_text": 7, "speech_text": 20})
    r = recipe("mixing.shard_rows=6")
    res = run_mix(r, str(tmp_path), parts)
    assert res.report["blocks"] == 7
    assert {g: v["used"] for g, v in res.report["groups"].items()} == {"text": 7, "image_text": 7, "speech_text": 7}
    rows = [x for s in shard_rows(tmp_path, res) for x in s]
    # the first 7 text rows in (hash(seed, id), id) order, whichever part holds them
    want = sorted((f"text/{i}" for i in range(50)), key=lambda i: (order_keys(r.mixing.seed, [i])[0].as_py(), i))[:7]
    assert [x["id"] for x in rows if x["task"] == "text"] == want
    # interleaved g1 g2 g3 per block, in the ratio's group order
    assert [x["task"] for x in rows[:3]] == list(r.mixing.ratio)
    assert res.totals["group"]["text"] == {"rows": 7, "tokens": sum(x["n_tokens"] for x in rows if x["task"] == "text")}
    assert sum(s["rows"] for s in res.shards) == 21 and not (tmp_path / ".mix").exists()


def test_all_exhausted_repeats_with_rep_suffix(tmp_path):
    parts = make_parts(tmp_path, {"text": 10, "image_text": 3, "speech_text": 4})
    res = run_mix(recipe("mixing.stop=all_exhausted"), str(tmp_path), parts)
    assert res.report["blocks"] == 10
    assert res.report["groups"]["image_text"] == {"ratio": 1, "available": 3, "used": 10, "unique_used": 3,
                                                 "repeated": 7}
    ids = [x["id"] for s in shard_rows(tmp_path, res) for x in s if x["task"] == "image_text"]
    reps = [int(i.split("@rep")[1]) if "@rep" in i else 0 for i in ids]
    assert reps == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert ids[3].split("@")[0] == ids[0] and len(set(ids)) == 10


def test_all_exhausted_refuses_an_empty_group(tmp_path):
    parts = make_parts(tmp_path, {"text": 10, "image_text": 0, "speech_text": 4})
    with pytest.raises(MixError, match="empty group"):
        run_mix(recipe("mixing.stop=all_exhausted"), str(tmp_path), parts)


def test_unequal_ratio_interleaves(tmp_path):
    parts = make_parts(tmp_path, {"text": 9, "image_text": 9, "speech_text": 9})
    r = recipe("mixing.ratio={text: 2, image_text: 1, speech_text: 1}")
    res = run_mix(r, str(tmp_path), parts)
    assert res.report["blocks"] == 4
    assert [x["task"] for x in shard_rows(tmp_path, res)[0][:4]] == ["text", "image_text", "speech_text", "text"]


@pytest.mark.parametrize("rows", [3, 7, 12, 100])
def test_every_shard_holds_the_ratio(tmp_path, rows):
    parts = make_parts(tmp_path, {"text": 40, "image_text": 25, "speech_text": 31})
    res = run_mix(recipe(f"mixing.shard_rows={rows}"), str(tmp_path), parts)
    shards = shard_rows(tmp_path, res)
    assert sum(map(len, shards)) == 75
    for s in shards:
        c = Counter(x["task"] for x in s)
        assert c["text"] == c["image_text"] == c["speech_text"]
    assert all(len(s) == max(3, rows // 3 * 3) for s in shards[:-1])


def test_shard_by_tokens(tmp_path):
    parts = make_parts(tmp_path, {"text": 30, "image_text": 30, "speech_text": 30})
    res = run_mix(recipe("mixing.shard_rows=null", "mixing.shard_tokens=100"), str(tmp_path), parts)
    shards = shard_rows(tmp_path, res)
    assert len(shards) > 3 and sum(map(len, shards)) == 90
    assert all(sum(x["n_tokens"] for x in s) >= 100 for s in shards[:-1])
    assert all(sum(x["n_tokens"] for x in s[:-3]) < 100 for s in shards)


def test_dedup_keeps_first_in_mixing_order_and_writes_rejects(tmp_path):
    # text rows i and i+20 share content; the copy of text/3 in another part shares its id
    parts = make_parts(tmp_path, {"text": 40, "image_text": 40, "speech_text": 40},
                       content=lambda g, i: f"{len(g):02x}{i % 20 if g == 'text' else i:08x}")
    extra = pa.Table.from_pylist([{"id": "text/3", "source": "ultrafineweb", "task": "text", "input_ids": [1],
                                   "segments": [], "n_tokens": 1, "meta": "{}", "content_hash": "ff00"}],
                                 schema=ROW_SCHEMA)
    p = part_paths(str(tmp_path), "ultrafineweb/u999")
    Path(p["rows"]).write_bytes(parquet_bytes(extra))
    Path(p["rejects"]).write_bytes(parquet_bytes(REJECT_SCHEMA.empty_table()))
    parts.append(PartRef("ultrafineweb/u999", "ultrafineweb", "text", "ultrafineweb:u999", 1))
    r = recipe()
    res = run_mix(r, str(tmp_path), parts)
    seed = r.mixing.seed
    key = lambda i: (order_keys(seed, [i])[0].as_py(), i)  # noqa: E731
    assert res.report["groups"]["text"]["available"] == 20
    rejects = pq.read_table(tmp_path / "rejects" / "ultrafineweb.parquet").to_pylist()
    assert len(rejects) == 21 and res.rejects["ultrafineweb"] == {"path": "rejects/ultrafineweb.parquet", "rows": 21}
    dup_id = [x for x in rejects if x["reason"] == "duplicate_id"]
    assert [(x["id"], x["unit"]) for x in dup_id] == [("text/3", "ultrafineweb:u999")]  # later unit loses the tie
    for x in rejects:
        if x["reason"] == "duplicate":
            i = int(x["id"].split("/")[1])
            twin = f"text/{(i + 20) % 40}"
            assert key(twin) < key(x["id"]) and f"same content as {twin}" in x["message"]
    assert sum(d.get("duplicate", {}).get("rows", 0) for d in res.dropped.values()) == 20
    assert res.dropped["ultrafineweb/u999"] == {"duplicate_id": {"rows": 1, "tokens": 1}}


def _sha1_hex(g, i):  # content hashes as the build writes them (32 hex digits), every 7th text row a duplicate
    return hashlib.sha1(f"{g}/{i - i % 7 if g == 'text' else i}".encode()).hexdigest()[:32]


@pytest.mark.parametrize("content", [None, _sha1_hex], ids=["short-hashes", "hex-hashes"])
def test_bytes_do_not_depend_on_partitioning(tmp_path, monkeypatch, content):
    sizes = {"text": 300, "image_text": 120, "speech_text": 200}
    a, b = tmp_path / "a", tmp_path / "b"
    r = recipe("mixing.shard_rows=30", "mixing.stop=all_exhausted")
    ra = run_mix(r, str(a), make_parts(a, sizes, units=5, content=content))
    monkeypatch.setattr(run, "RANGE_ROWS", 37)     # 17 order ranges, 17 content ranges
    monkeypatch.setattr(run, "BATCH_BYTES", 1)     # one index task per part
    rb = run_mix(r, str(b), make_parts(b, sizes, units=5, content=content))
    if content:  # the dedup really ran on the hex fast path (bucket keys from the hashes' own digits)
        assert sum(d["duplicate"]["rows"] for d in ra.dropped.values() if "duplicate" in d) == 300 - 300 // 7 - 1
        assert ra.dropped == rb.dropped
    assert hashes(a) == hashes(b) and len(hashes(a)) == len(ra.shards) > 5
    assert ra.shards == rb.shards and ra.totals == rb.totals and ra.report == rb.report


def test_content_bucket_key_is_the_hashs_own_hex_digits():
    ch = pa.array([hashlib.sha1(str(i).encode()).hexdigest()[:32] for i in range(50)] + [None])
    assert hex_bucket_keys(ch).to_pylist() == [int(c[:16], 16) for c in ch.to_pylist()[:-1]] + [None]
    # anything else (imported ids, short hashes) is hashed: still a uniform key, never a crash
    odd = pa.array(["0a", "not-hex-but-long-enough", "ABCDEF0123456789abcd"])
    assert hex_bucket_keys(odd) is None
    assert _bucket_keys(odd).to_pylist() == [stable_hash(c) for c in odd.to_pylist()]


def test_scratch_range_read_equals_a_filter(tmp_path):
    import fsspec
    fs = fsspec.filesystem("file")
    keys = sorted(random.Random(1).getrandbits(64) for _ in range(5000))
    t = pa.table({"_k": pa.array(keys, pa.uint64()), "v": list(range(5000))})
    path = str(tmp_path / "x.arrow")
    scratch.write_sorted(fs, path, t, "_k", 256)
    for j, n in ((0, 3), (1, 3), (2, 3), (5, 7)):
        lo, hi = scratch.range_bounds(j, n)
        got = scratch.read_range(fs, [path], ["v"], "_k", lo, hi)
        want = [v for k, v in zip(keys, range(5000)) if k >= lo and (hi is None or k < hi)]
        assert (got.column("v").to_pylist() if got is not None else []) == want
    assert scratch.read_all(fs, path).schema.metadata is None   # the bounds never leak into the rows


def test_scratch_files_grouped_by_range_read_exactly_their_rows(tmp_path):
    """write_by_range: no batch straddles a range boundary, so a range read opens only batches of its own rows (at scale
    a range holds a few rows of each file, so a straddling batch would be read by many ranges); the rows come back as
    a filter of the input would give them (in input order within the range); batches stay at most batch_rows rows."""
    import fsspec
    fs = fsspec.filesystem("file")
    keys = [random.Random(2).getrandbits(64) for _ in range(3000)]    # unsorted: the writer partitions
    keys = [k if i % 7 else keys[i - 1] for i, k in enumerate(keys)]  # and a few equal keys
    t = pa.table({"_k": pa.array(keys, pa.uint64()), "v": list(range(3000))})
    path = str(tmp_path / "x.arrow")
    n = 40    # ~75 rows a range, batches of up to 32
    scratch.write_by_range(fs, path, t, "_k", 32, ranges=n)
    r = scratch.Reader(fs, path)
    sizes = [r.ipc.get_batch(i).num_rows for i in range(r.ipc.num_record_batches)]
    bounds = r.bounds
    r.close()
    assert max(sizes) <= 32 and sum(sizes) == 3000
    read = 0
    for j in range(n):
        lo, hi = scratch.range_bounds(j, n)
        mine = [i for i, (a, b) in enumerate(bounds) if b >= lo and (hi is None or a < hi)]
        want = [v for k, v in zip(keys, range(3000)) if k >= lo and (hi is None or k < hi)]
        assert sum(sizes[i] for i in mine) == len(want)    # exactly its rows, nothing of a neighbour's range
        read += sum(sizes[i] for i in mine)
        got = scratch.read_range(fs, [path], ["v"], "_k", lo, hi)
        assert (got.column("v").to_pylist() if got is not None else []) == want
    assert read == 3000
    assert scratch.batch_edges(None, 600, 256) == [0, 256, 512, 600]   # sorted files: row r is in batch r // rows


def test_interleave_lays_out_ratio_blocks():
    """The vectorised block layout equals the loop it replaced: per block g1 g2 g3 g1 ... while a group has rows."""
    from aromni.pipeline.mix.shards import interleave
    rng = random.Random(0)
    for _ in range(200):
        rs = [rng.randint(1, 5) for _ in range(rng.randint(1, 4))]
        nb = rng.randint(0, 6)
        base = [0]
        for r in rs:
            base.append(base[-1] + r * nb)
        want = [base[gi] + blk * r + i for blk in range(nb) for i in range(max(rs)) for gi, r in enumerate(rs) if i < r]
        assert interleave(base, rs, nb).tolist() == want
    assert interleave([0, 2, 3], [2, 1], 1).tolist() == [0, 2, 1]
