"""The training loop: one DeepSpeed engine, one loader, one window per optimizer step.

    for step in range(start, steps):
        window  = loader.next_window()                  # this rank's micro-batches for the step
        W, P    = all_reduce(window weight sum, perceptual positions)
        for micro in window:                            # gradient accumulation
            sums = engine(**micro)                      # LM + perceptual head: loss sums
            engine.backward(window_loss(sums, W, P))    # normalised by the window totals
            engine.step()                               # DeepSpeed updates at the window's end
        log, checkpoint (client_state = consumed samples)

Run it with ``aromni train RECIPE`` (one process, or under torchrun / the deepspeed launcher for several).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aromni.hashing import stable_hash
from aromni.recipe import RecipeError
from aromni.train.config import TrainRecipe, for_world_size
from aromni.train.loss import STATS, window_loss


@dataclass
class TrainResult:
    steps: int                     # optimizer steps completed (in total, across resumes)
    consumed_samples: int
    output_dir: Path
    resumed_from: int              # step the run started from (0: fresh)
    history: list[dict] = field(default_factory=list)   # this process's metric records (rank 0 only)
    final_dir: Path | None = None


# ---------------------------------------------------------------------------------------------------------------
# Distributed set-up
# ---------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank). Without a launcher this process is rank 0 of 1. CPU uses gloo; a GPU uses
    DeepSpeed's default (nccl)."""
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed
    import torch.distributed as dist
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=None if on_gpu else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if on_gpu:
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), local


def _all_sum(values: list[float], device) -> list[float]:
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _barrier() -> None:
    import torch.distributed as dist
    if dist.get_world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and metrics
# ---------------------------------------------------------------------------------------------------------------
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


