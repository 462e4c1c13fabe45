"""Issue 15.1: a path that a metadata column names must resolve inside the source's tree, else the item is rejected
``bad_path`` and nothing outside the tree is read (Common Voice path, AnyInstruct speech/image and its tar's own
members, JourneyDB img_path, GigaSpeech path, MLS ids)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from aromni.pipeline.readers import READERS, Example, Rejected
from tests.pipeline.readers.published import (add_member, audio_bytes, image_bytes, tone, write_common_voice,
                                              write_gigaspeech_original, write_jsonl, write_mls)

SECRET = b"SECRET-OUTSIDE-THE-TREE"


def _items(reader):
    return [x for u in reader.units() for x in reader.read(u)]


def _outside(tmp_path: Path) -> Path:
    """A readable audio file outside every source tree: reading it would make it a training row."""
    p = tmp_path / "outside" / "x.mp3"
    p.parent.mkdir(parents=True)
    p.write_bytes(audio_bytes(tone(0.9, 16000, 1), 16000, "MP3"))
    return p


def test_common_voice_path_column_cannot_leave_the_release(tmp_path):
    outside = _outside(tmp_path)
    write_common_voice(tmp_path / "cv")
    lang = tmp_path / "cv" / "cv-corpus-20.0-2024-12-06" / "en"
    tsv = lang / "validated.tsv"
    lines = tsv.read_text().splitlines()
    cols = lines[0].split("\t")
    for evil in ("../../../../outside/x.mp3", str(outside)):
        cells = lines[1].split("\t")
        cells[cols.index("path")] = evil
        lines.append("\t".join(cells))
    tsv.write_text("\n".join(lines) + "\n")
    items = _items(READERS["common_voice"]("cv", lang))
    bad = [x for x in items if isinstance(x, Rejected) and x.reason == "bad_path"]
    assert len(bad) == 2 and all("leaves" in x.message for x in bad)
    assert not any(isinstance(x, Example) and x.meta["path"].endswith("x.mp3") for x in items)
    assert len(items) == 8  # 6 lines + 2 evil ones, each counted once


def test_mls_ids_cannot_name_files_elsewhere(tmp_path):
    write_mls(tmp_path)
    split = tmp_path / "mls_english_opus" / "train"
    (tmp_path / "mls_english_opus" / "x").mkdir()
    (tmp_path / "mls_english_opus" / "x" / "x_y_z.opus").write_bytes(audio_bytes(tone(1.0, 16000, 2), 16000, "OGG"))
    with open(split / "transcripts.txt", "a") as f:
        f.write("../../x_y_z\tescape\n..__z\tup one\n")
    items = _items(READERS["mls"]("mls", split))
    assert sorted(x.reason for x in items if isinstance(x, Rejected)) == ["bad_path", "bad_path", "missing_audio"]


def test_gigaspeech_recording_path_cannot_leave_the_release(tmp_path):
    outside = tmp_path / "outside.opus"
    outside.write_bytes(audio_bytes(tone(3.2, 16000, 0), 16000, "OGG"))
    write_gigaspeech_original(tmp_path)
    meta = tmp_path / "GigaSpeech" / "GigaSpeech.json"
    doc = json.loads(meta.read_text())
    doc["audios"][0]["path"] = "../outside.opus"
    doc["audios"][1]["path"] = str(outside)
    meta.write_text(json.dumps(doc))
    items = _items(READERS["gigaspeech"]("gs", tmp_path / "GigaSpeech"))
    reasons = [x.reason for x in items if isinstance(x, Rejected)]
    assert reasons.count("bad_path") == 6  # both recordings: 3 segments each
    assert not any(isinstance(x, Example) for x in items if x.key.startswith(("POD", "YOU")))


def test_anyinstruct_names_and_tar_members_cannot_escape(tmp_path):
    conv = tmp_path / "AnyInstruct" / "speech_conv"
    conv.mkdir(parents=True)
    clip = audio_bytes(tone(0.7, 16000, 1), 16000, "MP3")
    with tarfile.open(conv / "speech.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        add_member(tf, "speech/chunk_00000/0000.mp3", clip)
        add_member(tf, "../evil.mp3", SECRET)          # parent-relative member
        add_member(tf, "/etc/evil2.mp3", SECRET)        # absolute member; its short alias is "etc/evil2.mp3"
        add_member(tf, "x/../../evil3.mp3", SECRET)     # short alias "../evil3.mp3"
    ok = {"role": "AnyGPT", "message": "hi", "speech": "chunk_00000/0000.mp3"}
    records = [{"id": n, "chat": [{"role": "USER", "message": "q", "speech": name}, ok]}
               for n, name in enumerate(["../evil.mp3", "/etc/evil2.mp3", "etc/evil2.mp3", "../evil3.mp3",
                                         "chunk_00000/0000.mp3"])]
    write_jsonl(conv / "metadata.jsonl", records)
    items = _items(READERS["anyinstruct"]("ai", tmp_path / "AnyInstruct"))
    assert [x.reason if isinstance(x, Rejected) else "ok" for x in items] == ["bad_path"] * 4 + ["ok"]
    assert not any(SECRET in (t.audio or b"") for x in items if isinstance(x, Example) for t in x.turns)


def test_journeydb_img_path_cannot_leave_the_archive(tmp_path):
    d = tmp_path / "train"
    (d / "imgs").mkdir(parents=True)
    with tarfile.open(d / "imgs" / "000.tgz", "w:gz") as tf:
        add_member(tf, "000/a.jpg", image_bytes(1))
        add_member(tf, "000/../../b.jpg", image_bytes(2))   # member escaping the archive
    lines = [{"img_path": "./000/a.jpg", "prompt": "a picture", "Task2": {"Caption": "A picture."}},
             {"img_path": "./000/../../etc/passwd.jpg", "prompt": "evil", "Task2": {"Caption": "Evil."}}]
    write_jsonl(d / "train_anno_realease_repath.jsonl", lines)
    items = _items(READERS["journeydb"]("jdb", d))
    assert sorted(x.reason for x in items if isinstance(x, Rejected)) == ["bad_path", "bad_path"]
    assert [x.key for x in items if isinstance(x, Example)] == ["000/a.jpg"]
