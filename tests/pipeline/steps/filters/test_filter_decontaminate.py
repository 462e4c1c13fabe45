"""Decontamination: evaluation sets made by code in their published layouts; training texts/images that contain them
are rejected naming the set and item; missing or malformed sets are clear errors naming the key and path."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from filter_pictures import jpeg
from filter_pictures import picture as _picture

from aromni.pipeline.readers.base import Example, Turn
from aromni.pipeline.steps import STEPS
from aromni.pipeline.steps.filters.decontaminate import (DecontaminateOptions, EvalSetError, build_index,
                                                         check_eval_sets)
from aromni.pipeline.steps.text import TextError

LS_UTT = ("HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS AND BRUISED POTATOES AND FAT MUTTON PIECES "
          "TO BE LADLED OUT IN THICK PEPPERED FLOUR FATTENED SAUCE")
VCTK_SENT = "Please call Stella."
COCO_CAP = "A man riding a wave on top of a surfboard."
KARPATHY_CAP = "Two giraffes standing next to each other in a field."


def picture(seed, size=96):
    return _picture(seed, size)


@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    root = tmp_path_factory.mktemp("evals")
    ch = root / "LibriSpeech" / "test-clean" / "1089" / "134686"
    ch.mkdir(parents=True)
    (ch / "1089-134686.trans.txt").write_text(f"1089-134686-0000 {LS_UTT}\n1089-134686-0001 STUFF IT INTO YOU\n")
    other = root / "LibriSpeech" / "dev-clean" / "84" / "121123"          # not a configured subset
    other.mkdir(parents=True)
    (other / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n")
    for spk, n, text in (("p225", 1, VCTK_SENT), ("p226", 2, "Ask her to bring these things with her from the store.")):
        (root / "VCTK" / "txt" / spk).mkdir(parents=True)
        (root / "VCTK" / "txt" / spk / f"{spk}_{n:03d}.txt").write_text(text + "\n")
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "annotations" / "captions_val2014.json").write_text(json.dumps(
        {"images": [{"id": 42}], "annotations": [{"image_id": 42, "id": 7, "caption": COCO_CAP}]}))
    (root / "coco" / "dataset_coco.json").write_text(json.dumps({"images": [
        {"split": "test", "filename": "COCO_val2014_000000000042.jpg", "cocoid": 42,
         "sentences": [{"raw": KARPATHY_CAP, "sentid": 3, "tokens": []}]},
        {"split": "train", "filename": "COCO_train2014_000000000001.jpg", "cocoid": 1,
         "sentences": [{"raw": "A train caption that is allowed.", "sentid": 4, "tokens": []}]}]}))
    (root / "coco" / "val2014").mkdir()
    for s in range(3):
        picture(s).save(root / "coco" / "val2014" / f"COCO_val2014_{s:012d}.jpg", quality=95)
    (root / "mine.txt").write_text("\nthe secret benchmark question number one\n")
    (root / "mine.jsonl").write_text(json.dumps({"id": "q1", "text": "what is the capital of atlantis"}) + "\n")
    return root


def sets(root):
    return [{"kind": "librispeech", "path": str(root / "LibriSpeech")},
            {"kind": "vctk", "path": str(root / "VCTK")},
            {"kind": "coco_captions", "path": str(root / "coco")},
            {"kind": "coco_karpathy", "path": str(root / "coco"), "name": "karpathy_test"},
            {"kind": "coco_images", "path": str(root / "coco")},
            {"kind": "txt", "path": str(root / "mine.txt"), "name": "mine_txt"},
            {"kind": "jsonl", "path": str(root / "mine.jsonl"), "name": "mine_jsonl"}]


@pytest.fixture(scope="module")
def step(evals):
    return STEPS["decontaminate"]({"sets": sets(evals), "cache": False})


def ex(text=None, turns=None, key="k", source="src"):
    e = Example(key=key, text=text, turns=turns)
    e.id = f"{source}/{key}"
    return e


def test_index_reads_every_published_layout(step):
    assert step.index.sizes == {"librispeech": 2, "vctk": 2, "coco_captions": 1, "karpathy_test": 1,
                                "coco_images": 3, "mine_txt": 1, "mine_jsonl": 1}


@pytest.mark.parametrize("text,label,item", [
    # an MLS-style transcript (lower case, different segmentation) that shares 13 words with a test-clean utterance
    ("and so he hoped there would be stew for dinner turnips and carrots and bruised potatoes and fat", "librispeech",
     "1089-134686-0000"),
    ("please call stella", "vctk", "p225_001"),                        # short: full-text match, normalised
    ("A man riding a wave on top of a surfboard", "coco_captions", "caption 7 (image 42)"),
    ("two giraffes standing next to each other in a field!", "karpathy_test", "COCO_val2014_000000000042.jpg sent 3"),
    ("The secret benchmark question number one.", "mine_txt", "mine.txt:2"),
    ("What is the capital of Atlantis?", "mine_jsonl", "q1"),
])
def test_contaminated_texts_are_rejected_naming_set_and_item(step, text, label, item):
    e = ex(text)
    with pytest.raises(TextError) as err:
        step.apply(e, {}, None)
    assert err.value.reason == "eval_contamination" and label in err.value.message and repr(item) in err.value.message
    assert e.meta["eval_contamination"] == err.value.message


@pytest.mark.parametrize("text", [
    "stuff it into you and then some more",       # a short eval item inside a longer text: not a full match
    "go do you hear",                             # dev-clean is not a configured subset
    "A train caption that is allowed.",           # Karpathy train split
    "he hoped there would be stew for dinner turnips and carrots",   # 10 words of the utterance: under 13
    "A man riding a wave on top of a big surfboard.",
])
def test_clean_texts_are_kept(step, text):
    step.apply(ex(text), {}, None)


def test_dialog_turns_and_images_are_checked(evals, step):
    d = ex(turns=[Turn("user", "hi"), Turn("assistant", VCTK_SENT)])
    with pytest.raises(TextError, match=r"turns\[1\] overlaps vctk"):
        step.apply(d, {"turns": [{}, {}]}, None)
    laion = ex("a picture of something", key="laion1")
    copy = Image.open(io.BytesIO(jpeg(picture(1).resize((80, 80)), 60)))   # a LAION re-encode of a val2014 image
    with pytest.raises(TextError, match="COCO_val2014_000000000001.jpg"):
        step.apply(laion, {"image": copy}, None)
    step.apply(ex("a picture of something", key="laion2"), {"image": picture(99)}, None)
    assert step.stats["hits.vctk"] >= 1 and step.stats["hits.coco_images"] == 1


@pytest.mark.parametrize("mutate,key,needle", [
    (lambda r: None, 0, "does not exist"),
    (lambda r: (r / "coco" / "annotations" / "captions_val2014.json").write_text("{not json"), 2, "cannot read"),
    (lambda r: (r / "coco" / "dataset_coco.json").write_text('{"annotations": []}'), 3, "no 'images' list"),
    (lambda r: (r / "mine.jsonl").write_text('{"question": "x"}\n'), 6, "field 'text'"),
    (lambda r: (r / "VCTK" / "txt" / "p225" / "p225_001.txt").unlink(), 1, None),
])
def test_missing_or_malformed_sets_name_the_key_and_path(evals, tmp_path, mutate, key, needle):
    import shutil
    root = tmp_path / "e"
    shutil.copytree(evals, root)
    s = sets(root)
    if key == 0:
        s[0]["path"] = str(root / "nowhere")
    mutate(root)
    o = DecontaminateOptions(sets=s, cache=False)
    if needle is None:  # one VCTK file gone: the set still reads
        assert build_index(o).sizes["vctk"] == 1
        return
    with pytest.raises(EvalSetError) as err:
        build_index(o)
    assert f"decontaminate.sets[{key}].path" in str(err.value) and needle in str(err.value)
    assert isinstance(err.value, ValueError)


def test_empty_layout_and_check(tmp_path):
    (tmp_path / "VCTK").mkdir()
    o = DecontaminateOptions(sets=[{"kind": "vctk", "path": str(tmp_path / "VCTK")}])
    check_eval_sets(o)   # exists: the cheap check passes, reading finds nothing
    with pytest.raises(EvalSetError, match=r"sets\[0\].path: no txt/p\*/p\*_\*.txt"):
        build_index(o)


@pytest.mark.parametrize("bad", [{"sets": []}, {"sets": [{"kind": "squad", "path": "x"}]},
                                 {"sets": [{"kind": "txt", "path": "a"}, {"kind": "txt", "path": "b"}]}])
def test_bad_options(bad):
    with pytest.raises(ValueError):
        DecontaminateOptions(**bad)


def test_path_problems_for_the_recipe_check(evals, tmp_path):
    o = DecontaminateOptions(sets=[*sets(evals)[:2], {"kind": "vctk", "path": "VCTK-missing", "name": "v2"}])
    assert STEPS["decontaminate"].path_problems(o, lambda p: tmp_path / p if not str(p).startswith("/") else p,
                                                "steps[2].options") == [
        f"steps[2].options.sets[2].path: {tmp_path / 'VCTK-missing'} does not exist (evaluation set 'v2', kind vctk)"]


def test_image_hashes_are_cached_and_refreshed_when_files_change(evals, tmp_path):
    import shutil
    root = tmp_path / "e"
    shutil.copytree(evals / "coco", root / "coco")
    o = DecontaminateOptions(sets=[{"kind": "coco_images", "path": str(root / "coco")}], cache_dir=str(tmp_path / "c"))
    first = build_index(o)
    (cached,) = list((tmp_path / "c").glob("images-*.json"))
    assert len(json.loads(cached.read_text())) == 3
    assert build_index(o).image_keys == first.image_keys            # from the cache
    picture(50).save(root / "coco" / "val2014" / "COCO_val2014_000000000001.jpg", quality=95)  # a file changed
    third = build_index(o)
    assert third.image_keys != first.image_keys and len(list((tmp_path / "c").glob("images-*.json"))) == 2
    bad = root / "coco" / "val2014" / "COCO_val2014_000000000002.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(EvalSetError, match=r"sets\[0\].path: cannot read image .*000000000002.jpg"):
        build_index(o)
