"""The quality filters' counts everywhere (issue 16): the manifest's accounting carries each filter step's counts per
source, `aromni stats` draws one histogram per measured quantity and its counts equal the reject rows, the dataset
card has a "Filtering" section with them. The demo recipe runs audio_quality, language and decontaminate against the
stand-in evaluation sets demo-corpus writes."""
from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
from PIL import Image

from aromni.dataset.card import write_card
from aromni.dataset.stats import stats

FILTER_REASONS = {"language": "language", "decontaminate": "eval_contamination", "near_dup": "near_duplicate"}


def reject_rows(build) -> Counter:
    """(source, reason) -> reject rows, read from rejects/*.parquet (not from any counter)."""
    m = json.loads((build / "manifest.json").read_text())
    c = Counter()
    for p in m["rejects"]:
        t = pq.read_table(build / p, columns=["source", "reason"]).to_pylist()
        c.update((r["source"], r["reason"]) for r in t)
    return c


def test_manifest_step_counts_equal_the_reject_rows(build_dir):
    m = json.loads((build_dir / "manifest.json").read_text())
    rows = reject_rows(build_dir)
    assert rows[("laion", "eval_contamination")] == 2  # the stand-in COCO caption and the re-encoded COCO image
    assert rows[("gigaspeech", "eval_contamination")] == 1  # the stand-in LibriSpeech transcript
    for src, a in m["accounting"].items():
        for step, reason in FILTER_REASONS.items():
            c = a["steps"][step]
            assert c.get(f"rejected.{reason}", 0) == rows[(src, reason)], (src, step)
            assert c.get("checked", 0) == c.get("kept", 0) + sum(v for k, v in c.items() if k.startswith("rejected."))
    hits = sum(a["steps"]["decontaminate"].get(f"hits.{s}", 0) for a in m["accounting"].values()
               for s in ("librispeech", "coco_captions", "coco_images"))
    assert hits == 3


def test_stats_histograms_with_threshold_and_counts(build_dir):
    st = stats(build_dir)
    flt = st["filtering"]
    assert set(flt) == {"audio_quality", "language", "decontaminate", "near_dup"}
    assert flt["near_dup"]["rejected"] == {"near_duplicate": 1}   # the mix's decision, in the step's counts
    rows = reject_rows(build_dir)
    for step, reason in FILTER_REASONS.items():
        assert flt[step]["rejected"].get(reason, 0) == sum(n for (s, r), n in rows.items() if r == reason)
    lang = flt["language"]
    assert sum(lang["hist"]["keep_confidence"].values()) == \
        lang["total"]["checked"] - lang["total"].get("skipped.too_short", 0)
    assert lang["thresholds"]["keep_confidence"] == [0.2]
    assert flt["audio_quality"]["thresholds"]["rate"] == [2.0, 30.0]
    for q in ("clipping", "rate", "snr_db", "speech_fraction"):
        p = build_dir / "plots" / f"filter_audio_quality_{q}.png"
        assert f"plots/{p.name}" in st["plots"] and Image.open(p).size[0] > 400
    assert (build_dir / "plots" / "filter_language_keep_confidence.png").is_file()


def test_card_has_a_filtering_section(build_dir):
    path, st = write_card(build_dir, plots=True)
    text = path.read_text()
    sec = text.split("## Filtering", 1)[1].split("\n## ", 1)[0]
    for step in ("audio_quality", "language", "decontaminate", "near_dup"):
        assert f"- **{step}**" in sec
    assert "librispeech `eval/LibriSpeech`" in sec
    dec = st["filtering"]["decontaminate"]["sources"]["laion"]
    assert f"| decontaminate | laion | {dec['checked']} | {dec['kept']} | eval_contamination 2 |" in sec
