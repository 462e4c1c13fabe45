"""The demo's stand-in evaluation sets: copied from LAION/GigaSpeech-format sources, read back by decontaminate."""
from __future__ import annotations

import pytest

from aromni.pipeline.readers import READERS, Example
from aromni.pipeline.steps import STEPS
from aromni.pipeline.steps.filters.demo_eval import write_demo_eval_sets
from aromni.pipeline.steps.media import decode_image
from aromni.pipeline.steps.text import TextError
from tests.pipeline.readers.published import write_gigaspeech_hf, write_laion


def examples(reader, path):
    r = READERS[reader](reader, path, {})
    return [x for u in r.units() for x in r.read(u) if isinstance(x, Example)]


def test_demo_eval_sets_catch_exactly_the_copied_items(tmp_path):
    laion, giga = write_laion(tmp_path) and tmp_path / "laion-aesthetics-v2-5plus", write_gigaspeech_hf(tmp_path)
    write_demo_eval_sets(tmp_path / "eval", laion, giga)
    readme = (tmp_path / "eval" / "README.txt").read_text()
    assert "NOT LibriSpeech or COCO" in readme
    step = STEPS["decontaminate"]({"cache": False, "sets": [
        {"kind": "librispeech", "path": str(tmp_path / "eval" / "LibriSpeech")},
        {"kind": "coco_captions", "path": str(tmp_path / "eval" / "coco")},
        {"kind": "coco_images", "path": str(tmp_path / "eval" / "coco")}]})
    hits = {}
    for reader, path in (("gigaspeech", giga), ("laion", laion)):
        for ex in examples(reader, path):
            ex.id = f"{reader}/{ex.key}"
            media = {"image": decode_image(ex.image)[0]} if ex.image else {}
            try:
                step.apply(ex, media, None)
            except TextError as e:
                hits[ex.key] = e.message
    copied = readme.split("copied: ")[1]
    # every copied item is caught; the LAION fixture's re-crawl duplicate of a copied row may be caught too
    for key in [w for w in copied.replace(",", " ").split() if w[0].isdigit() or w.startswith("POD")]:
        assert key in hits
    # (the fixture's LAION captions are its GigaSpeech sentences, so a caption may be caught as LibriSpeech first)
    assert 3 <= len(hits) <= 5 and any("librispeech" in m for m in hits.values())
    assert any("coco_images" in m for m in hits.values())
    assert step.index.sizes == {"librispeech": 1, "coco_captions": 1, "coco_images": 1}


def test_too_few_examples_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="fewer than 1 usable gigaspeech"):
        write_demo_eval_sets(tmp_path / "eval", tmp_path / "empty", tmp_path / "empty")
