"""LAION (all three img2dataset formats + metadata filters) and JourneyDB (jsonl + image archives)."""
from __future__ import annotations

import json

import pytest

from aromni.pipeline.readers import READERS, Example, Rejected
from aromni.pipeline.readers.journeydb import strip_params
from tests.pipeline.readers.published import fixture_tree, run_source, unit_level


@pytest.fixture(scope="module")
def tree():
    return fixture_tree()


def test_laion_reads_tar_files_and_parquet_shards(tree):
    root, expect = tree
    reader = READERS["laion"]("laion", root / "laion-aesthetics-v2-5plus", {"min_aesthetic": 5.0})
    units = reader.units()
    assert [u.path.rsplit("/", 1)[-1] for u in units] == ["00000.tar", "00001", "00002.parquet"]
    r = run_source("laion", "laion-aesthetics-v2-5plus", ["image_caption", "text_to_image"], {"min_aesthetic": 5.0})
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["laion"])
    row = next(x for x in r["rows"] if x.id == "laion/000000000")
    assert row.meta["aesthetic"] == 5.6 and row.meta["url"].endswith("000000000.jpg") and row.meta["caption"]
    failed = [x for x in r["rejects"] if x["reason"] == "download_failed"]
    assert sorted(x["id"] for x in failed) == ["laion/000000009", "laion/000010009", "laion/000020009"]


@pytest.mark.parametrize("opts,reason", [({"min_similarity": 0.4}, "low_similarity"), ({"min_side": 1000}, "image_too_small"),
                                         ({"max_aspect": 1.1}, "bad_aspect"), ({"max_punsafe": 0.0}, "nsfw"),
                                         ({"max_pwatermark": 0.05}, "watermark")])
def test_laion_metadata_filters_each_count_under_their_reason(tree, opts, reason):
    root, _ = tree
    reader = READERS["laion"]("laion", root / "laion-aesthetics-v2-5plus", opts)
    items = [x for u in reader.units() for x in reader.read(u)]
    assert len(items) == 12
    got = {x.reason for x in items if isinstance(x, Rejected)}
    assert got == {reason, "download_failed", "nsfw"} and not any(isinstance(x, Example) for x in items)


def test_laion_unsure_and_missing_aesthetic(tree, tmp_path):
    from aromni.pipeline.readers.laion import LaionReader
    r = LaionReader("laion", tmp_path, {"min_aesthetic": 5.0, "drop_unsure": True})
    assert r._metadata_reject({"NSFW": "UNSURE", "aesthetic": 6}) == ("nsfw", "NSFW column says UNSURE")
    assert r._metadata_reject({"WIDTH": 10, "HEIGHT": 10})[0] == "low_aesthetic"   # no score: dropped when filtering
    assert r._metadata_reject({"aesthetic_score": 6.1}) is None


def test_journeydb_caption_else_prompt_recorded_in_meta(tree):
    root, expect = tree
    r = run_source("journeydb", "JourneyDB/data/train", ["image_caption"])
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["journeydb"])
    fields = sorted(x.meta["text_field"] for x in r["rows"])
    assert fields == ["Task2.Caption"] * 4 + ["prompt"]
    from_prompt = next(x for x in r["rows"] if x.meta["text_field"] == "prompt")
    assert from_prompt.meta["caption"] == "Glue the sheet to the dark blue background."   # --ar/--v flags stripped
    assert r["units"] == 2 and all(x.id.startswith("journeydb/00") for x in r["rows"])


