"""Near-duplicates: the four stages find planted copies of texts and images, keep the first in mixing order, and decide
the same whatever the split into tables or partitions."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pytest

from filter_pictures import jpeg, picture  # noqa: E402 - the shared test pictures

from aromni.pipeline.steps.filters.near_dup import (NearDupOptions, candidate_pairs, drop_table, find_near_duplicates,
                                                    hamming, image_phash, normalise_text, partition_keys,
                                                    resolve_clusters, signature_table, stable_hash)

rng = np.random.default_rng(0)
VOCAB = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(rng.integers(3, 9)))) for _ in range(3000)]


def doc(seed, n=150):
    r = np.random.default_rng(seed)
    return " ".join(VOCAB[int(i)] for i in r.integers(0, len(VOCAB), n))


def edit(text, k, seed):
    w = text.split()
    r = np.random.default_rng(seed)
    for i in r.choice(len(w), k, replace=False):
        w[i] = VOCAB[int(r.integers(len(VOCAB)))]
    return " ".join(w)


def corpus():
    rows = {f"d{i}": doc(i) for i in range(30)}
    rows["d3_copy"] = edit(rows["d3"], 2, 1)
    rows["d3_copy2"] = edit(rows["d3"], 3, 2).upper().replace(" ", "  ")  # case and spacing are normalised away
    rows["d7_copy"] = edit(rows["d7"], 1, 3)
    return rows


def tables(rows: dict, n: int):
    items = list(rows.items())
    k = -(-len(items) // n)
    return [pa.table({"id": [i for i, _ in items[s:s + k]], "text": [t for _, t in items[s:s + k]]})
            for s in range(0, len(items), k)]


def kept_of(group, seed=0):
    return min(group, key=lambda i: (stable_hash(seed, i), i))


def test_text_copies_dropped_first_in_mixing_order_kept():
    drops = find_near_duplicates(tables(corpus(), 1), 0).to_pylist()
    got = {r["id"]: r["kept_id"] for r in drops}
    want = {}
    for g in (["d3", "d3_copy", "d3_copy2"], ["d7", "d7_copy"]):
        k = kept_of(g)
        want.update({i: k for i in g if i != k})
    assert got == want
    assert {r["reason"] for r in drops} == {"near_duplicate"} and all(r["kept_id"] in r["message"] for r in drops)


@pytest.mark.parametrize("n_tables,partitions,seed", [(3, 16, 0), (7, 1, 0), (2, 5, 11)])
def test_same_decisions_for_any_split(n_tables, partitions, seed):
    rows = corpus()
    o = NearDupOptions(partitions=partitions)
    ref = find_near_duplicates(tables(rows, 1), seed)
    assert find_near_duplicates(tables(rows, n_tables), seed, o).equals(ref)
    # the mixing seed decides which copy stays
    assert {r["kept_id"] for r in ref.to_pylist() if r["id"].startswith("d3") or r["kept_id"].startswith("d3")} == {
        kept_of(["d3", "d3_copy", "d3_copy2"], seed)}


def test_unrelated_and_heavily_edited_texts_are_kept():
    rows = {f"d{i}": doc(i) for i in range(20)}
    rows["far"] = edit(rows["d1"], 60, 5)             # 40% of the words changed: not a near-duplicate
    assert find_near_duplicates(tables(rows, 2), 0).num_rows == 0


def test_char_shingles_and_explicit_bands():
    rows = {"a": "the cat sat on the mat today", "b": "the cat sat on the mat today!", "c": "completely different text"}
    o = NearDupOptions(shingle="char", ngram=3, bands=32, rows=4)
    drops = find_near_duplicates(tables(rows, 1), 0, o).to_pylist()
    assert [(r["id"], r["kept_id"]) for r in drops] == [tuple(sorted(("a", "b"), key=lambda i: (stable_hash(0, i), i)))[::-1]]


def test_image_copies_by_perceptual_hash():
    ims = {f"i{s}": picture(s) for s in range(12)}
    rows = {k: jpeg(v) for k, v in ims.items()}
    rows["i2_small"] = jpeg(ims["i2"].resize((64, 64)))
    rows["i2_q30"] = jpeg(ims["i2"], 30)
    rows["i5_crop"] = jpeg(ims["i5"].crop((2, 1, 126, 127)))
    t = [pa.table({"id": list(rows), "image": list(rows.values())})]
    got = {r["id"]: r["kept_id"] for r in find_near_duplicates(t, 0).to_pylist()}
    want = {}
    for g in (["i2", "i2_small", "i2_q30"], ["i5", "i5_crop"]):
        k = kept_of(g)
        want.update({i: k for i in g if i != k})
    assert got == want
    assert hamming(image_phash(rows["i2"]), image_phash(rows["i3"])) > 10


def test_image_threshold_is_exact_not_probabilistic():
    """Pigeonhole keys: every pair within max_hamming shares a chunk, so a candidate is never missed."""
    o = NearDupOptions(max_hamming=6, partitions=3)
    base = 0x0123456789ABCDEF
    r = np.random.default_rng(3)
    flips = [base ^ sum(1 << int(b) for b in r.choice(64, k, replace=False)) for k in (1, 3, 6, 6, 6)]
    far = base ^ sum(1 << b for b in range(0, 64, 4))   # 16 bits away
    from aromni.pipeline.steps.filters.near_dup import SIGNATURE_SCHEMA, image_chunk_keys
    hashes = [base, *flips, far]
    ids = [f"h{i}" for i in range(len(hashes))]
    sig = pa.table({"id": ids, "order": pa.array(range(len(ids)), pa.uint64()),
                    "keys": [image_chunk_keys(h, 6) for h in hashes], "image_hash": pa.array(hashes, pa.uint64())},
                   schema=SIGNATURE_SCHEMA)
    pairs = [candidate_pairs(p, 6) for p in partition_keys(sig, 3)]
    dropped = resolve_clusters(pairs)
    assert set(dropped) == {f"h{i}" for i in range(1, 6)} and set(dropped.values()) == {"h0"}


def test_union_find_keeps_the_cluster_minimum_through_chains():
    t = pa.table({"a_order": pa.array([5, 2, 9], pa.uint64()), "a_id": ["e", "b", "z"],
                  "b_order": pa.array([7, 5, 3], pa.uint64()), "b_id": ["g", "e", "c"]})
    assert resolve_clusters([t]) == {"e": "b", "g": "b", "z": "c"}
    d = drop_table({"e": "b"}).to_pylist()
    assert d == [{"id": "e", "reason": "near_duplicate", "kept_id": "b",
                  "message": "near-duplicate of b (kept: first in mixing order)"}]


def test_signature_rows_without_content_have_no_keys():
    sig = signature_table(["a", "b", "c"], 0, NearDupOptions(), texts=["some words here", None, ""])
    assert [len(k) for k in sig["keys"].to_pylist()] == [NearDupOptions().band_layout()[0], 0, 0]
    assert normalise_text("  Héllo,   WORLD!! ") == "héllo world"


@pytest.mark.parametrize("bad", [{"bands": 4}, {"bands": 20, "rows": 10}, {"ngram": 0}, {"shingles": "word"}])
def test_bad_options(bad):
    with pytest.raises(ValueError):
        NearDupOptions(**bad)


def test_fingerprint_inputs_by_group():
    from aromni.pipeline.readers.base import Example, Turn
    from aromni.pipeline.steps.filters.near_dup import fingerprint_inputs
    e = Example(key="k", text="caption", image=b"jpg")
    assert fingerprint_inputs(e, "image_text") == (None, b"jpg")
    assert fingerprint_inputs(e, "text") == ("caption", None)
    assert fingerprint_inputs(e, "speech_text") == (None, None)
    d = Example(key="d", turns=[Turn("user", "hi"), Turn("assistant", "hello")])
    assert fingerprint_inputs(d, "dialog") == ("hi\nhello", None)
