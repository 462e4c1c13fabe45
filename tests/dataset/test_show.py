"""aromni show: rows decode back to their text, PNG and WAV, through the tokenizers the manifest names."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from aromni.dataset.decode import RowDecoder
from aromni.dataset.folder import BuildFolder, DatasetError
from aromni.dataset.show import render_row, sample_indices, write_html
from aromni.layout import AR_OMNI_V0_1 as L
from aromni.model.standin import StandInImageTokenizer, StandInSpeechTokenizer
from tests.dataset.conftest import edit_manifest


@pytest.fixture(scope="module")
def folder(build_dir):
    return BuildFolder(build_dir)


def _first(folder, task):
    for t in folder.tables(columns=["id", "task"]):
        for rid, tk in zip(t.column("id").to_pylist(), t.column("task").to_pylist()):
            if tk == task:
                return folder.find(rid)
    raise AssertionError(f"no {task} row in the demo build")


def test_row_by_index_and_by_id_agree(folder):
    last = folder.row(-1)
    index, again = folder.find(last["id"])
    assert index == folder.rows - 1 and again == last == folder.row(folder.rows - 1)
    with pytest.raises(DatasetError, match="does not exist"):
        folder.row(folder.rows)
    with pytest.raises(DatasetError, match="no row with id"):
        folder.find("nope/0")


def test_image_span_becomes_the_png_its_codes_describe(folder, tmp_path):
    index, row = _first(folder, "image_caption")
    view = render_row(folder, RowDecoder(folder), tmp_path, index=index)
    img_seg = next(s for s in view.segments if s.modality == "image")
    png = Image.open(img_seg.file)
    assert png.size == (512, 512) and img_seg.file.suffix == ".png"
    # the stand-in's decode is exact: re-encoding the written PNG gives the row's codes back
    codes = StandInImageTokenizer(L).encode([png])[0].tolist()
    assert L.image_ids(codes) == row["input_ids"][img_seg.start + 1:img_seg.end - 1]
    # the caption decodes to the text the reader saw
    answer = next(s for s in view.segments if s.role == "assistant")
    assert answer.text == json.loads(row["meta"])["caption"] + "<eos>"
    assert view.segments[0].text.startswith("<bos>USER:")
    assert any("<eoh>" in (s.text or "") for s in view.segments)


def test_speech_span_becomes_a_wav_of_the_right_length(folder, tmp_path):
    index, row = _first(folder, "speech_to_text")
    view = render_row(folder, RowDecoder(folder), tmp_path, row_id=row["id"])
    seg = next(s for s in view.segments if s.modality == "speech")
    info = sf.info(seg.file)
    n_codes = seg.end - seg.start - 2
    assert info.samplerate == 24000 and info.frames == n_codes * 600 and info.channels == 1
    wave, _ = sf.read(seg.file)
    expected, _ = StandInSpeechTokenizer(L).decode(L.speech_codes(row["input_ids"][seg.start + 1:seg.end - 1]))
    assert np.abs(wave - expected).max() < 1e-3  # PCM16 rounding only


def test_missing_text_tokenizer_is_said_and_the_rest_still_decodes(fresh_build, tmp_path):
    def lose_text(m):
        m["tokenizers"]["text"]["path"] = str(tmp_path / "gone.json")
        m["recipe"]["tokenizers"]["text"]["path"] = str(tmp_path / "gone.json")
    edit_manifest(fresh_build, lose_text)
    f = BuildFolder(fresh_build)
    index, row = _first(f, "image_caption")
    dec = RowDecoder(f)
    view = render_row(f, dec, tmp_path / "out", index=index)
    assert "tokenizer file not found" in dec.problems["text"] and "--text-tokenizer" in dec.problems["text"]
    assert view.segments[0].text.startswith("<bos>")  # markers still named, BPE ids shown raw: "[18282 16409]"
    assert re.search(r"\[\d+( \d+)*\]", view.segments[0].text)
    assert any(s.file is not None for s in view.segments if s.modality == "image")


def test_unregistered_kind_and_changed_file_are_refused_with_reasons(fresh_build, tmp_path):
    tok = BuildFolder(fresh_build).manifest["tokenizers"]["text"]["path"]
    changed = tmp_path / "tokenizer.json"
    shutil.copy(tok, changed)
    changed.write_text(changed.read_text() + "\n")  # same vocabulary, different file: sha256 differs

    def edit(m):
        m["recipe"]["tokenizers"]["image"]["kind"] = "no-such-kind"
        m["tokenizers"]["text"]["path"] = str(changed)
    edit_manifest(fresh_build, edit)
    f = BuildFolder(fresh_build)
    index, _ = _first(f, "image_caption")
    dec = RowDecoder(f)
    view = render_row(f, dec, tmp_path / "out", index=index)
    assert "not registered" in dec.problems["image"] and "standin" in dec.problems["image"]
    assert "sha256" in dec.problems["text"]
    assert [s.problem for s in view.segments if s.modality == "image"][0] == dec.problems["image"]
    # an explicit override decodes anyway, with a note
    dec2 = RowDecoder(f, {"text": changed})
    assert dec2.text([0, 2]) == "<bos><eos>" and "override" in dec2.notes["text"]


def test_html_page_covers_every_task_with_players_and_pictures(folder, tmp_path):
    idx = sample_indices(folder, 5)
    tasks = {folder.row(i)["task"] for i in idx}
    assert len(tasks) == 5 == len(set(folder.manifest["totals"]["task"]))
    assert sample_indices(folder, 5) == idx  # deterministic
    page = write_html(folder, RowDecoder(folder), tmp_path, idx)
    text = page.read_text()
    rows = [folder.row(i) for i in idx]
    n_img = sum(s["modality"] == "image" for r in rows for s in r["segments"])
    n_wav = sum(s["modality"] == "speech" for r in rows for s in r["segments"])
    srcs = re.findall(r"<(?:img|audio)[^>]* src='([^']+)'", text)
    assert text.count("<img ") == n_img > 0 and text.count("<audio ") == n_wav > 0
    assert all((tmp_path / s).is_file() for s in srcs)
    assert "&lt;bos&gt;" in text and "STAND-IN" in text  # text escaped; stand-in said
