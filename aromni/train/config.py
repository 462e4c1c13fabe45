"""The training recipe (YAML, torchtune style) and its DeepSpeed JSON.

A training recipe names the model, the data, the loss policy and the run length; everything DeepSpeed does
(batch sizes, optimizer, LR schedule, ZeRO stage, precision, clipping) lives in the DeepSpeed JSON it points to, with
real numbers. Overrides go after the recipe on the command line: ``train.steps=40`` edits the recipe,
``ds.optimizer.params.lr=3e-4`` edits the DeepSpeed JSON.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from aromni.config import flatten as _flatten
from aromni.recipe import RecipeError, Strict, apply_override
from aromni.sample import LossPolicy


class ModelConfig(Strict):
    path: str = Field(description="an HF Chameleon/Anole checkpoint dir (config.json + safetensors)")
    random_init: Literal["tiny"] | None = Field(
        None, description="tiny: if `path` does not exist, write a tiny RANDOM Chameleon there first (a stand-in "
                          "for CPU runs and tests; everything trained from it says stand_in)")
    codebook: str | None = Field(
        None, description="frozen [8192, D] codebook for the perceptual loss: a Meta vqgan.ckpt, a safetensors/.pt "
                          "holding quantize.embedding.weight, or an HF Chameleon dir; default: the model's own VQ")
    swin_norm: bool | None = Field(None, description="null: as the checkpoint's config says; true/false: override "
                                                    "(post-norm on the residual branch, Chameleon's stabiliser)")
    gradient_checkpointing: bool = False


class DataConfig(Strict):
    path: str = Field(description="a build folder (manifest.json + data/), a folder or glob of parquet shards, "
                                  "one parquet file, or hf://datasets/ORG/NAME[/folder] (read through pyarrow)")
    max_len: int = Field(1300, ge=8, description="tokens per row; longer samples are split or dropped")
    pack: bool = Field(True, description="pack whole samples into rows of max_len (else one sample per row, padded)")
    long_samples: Literal["drop", "split"] = Field(
        "drop", description="samples longer than max_len: drop (AR-Omni's rule) or split at points outside "
                            "image/speech spans; either way counted in the metrics")
    shuffle: bool = Field(False, description="reorder row groups and rows within them each epoch (seeded); the "
                                             "build's shards are already mixed, so off reads them in order")
    seed: int = 0
    prefetch: int = Field(2, ge=0, description="windows prepared ahead in a background thread (0: inline)")


class PerceptualConfig(Strict):
    weight: float = Field(1.0, ge=0, description="lambda in total = NTP + lambda * perceptual (0 disables)")
    tasks: list[str] | None = Field(
        None, description="rows whose labelled image spans get the perceptual loss, by task name (chat, "
                          "text_to_image, ...; `labels`: rows imported with stored labels; `*`: every row). "
                          "null: [text_to_image] when loss.targets is all (pretraining, as AR-Omni's pretrain "
                          "trainer), [*] when it is assistant (SFT: every labelled image span, as AR-Omni's SFT trainer)")
    align: Literal["next", "same"] | None = Field(
        None, description="next: h[t-1] (the state that predicts image token t) regresses to E[code t]; "
                          "same: h[t] (AR-Omni's code). null: from loss.objective")
    head: Literal["trained", "frozen"] | None = Field(
        None, description="trained: the projection is optimised and saved with the model; frozen: a random "
                          "projection initialised like AR-Omni's nn.Linear and never updated (AR-Omni's code). "
                          "null: from loss.objective")


# What `loss.objective` sets for every piece left null. aromni's default is documented in docs/training.md: each
# upstream choice there is either a bug (the projection is never trained) or makes a token's weight depend on how
# the batch happened to be packed (per-micro-batch normalisation).
OBJECTIVES = {
    "aromni": {"align": "next", "head": "trained", "normalise": "window", "weights": "aromni"},
    "upstream": {"align": "same", "head": "frozen", "normalise": "micro_batch", "weights": "upstream"},
}


class LossConfig(Strict):
    normalise: Literal["window", "micro_batch"] | None = Field(
        None, description="window: NTP = sum(w*ce)/sum(w) over the whole optimizer step, all ranks; micro_batch: "
                          "each micro-batch's sum(w*ce)/max(sum(w),1) + lambda*its own MSE, then averaged over the "
                          "step's micro-batches (HF Trainer + AR-Omni). null: from objective")
    weights: Literal["aromni", "upstream"] | None = Field(
        None, description="aromni: aromni.sample.labels_and_weights; upstream: AR-Omni's rules (every eos target "
                          "leaves the response tail; <-Ins-> pairs with the first unused <-Res->). null: from objective")
    # (not called `on`: YAML reads an unquoted `on` key as true)
    targets: Literal["all", "assistant"] = Field("all", description="which tokens are targets: all "
                                                                     "(pretraining) or assistant segments (SFT)")
    response_weight: float = Field(2.0, gt=0)
    response_tasks: list[str] = Field(default_factory=lambda: ["image_caption", "speech_to_text"])
    transcript_weight: float = Field(1.0, gt=0, description="weight of tokens between <-Ins-> and <-Res-> (SFT)")
    perceptual: PerceptualConfig = Field(default_factory=PerceptualConfig)

    def resolve(self, objective: str) -> None:
        """Fill every piece left null from the recipe's ``objective``."""
        d = OBJECTIVES[objective]
        self.normalise = self.normalise or d["normalise"]
        self.weights = self.weights or d["weights"]
        p = self.perceptual
        p.align, p.head = p.align or d["align"], p.head or d["head"]
        if p.tasks is None:
            p.tasks = ["text_to_image"] if self.targets == "all" else ["*"]

    def policy(self) -> LossPolicy:
        return LossPolicy(on=self.targets, response_weight=self.response_weight,
                          response_tasks=tuple(self.response_tasks), transcript_weight=self.transcript_weight)


