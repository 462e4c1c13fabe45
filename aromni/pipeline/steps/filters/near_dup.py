"""Near-duplicates across the whole build: MinHash-LSH over text (datasketch) and perceptual hashes of images
(imagehash), as four bounded-memory stages over Arrow tables — the layout of datatrove's MinHash dedup:

(a) ``signature_table``   per unit/part: one row per example -> its bucket keys (one per LSH band for text, one per
                          hash chunk for images) and the order key ``stable_hash(mixing seed, id)``;
(b) ``partition_keys``    per signature table: its (key, row) pairs split into ``partitions`` tables by key
    ``candidate_pairs``   per partition (all inputs' tables of that partition): rows sharing a key are candidates;
                          text: linked to the bucket's first row; images: linked when the Hamming distance of the
                          full hashes is <= ``max_hamming`` (the key only says "one chunk is equal");
(c) ``resolve_clusters``  one task over the (few) pairs: union-find; each cluster keeps its first row in mixing order,
                          the smallest ``(order, id)``, as exact dedup does;
(d) ``drop_table``        every other row of a cluster -> (id, reason ``near_duplicate``, kept id, message).

Memory: (a) and (b) hold one input table, ``candidate_pairs`` one partition (1/partitions of all keys), (c) only the
pairs. ``find_near_duplicates`` runs the stages in-process on a list of tables; a distributed driver calls the same
functions from its tasks (signature + partition per part; pairs per partition; clusters once).

Image keys are the pigeonhole split of the 64-bit pHash into ``max_hamming + 1`` chunks (two hashes within the
threshold agree exactly on at least one chunk), so no pair within the threshold is missed; text keys are LSH band
hashes, so a pair at Jaccard s is found with probability 1 - (1 - s^rows)^bands.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Iterable, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from aromni.hashing import stable_hash
from aromni.pipeline.steps.base import register_step
from aromni.pipeline.steps.filters.base import FilterOptions, FilterStep, source_of
from aromni.pipeline.steps.filters.fingerprints import (hamming, image_chunk_keys, image_phash,  # noqa: F401
                                                        normalise_text, shingles)
from aromni.registry import StrictOptions

REASON = "near_duplicate"
IMAGE_BIT = np.uint64(1)  # keys of image chunks are odd, of text bands even: one key space, never confused
SIGNATURE_SCHEMA = pa.schema([("id", pa.string()), ("order", pa.uint64()), ("keys", pa.list_(pa.uint64())),
                              ("image_hash", pa.uint64())])
KEY_SCHEMA = pa.schema([("key", pa.uint64()), ("order", pa.uint64()), ("id", pa.string()), ("image_hash", pa.uint64())])
PAIR_SCHEMA = pa.schema([("a_order", pa.uint64()), ("a_id", pa.string()),
                         ("b_order", pa.uint64()), ("b_id", pa.string())])
DROP_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("kept_id", pa.string()),
                         ("message", pa.string())])


class NearDupOptions(StrictOptions):
    text: bool = Field(True, description="compare texts (documents, captions, transcripts, dialog text)")
    image: bool = Field(True, description="compare images (perceptual hash)")
    shingle: Literal["word", "char"] = Field("word", description="n-grams of words or of characters")
    ngram: int = Field(5, ge=1, description="n-gram size (texts shorter than n are one n-gram)")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    threshold: float = Field(0.7, gt=0, lt=1, description="Jaccard similarity to catch; bands/rows are chosen for it "
                             "(datasketch's optimum) unless given")
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    normalise: list[Literal["nfkc", "lower", "punctuation", "digits", "whitespace"]] = Field(
        ["nfkc", "lower", "punctuation", "whitespace"], description="text normalisation before shingling")
    minhash_seed: int = Field(1, description="MinHash permutation seed (part of what decides; keep it fixed)")
    image_hash: Literal["phash", "dhash", "average_hash", "whash"] = "phash"
    max_hamming: int = Field(10, ge=0, le=31, description="images within this many of 64 bits are near-duplicates")
    partitions: int = Field(16, ge=1, description="key partitions of the in-process driver (find_near_duplicates); "
                            "a build sizes its key ranges from the data, like exact dedup")

    @model_validator(mode="after")
    def _bands(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then threshold chooses them)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} > num_perm {self.num_perm}")
        return self

    def band_layout(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return _optimal(self.threshold, self.num_perm)


@lru_cache(maxsize=32)
def _optimal(threshold: float, num_perm: int) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param
    b, r = _optimal_param(threshold, num_perm, 0.5, 0.5)
    return int(b), int(r)


# ---- measurement: MinHash signatures and LSH band keys ---------------------------------------------------------
def minhashes(texts: Iterable[str | None], o: NearDupOptions) -> list[np.ndarray | None]:
    """The MinHash signature (num_perm uint64 values) of each normalised text; None for an empty one."""
    from datasketch import MinHash
    sets = [shingles(normalise_text(t, o.normalise), o.ngram, o.shingle) if t else set() for t in texts]
    full = [s for s in sets if s]
    sigs = iter(MinHash.bulk([sorted(s) for s in full], num_perm=o.num_perm, seed=o.minhash_seed)) if full else iter(())
    return [next(sigs).hashvalues.astype(np.uint64) if s else None for s in sets]


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[int]:
    """One 64-bit key per band (band index included, so equal values in different bands never collide); even."""
    out = []
    for b in range(bands):
        d = hashlib.blake2b(sig[b * rows:(b + 1) * rows].tobytes(), digest_size=8, person=b"aromni-band",
                            salt=b.to_bytes(4, "little")).digest()
        out.append(int.from_bytes(d, "little") & ~1)
    return out


def fingerprint_inputs(example, group: str) -> tuple[str | None, bytes | None]:
    """What stage (a) fingerprints for one example, by mix group (docs/quality.md): text and dialog rows by their
    text (all turns), image-text rows by the image bytes (a caption like "a photo of a cat" repeats across different
    pictures), speech rows by nothing (the same sentence read by another speaker is new data)."""
    if group in ("text", "dialog"):
        if example.turns:
            return "\n".join(t.text for t in example.turns if isinstance(t.text, str)) or None, None
        return (example.text if isinstance(example.text, str) else None), None
    if group == "image_text":
        return None, example.image
    return None, None


def example_keys(text: str | None, image, o: NearDupOptions) -> tuple[list[int], int | None]:
    """Stage (a) for one example: its bucket keys (LSH bands of the text, pigeonhole chunks of the image hash) and
    its image hash (None without an image)."""
    keys: list[int] = []
    h = None
    if o.text and text:
        sig = minhashes([text], o)[0]
        if sig is not None:
            keys += band_keys(sig, *o.band_layout())
    if o.image and image is not None:
        h = image_phash(image, o.image_hash)
        keys += image_chunk_keys(h, o.max_hamming)
    return keys, h


# ---- stage (a) -----------------------------------------------------------------------------------------------------
def signature_table(ids: Sequence[str], order_seed, o: NearDupOptions, texts: Sequence[str | None] | None = None,
                    images: Sequence | None = None) -> pa.Table:
    """Stage (a): one row per example: id, order = stable_hash(order_seed, id), bucket keys, image pHash (or null).
    ``texts`` / ``images`` (PIL images or encoded bytes; None where a row has none) are aligned with ``ids``."""
    n = len(ids)
    keys: list[list[int]] = [[] for _ in range(n)]
    hashes: list[int | None] = [None] * n
    if o.text and texts is not None:
        bands, rows = o.band_layout()
        for i, sig in enumerate(minhashes(texts, o)):
            if sig is not None:
                keys[i] += band_keys(sig, bands, rows)
    if o.image and images is not None:
        for i, im in enumerate(images):
            if im is not None:
                hashes[i] = image_phash(im, o.image_hash)
                keys[i] += image_chunk_keys(hashes[i], o.max_hamming)
    return pa.table({"id": pa.array(list(ids), pa.string()),
                     "order": pa.array([stable_hash(order_seed, i) for i in ids], pa.uint64()),
                     "keys": pa.array(keys, pa.list_(pa.uint64())), "image_hash": pa.array(hashes, pa.uint64())},
                    schema=SIGNATURE_SCHEMA)


# ---- stage (b) -----------------------------------------------------------------------------------------------------
def partition_keys(sig: pa.Table, partitions: int) -> list[pa.Table]:
    """Stage (b), map side: the table's (key, order, id, image_hash) rows, split by key % partitions."""
    lengths = pc.list_value_length(sig["keys"]).fill_null(0)
    idx = np.repeat(np.arange(sig.num_rows), lengths.to_numpy(zero_copy_only=False))
    flat = pa.table({"key": pc.list_flatten(sig["keys"]), "order": sig["order"].take(idx), "id": sig["id"].take(idx),
                     "image_hash": sig["image_hash"].take(idx)}, schema=KEY_SCHEMA)
    which = (flat["key"].to_numpy(zero_copy_only=False) % np.uint64(partitions)).astype(np.int64)
    return [flat.filter(pa.array(which == p)) for p in range(partitions)]


