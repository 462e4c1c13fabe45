"""The trainer in torchtune's shape: ``setup`` (distributed, model, data, outputs), ``train`` (the loop), ``save``,
``cleanup``. Each is a function that reads alone; the loop itself is this::

    for step in range(start + 1, steps + 1):
        window = loader.next_window()                   # this rank's micro-batches for the step
        totals = all_sum(window weights, positions, micro-batches)
        for micro in window.micro:                      # gradient accumulation
            sums = micro_sums(engine, micro)            # LM + perceptual head: loss sums
            engine.backward(micro_loss(sums, totals))   # normalised as the objective says
            engine.step()                               # DeepSpeed updates at the window's end
        log; checkpoint every save_every (client_state = consumed samples)

Run it with ``aromni train RECIPE`` (one process, or under torchrun / the deepspeed launcher for several).
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aromni.model.omni import build_omni
from aromni.hashing import stable_hash
from aromni.train.checkpoint import load_state, resume_point, run_identity, save_checkpoint
from aromni.train.config import TrainRecipe, check_inputs, for_world_size
from aromni.train.distributed import all_sum, barrier, free_port as _free_port, setup_distributed  # noqa: F401
from aromni.train.loader import Loader, ShardSet
from aromni.train.loss import STATS, micro_loss, micro_sums
from aromni.train.metrics import MetricsSink


@dataclass
class TrainResult:
    steps: int                     # optimizer steps completed (in total, across resumes)
    consumed_samples: int
    output_dir: Path
    resumed_from: int              # step the run started from (0: fresh)
    history: list[dict] = field(default_factory=list)   # this process's metric records (rank 0 only)
    final_dir: Path | None = None


@dataclass
class Run:
    """Everything ``setup`` made and the loop uses."""
    recipe: TrainRecipe
    ds: dict
    rank: int
    world: int
    engine: object
    loader: Loader
    shards: ShardSet
    identity: dict
    state: dict                    # step, consumed_samples, dropped: what a checkpoint stores
    stand_in: bool
    console: object
    sink: MetricsSink | None = None

    @property
    def out(self) -> Path:
        return Path(self.recipe.output_dir)


# ---------------------------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------------------------
def setup_model(recipe: TrainRecipe, ds: dict, layout, rank: int):
    """(DeepSpeed engine, model note). Rank 0 loads (or first writes, for random_init: tiny) the model; the others
    load it after a barrier. Only parameters that require grad reach the optimizer (a frozen head does not)."""
    import deepspeed

    dtype = torch.bfloat16 if ds.get("bf16", {}).get("enabled") else (
        torch.float16 if ds.get("fp16", {}).get("enabled") else torch.float32)
    kw = dict(codebook=recipe.model.codebook, layout=layout, dtype=dtype, seed=recipe.train.seed,
              swin_norm=recipe.model.swin_norm, head=recipe.loss.perceptual.head)
    if rank == 0:
        model, note = build_omni(recipe.model.path, random_init=recipe.model.random_init, **kw)
    barrier()
    if rank != 0:
        model, note = build_omni(recipe.model.path, **kw)
    if recipe.model.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable()
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds,
                                           model_parameters=[p for p in model.parameters() if p.requires_grad])
    return engine, note


def setup_data(recipe: TrainRecipe, ds: dict, shards: ShardSet, rank: int, world: int, consumed: int,
               vocab_size: int) -> Loader:
    d, loss = recipe.data, recipe.loss
    return Loader(shards, rank=rank, world=world, micro_batch=ds["train_micro_batch_size_per_gpu"],
                  train_batch=ds["train_batch_size"], max_len=d.max_len, pack=d.pack, policy=loss.policy(),
                  perceptual_tasks=tuple(loss.perceptual.tasks), long_samples=d.long_samples, shuffle=d.shuffle,
                  seed=d.seed, consumed=consumed, vocab_size=vocab_size, prefetch=d.prefetch,
                  weight_rule=loss.weights)


def setup(recipe: TrainRecipe, ds: dict, progress: bool, console) -> Run:
    check_inputs(recipe)           # before DeepSpeed starts: a missing data.path is a recipe error (exit 2)
    rank, world, _ = setup_distributed()
    ds = for_world_size(ds, world)
    out = Path(recipe.output_dir)
    shards = ShardSet(recipe.data.path)
    identity = run_identity(recipe, ds, shards.fingerprint)
    resume, load_dir, ds = resume_point(recipe, ds, out / "checkpoints", world, rank, console)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    engine, note = setup_model(recipe, ds, shards.layout, rank)
    state = {"step": 0, "consumed_samples": 0, "dropped": {}}
    if resume is not None:
        state = load_state(engine, load_dir, identity)
    loader = setup_data(recipe, ds, shards, rank, world, state["consumed_samples"],
                        engine.module.config.vocab_size)
    run = Run(recipe, ds, rank, world, engine, loader, shards, identity, state,
              bool(shards.stand_in or note.get("stand_in")), console)
    if rank == 0:
        (out / "run.json").write_text(json.dumps({
            "stand_in": run.stand_in, "recipe": recipe.model_dump(mode="json"), "deepspeed": ds, "world_size": world,
            "data": {"path": recipe.data.path, "rows": len(shards), "fingerprint": shards.fingerprint,
                     "stand_in_tokenizers": shards.stand_in}, "model_note": note,
            "resumed_from_step": state["step"]}, indent=1, default=str))
        run.sink = MetricsSink(out, state["step"], console, progress, recipe.train.steps)
        if state["step"]:
            console.print(f"resumed {resume} at step {state['step']}, sample {state['consumed_samples']}")
    return run


# ---------------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------------
# What one step accumulates per rank (then summed over ranks): the loss sums, the modality statistics, and each
# micro-batch's own normalised terms (for the per-micro-batch objective's log).
ACC = ("ntp", "perceptual", *STATS, "ntp_micro", "perceptual_micro")


def train_window(run: Run, window) -> tuple[dict, dict]:
    """One optimizer step over this rank's micro-batches. Returns (ACC sums over all ranks, window totals)."""
    loss, engine = run.recipe.loss, run.engine
    W, P, M = all_sum([window.weight_sum, window.percept_count, window.filled], engine.device)
    totals = {"weight": W, "positions": P, "micro": M}
    acc = torch.zeros(len(ACC), dtype=torch.float64)
    for micro in window.micro:
        # the loader's compact batch (int32 ids, one byte of flags a token) widens to the model's tensors there
        sums = micro_sums(engine, micro.to(engine.device), run.shards.layout,
                          loss.perceptual.align)
        engine.backward(micro_loss(sums, totals, loss.perceptual.weight, run.world, loss.normalise),
                        scale_wrt_gas=False)
        engine.step()          # DeepSpeed applies the update at the last micro-batch of the window
        ntp, pl = sums.ntp.detach().double().cpu(), sums.perceptual.detach().double().cpu()
        acc += torch.cat([torch.stack([ntp, pl]), sums.stats.cpu(),
                          torch.stack([ntp / max(sums.weight, 1.0), pl / max(sums.positions, 1)])])
    return dict(zip(ACC, all_sum(acc.tolist(), engine.device))), totals


