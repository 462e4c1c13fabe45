"""The build recipe: YAML, safe-loaded within limits (aromni.config), validated by pydantic, with ``key=value``
overrides.

Errors come out as ``RecipeError`` with one message naming the key path (``sources[1].reader``) and what is allowed;
the CLI prints it and exits 2. Relative paths in ``sources[].path`` and ``tokenizers.*.path`` are resolved against
``data_root`` (itself relative to the current directory), so a user edits one line to point a recipe at their data.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aromni import config
from aromni.io import paths
from aromni.model import IMAGE_LOADERS, SPEECH_LOADERS
from aromni.pipeline.pool_sizing import CPUS_PER_ACTOR, PooledActors
from aromni.pipeline.readers import READERS
from aromni.pipeline.steps import STEPS
from aromni.tasks import get_task, task_names, tasks_needing


RecipeError = config.ConfigError  # a recipe that cannot be used; the message names the key and what is allowed


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextTokenizerConfig(Strict):
    kind: Literal["bpe"] = "bpe"
    path: str = Field(description="Chameleon tokenizer.json / text_tokenizer.json, or a model dir holding one")
    stand_in: bool = Field(False, description="set true when this file is not the released Chameleon tokenizer")


class ModelTokenizerConfig(Strict):
    kind: str = Field(description="standin, or a checkpoint format (vqgan, wavtokenizer, ...)")
    path: str | None = None
    stand_in: bool = False
    batch_size: int = Field(8, ge=1)
    actors: PooledActors = Field(1, description="Ray actors in the tokenizer pool; auto: one per GPU (num_gpus > 0), "
                                                "else one per cpus_per_actor CPUs of the cluster")
    cpus_per_actor: float = Field(CPUS_PER_ACTOR, gt=0, description="actors: auto without GPUs: one per this many CPUs")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32", description="encode numerics: fp32 (reference codes), tf32 (CUDA only; = fp32 on CPU), bf16 (autocast)")


class TokenizersConfig(Strict):
    text: TextTokenizerConfig
    image: ModelTokenizerConfig | None = None
    speech: ModelTokenizerConfig | None = None

    @field_validator("image")
    @classmethod
    def _image_kind(cls, v):
        if v is not None and v.kind not in IMAGE_LOADERS:
            raise ValueError(f"unknown image tokenizer kind {v.kind!r}; allowed: {sorted(IMAGE_LOADERS)}")
        return v

    @field_validator("speech")
    @classmethod
    def _speech_kind(cls, v):
        if v is not None and v.kind not in SPEECH_LOADERS:
            raise ValueError(f"unknown speech tokenizer kind {v.kind!r}; allowed: {sorted(SPEECH_LOADERS)}")
        return v


class SourceConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="unique; prefixes every row id")
    reader: str = Field(description="a registered reader (see `aromni readers`)")
    path: str = Field(description="file, folder or glob, relative to data_root")
    tasks: list[str] = Field(min_length=1, description="each example becomes one row of one of these tasks")
    group: str | None = Field(None, description="mixing group; default: the tasks' group")
    max_units: int | None = Field(None, ge=1, description="use only the first N units (files / row groups): trial runs")
    instruction: str | None = Field(None, description="override the task's default instruction")
    chat_instruction: Literal["fixed", "by_reply"] = Field(
        "fixed", description="chat: the instruction after the user's speech; fixed: the task's one (upstream's "
                             "default); by_reply: the one for the reply's modality (text / speech / image), as in "
                             "upstream's examples (the task table's `instructions`)")
    allow_empty: bool = Field(False, description="a source that yields no rows is an error unless this is true")
    options: dict[str, Any] = Field(default_factory=dict, description="reader options (see `aromni readers`)")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        bad = [t for t in v if t not in task_names()]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; allowed: {task_names()}")
        return v

    @field_validator("reader")
    @classmethod
    def _reader(cls, v):
        if v not in READERS:
            raise ValueError(f"unknown reader {v!r}; allowed: {sorted(READERS)}")
        return v

    @model_validator(mode="after")
    def _group_and_options(self):
        if self.group is None:
            groups = {get_task(t).group for t in self.tasks}
            if len(groups) != 1:
                raise ValueError(f"tasks {self.tasks} span groups {sorted(groups)}: set `group`")
            self.group = groups.pop()
        try:
            READERS[self.reader].Options(**self.options)
        except ValidationError as e:
            raise ValueError(_nested(e, "options")) from None
        carries = getattr(READERS[self.reader], "carries", None)  # what the reader's examples hold
        if carries is not None:
            cannot = [t for t in self.tasks if not get_task(t).carries <= set(carries)]
            if cannot:
                need = sorted(set().union(*(get_task(t).carries for t in cannot)) - set(carries))
                raise ValueError(f"{NESTED}tasks: reader {self.reader} cannot serve task(s) {cannot}: they need "
                                 f"{need}, its examples carry {sorted(carries)}")
        return self


class StepConfig(Strict):
    name: str = Field(description="a registered step (noise, voice, ...)")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self):
        if self.name not in STEPS:
            raise ValueError(f"unknown step {self.name!r}; allowed: {sorted(STEPS)}")
        try:
            STEPS[self.name].Options(**self.options)
        except ValidationError as e:
            raise ValueError(_nested(e, "options")) from None
        return self


class FiltersConfig(Strict):
    min_tokens: int = Field(1, ge=1, description="rows shorter than this are rejected (too_short)")
    max_tokens: int = Field(1300, ge=2, description="rows longer than this are rejected (too_long); AR-Omni: < 1300")
    max_chat_tokens: int = Field(3456, ge=2, description="chat rows: whole trailing turns are dropped to fit (counted "
                                                         "as dropped_turns); a first exchange over it: too_long. "
                                                         "AR-Omni SFT: 3456")
    min_text_chars: int = Field(1, ge=0, description="captions/transcripts/documents shorter than this: empty_text")
    max_text_chars: int = Field(20000, ge=1, description="documents longer than this are cut at a word boundary")
    split_long: Literal["drop", "paragraphs"] = Field(
        "drop", description="text_to_text rows over max_tokens: drop (the paper's rule: too_long) or paragraphs (one "
                            "row per run of paragraphs within max_tokens, ids <key>#k; docs/pipeline.md)")
    min_audio_seconds: float = Field(0.2, ge=0, description="shorter clips: audio_too_short")
    max_audio_seconds: float = Field(30.0, gt=0, description="longer clips: audio_too_long")
    min_image_side: int = Field(32, ge=1, description="images with a smaller side: image_too_small")
    dedup: bool = Field(True, description="drop exact duplicate content (text + media bytes) across the whole build: "
                                          "the first in hash(seed, id) order is kept, the others are rejects "
                                          "(duplicate)")
    length_rule: Literal["aromni", "upstream"] = Field(
        "aromni", description="aromni: keep min_tokens <= length <= max_tokens; upstream: keep 0 < length < max_tokens "
                              "(AR-Omni's pretrain.py keeps 0 < len(discrete_code) < 1300, the whole row)")
    max_consecutive_failures: int = Field(100, ge=1, description="circuit breaker: stop a unit after this many")


class MixingConfig(Strict):
    ratio: dict[str, int] = Field(default_factory=lambda: {"text": 1, "image_text": 1, "speech_text": 1},
                                  description="rows of each group per block; positive integers")
    stop: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"
    seed: int = 0
    shard_rows: int | None = Field(None, ge=1, description="rows per shard (rounded to whole ratio blocks)")
    shard_tokens: int | None = Field(None, ge=1, description="tokens per shard, alternative to shard_rows")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v):
        if not v:
            raise ValueError("needs at least one group")
        bad = {k: r for k, r in v.items() if r < 1}
        if bad:
            raise ValueError(f"ratios must be positive integers, got {bad}")
        return v

    @model_validator(mode="after")
    def _size(self):
        if self.shard_rows and self.shard_tokens:
            raise ValueError("set shard_rows or shard_tokens, not both")
        if not self.shard_rows and not self.shard_tokens:
            self.shard_rows = 10000
        return self


class OutputConfig(Strict):
    row_group_rows: int = Field(512, ge=1)
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    compression_level: int = Field(3, ge=1, le=22)


class Recipe(Strict):
    name: str
    description: str = ""
    seed: int = Field(0, description="seeds every per-example random choice (task, noise, ...)")
    data_root: str = Field(".", description="relative source/tokenizer paths are resolved against this")
    tokenizers: TokenizersConfig
    sources: list[SourceConfig] = Field(min_length=1)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    steps: list[StepConfig] = Field(default_factory=list, description="per-example steps after decoding, in order")
    mixing: MixingConfig = Field(default_factory=MixingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("data_root")
    @classmethod
    def _root(cls, v):
        if "\x00" in v:
            raise ValueError("contains a NUL byte")
        try:
            Path(v).expanduser()
        except RuntimeError as e:  # ~user that does not exist
            raise ValueError(f"{v!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _cross_checks(self):
        names = [s.name for s in self.sources]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ValueError(f"sources[{i}].name: {n!r} is already the name of sources[{names.index(n)}]; "
                                 f"source names must be unique (they prefix every row id)")
        for kind in ("image", "speech"):  # else every example would be rejected at tokenize time
            needs = tasks_needing(kind)
            users = [(i, s) for i, s in enumerate(self.sources) if set(s.tasks) & needs]
            if users and getattr(self.tokenizers, kind) is None:
                i, s = users[0]
                raise ValueError(f"tokenizers.{kind} is missing, but sources[{i}] ({s.name}) has {kind} tasks "
                                 f"{sorted(set(s.tasks) & needs)}; add tokenizers.{kind} (kind: standin for a trial)")
        groups = {s.group for s in self.sources}
        missing = sorted(set(self.mixing.ratio) - groups)
        if missing:
            raise ValueError(f"mixing.ratio names group(s) {missing} that no source feeds (sources feed {sorted(groups)})")
        near = [i for i, st in enumerate(self.steps) if st.name == "near_dup"]
        if len(near) > 1:  # one build-wide clustering: two would each keep "the first" of different clusters
            raise ValueError(f"steps[{near[1]}]: near_dup appears twice (steps[{near[0]}] too); give it once, with "
                             f"sources: to limit it")
        unmixed = sorted(groups - set(self.mixing.ratio))
        if unmixed:
            raise ValueError(f"source group(s) {unmixed} have no mixing.ratio entry")
        return self

    # ---- derived -----------------------------------------------------------------------------------------
    def resolve(self, p: str | None) -> Path | str | None:
        if p is None:
            return None
        if paths.is_url(p) or paths.is_url(self.data_root):  # s3://, gs://, hf://: a string, never a Path
            r = paths.resolve(p, self.data_root)
            return r if paths.is_url(r) else Path(r)
        q = Path(p)
        try:
            q = q.expanduser()
        except RuntimeError:  # ~user that does not exist: left as written, check_paths reports it
            pass
        return q if q.is_absolute() else Path(self.data_root).expanduser() / q

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


# -------------------------------------------------------------------------------------------------------------
# Loading, overrides, error messages: the YAML side lives in aromni.config (limits, overrides, flatten)
# -------------------------------------------------------------------------------------------------------------
_loc = config.loc
_flatten = config.flatten     # kept for callers of the old private names
_nested = config.nested
NESTED = config.NESTED
apply_override = config.apply_override
UniqueKeyLoader = config.UniqueKeyLoader


def parse_recipe(data: Any, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"recipe must be a YAML mapping at the top level, got {type(data).__name__}")
    config.apply_overrides(data, overrides)
    try:
        recipe = Recipe(**data)
    except ValidationError as e:
        raise RecipeError(config.flatten(e)) from None
    except TypeError as e:  # e.g. a key that is not a string
        raise RecipeError(f"recipe has a malformed key: {e}") from None
    except RecursionError:  # check_tree bounds the depth first; never a traceback
        raise RecipeError("recipe nested too deeply") from None
    _refuse_system_paths(recipe)
    return recipe


def _refuse_system_paths(recipe: Recipe) -> None:
    """``data_root: /`` with ``path: .`` would plan every file of the machine: refuse / and system folders."""
    named = [("data_root", recipe.data_root)]
    for i, s in enumerate(recipe.sources):
        try:
            named.append((f"sources[{i}].path", recipe.resolve(s.path)))
        except paths.BadURL:
            continue   # check_paths names the key and the bad scheme

    problems = [f"{k}: {v} {why}; point it at the corpus folder" for k, v in named
                if (why := config.system_path_problem(v))]
    if problems:
        raise RecipeError("; ".join(problems))


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    return parse_recipe(config.load_yaml(path), overrides)


def check_paths(recipe: Recipe) -> None:
    """Input paths must exist before a build starts (a typo should not cost a Ray start-up)."""
    problems = []
    try:
        paths.check_url(recipe.data_root)
    except paths.BadURL as e:
        raise RecipeError(f"data_root: {e}") from None
    for i, s in enumerate(recipe.sources):
        try:
            p = recipe.resolve(s.path)
        except paths.BadURL as e:
            problems.append(f"sources[{i}].path: {e}")
            continue
        if paths.is_url(p):  # existence on an object store is checked when planning lists it (exit 1 naming it)
            continue
        if not any(ch in str(p) for ch in "*?[") and not p.exists():
            problems.append(f"sources[{i}].path: {p} does not exist")
    for kind in ("text", "image", "speech"):
        t = getattr(recipe.tokenizers, kind)
        if t is not None and t.path is not None and paths.scheme(t.path) not in ("",) + paths.SCHEMES:
            problems.append(f"tokenizers.{kind}.path: unsupported URL scheme in {t.path}")
        elif t is not None and t.path is not None and not paths.is_url(recipe.resolve(t.path)) \
                and not recipe.resolve(t.path).exists():
            problems.append(f"tokenizers.{kind}.path: {recipe.resolve(t.path)} does not exist")
    for i, st in enumerate(recipe.steps):  # filter steps: unknown sources, missing/malformed eval sets, CLIP folders
        check = getattr(STEPS[st.name], "recipe_problems", None)
        if check is not None:
            problems += check(STEPS[st.name].Options(**st.options), recipe, f"steps[{i}].options")
    if problems:
        raise RecipeError("; ".join(problems))