STATE_FILE = "aromni_state.json"   # beside each DeepSpeed tag: readable before the engine exists


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
    _barrier()
    return out


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    latest = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").is_file() else None
    tags = sorted((p for p in ckpt_dir.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    for p in tags[:-keep]:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)


def _trim_metrics(path: Path, last_step: int) -> None:
    """A killed run may have logged steps after its last checkpoint; the resumed run logs them again."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    path.write_text("".join(ln + "\n" for ln in keep))


class MetricsSink:
    """metrics.jsonl (always), TensorBoard (when installed), and the console."""

    def __init__(self, out: Path, resumed_step: int, console, progress: bool, total: int):
        self.path = out / "metrics.jsonl"
        if resumed_step:
            _trim_metrics(self.path, resumed_step)
        elif self.path.exists():
            self.path.unlink()
        self.f = self.path.open("a")
        self.tb = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"))
        self.console = console
        self.bar = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.description}"), console=console)
            self.task = self.bar.add_task("", total=total, completed=resumed_step)
            self.bar.start()

    def write(self, rec: dict, show: bool) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec["step"])
        img = "-" if rec["ce_image"] is None else f"{rec['ce_image']:.3f}"
        text = f"loss {rec['loss']:.4f} ntp {rec['ntp']:.4f} pl {rec['perceptual']:.4f} img {img} lr {rec['lr']:.2e}"
        if self.bar is not None:
            self.bar.update(self.task, completed=rec["step"], description=text)
        elif show:
            self.console.print(f"step {rec['step']}: {text} ({rec['tokens_per_s']:.0f} tok/s)", highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.tb is not None:
            self.tb.close()
        self.f.close()


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
def _build_engine(recipe: TrainRecipe, ds: dict, layout, rank: int):
    """Rank 0 loads (or first writes, for random_init: tiny) the model; the others load it after a barrier."""
    import deepspeed

    from aromni.model.omni import build_omni

    dtype = torch.bfloat16 if ds.get("bf16", {}).get("enabled") else (
        torch.float16 if ds.get("fp16", {}).get("enabled") else torch.float32)
    kw = dict(codebook=recipe.model.codebook, layout=layout, align=recipe.loss.perceptual.align, dtype=dtype,
              seed=recipe.train.seed, swin_norm=recipe.model.swin_norm)
    if rank == 0:
        model, note = build_omni(recipe.model.path, random_init=recipe.model.random_init, **kw)
    _barrier()
    if rank != 0:
        model, note = build_omni(recipe.model.path, **kw)
    if recipe.model.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable()
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds,
                                           model_parameters=[p for p in model.parameters() if p.requires_grad])
    return engine, note


def _resume(engine, load_dir: Path, identity: dict) -> dict:
    path, client = engine.load_checkpoint(str(load_dir))
    if path is None:
        raise RecipeError(f"could not load a checkpoint from {load_dir}")
    saved = client.get("identity", {})
    if saved != identity:
        diff = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
        raise RecipeError(f"{load_dir} was trained with a different sample order (checkpoint vs now: {diff}); "
                          f"resuming would not continue that run. Use a new output_dir.")
    return {k: client[k] for k in ("step", "consumed_samples", "dropped")}


def _save(engine, ckpt_dir: Path, state: dict, identity: dict, world: int, keep: int, rank: int) -> None:
    tag = f"step_{state['step']}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={**state, "identity": identity})
    if rank == 0:
        (ckpt_dir / tag / STATE_FILE).write_text(json.dumps({**state, "identity": identity, "world_size": world}))
        prune_checkpoints(ckpt_dir, keep)
        shutil.rmtree(ckpt_dir / "universal", ignore_errors=True)   # a converted checkpoint serves one load
    _barrier()


def train_window(engine, window, lam: float, world: int) -> tuple[torch.Tensor, float, float]:
    """One optimizer step over this rank's micro-batches. Returns (summed [ntp, perceptual, *STATS] of this rank,
    window weight total W, window perceptual positions P)."""
    W, P = _all_sum([window.weight_sum, window.percept_count], engine.device)
    acc = torch.zeros(2 + len(STATS), dtype=torch.float64)
    for micro in window.micro:
        sums = engine(**{k: v.to(engine.device) for k, v in micro.items()})
        engine.backward(window_loss(sums, W, P, lam, world), scale_wrt_gas=False)
        engine.step()          # DeepSpeed applies the update at the last micro-batch of the window
        acc += torch.cat([torch.stack([sums.ntp.detach(), sums.perceptual.detach()]).double().cpu(),
                          sums.stats.cpu()])
    return acc, W, P


def train(recipe: TrainRecipe, ds: dict, progress: bool = True, console=None) -> TrainResult:
    from rich.console import Console

    from aromni.train.loader import Loader, ShardSet

    console = console or Console(stderr=True)
    rank, world, _ = setup_distributed()
    ds = for_world_size(ds, world)
    out, steps, lam = Path(recipe.output_dir), recipe.train.steps, recipe.loss.perceptual.weight
    ckpt_dir = out / "checkpoints"
    shards = ShardSet(recipe.data.path)
    identity = run_identity(recipe, ds, shards.fingerprint)

    # ---- where to start ------------------------------------------------------------------------------------
    resume = find_resume(recipe, ckpt_dir)
    load_dir = resume
    if resume is not None:
        tag = (resume / "latest").read_text().strip()
        saved = json.loads((resume / tag / STATE_FILE).read_text()) if (resume / tag / STATE_FILE).is_file() else {}
        if saved.get("world_size", world) != world and ds.get("zero_optimization", {}).get("stage", 0) >= 1:
            if rank == 0:
                console.print(f"{resume}/{tag} was saved by {saved['world_size']} process(es), this run has "
                              f"{world}: converting it to a universal checkpoint")
            load_dir = to_universal(resume, tag, rank)
            ds = {**ds, "checkpoint": {**ds.get("checkpoint", {}), "load_universal": True}}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    engine, note = _build_engine(recipe, ds, shards.layout, rank)
    state = {"step": 0, "consumed_samples": 0, "dropped": {}}
    if resume is not None:
        state = _resume(engine, load_dir, identity)
    start = state["step"]
    loader = Loader(shards, rank=rank, world=world, micro_batch=ds["train_micro_batch_size_per_gpu"],
                    train_batch=ds["train_batch_size"], max_len=recipe.data.max_len, pack=recipe.data.pack,
                    policy=recipe.loss.policy(), perceptual_tasks=tuple(recipe.loss.perceptual.tasks),
                    long_samples=recipe.data.long_samples, shuffle=recipe.data.shuffle, seed=recipe.data.seed,
                    consumed=state["consumed_samples"], vocab_size=engine.module.config.vocab_size,
                    prefetch=recipe.data.prefetch)

    # ---- outputs ----------------------------------------------------------------------------------------------
    stand_in = bool(shards.stand_in or note.get("stand_in"))
    sink = None
    if rank == 0:
        (out / "run.json").write_text(json.dumps({
            "stand_in": stand_in, "recipe": recipe.model_dump(mode="json"), "deepspeed": ds, "world_size": world,
            "data": {"path": recipe.data.path, "rows": len(shards), "fingerprint": shards.fingerprint,
                     "stand_in_tokenizers": shards.stand_in}, "model_note": note, "resumed_from_step": start},
            indent=1, default=str))
        sink = MetricsSink(out, start, console, progress, steps)
        if start:
            console.print(f"resumed {resume} at step {start}, sample {state['consumed_samples']}")
    result = TrainResult(start, state["consumed_samples"], out, start)

    # ---- the loop -----------------------------------------------------------------------------------------------
    try:
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            torch.manual_seed(stable_hash(recipe.train.seed, step, rank) % 2 ** 63)  # dropout, if any: resumable
            lr = engine.optimizer.param_groups[0]["lr"]   # what this step's update uses
            window = loader.next_window()
            acc, W, P = train_window(engine, window, lam, world)
            tot = _all_sum(acc.tolist() + [window.tokens], engine.device)
            dropped = dict(Counter(state["dropped"]) + window.dropped)
            state = {"step": step, "consumed_samples": window.end, "dropped": dropped}
            if rank == 0:
                s = dict(zip(STATS, tot[2:-1]))
                ntp, pl = tot[0] / max(W, 1e-8), tot[1] / max(P, 1)
                secs = time.perf_counter() - t0
                grad_norm = engine.get_global_grad_norm()
                rec = {"step": step, "consumed_samples": window.end, "epoch": window.end / len(shards), "lr": lr,
                       "loss": ntp + lam * pl, "ntp": ntp, "perceptual": pl,
                       **{f"ce_{m}": s[f"ce_{m}"] / s[f"n_{m}"] if s[f"n_{m}"] else None
                          for m in ("text", "image", "speech")},
                       "tokens": int(tot[-1]), "weight_sum": W, "perceptual_positions": int(P),
                       "grad_norm": None if grad_norm is None else float(grad_norm), "dropped": dropped,
                       "seconds": secs, "tokens_per_s": tot[-1] / secs, **({"stand_in": True} if stand_in else {})}
                sink.write(rec, show=step % recipe.train.log_every == 0 or step == steps)
                result.history.append(rec)
            result.steps, result.consumed_samples = step, window.end
            if step % recipe.train.save_every == 0 or step == steps:
                _save(engine, ckpt_dir, state, identity, world, recipe.train.keep_checkpoints, rank)
        if sink is not None:
            sink.close()   # the progress bar ends with the last step
            sink = None
        if recipe.train.save_hf and rank == 0:
            result.final_dir = engine.module.save_hf(
                out / "final", source_dir=recipe.model.path,
                note={"stand_in": stand_in, "trained_from": recipe.model.path, "steps": result.steps,
                      "consumed_samples": result.consumed_samples, "recipe": recipe.name, "data": recipe.data.path})
            _copy_data_tokenizer(recipe.data.path, result.final_dir)
            console.print(f"HF model: {result.final_dir}")
        _barrier()
    finally:
        loader.close()
        if sink is not None:
            sink.close()
    return result


def _copy_data_tokenizer(data_path, final_dir: Path) -> None:
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