def test_journeydb_options_and_annotation_archive(tree, tmp_path):
    import shutil
    import tarfile
    root, _ = tree
    src = root / "JourneyDB" / "data" / "train"
    d = tmp_path / "train"
    shutil.copytree(src / "imgs", d / "imgs")
    with tarfile.open(d / "train_anno_realease_repath.jsonl.tgz", "w:gz") as tf:   # as downloaded, not extracted
        tf.add(src / "train_anno_realease_repath.jsonl", arcname="train_anno_realease_repath.jsonl")
    reader = READERS["journeydb"]("journeydb", d, {"text": "caption"})
    assert len(reader.units()) == 2
    items = [x for u in reader.units() for x in reader.read(u)]
    assert sum(isinstance(x, Example) for x in items) == 4
    # text: caption and no Task2.Caption: the caption is missing (not an empty text)
    assert [x.reason for x in items if isinstance(x, Rejected) and x.reason != "missing_file"
            and x.reason != "missing_annotation"] == ["missing_caption"]
    assert strip_params("a cat --ar 16:9 --v 5 --q 2") == "a cat" and strip_params("a -- b") == "a -- b"
    assert json.loads((src / "train_anno_realease_repath.jsonl").read_text().splitlines()[0])["img_path"][:6] == "./000/"


def test_laion_metadata_parquet_says_what_it_is(tmp_path):
    """Issue 15.5: LAION's metadata (URL, TEXT, ...: img2dataset's input) is not a shard: the error says so and gives
    the img2dataset command, whether path names the folder or the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from aromni.io.paths import InputError
    f = tmp_path / "part-00000-laion.parquet"
    pq.write_table(pa.table({"URL": ["https://example.org/a.jpg"], "TEXT": ["a cat"], "AESTHETIC_SCORE": [6.1]}), f)
    for path in (tmp_path, f):
        with pytest.raises(InputError) as e:
            READERS["laion"]("laion", path).units()
        assert "LAION metadata" in str(e.value) and "img2dataset --url_list" in str(e.value)


def test_laion_keeps_img2dataset_status_as_the_reason(tmp_path):
    """Issue 15.6: img2dataset's failed_to_resize is its own reason, not download_failed."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tests.pipeline.readers.published import add_member, image_bytes
    import tarfile
    with tarfile.open(tmp_path / "00000.tar", "w") as tf:
        add_member(tf, "a.jpg", image_bytes(1))
        add_member(tf, "a.txt", b"a caption")
    pq.write_table(pa.Table.from_pylist([
        {"key": "a", "status": "success", "error_message": None},
        {"key": "b", "status": "failed_to_resize", "error_message": "image too small"},
        {"key": "c", "status": "failed_to_download", "error_message": "HTTP 404"}]), tmp_path / "00000.parquet")
    reader = READERS["laion"]("laion", tmp_path)
    got = {x.key: getattr(x, "reason", "ok") for u in reader.units() for x in reader.read(u)}
    assert got == {"a": "ok", "b": "failed_to_resize", "c": "download_failed"}


def test_journeydb_broken_annotation_lines_are_counted(tmp_path):
    """Issue 15.6: a line that is not JSON is bad_metadata (counted once, by the archive it names or the first one),
    not skipped silently."""
    import tarfile
    from tests.pipeline.readers.published import add_member, image_bytes, write_jsonl
    d = tmp_path / "train"
    (d / "imgs").mkdir(parents=True)
    for folder in ("000", "001"):
        with tarfile.open(d / "imgs" / f"{folder}.tgz", "w:gz") as tf:
            add_member(tf, f"{folder}/a.jpg", image_bytes(int(folder)))
    write_jsonl(d / "train_anno_realease_repath.jsonl",
                [{"img_path": f"./{f}/a.jpg", "prompt": "p", "Task2": {"Caption": "A picture."}} for f in ("000", "001")])
    with open(d / "train_anno_realease_repath.jsonl", "a") as f:
        f.write('{"img_path": "./001/b.jpg", "prompt": \n')       # broken, names archive 001
        f.write("not json at all\n")                               # broken, names nothing: the first unit's
    reader = READERS["journeydb"]("jdb", d)
    per_unit = [[getattr(x, "reason", "ok") for x in reader.read(u)] for u in reader.units()]
    assert per_unit == [["bad_metadata", "ok"], ["bad_metadata", "ok"]]
