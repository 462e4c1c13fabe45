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


def _damaged_caption_row(build, edit, out):
    """Edit the build's manifest, then decode its first image_caption row: (folder, decoder, view)."""
    edit_manifest(build, edit)
    f = BuildFolder(build)
    dec = RowDecoder(f)
    return f, dec, render_row(f, dec, out, index=_first(f, "image_caption")[0])


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
    f, dec, view = _damaged_caption_row(fresh_build, lose_text, tmp_path / "out")
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
    f, dec, view = _damaged_caption_row(fresh_build, edit, tmp_path / "out")
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


def test_real_format_checkpoints_decode_through_the_registry(fresh_build, tmp_path):
    """Chameleon VQGAN / WavTokenizer files (random weights, published layouts) named in a manifest decode through
    the same registry the build uses; an HF Chameleon dir (VQ encoder only) is refused with the reason."""
    from aromni.model import IMAGE_LOADERS, SPEECH_LOADERS
    from aromni.model.random_checkpoints import (meta_vqgan_to_hf, tiny_vqgan_config, write_meta_vqgan,
                                                 write_wavtokenizer)

    vq_dir = write_meta_vqgan(tmp_path / "vqgan", tiny_vqgan_config(64), seed=1)
    wt_dir = write_wavtokenizer(tmp_path / "wavtokenizer", seed=1)
    vq, wt = IMAGE_LOADERS["vqgan"](str(vq_dir), L, True), SPEECH_LOADERS["wavtokenizer"](str(wt_dir), L, True)

    def point_at(image_dir, image):
        def edit(m):
            m["recipe"]["tokenizers"]["image"] = {"kind": "vqgan", "path": str(image_dir), "stand_in": True}
            m["recipe"]["tokenizers"]["speech"] = {"kind": "wavtokenizer", "path": str(wt_dir), "stand_in": True}
            m["tokenizers"]["image"], m["tokenizers"]["speech"] = image.identity, wt.identity  # as a build records
        return edit

    edit_manifest(fresh_build, point_at(vq_dir, vq))
    f = BuildFolder(fresh_build)
    dec = RowDecoder(f)
    _, cap = _first(f, "image_caption")
    img = next(v for v in render_row(f, dec, tmp_path / "out", row_id=cap["id"]).segments if v.modality == "image")
    s = next(s for s in cap["segments"] if s["modality"] == "image")
    direct = vq.decode([L.image_codes(cap["input_ids"][s["start"] + 1:s["end"] - 1])])[0]
    assert np.array_equal(np.asarray(Image.open(img.file)), np.asarray(direct)) and direct.size == (64, 64)
    _, asr = _first(f, "speech_to_text")
    sp = next(v for v in render_row(f, dec, tmp_path / "out", row_id=asr["id"]).segments if v.modality == "speech")
    assert sf.info(sp.file).frames == (sp.end - sp.start - 2) * 600 and not dec.problems

    hf_dir = meta_vqgan_to_hf(vq_dir, tmp_path / "hf")
    edit_manifest(fresh_build, point_at(hf_dir, IMAGE_LOADERS["vqgan"](str(hf_dir), L, True)))
    dec = RowDecoder(BuildFolder(fresh_build))
    assert dec.tokenizer("image") is None and "can encode only" in dec.problems["image"]