def step_record(run: Run, step: int, window, acc: dict, totals: dict, lr: float, secs: float, tokens: float) -> dict:
    lam, n = run.recipe.loss.perceptual.weight, len(run.shards)
    if run.recipe.loss.normalise == "window":
        ntp, pl = acc["ntp"] / max(totals["weight"], 1e-8), acc["perceptual"] / max(totals["positions"], 1)
    else:                          # the mean over the step's micro-batches, as the objective averages them
        ntp, pl = acc["ntp_micro"] / max(totals["micro"], 1), acc["perceptual_micro"] / max(totals["micro"], 1)
    grad_norm = run.engine.get_global_grad_norm()
    return {"step": step, "consumed_samples": window.end, "epoch": window.end / n, "lr": lr,
            "loss": ntp + lam * pl, "ntp": ntp, "perceptual": pl,
            **{f"ce_{m}": acc[f"ce_{m}"] / acc[f"n_{m}"] if acc[f"n_{m}"] else None for m in ("text", "image", "speech")},
            "tokens": int(tokens), "weight_sum": totals["weight"], "perceptual_positions": int(totals["positions"]),
            "grad_norm": None if grad_norm is None else float(grad_norm), "dropped": run.state["dropped"],
            "seconds": secs, "tokens_per_s": tokens / secs, **({"stand_in": True} if run.stand_in else {})}