def candidate_pairs(keys: pa.Table, max_hamming: int) -> pa.Table:
    """Stage (b), reduce side: one partition's key rows (from every input) -> candidate pairs (first, other)."""
    if keys.num_rows == 0:
        return PAIR_SCHEMA.empty_table()
    t = keys.sort_by([("key", "ascending"), ("order", "ascending"), ("id", "ascending")])
    key = t["key"].to_numpy(zero_copy_only=False)
    order = t["order"].to_numpy(zero_copy_only=False)
    ids = t["id"].to_pylist()
    hashes = t["image_hash"].to_pylist()
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    ends = np.concatenate((starts[1:], [len(key)]))
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for s, e in zip(starts.tolist(), ends.tolist()):
        if e - s < 2:
            continue
        if key[s] & IMAGE_BIT:  # images: verify every pair of the bucket by the full hash
            for i in range(s, e):
                for j in range(i + 1, e):
                    if ids[i] != ids[j] and hamming(hashes[i], hashes[j]) <= max_hamming:
                        out[(ids[i], ids[j])] = (int(order[i]), int(order[j]))
        else:  # text: the band matched; link every member to the bucket's first
            for j in range(s + 1, e):
                if ids[j] != ids[s]:
                    out[(ids[s], ids[j])] = (int(order[s]), int(order[j]))
    pairs = sorted(out.items())
    return pa.table({"a_order": pa.array([v[0] for _, v in pairs], pa.uint64()), "a_id": [k[0] for k, _ in pairs],
                     "b_order": pa.array([v[1] for _, v in pairs], pa.uint64()), "b_id": [k[1] for k, _ in pairs]},
                    schema=PAIR_SCHEMA)


