"""The streaming plumbing: byte-range units lose and repeat no line, JSON arrays are cut into units item by item,
tar members are found by path without reading the tar."""
from __future__ import annotations

import io
import json
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from aromni.pipeline.readers.files import TarIndex, array_start, array_units, iter_array, iter_lines, line_units

LINES = st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                         max_size=12), max_size=25)


@settings(max_examples=80, deadline=None)
@given(lines=LINES, unit_bytes=st.integers(1, 40), header=st.booleans(), final_newline=st.booleans())
def test_byte_range_units_cover_every_line_exactly_once(tmp_path_factory, lines, unit_bytes, header, final_newline):
    body = "\n".join((["h1\th2"] if header else []) + lines) + ("\n" if final_newline and (lines or header) else "")
    p = tmp_path_factory.mktemp("lines") / "f.txt"
    p.write_bytes(body.encode("utf-8"))
    units = line_units("s", p, unit_bytes)
    got = [raw.decode("utf-8") for u in units for _, raw in iter_lines(p, u.part, unit_bytes, skip_header=header)]
    want = body.split("\n")
    if body == "" or body.endswith("\n"):
        want = want[:-1]                       # no line after the last newline
    assert got == want[1 if header else 0:]


def test_json_array_units_and_items(tmp_path):
    items = [{"aid": f"A{i}", "text": "ü" * i + ' "quoted" ]', "segments": [[1, 2], {"x": [i]}]} for i in range(23)]
    p = tmp_path / "GigaSpeech.json"
    p.write_text(json.dumps({"dataset": "GigaSpeech", "language": "EN", "audios": items}, indent=1, ensure_ascii=False))
    units = array_units("s", p, "audios", 5)
    assert len(units) == 5
    got = [x for u in units for x in iter_array(p, u.part, 5, chunk=64)]   # tiny reads: items span read chunks
    assert got == items
    q = tmp_path / "top.json"
    q.write_text(json.dumps(items[:3]))
    assert list(iter_array(q, array_start(q))) == items[:3]


def test_tar_index_reads_members_by_path(tmp_path):
    p = tmp_path / "speech.tar"
    with tarfile.open(p, "w") as tf:
        for name, data in (("speech/chunk_00000/0001.mp3", b"abc"), ("speech/chunk_00000/0002.mp3", b"defg")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    idx = TarIndex(p)
    assert idx.read("chunk_00000/0002.mp3") == b"defg" and idx.read("speech/chunk_00000/0001.mp3") == b"abc"
    assert idx.read("chunk_00000/0003.mp3") is None