def train(recipe: TrainRecipe, ds: dict, progress: bool = True, console=None) -> TrainResult:
    from rich.console import Console

    run = setup(recipe, ds, progress, console or Console(stderr=True))
    start, steps = run.state["step"], recipe.train.steps
    result = TrainResult(start, run.state["consumed_samples"], run.out, start)
    try:
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            torch.manual_seed(stable_hash(recipe.train.seed, step, run.rank) % 2 ** 63)  # dropout, if any: resumable
            lr = run.engine.optimizer.param_groups[0]["lr"]   # what this step's update uses
            window = run.loader.next_window()
            acc, totals = train_window(run, window)
            tokens = all_sum([window.tokens], run.engine.device)[0]
            run.state = {"step": step, "consumed_samples": window.end,
                         "dropped": dict(Counter(run.state["dropped"]) + window.dropped)}
            if run.rank == 0:
                rec = step_record(run, step, window, acc, totals, lr, time.perf_counter() - t0, tokens)
                run.sink.write(rec, show=step % recipe.train.log_every == 0 or step == steps)
                result.history.append(rec)
            result.steps, result.consumed_samples = step, window.end
            if step % recipe.train.save_every == 0 or step == steps:
                save_checkpoint(run.engine, run.out / "checkpoints", run.state, run.identity, run.world,
                                recipe.train.keep_checkpoints, run.rank)
        if run.sink is not None:
            run.sink.close()       # the progress bar ends with the last step
            run.sink = None
        if recipe.train.save_hf and run.rank == 0:
            result.final_dir = save_final(run, result)
        barrier()
    finally:
        cleanup(run)
    return result


# ---------------------------------------------------------------------------------------------------------------
# save, cleanup
# ---------------------------------------------------------------------------------------------------------------
def save_final(run: Run, result: TrainResult) -> Path:
    """output_dir/final: an HF model dir with the perceptual head and the data's text tokenizer."""
    r = run.recipe
    final = run.engine.module.save_hf(
        run.out / "final", source_dir=r.model.path,
        note={"stand_in": run.stand_in, "trained_from": r.model.path, "steps": result.steps,
              "consumed_samples": result.consumed_samples, "recipe": r.name, "data": r.data.path,
              "objective": r.objective, "perceptual_align": r.loss.perceptual.align})
    copy_data_tokenizer(r.data.path, final)
    run.console.print(f"HF model: {final}")
    return final


def copy_data_tokenizer(data_path, final_dir: Path) -> None:
    """A model dir without a text tokenizer gets the one its training data was built with (from the build's
    manifest), so `aromni infer --model final/` decodes with the vocabulary the model learned."""
    if (final_dir / "tokenizer.json").exists():
        return
    manifest = Path(str(data_path)) / "manifest.json"
    try:
        text = json.loads(manifest.read_text())["tokenizers"]["text"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    src = Path(text.get("path") or "")
    if src.is_file():
        shutil.copy2(src, final_dir / "tokenizer.json")


def cleanup(run: Run) -> None:
    run.loader.close()
    if run.sink is not None:
        run.sink.close()
        run.sink = None
