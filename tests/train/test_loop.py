"""The trainer end to end on CPU (DeepSpeed ZeRO-2, gloo): on the session's demo build with a tiny random Chameleon.

One 24-step reference run is shared by the tests; the others continue from its checkpoints and must retrace it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aromni.model.omni import HEAD_FILE, build_omni
from aromni.recipe import RecipeError
from aromni.train.config import load_train_recipe

from .conftest import ROOT, TINY_RECIPE, tiny_overrides

KEYS = ("loss", "ntp", "perceptual", "consumed_samples", "tokens", "weight_sum", "perceptual_positions")


def run(shards_dir, tiny_lm, out, *extra):
    from aromni.train.loop import train
    r, ds = load_train_recipe(TINY_RECIPE, tiny_overrides(shards_dir, tiny_lm, out, *extra))
    return train(r, ds, progress=False)


def metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def module_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]


@pytest.fixture(scope="module")
def reference(shards_dir, tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    head0 = build_omni(tiny_lm, seed=0)[0].perceptual_head.weight.detach().clone()
    return out, run(shards_dir, tiny_lm, out), head0


def test_loss_falls_and_every_term_is_finite(reference):
    out, res, _ = reference
    h = res.history
    assert [r["step"] for r in h] == list(range(1, 25)) and res.steps == 24
    first, last = sum(r["ntp"] for r in h[:6]) / 6, sum(r["ntp"] for r in h[-6:]) / 6
    assert last < first - 0.5, (first, last)                                     # ~9.9 -> ~8.7 on the demo
    img = [r["ce_image"] for r in h if r["ce_image"] is not None]
    assert len(img) >= 6 and all(math.isfinite(x) and x < 20 for x in img)       # image tokens: trained, finite
    pl = [r["perceptual"] for r in h if r["perceptual_positions"]]
    assert len(pl) >= 3 and all(math.isfinite(x) and x > 0 for x in pl)
    assert pl[-1] < 0.5 * pl[0]                                                  # the head learns its regression
    assert all(r["stand_in"] for r in h)                                         # tiny model + stand-in tokenizers
    assert h[-1]["consumed_samples"] == res.consumed_samples > 72                # into the second epoch


def test_outputs_checkpoints_and_an_hf_model_with_the_trained_head(reference, shards_dir):
    from transformers import ChameleonForConditionalGeneration
    out, res, head0 = reference
    assert metrics(out) == [json.loads(json.dumps(r)) for r in res.history]
    assert json.loads((out / "run.json").read_text())["stand_in"] is True
    tags = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert tags == [f"step_{k}" for k in (12, 16, 20, 24, 4, 8)] and (out / "checkpoints/latest").read_text() == "step_24"
    state = json.loads((out / "checkpoints/step_12/aromni_state.json").read_text())
    assert state["consumed_samples"] == res.history[11]["consumed_samples"] and state["world_size"] == 1

    final = res.final_dir
    model = ChameleonForConditionalGeneration.from_pretrained(str(final))
    ckpt = module_state(out / "checkpoints/step_24")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt[f"lm.{k}"]), k
    head = load_file(str(final / HEAD_FILE))["weight"]
    assert torch.equal(head, ckpt["perceptual_head.weight"])                     # saved in the checkpoint ...
    assert not torch.allclose(head, head0, atol=1e-4)                            # ... and actually trained
    assert not torch.equal(module_state(out / "checkpoints/step_4")["perceptual_head.weight"], head)
    assert json.loads((final / "aromni_model.json").read_text())["stand_in"] is True
    # the data's text tokenizer travels with the model, so `aromni infer --model final/` works as is
    text_tok = json.loads((shards_dir / "manifest.json").read_text())["tokenizers"]["text"]["path"]
    assert (final / "tokenizer.json").read_bytes() == Path(text_tok).read_bytes()


def test_resume_retraces_the_uninterrupted_run_exactly(reference, shards_dir, tiny_lm, tmp_path):
    out, res, _ = reference
    (tmp_path / "checkpoints").mkdir()
    shutil.copytree(out / "checkpoints/step_12", tmp_path / "checkpoints/step_12")   # as if killed after step 12
    (tmp_path / "checkpoints/latest").write_text("step_12")
    again = run(shards_dir, tiny_lm, tmp_path, "train.steps=18")
    assert again.resumed_from == 12 and again.steps == 18
    for a, b in zip(res.history[12:18], again.history):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}              # bit for bit
    with pytest.raises(RecipeError, match="max_len"):                           # a different sample order: refused
        run(shards_dir, tiny_lm, tmp_path, "data.max_len=1090")


@pytest.mark.slow
def test_two_process_zero2_killed_then_resumed_on_one_process(reference, shards_dir, tiny_lm, tmp_path):
    """torchrun x2 through the CLI; SIGKILL after its step-8 checkpoint; resume in this single process. Every step
    sees the samples the one-process reference saw, so losses agree to float rounding."""
    from aromni.train.loop import _free_port
    out, res, _ = reference
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "aromni.train", str(TINY_RECIPE),
           *tiny_overrides(shards_dir, tiny_lm, tmp_path, "train.steps=12", "train.save_hf=false"), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    latest = tmp_path / "checkpoints" / "latest"
    deadline = time.time() + 900
    while proc.poll() is None and time.time() < deadline:
        if latest.is_file() and latest.read_text().strip() in ("step_8", "step_12"):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    log = proc.communicate()[0]
    assert latest.is_file(), log[-3000:]
    killed_at = int(latest.read_text().strip().split("_")[1])
    two = metrics(tmp_path)
    assert json.loads((tmp_path / f"checkpoints/step_{killed_at}/aromni_state.json").read_text())["world_size"] == 2
    for a, b in zip(res.history, two):
        assert a["consumed_samples"] == b["consumed_samples"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)

    resumed = run(shards_dir, tiny_lm, tmp_path, "train.steps=16")            # world size 1 now
    assert resumed.resumed_from == killed_at
    assert [r["step"] for r in metrics(tmp_path)] == list(range(1, 17))        # steps after the kill logged once
    for a, b in zip(res.history[killed_at:16], resumed.history):
        assert a["consumed_samples"] == b["consumed_samples"]                  # the right sample, every step
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
