"""Recipe errors name the key and what is allowed; overrides reach any key; the CLI exits 2 without a traceback."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aromni.cli import app
from aromni.recipe import RecipeError, apply_override, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())


def err(data, overrides=()):
    with pytest.raises(RecipeError) as e:
        parse_recipe(copy.deepcopy(data), list(overrides))
    return str(e.value)


def test_demo_recipe_loads():
    r = parse_recipe(copy.deepcopy(DEMO))
    assert [s.group for s in r.sources] == ["image_text", "speech_text", "text"]
    assert r.mixing.ratio == {"text": 1, "image_text": 1, "speech_text": 1}


@pytest.mark.parametrize("override,needle", [
    ("sources[1].reder=laion", "sources[1].reder: unknown key"),
    ("sources[1].reader=nope", "sources[1].reader: Value error"),
    ("mixing.stop=sometimes", "mixing.stop"),
    ("mixing.ratio.text=-1", "mixing.ratio"),
    ("filters.max_tokens=lots", "filters.max_tokens"),
    ("sources[0].tasks=[image_captioning]", "sources[0].tasks"),
    ("sources[2].options.min_score=high", "sources[2].options.min_score"),
    ("sources[2].options.bogus=1", "sources[2].options.bogus: unknown key"),
    ("tokenizers.image.kind=magic", "tokenizers.image"),
    ("mixing.ratio.dialog=1", "no source feeds"),
])
def test_error_names_the_key(override, needle):
    msg = err(DEMO, [override])
    assert needle.split(":")[0] in msg, msg
    if "unknown key" in needle:
        assert "unknown key" in msg


def test_unknown_reader_lists_allowed():
    msg = err(DEMO, ["sources[1].reader=nope"])
    assert "allowed" in msg and "laion" in msg


def test_overrides_parse_yaml_values():
    d = copy.deepcopy(DEMO)
    apply_override(d, "mixing.seed=7")
    apply_override(d, "sources.0.tasks=[image_caption]")
    apply_override(d, "filters.dedup=false")
    r = parse_recipe(d)
    assert r.mixing.seed == 7 and r.sources[0].tasks == ["image_caption"] and r.filters.dedup is False
    with pytest.raises(RecipeError, match="does not exist"):
        apply_override(copy.deepcopy(DEMO), "sources[9].path=x")
    with pytest.raises(RecipeError, match="key=value"):
        apply_override(copy.deepcopy(DEMO), "mixing.seed")


def test_recipe_sha_changes_with_content():
    a, b = parse_recipe(copy.deepcopy(DEMO)), parse_recipe(copy.deepcopy(DEMO), ["mixing.seed=1"])
    assert a.sha256() != b.sha256() and a.sha256() == parse_recipe(copy.deepcopy(DEMO)).sha256()


def test_cli_misspelled_key_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes" / "demo.yaml").read_text().replace("\nmixing:", "\nmixxing:"))
    res = CliRunner().invoke(app, ["build", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "mixxing" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["build", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not found" in res.output
    bad.write_text("name: [unclosed")
    res = CliRunner().invoke(app, ["build", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not valid YAML" in res.output


def test_missing_input_path_is_a_recipe_error(tmp_path):
    from aromni.pipeline.build import build
    r = load_recipe(ROOT / "recipes" / "demo.yaml", [f"data_root={tmp_path}"])
    with pytest.raises(RecipeError, match=r"sources\[0\].path"):
        build(r, tmp_path / "out", progress=False)


def _demo_with_steps(tmp_path, steps):
    import yaml
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["steps"] = steps
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("steps,needle", [
    ([{"name": "language", "options": {"sources": ["nope"]}}], r"steps[0].options.sources: unknown source"),
    ([{"name": "language"}, {"name": "decontaminate", "options": {"sets": [{"kind": "vctk", "path": "no/such"}]}}],
     "steps[1].options.sets[0].path"),
    ([{"name": "decontaminate", "options": {"sets": [{"kind": "coco_captions", "path": "bad.json"}]}}],
     "steps[0].options.sets[0].path: "),
    ([{"name": "clip_score", "options": {"path": "."}}], "steps[0].options.path"),
])
def test_filter_step_problems_exit_2_naming_the_key(tmp_path, steps, needle):
    """A filter's recipe problems (unknown source, missing or malformed eval set, a CLIP folder without config.json)
    stop `aromni build` with exit 2 before any Ray start-up, naming the recipe key."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad.json").write_text('{"images": []}')  # not a COCO captions file: no 'annotations'
    r = _demo_with_steps(tmp_path, steps)
    res = CliRunner().invoke(app, ["build", str(r), f"data_root={ROOT / 'demo_data'}", "--out", str(tmp_path / "o")])
    if "sets[0].path" in needle and "bad.json" in str(steps):
        # paths are under data_root: point it at the folder holding bad.json, sources then do not exist either
        res = CliRunner().invoke(app, ["build", str(r), f"data_root={data}", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    if "bad.json" in str(steps):
        assert "no 'annotations' list" in res.output