# ---- stage (c) -----------------------------------------------------------------------------------------------------
def resolve_clusters(pairs: Iterable[pa.Table]) -> dict[str, str]:
    """Stage (c): union-find over all pairs; returns dropped id -> kept id (the cluster's smallest (order, id))."""
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for t in pairs:
        for ao, a, bo, b in zip(*(t[c].to_pylist() for c in ("a_order", "a_id", "b_order", "b_id"))):
            ra, rb = find((ao, a)), find((bo, b))
            if ra != rb:
                lo, hi = min(ra, rb), max(ra, rb)
                parent[hi] = lo
                parent.setdefault(lo, lo)
    return {x[1]: find(x)[1] for x in sorted(parent) if find(x) != x}


# ---- stage (d) -----------------------------------------------------------------------------------------------------
def drop_table(dropped: dict[str, str]) -> pa.Table:
    """Stage (d): the drop list, sorted by id: reason near_duplicate, naming the kept id."""
    ids = sorted(dropped)
    return pa.table({"id": ids, "reason": [REASON] * len(ids), "kept_id": [dropped[i] for i in ids],
                     "message": [f"near-duplicate of {dropped[i]} (kept: first in mixing order)" for i in ids]},
                    schema=DROP_SCHEMA)


def find_near_duplicates(tables: Sequence[pa.Table], order_seed, o: NearDupOptions | None = None,
                         text_column: str = "text", image_column: str = "image") -> pa.Table:
    """The local driver: every stage in-process over ``tables`` (Arrow tables with an ``id`` column and a text and/or
    encoded-image column). Returns the drop table. Same inputs -> same drops, whatever the table split."""
    o = o or NearDupOptions()
    parts: list[list[pa.Table]] = [[] for _ in range(o.partitions)]
    for t in tables:
        texts = t[text_column].to_pylist() if text_column in t.column_names else None
        images = t[image_column].to_pylist() if image_column in t.column_names else None
        sig = signature_table(t["id"].to_pylist(), order_seed, o, texts, images)
        for p, k in enumerate(partition_keys(sig, o.partitions)):
            parts[p].append(k)
    pairs = [candidate_pairs(pa.concat_tables(p), o.max_hamming) for p in parts if p]
    return drop_table(resolve_clusters(pairs))


# ---- the recipe step: stage (a) inside each unit ------------------------------------------------------------------
SIDECAR_SCHEMA = pa.schema([("row", pa.uint32()), ("keys", pa.list_(pa.uint64())), ("image_hash", pa.uint64())])


class NearDupStepOptions(FilterOptions, NearDupOptions):
    pass


@register_step
class NearDupStep(FilterStep):
    """``steps: [{name: near_dup, options: {...}}]``: fingerprints every row in its unit (stage (a)); the mix then
    finds the clusters across the whole build (stages (b)-(d), ``aromni.pipeline.mix.near``) and rejects every row
    but the first in mixing order as ``near_duplicate``, naming the kept id. Runs at ``rendered`` so each row that
    ``split_long`` made is fingerprinted on its own text. Never rejects here: a unit cannot see the other units."""
    name = "near_dup"
    Options = NearDupStepOptions
    stage = "rendered"
    uses_rng = False

    def __init__(self, options, recipe=None):
        super().__init__(options, recipe)
        self._groups = {s.name: s.group for s in recipe.sources} if recipe is not None else {}

    def process(self, work, rng) -> None:
        ex = work.example
        if not self.applies_to(ex):
            return
        text, image = fingerprint_inputs(ex, self._groups.get(source_of(ex), ""))
        if text is None and image is None:
            self.stats.skip("nothing_to_compare")
            return
        self.stats["checked"] += 1
        work.signature = example_keys(text, image, self.opts)
        self.stats["fingerprinted.text" if text is not None else "fingerprinted.image"] += 1
        self.stats["kept"] += 1   # for now: the build moves the mix's drops to rejected.near_duplicate


def sidecar_table(signatures: Sequence[tuple[list[int], int | None] | None]) -> pa.Table:
    """The unit's ``parts/<stem>.near_dup.parquet``: (row index in the part, keys, image hash) of each row that has
    keys (aligned with the part's rows by index)."""
    rows = [(i, k, h) for i, sig in enumerate(signatures) if sig is not None for k, h in [sig] if k]
    return pa.table({"row": pa.array([r[0] for r in rows], pa.uint32()),
                     "keys": pa.array([r[1] for r in rows], pa.list_(pa.uint64())),
                     "image_hash": pa.array([r[2] for r in rows], pa.uint64())}, schema=SIDECAR_SCHEMA)
