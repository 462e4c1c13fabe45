"""Evaluation sets for the demo, in the published layouts, made from the demo corpus itself — so the demo build's
``decontaminate`` step has something to remove and ``make demo`` can show it. A STAND-IN: these are not LibriSpeech
or COCO (a README.txt in the folder says so); they hold items copied from the demo's GigaSpeech and LAION sources:

    <out>/LibriSpeech/test-clean/1089/134686/1089-134686.trans.txt   one GigaSpeech transcript, LibriSpeech style
    <out>/coco/annotations/captions_val2014.json                     one LAION caption (another row's)
    <out>/coco/val2014/COCO_val2014_000000000001.jpg                 one LAION image (another row's), re-encoded
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

from aromni.pipeline.readers import READERS, Example

README = """STAND-IN evaluation sets for the aromni demo (aromni/pipeline/steps/filters/demo_eval.py): items copied from
the demo corpus into the LibriSpeech / MS-COCO layouts so the decontaminate step has something to find.
They are NOT LibriSpeech or COCO.
"""


def _examples(reader: str, path: str | Path, n: int) -> list[Example]:
    r = READERS[reader](reader, Path(path), {})
    out: list[Example] = []
    for unit in r.units():
        for item in r.read(unit):
            if isinstance(item, Example) and isinstance(item.text, str) and item.text.strip():
                out.append(item)
                if len(out) == n:
                    return out
    raise ValueError(f"{path}: fewer than {n} usable {reader} examples for the demo evaluation sets")


def write_demo_eval_sets(out: str | Path, laion_path: str | Path, gigaspeech_path: str | Path) -> dict[str, Path]:
    """Write the stand-in sets under ``out``; returns {what: path}. Which items are copied (and so rejected by the demo
    build) is printed in ``out/README.txt``."""
    from PIL import Image
    out = Path(out)
    (speech,) = _examples("gigaspeech", gigaspeech_path, 1)
    cap_row, img_row = _examples("laion", laion_path, 2)
    ls = out / "LibriSpeech" / "test-clean" / "1089" / "134686"
    ls.mkdir(parents=True, exist_ok=True)
    transcript = re.sub(r"[^A-Z' ]+", " ", speech.text.upper()).split()
    (ls / "1089-134686.trans.txt").write_text(f"1089-134686-0000 {' '.join(transcript)}\n", encoding="utf-8")
    coco = out / "coco"
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    (coco / "annotations" / "captions_val2014.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"}],
         "annotations": [{"image_id": 1, "id": 1, "caption": cap_row.text}]}), encoding="utf-8")
    (coco / "val2014").mkdir(exist_ok=True)
    im = Image.open(io.BytesIO(img_row.image)).convert("RGB")
    im.save(coco / "val2014" / "COCO_val2014_000000000001.jpg", quality=75)  # re-encoded, as a web copy would be
    (out / "README.txt").write_text(README + f"\ncopied: gigaspeech {speech.key} (transcript), laion {cap_row.key} "
                                             f"(caption), laion {img_row.key} (image)\n", encoding="utf-8")
    return {"eval: LibriSpeech test-clean (STAND-IN)": out / "LibriSpeech",
            "eval: COCO captions + val2014 (STAND-IN)": coco}
