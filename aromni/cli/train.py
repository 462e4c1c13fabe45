"""``aromni train RECIPE [key=value ...]``: the DeepSpeed trainer on published shards."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from aromni.cli.app import app
from aromni.cli.common import BAD_USAGE, WORK_FAILED, console, fail


@app.command(context_settings={"allow_extra_args": False})
def train(
    recipe: Path = typer.Argument(..., help="a training recipe (recipes/train_tiny.yaml, train_pretrain.yaml, "
                                            "train_sft.yaml); its header comment is the launch command"),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="key=value overrides: train.steps=100 data.path=runs/demo; keys starting with ds. edit "
                   "the DeepSpeed JSON: ds.optimizer.params.lr=3e-4"),
    no_progress: bool = typer.Option(False, "--no-progress", help="log lines instead of a progress bar"),
    local_rank: Optional[int] = typer.Option(None, "--local_rank", "--local-rank", hidden=True,
                                             help="set by the deepspeed launcher; LOCAL_RANK is used"),
):
    """Train a Chameleon/Anole model on aromni shards with DeepSpeed: weighted next-token loss (image tokens
    included, unmasked) + the perceptual loss, whose head is trained and saved with the model.

    One process: `aromni train recipes/train_tiny.yaml`. Several: `torchrun --nproc_per_node N
    $(which aromni) train RECIPE` or `deepspeed --num_gpus N --module aromni.train RECIPE`. Rerunning the same
    command resumes from output_dir/checkpoints at the exact next sample (any number of processes).
    Writes output_dir/metrics.jsonl (one line per step), run.json, checkpoints/ and final/ (HF format).
    model.path may be an HF dir or a Meta-format checkpoint (converted once into the cache, see `aromni convert`).

    Example: aromni train recipes/train_tiny.yaml train.steps=20 data.path=runs/demo
    """
    from aromni.recipe import RecipeError
    from aromni.train.config import load_train_recipe
    from aromni.train.loader import DataError

    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    try:
        r, ds = load_train_recipe(recipe, overrides or [])
    except RecipeError as e:
        fail(f"{recipe}: {e}", BAD_USAGE)
    from aromni.train.loop import train as run_train
    try:
        res = run_train(r, ds, progress=not no_progress and sys.stderr.isatty(), console=console)
    except (RecipeError, DataError, FileNotFoundError) as e:
        fail(str(e), BAD_USAGE if isinstance(e, RecipeError) else WORK_FAILED)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"done: step {res.steps}, {res.consumed_samples} samples; metrics "
                      f"{res.output_dir}/metrics.jsonl, checkpoints {res.output_dir}/checkpoints"
                      + (f", HF model {res.final_dir}" if res.final_dir else ""))
