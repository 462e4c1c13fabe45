"""The filters as recipe steps through today's unit: MLS / Ultra-FineWeb / LAION sources in their published layouts,
LibriSpeech and COCO eval folders (made by code) whose sentences/images also occur in them, non-English documents,
clipped, silent and misaligned audio — each lands under its reason, the measurements are in meta, and
read = written + rejected per source."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr

from aromni.pipeline.readers import READERS
from aromni.pipeline.unit import process_unit
from aromni.recipe import parse_recipe
from aromni.voice.espeak import espeak_speak

SHARED = ("and the old man said that he had never seen such a storm in all the years he had lived beside the sea")
CLEAN = "the birch canoe slid on the smooth planks"
COCO_CAPTION = "A man riding a wave on top of a surfboard."


def speech(text, sr=16000):
    x, r = espeak_speak(text)
    x = soxr.resample(x, r, sr).astype(np.float32)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def flac(x, sr=16000):
    """MLS's lossless release (mls_english): a lossy codec (the opus release) smears clipped flat tops, see
    docs/quality.md."""
    b = io.BytesIO()
    sf.write(b, x, sr, format="FLAC", subtype="PCM_16")
    return b.getvalue()


def jpeg(seed, size=96, q=92):
    from PIL import Image
    r = np.random.default_rng(seed)
    acc = np.zeros((size, size, 3))
    for k in (4, 8, 16):
        acc += np.asarray(Image.fromarray(r.integers(0, 256, (k, k, 3), dtype=np.uint8)).resize((size, size),
                                                                                                Image.BICUBIC), float)
    b = io.BytesIO()
    Image.fromarray((255 * (acc - acc.min()) / (acc.max() - acc.min())).astype(np.uint8)).save(b, "JPEG", quality=q)
    return b.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    # MLS English (flac): transcripts.txt + audio/{spk}/{book}/{utt}.flac
    mls = root / "mls_english" / "train"
    s_clean, s_shared = speech(CLEAN), speech(SHARED)
    items = {"clean": (CLEAN, s_clean), "shared": (SHARED, s_shared),
             "clipped": (CLEAN, np.clip(4 * s_clean, -0.5, 0.5)),
             "silent": (CLEAN, np.concatenate([np.zeros(16000 * 12, np.float32), s_clean])),
             "misaligned": (" ".join([SHARED] * 3), s_clean)}
    lines = []
    for i, (name, (text, wave)) in enumerate(items.items()):
        utt = f"4800_10003_{i:06d}"
        lines.append(f"{utt}\t{text}")
        p = mls / "audio" / "4800" / "10003" / f"{utt}.flac"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(flac(wave))
    (mls / "transcripts.txt").write_text("\n".join(lines) + "\n")
    # Ultra-FineWeb parquet: English, German, French documents
    web = root / "Ultra-FineWeb" / "data" / "ultrafineweb_en"
    web.mkdir(parents=True)
    docs = ["He hoped there would be stew for dinner, turnips and carrots and bruised potatoes and fat mutton pieces.",
            "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann zurück in den dunklen Wald.",
            "Le renard brun rapide saute par-dessus le chien paresseux avant de retourner dans la forêt sombre.",
            "Machine learning models are trained on large datasets collected from the web, filtered for quality."]
    pq.write_table(pa.table({"content": docs, "score": [0.9] * 4}), web / "ultrafineweb-en-part-0000-of-2048.parquet")
    # LAION (img2dataset webdataset): one caption is a COCO val caption, one image is a COCO val2014 image
    laion = root / "laion"
    laion.mkdir()
    caps = ["a photo of a red kite over a field", COCO_CAPTION, "a small boat on a quiet lake"]
    imgs = [jpeg(10), jpeg(11), jpeg(12, size=128, q=70)]     # the third: a re-encoded, resized COCO image 12
    with tarfile.open(laion / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, (cap, img) in enumerate(zip(caps, imgs)):
            key = f"00000{i:04d}"
            meta = {"url": f"https://example.org/{key}.jpg", "caption": cap, "key": key, "status": "success",
                    "width": 96, "height": 96, "similarity": 0.33}
            for ext, data in ((".jpg", img), (".txt", cap.encode()), (".json", json.dumps(meta).encode())):
                ti = tarfile.TarInfo(key + ext)
                ti.size, ti.mtime = len(data), 0
                tf.addfile(ti, io.BytesIO(data))
    # evaluation sets
    ls = root / "eval" / "LibriSpeech" / "test-clean" / "1089" / "134686"
    ls.mkdir(parents=True)
    (ls / "1089-134686.trans.txt").write_text(f"1089-134686-0007 {SHARED.upper()}\n")
    (root / "eval" / "coco" / "annotations").mkdir(parents=True)
    (root / "eval" / "coco" / "annotations" / "captions_val2014.json").write_text(json.dumps(
        {"annotations": [{"image_id": 5, "id": 99, "caption": COCO_CAPTION}]}))
    (root / "eval" / "coco" / "val2014").mkdir()
    (root / "eval" / "coco" / "val2014" / "COCO_val2014_000000000012.jpg").write_bytes(jpeg(12))
    return root


pytestmark = pytest.mark.slow  # espeak + three sources through the unit, twice: ~30 s

STEPS = [
    {"name": "audio_quality", "options": {"sources": ["mls"]}},
    {"name": "language", "options": {"keep": ["en"], "sources": ["ultrafineweb"]}},
    {"name": "decontaminate", "options": {"sets": [{"kind": "librispeech", "path": "eval/LibriSpeech"},
                                                   {"kind": "coco_captions", "path": "eval/coco"},
                                                   {"kind": "coco_images", "path": "eval/coco"}],
                                          "cache_dir": "cache"}},
]
SOURCES = [("mls", "mls", "mls_english/train", ["speech_to_text"], "speech_text"),
           ("ultrafineweb", "ultrafineweb", "Ultra-FineWeb/data/ultrafineweb_en", ["text_to_text"], "text"),
           ("laion", "laion", "laion", ["image_caption"], "image_text")]


def build_units(root):
    from aromni.model import load_tokenizers
    from aromni.model.text import write_chameleon_style_bpe
    tok_path = root / "tokenizer.json"
    if not tok_path.exists():  # a STAND-IN BPE (tests only)
        write_chameleon_style_bpe([CLEAN, SHARED, COCO_CAPTION, "der die das le la"], tok_path, vocab_size=400)
    recipe = parse_recipe({"name": "q", "data_root": str(root), "steps": STEPS,
                           "tokenizers": {"text": {"path": str(tok_path), "stand_in": True},
                                          "image": {"kind": "standin"}, "speech": {"kind": "standin"}},
                           "sources": [{"name": n, "reader": r, "path": p, "tasks": t} for n, r, p, t, _ in SOURCES],
                           "filters": {"max_tokens": 100000},
                           "mixing": {"ratio": {g: 1 for *_, g in SOURCES}}})
    tok = load_tokenizers(recipe.tokenizers)
    out = {}
    for s in recipe.sources:
        for u in READERS[s.reader](s.name, recipe.resolve(s.path), s.options).units():
            r = process_unit(recipe, s, u, tok)
            o = out.setdefault(s.name, {"read": 0, "written": 0, "rejected": {}, "rows": [], "rejects": [], "steps": {}})
            o["read"] += r.stats.read
            o["written"] += r.stats.written
            for k, v in r.stats.rejected.items():
                o["rejected"][k] = o["rejected"].get(k, 0) + v
            o["rows"] += r.rows
            o["rejects"] += r.rejects
            for name, st in r.stats.steps.items():
                o["steps"].setdefault(name, {})
                for k, v in st.items():
                    o["steps"][name][k] = o["steps"][name].get(k, 0) + v
    return out


@pytest.fixture(scope="module")
def built(tree):
    return build_units(tree)


def test_each_defect_lands_under_its_reason(built):
    assert built["mls"]["rejected"] == {"clipping": 1, "eval_contamination": 1, "mostly_silence": 1, "speech_rate": 1}
    assert built["ultrafineweb"]["rejected"] == {"language": 2}
    assert built["laion"]["rejected"] == {"eval_contamination": 2}
    for s in built.values():
        assert s["read"] == s["written"] + sum(s["rejected"].values()) == len(s["rows"]) + len(s["rejects"])
    msgs = {r["id"]: r["message"] for s in built.values() for r in s["rejects"] if r["reason"] == "eval_contamination"}
    assert any("librispeech item '1089-134686-0007'" in m for m in msgs.values())
    assert any("coco_captions item 'caption 99 (image 5)'" in m for m in msgs.values())
    assert any("COCO_val2014_000000000012.jpg" in m for m in msgs.values())


def test_measurements_are_in_meta_and_stats(built):
    (mls_row,) = built["mls"]["rows"]
    q = mls_row.meta["audio_quality"]
    assert q["clipping"] == 0 and q["speech_fraction"] > 0.6 and 5 < q["rate"] < 25
    langs = [r.meta["language"] for r in built["ultrafineweb"]["rows"]]
    assert [x["lang"] for x in langs] == ["en", "en"] and min(x["confidence"] for x in langs) > 0.5
    st = built["mls"]["steps"]["audio_quality"]
    assert st["checked"] == 5 and st["kept"] == 2 and st["rejected.clipping"] == 1   # 'shared' passes audio checks
    assert built["ultrafineweb"]["steps"]["language"]["rejected.language"] == 2
    assert built["laion"]["steps"]["decontaminate"]["hits.coco_images"] == 1


def test_rerun_is_identical(tree, built):
    again = build_units(tree)
    for name, s in built.items():
        assert [r.to_row() for r in again[name]["rows"]] == [r.to_row() for r in s["rows"]]
        assert again[name]["rejects"] == s["rejects"]
