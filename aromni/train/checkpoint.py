"""Where a run starts and what it saves: DeepSpeed checkpoints with the sample position in their client state.

A checkpoint stores ``consumed_samples`` (the loader's whole position) and the run's *identity* (what fixes the
sample order); resuming with a different identity is refused, since it would not continue the same run. A checkpoint
saved by N processes is converted once to DeepSpeed's universal format when the run now has a different number.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from aromni.recipe import RecipeError
from aromni.train.config import TrainRecipe
from aromni.train.distributed import barrier

STATE_FILE = "aromni_state.json"   # beside each DeepSpeed tag: readable before the engine exists


def run_identity(recipe: TrainRecipe, ds: dict, fingerprint: str) -> dict:
    """What fixes the sample order: resuming with any of it changed would not continue the same run."""
    d = recipe.data
    return {"train_batch_size": ds["train_batch_size"], "max_len": d.max_len, "pack": d.pack,
            "long_samples": d.long_samples, "shuffle": d.shuffle, "seed": d.seed, "data": fingerprint}


def find_resume(recipe: TrainRecipe, ckpt_dir: Path) -> Path | None:
    mode = recipe.train.resume
    if mode == "auto":
        return ckpt_dir if (ckpt_dir / "latest").is_file() else None
    if mode == "never":
        if (ckpt_dir / "latest").is_file():
            raise RecipeError(f"train.resume=never but {ckpt_dir} holds checkpoints; pick another output_dir")
        return None
    p = Path(mode)
    if not (p / "latest").is_file():
        raise RecipeError(f"train.resume: {p} has no DeepSpeed 'latest' file")
    return p


def to_universal(resume: Path, tag: str, rank: int) -> Path:
    """A ZeRO checkpoint saved by N processes, converted (once, by rank 0) to DeepSpeed's universal format, which
    any number of processes can load: fp32 weights and Adam moments per parameter, re-sliced on load."""
    out = resume / "universal"
    if rank == 0 and not (out / tag / "zero").is_dir():
        from argparse import Namespace

        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
        shutil.rmtree(out / tag, ignore_errors=True)
        ds_to_universal(Namespace(input_folder=str(resume / tag), output_folder=str(out / tag),
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True))
        (out / "latest_universal").write_text(tag)
    barrier()
    return out


def resume_point(recipe: TrainRecipe, ds: dict, ckpt_dir: Path, world: int, rank: int, console
                 ) -> tuple[Path | None, Path | None, dict]:
    """(checkpoint folder to resume, folder to load from, DeepSpeed config to use): a checkpoint saved by another
    number of processes loads through its universal conversion."""
    resume = find_resume(recipe, ckpt_dir)
    if resume is None:
        return None, None, ds
    tag = (resume / "latest").read_text().strip()
    saved = json.loads((resume / tag / STATE_FILE).read_text()) if (resume / tag / STATE_FILE).is_file() else {}
    if saved.get("world_size", world) == world or ds.get("zero_optimization", {}).get("stage", 0) < 1:
        return resume, resume, ds
    if rank == 0:
        console.print(f"{resume}/{tag} was saved by {saved['world_size']} process(es), this run has {world}: "
                      f"converting it to a universal checkpoint")
    load_dir = to_universal(resume, tag, rank)
    return resume, load_dir, {**ds, "checkpoint": {**ds.get("checkpoint", {}), "load_universal": True}}


def load_state(engine, load_dir: Path, identity: dict) -> dict:
    path, client = engine.load_checkpoint(str(load_dir))
    if path is None:
        raise RecipeError(f"could not load a checkpoint from {load_dir}")
    saved = client.get("identity", {})
    if saved != identity:
        diff = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
        raise RecipeError(f"{load_dir} was trained with a different sample order (checkpoint vs now: {diff}); "
                          f"resuming would not continue that run. Use a new output_dir.")
    return {k: client[k] for k in ("step", "consumed_samples", "dropped")}


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    latest = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").is_file() else None
    tags = sorted((p for p in ckpt_dir.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    for p in tags[:-keep]:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(engine, ckpt_dir: Path, state: dict, identity: dict, world: int, keep: int, rank: int) -> None:
    tag = f"step_{state['step']}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={**state, "identity": identity})
    if rank == 0:
        (ckpt_dir / tag / STATE_FILE).write_text(json.dumps({**state, "identity": identity, "world_size": world}))
        prune_checkpoints(ckpt_dir, keep)
        shutil.rmtree(ckpt_dir / "universal", ignore_errors=True)   # a converted checkpoint serves one load
    barrier()