class RunConfig(Strict):
    steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (default: the "
                                                      "scheduler's total_num_steps); the schedule is not changed")
    save_every: int = Field(1000, ge=1, description="checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(3, ge=1, description="keep the newest N checkpoint tags")
    log_every: int = Field(10, ge=1)
    seed: int = 0
    resume: str = Field("auto", description="auto: continue from output_dir/checkpoints if present; never: "
                                            "refuse a non-empty output_dir; or a checkpoint folder to start from")
    save_hf: bool = Field(True, description="write an HF-format model to output_dir/final at the end")


class TrainRecipe(Strict):
    name: str
    description: str = ""
    output_dir: str = Field(description="checkpoints/, metrics.jsonl, run.json, final/")
    objective: Literal["aromni", "upstream"] = Field(
        "aromni", description="aromni (the documented default) or upstream: AR-Omni's trainer exactly (h_t "
                              "alignment, frozen projection, per-micro-batch normalisation, its weight rules); "
                              "each piece can also be set on its own under loss:")
    model: ModelConfig
    data: DataConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    train: RunConfig = Field(default_factory=RunConfig)
    deepspeed: str = Field(description="DeepSpeed JSON (real numbers, no \"auto\"); like every path of a training "
                                       "recipe, relative to the folder aromni runs in")

    @model_validator(mode="after")
    def _objective(self):
        self.loss.resolve(self.objective)
        return self

    @field_validator("deepspeed")
    @classmethod
    def _json(cls, v):
        if not v.endswith(".json"):
            raise ValueError(f"expected a DeepSpeed .json file, got {v!r}")
        return v


def _find_auto(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _find_auto(v, f"{path}.{k}" if path else k)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _find_auto(v, f"{path}[{i}]")]
    return [path] if isinstance(node, str) and node.strip().lower() == "auto" else []


def load_ds_config(path: str | Path, overrides: list[str] = ()) -> dict:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"deepspeed: {p} not found")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise RecipeError(f"deepspeed: {p} is not valid JSON ({e})") from None
    for o in overrides:
        apply_override(cfg, o)
    auto = _find_auto(cfg)
    if auto:
        raise RecipeError(f"deepspeed: {p} has \"auto\" at {auto}; write the real numbers (aromni has no HF "
                          f"Trainer to fill them in)")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise RecipeError(f"deepspeed: {p} needs a positive integer {key}")
    if cfg.get("zero_optimization", {}).get("stage", 0) > 2:
        raise RecipeError("deepspeed: ZeRO stage 3 is not supported (the loop saves the full module from rank 0); "
                          "use stage 1 or 2")
    return cfg


def for_world_size(cfg: dict, world: int) -> dict:
    """The global batch (``train_batch_size``) is part of the run's identity: it fixes which samples each step
    sees. A different world size keeps it and changes gradient accumulation instead."""
    out = copy.deepcopy(cfg)
    tb, mb = out["train_batch_size"], out["train_micro_batch_size_per_gpu"]
    if tb % (mb * world):
        raise RecipeError(f"deepspeed: train_batch_size {tb} is not divisible by micro batch {mb} x world size "
                          f"{world}; change ds.train_micro_batch_size_per_gpu or the number of processes")
    out["gradient_accumulation_steps"] = tb // (mb * world)
    return out


def total_steps(ds: dict) -> int | None:
    params = ds.get("scheduler", {}).get("params", {})
    return params.get("total_num_steps")


def resolve_path(p: str) -> Path:
    """The one rule for a training recipe's paths: relative to the current folder (where aromni runs, as paths
    typed on the command line), ``~`` expanded."""
    return Path(p).expanduser().absolute()


def check_inputs(recipe: TrainRecipe) -> None:
    """Refuse a missing data.path (or a glob that matches nothing) before DeepSpeed or any process group starts.
    URLs (hf://, s3://...) are checked when the loader opens them."""
    path = recipe.data.path
    if "://" in path:
        return
    if any(ch in path for ch in "*?["):
        import glob
        if not glob.glob(str(Path(path).expanduser())):
            raise RecipeError(f"data.path {path}: no file matches (relative to {Path.cwd()})")
        return
    if not resolve_path(path).exists():
        raise RecipeError(f"data.path {path}: not found (relative to {Path.cwd()}, where aromni runs); build the "
                          f"data first or pass data.path=FOLDER")


def load_train_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[TrainRecipe, dict]:
    """(recipe, DeepSpeed config) with ``key=value`` overrides applied; ``ds.`` keys go to the DeepSpeed JSON."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a training recipe is a YAML mapping")
    ds_over = [o.removeprefix("ds.") for o in overrides if o.startswith("ds.")]
    for o in overrides:
        if not o.startswith("ds."):
            apply_override(data, o)
    try:
        recipe = TrainRecipe(**data)
    except ValidationError as e:
        raise RecipeError(_flatten(e)) from None
    ds = load_ds_config(resolve_path(recipe.deepspeed), ds_over)
    steps = recipe.train.steps or total_steps(ds)
    if steps is None:
        raise RecipeError("train.steps: required when the DeepSpeed JSON has no scheduler.params.total_num_steps")
    recipe.train.steps = steps
    return recipe, ds
