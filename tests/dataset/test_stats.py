"""aromni stats: counts recomputed independently from the rows, reconciled with the manifest; plots are real PNGs."""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aromni.dataset.folder import BuildFolder
from aromni.dataset.stats import compute, stats
from tests.dataset.conftest import FILTER_PLOTS, PLOTS, edit_manifest


@pytest.fixture(scope="module")
def computed(build_dir):
    return stats(build_dir)


def _rows(folder):
    return [r for p in sorted((folder / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_counts_match_a_plain_recount_of_the_rows(build_dir, computed):
    rows = _rows(build_dir)
    assert computed["rows"] == len(rows)
    assert computed["tokens"] == sum(len(r["input_ids"]) for r in rows)
    by_task = Counter(r["task"] for r in rows)
    assert {k: v["rows"] for k, v in computed["by_task"].items()} == dict(by_task)
    mod = defaultdict(lambda: Counter())
    for r in rows:
        for s in r["segments"]:
            mod[s["modality"]][s["role"]] += s["end"] - s["start"]
    assert {k: (v["user"], v["assistant"]) for k, v in computed["by_modality"].items()} == \
           {k: (c["user"], c["assistant"]) for k, c in mod.items()}
    for task in by_task:
        n = [len(r["input_ids"]) for r in rows if r["task"] == task]
        assert computed["by_task"][task]["p0"] == min(n) and computed["by_task"][task]["p100"] == max(n)
        assert computed["by_task"][task]["p50"] in n


def test_reconciles_with_manifest_and_rejects(build_dir, computed):
    m = json.loads((build_dir / "manifest.json").read_text())
    assert computed["checks"] == []
    for key in ("task", "group", "source"):
        assert {k: (v["rows"], v["tokens"]) for k, v in computed[f"by_{key}"].items()} == \
               {k: (v["rows"], v["tokens"]) for k, v in m["totals"][key].items()}
    acc = Counter()
    for a in m["accounting"].values():
        acc.update(a["rejected"])
    assert computed["rejects"]["by_reason"] == dict(acc) and computed["rejects"]["total"] == sum(acc.values()) > 0
    assert computed["mixing"]["groups"].keys() == m["mixing"]["groups"].keys()
    json.dumps(computed)  # --json must be able to print it


def test_plots_are_readable_pngs(build_dir, computed):
    assert sorted(computed["plots"]) == sorted(PLOTS + FILTER_PLOTS)
    for p in computed["plots"]:
        img = Image.open(build_dir / p)
        assert img.format == "PNG" and img.width >= 700 and img.height >= 300
        a = np.asarray(img.convert("L"), dtype=np.float32)
        assert a.std() > 10  # something is drawn, not a blank canvas


def test_disagreement_with_manifest_is_reported(fresh_build):
    edit_manifest(fresh_build, lambda m: m.update(rows=m["rows"] + 1))
    def drop_reject(m):
        src = next(iter(m["accounting"]))
        reason = next(iter(m["accounting"][src]["rejected"]))
        m["accounting"][src]["rejected"][reason] += 1
    edit_manifest(fresh_build, drop_reject)
    st, _ = compute(BuildFolder(fresh_build))
    assert any("manifest says" in c for c in st["checks"])
    assert any("rejects/*.parquet hold" in c for c in st["checks"])


# ---- losses nobody saw (issue 15 item 8): dropped dialog turns and the voice step's counts -----------------------
@pytest.mark.slow
def test_stats_show_dropped_turns_and_voice_counts_of_a_real_build(tmp_path):
    """The instruct recipe (dialogs, espeak voice) with a chat budget small enough to drop exchanges: stats must show
    the manifest's dropped_turns and the voice step's counts summed from every unit's done.json."""
    from aromni.dataset.stats import loss_lines
    from aromni.pipeline.build import build
    from aromni.recipe import load_recipe
    from aromni.voice.demand import write_demo_noise
    from tests.pipeline.readers.published import STANDIN_TOKENIZERS, fixture_tree
    from tests.pipeline.test_recipes import ROOT

    root, _ = fixture_tree()
    noise = write_demo_noise(tmp_path / "demand", environments=("OOFFICE",), seconds=2.0)
    recipe = load_recipe(ROOT / "recipes" / "instruct.yaml", [
        f"data_root={root}", *STANDIN_TOKENIZERS, f"steps[3].options.path={noise}",
        f"steps[4].options={{backend: espeak, cache_dir: {tmp_path / 'cache'}}}", "filters.max_chat_tokens=400"])
    recipe = recipe.model_copy(update={"steps": recipe.steps[3:]})  # noise + voice: the tree has no eval sets
    out = tmp_path / "out"
    build(recipe, out, workers=1, progress=False)
    from aromni.pipeline.validate import validate
    assert validate(out).ok, validate(out).problems[:5]  # every recomputed field holds on a dialog + voice build
    m = json.loads((out / "manifest.json").read_text())
    st = stats(out, plots=False)
    lo = st["losses"]
    assert lo["dropped_turns"] == {s: a["dropped_turns"] for s, a in m["accounting"].items()}
    assert lo["dropped_turns_total"] > 0  # the small budget did drop exchanges
    want = Counter()
    for p in (out / "parts").rglob("*.done.json"):
        want.update(json.loads(p.read_text())["steps"].get("voice", {}))
    got = Counter()
    for steps in lo["steps"].values():
        got.update(steps.get("voice", {}))
    assert got == want and got["synthesised"] + got["cache_hits"] > 0
    lines = "\n".join(loss_lines(st))
    assert "dialog turns dropped to fit max_chat_tokens" in lines and "synthesised" in lines


def test_a_folder_without_parts_says_its_step_counts_are_not_shown(build_dir):
    from aromni.dataset.stats import loss_lines

    st = stats(build_dir, plots=False)  # the dataset fixtures copy builds without parts/
    assert st["losses"]["units_without_record"] == st["losses"]["units"] > 0
    assert any("not shown" in line for line in loss_lines(st))
    assert st["losses"]["dropped_turns"] == {s: 0 for s in json.loads((build_dir / "manifest.json").read_text())
                                             ["accounting"]}
