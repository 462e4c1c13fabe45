"""Training recipes: the shipped ones load, DeepSpeed JSONs carry real numbers, overrides reach both files."""
from __future__ import annotations

import json

import pytest

from aromni.recipe import RecipeError
from aromni.train.config import for_world_size, load_train_recipe

from .conftest import ROOT

RECIPES = ["train_tiny.yaml", "train_pretrain.yaml", "train_sft.yaml"]


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_load_and_start_with_their_launch_command(name):
    path = ROOT / "recipes" / name
    r, ds = load_train_recipe(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("recipes/" + name) in first and ("torchrun" in first or " train " in first)
    assert r.train.steps == ds["scheduler"]["params"]["total_num_steps"]
    assert ds["train_batch_size"] % ds["train_micro_batch_size_per_gpu"] == 0
    assert r.loss.targets == ("assistant" if "sft" in name else "all")


def test_overrides_edit_the_recipe_and_the_deepspeed_json():
    r, ds = load_train_recipe(ROOT / "recipes" / "train_tiny.yaml",
                              ["train.steps=3", "data.max_len=512", "ds.optimizer.params.lr=0.5",
                               "ds.zero_optimization.stage=1"])
    assert (r.train.steps, r.data.max_len) == (3, 512)
    assert ds["optimizer"]["params"]["lr"] == 0.5 and ds["zero_optimization"]["stage"] == 1
    with pytest.raises(RecipeError, match="data.pack"):
        load_train_recipe(ROOT / "recipes" / "train_tiny.yaml", ["data.pack=maybe"])
    with pytest.raises(RecipeError, match="unknown key"):
        load_train_recipe(ROOT / "recipes" / "train_tiny.yaml", ["loss.on=all"])


def test_deepspeed_json_without_real_numbers_is_refused(tmp_path):
    ds = json.loads((ROOT / "recipes" / "ds_tiny.json").read_text())
    ds["gradient_clipping"] = "auto"
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    text = (ROOT / "recipes" / "train_tiny.yaml").read_text().replace("deepspeed: recipes/ds_tiny.json",
                                                                        f"deepspeed: {tmp_path / 'ds.json'}")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match="gradient_clipping"):
        load_train_recipe(tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match="stage 3"):
        load_train_recipe(ROOT / "recipes" / "train_tiny.yaml", ["ds.zero_optimization.stage=3"])


def test_world_size_keeps_the_global_batch():
    _, ds = load_train_recipe(ROOT / "recipes" / "train_tiny.yaml", ["ds.train_batch_size=8"])
    assert [for_world_size(ds, w)["gradient_accumulation_steps"] for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(RecipeError, match="not divisible"):
        for_world_size(ds, 3)


def test_cli_reports_a_bad_recipe_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from aromni.cli import app
    res = CliRunner().invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "not found" in res.output
    res = CliRunner().invoke(app, ["train", str(ROOT / "recipes" / "train_tiny.yaml"), "ds.train_batch_size=auto"])
    assert res.exit_code == 2 and "auto" in res.output


def test_data_path_and_deepspeed_resolve_against_the_current_folder_and_are_checked_first(tmp_path, monkeypatch):
    """Both paths follow one rule (relative to where aromni runs, as the recipe headers say); a missing one exits 2
    naming the key before any DeepSpeed or process-group start."""
    from typer.testing import CliRunner

    from aromni.cli import app
    (tmp_path / "conf").mkdir()
    text = (ROOT / "recipes" / "train_tiny.yaml").read_text()
    (tmp_path / "conf" / "r.yaml").write_text(text.replace("deepspeed: recipes/ds_tiny.json", "deepspeed: ds.json"))
    (tmp_path / "ds.json").write_text((ROOT / "recipes" / "ds_tiny.json").read_text())   # beside the cwd, not the recipe
    monkeypatch.chdir(tmp_path)
    r, ds = load_train_recipe("conf/r.yaml")
    assert ds["train_batch_size"] == json.loads((ROOT / "recipes" / "ds_tiny.json").read_text())["train_batch_size"]
    (tmp_path / "ds.json").unlink()
    with pytest.raises(RecipeError, match="deepspeed: .*ds.json not found"):
        load_train_recipe("conf/r.yaml")
    (tmp_path / "ds.json").write_text((ROOT / "recipes" / "ds_tiny.json").read_text())
    import aromni.train.loop as loop

    def started():
        raise AssertionError("the process group started before the inputs were checked")
    monkeypatch.setattr(loop, "setup_distributed", started)
    res = CliRunner().invoke(app, ["train", "conf/r.yaml", "data.path=nowhere/demo", "--no-progress"])
    assert res.exit_code == 2 and "data.path nowhere/demo: not found" in " ".join(res.output.split())
