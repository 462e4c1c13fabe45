"""Every filter in one real build: the quality corpus of test_filter_recipe (MLS, Ultra-FineWeb and LAION in their
published layouts, LibriSpeech and COCO eval folders) plus planted near-duplicates in other units — an edited copy
of a document in a second Ultra-FineWeb file, a re-encoded, resized copy of a LAION image with another caption in a
second tar. Each defect lands under its reason in the manifest and the rejects, near-duplicates name the kept row,
accounting reconciles, validate passes, and the shards do not depend on the worker count or on how the mix
partitions its keys."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aromni.pipeline.build import build
from aromni.pipeline.validate import validate
from aromni.recipe import parse_recipe
from tests.pipeline.steps.filters.test_filter_recipe import SOURCES, STEPS, jpeg, tree  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

DOC = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, trimmed the wick, polished the great "
       "lens and watched the ships pass the rocks until the morning light came over the grey water again.")
EDITED = DOC.replace("every evening", "each evening").replace("grey water", "gray water")


def resized(img: bytes) -> bytes:
    from PIL import Image
    b = io.BytesIO()
    Image.open(io.BytesIO(img)).resize((120, 120)).save(b, "JPEG", quality=60)
    return b.getvalue()


@pytest.fixture(scope="module")
def corpus(tree):  # noqa: F811 - the imported fixture
    web = tree / "Ultra-FineWeb" / "data" / "ultrafineweb_en"
    pq.write_table(pa.table({"content": [DOC, "An unrelated English sentence about gardens, rain and the spring."],
                             "score": [0.9, 0.9]}), web / "ultrafineweb-en-part-0001-of-2048.parquet")
    pq.write_table(pa.table({"content": [EDITED], "score": [0.9]}), web / "ultrafineweb-en-part-0002-of-2048.parquet")
    laion = tree / "laion"
    with tarfile.open(laion / "00001.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        key = "000010000"
        cap = "a different caption for the same picture"
        meta = {"url": f"https://example.org/{key}.jpg", "caption": cap, "key": key, "status": "success",
                "width": 120, "height": 120, "similarity": 0.33}
        for ext, data in ((".jpg", resized(jpeg(10))), (".txt", cap.encode()), (".json", json.dumps(meta).encode())):
            ti = tarfile.TarInfo(key + ext)
            ti.size, ti.mtime = len(data), 0
            tf.addfile(ti, io.BytesIO(data))
    return tree


def recipe_for(root):
    from aromni.model.text import write_chameleon_style_bpe
    tok_path = root / "tokenizer.json"
    if not tok_path.exists():  # a STAND-IN BPE (tests only)
        write_chameleon_style_bpe([DOC, "der die das le la"], tok_path, vocab_size=400)
    return parse_recipe({
        "name": "q", "data_root": str(root),
        "steps": STEPS + [{"name": "near_dup", "options": {"threshold": 0.5, "max_hamming": 10}}],
        "tokenizers": {"text": {"path": str(tok_path), "stand_in": True}, "image": {"kind": "standin"},
                       "speech": {"kind": "standin"}},
        "sources": [{"name": n, "reader": r, "path": p, "tasks": t} for n, r, p, t, _ in SOURCES],
        "filters": {"max_tokens": 100000},
        "mixing": {"ratio": {g: 1 for *_, g in SOURCES}, "stop": "all_exhausted", "shard_rows": 3}})


def outputs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.parquet"))
            if p.parts[len(out.parts)] in ("data", "rejects")}


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "out"
    rep = build(recipe_for(corpus), out, progress=False, executor="local")
    return out, rep


def test_every_defect_and_near_duplicate_lands_under_its_reason(built):
    out, rep = built
    acc = rep.manifest["accounting"]
    assert acc["ultrafineweb"]["rejected"] == {"language": 2, "near_duplicate": 1}
    assert acc["laion"]["rejected"] == {"eval_contamination": 2, "near_duplicate": 1}
    assert acc["mls"]["rejected"] == {"clipping": 1, "eval_contamination": 1, "mostly_silence": 1, "speech_rate": 1}
    rejects = {r["id"]: r for src in ("ultrafineweb", "laion")
               for r in pq.read_table(out / "rejects" / f"{src}.parquet").to_pylist()}
    near = {i: r for i, r in rejects.items() if r["reason"] == "near_duplicate"}
    assert len(near) == 2
    kept_ids = {r["message"].split("near-duplicate of ")[1].split(",")[0] for r in near.values()}
    rows = {r["id"]: r for p in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    assert kept_ids <= {i.split("@rep")[0] for i in rows}       # each names a row that is in the build
    assert not set(near) & {i.split("@rep")[0] for i in rows}   # and the dropped copy is not
    # one of each planted pair: the document and its edit, the image and its resized re-encode
    web = sorted([i for i in near if i.startswith("ultrafineweb/")] +
                 [k for k in kept_ids if k.startswith("ultrafineweb/")])
    assert len(web) == 2 and ["part-0001" in web[0], "part-0002" in web[1]] == [True, True], web
    img = sorted([i for i in near if i.startswith("laion/")] + [k for k in kept_ids if k.startswith("laion/")])
    assert img == ["laion/000000000", "laion/000010000"]


def test_accounting_reconciles_and_validate_passes(built):
    out, rep = built
    for src, a in rep.manifest["accounting"].items():
        assert a["read"] == a["written"] + sum(a["rejected"].values()), src
        n = Counter(r["reason"] for r in pq.read_table(out / "rejects" / f"{src}.parquet").to_pylist())
        assert dict(n) == a["rejected"], src
    assert validate(out).ok


def test_fingerprints_are_counted_by_the_step(built):
    out, rep = built
    st = rep.manifest["accounting"]["ultrafineweb"]["steps"]["near_dup"]
    assert st["fingerprinted.text"] == 5          # the 5 English documents that passed the language filter ...
    assert rep.manifest["accounting"]["laion"]["steps"]["near_dup"]["fingerprinted.image"] == 2  # ... the 2 images


def test_two_workers_and_any_key_partitioning_give_the_same_bytes(built, corpus, tmp_path, monkeypatch):
    out, _ = built
    ref = outputs(out)
    two = tmp_path / "two"
    build(recipe_for(corpus), two, workers=2, progress=False)
    assert outputs(two) == ref
    from aromni.pipeline import build as b
    from aromni.pipeline.mix import near, run
    monkeypatch.setattr(b, "_ray_if_running", lambda: None)   # the patches below must reach the mix's tasks
    monkeypatch.setattr(run, "RANGE_KEYS", 3)      # many key ranges, one part per index task
    monkeypatch.setattr(run, "BATCH_PARTS", 1)
    monkeypatch.setattr(near, "RANGE_KEYS", 3)
    small = tmp_path / "small"
    build(recipe_for(corpus), small, progress=False, executor="local")
    assert outputs(small) == ref
