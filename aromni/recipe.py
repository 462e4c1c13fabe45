"""The build recipe: YAML, safe-loaded, validated by pydantic, with ``key=value`` overrides.

Errors come out as ``RecipeError`` with one message naming the key path (``sources[1].reader``) and what is allowed;
the CLI prints it and exits 2. Relative paths in ``sources[].path`` and ``tokenizers.*.path`` are resolved against
``data_root`` (itself relative to the current directory), so a user edits one line to point a recipe at their data.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aromni.layout import TASK_GROUPS


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and what is allowed."""


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
    actors: int = Field(1, ge=1, description="Ray actors in the tokenizer pool")
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
        from aromni.model import IMAGE_LOADERS
        if v is not None and v.kind not in IMAGE_LOADERS:
            raise ValueError(f"unknown image tokenizer kind {v.kind!r}; allowed: {sorted(IMAGE_LOADERS)}")
        return v

    @field_validator("speech")
    @classmethod
    def _speech_kind(cls, v):
        from aromni.model import SPEECH_LOADERS
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
    options: dict[str, Any] = Field(default_factory=dict, description="reader options (see `aromni readers`)")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        from aromni.templates import task_names
        bad = [t for t in v if t not in task_names() and t != "chat"]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; allowed: {task_names() + ['chat']}")
        return v

    @field_validator("reader")
    @classmethod
    def _reader(cls, v):
        from aromni.pipeline.readers import READERS
        if v not in READERS:
            raise ValueError(f"unknown reader {v!r}; allowed: {sorted(READERS)}")
        return v

    @model_validator(mode="after")
    def _group_and_options(self):
        if self.group is None:
            groups = {TASK_GROUPS[t] for t in self.tasks}
            if len(groups) != 1:
                raise ValueError(f"tasks {self.tasks} span groups {sorted(groups)}: set `group`")
            self.group = groups.pop()
        from aromni.pipeline.readers import READERS
        try:
            READERS[self.reader].Options(**self.options)
        except ValidationError as e:
            raise ValueError(_nested(e, "options")) from None
        return self


class StepConfig(Strict):
    name: str = Field(description="a registered step (noise, voice, ...)")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self):
        from aromni.pipeline.steps import STEPS
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
    min_audio_seconds: float = Field(0.2, ge=0, description="shorter clips: audio_too_short")
    max_audio_seconds: float = Field(30.0, gt=0, description="longer clips: audio_too_long")
    min_image_side: int = Field(32, ge=1, description="images with a smaller side: image_too_small")
    dedup: bool = Field(True, description="drop exact duplicate content (text + media bytes) across the whole build: "
                                          "the first in hash(seed, id) order is kept, the others are rejects "
                                          "(duplicate)")
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


# Tasks whose rows hold image / speech codes: a recipe with such a task needs that tokenizer.
MEDIA_TASKS = {"image": {"image_caption", "text_to_image", "image_to_text", "speech_to_image"},
               "speech": {"speech_to_text", "text_to_speech", "speech_to_image"}}


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
        for kind, needs in MEDIA_TASKS.items():  # else every example would be rejected at tokenize time
            users = [(i, s) for i, s in enumerate(self.sources) if set(s.tasks) & needs]
            if users and getattr(self.tokenizers, kind) is None:
                i, s = users[0]
                raise ValueError(f"tokenizers.{kind} is missing, but sources[{i}] ({s.name}) has {kind} tasks "
                                 f"{sorted(set(s.tasks) & needs)}; add tokenizers.{kind} (kind: standin for a trial)")
        groups = {s.group for s in self.sources}
        missing = sorted(set(self.mixing.ratio) - groups)
        if missing:
            raise ValueError(f"mixing.ratio names group(s) {missing} that no source feeds (sources feed {sorted(groups)})")
        unmixed = sorted(groups - set(self.mixing.ratio))
        if unmixed:
            raise ValueError(f"source group(s) {unmixed} have no mixing.ratio entry")
        return self

    # ---- derived -----------------------------------------------------------------------------------------
    def resolve(self, p: str | None) -> Path | None:
        if p is None:
            return None
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
# Loading, overrides, error messages
# -------------------------------------------------------------------------------------------------------------
def _loc(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


NESTED = "\x1e"  # marks a message that carries its own sub-path (errors of a reader's / step's options)


def _nested(e: ValidationError, prefix: str) -> str:
    """Errors of a nested model raised from a validator keep their full key path (sources[2].options.min_score)."""
    return "\x1f".join(f"{NESTED}{m}" for m in _flatten(e, prefix=prefix).split("; "))


def _flatten(e: ValidationError, prefix: str = "") -> str:
    msgs = []
    for err in e.errors():
        loc = _loc(err["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith(NESTED):
            msgs += [f"{key}.{m.removeprefix(NESTED)}" if key else m.removeprefix(NESTED) for m in msg.split("\x1f")]
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelled?)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        msgs.append(f"{key}: {msg}" if key else msg)
    return "; ".join(msgs)


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b[1].c=value`` (or ``a.b.1.c=value``); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in assignment:
        raise RecipeError(f"override {assignment!r}: expected key=value, e.g. mixing.seed=7")
    key, raw = assignment.split("=", 1)
    parts = [m.group(1) if m.group(1) is not None else int(m.group(2)) for m in _PATH_PART.finditer(key.strip())]
    parts = [int(p) if isinstance(p, str) and p.isdigit() else p for p in parts]
    if not parts:
        raise RecipeError(f"override {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise RecipeError(f"override {key}: value is not valid YAML ({e})") from None
    node: Any = data
    for i, p in enumerate(parts[:-1]):
        where = _loc(parts[: i + 1])
        if isinstance(p, int):
            if not isinstance(node, list) or p >= len(node):
                raise RecipeError(f"override {key}: {where} does not exist")
            node = node[p]
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"override {key}: {where} is not a mapping")
            node = node.setdefault(p, {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise RecipeError(f"override {key}: index {last} does not exist")
    elif not isinstance(node, dict):
        raise RecipeError(f"override {key}: parent is not a mapping")
    node[last] = value


def parse_recipe(data: Any, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"recipe must be a YAML mapping at the top level, got {type(data).__name__}")
    for o in overrides:
        apply_override(data, o)
    try:
        return Recipe(**data)
    except ValidationError as e:
        raise RecipeError(_flatten(e)) from None
    except TypeError as e:  # e.g. a key that is not a string
        raise RecipeError(f"recipe has a malformed key: {e}") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error instead of the last one
    silently winning (``seed: 0`` ... ``seed: 1`` is a typo to report, not a choice to guess)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if dup:
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                        f"key {key!r} is given twice", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file not found: {p}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{p}: not UTF-8 text") from None
    return parse_recipe(data, overrides)


def check_paths(recipe: Recipe) -> None:
    """Input paths must exist before a build starts (a typo should not cost a Ray start-up)."""
    problems = []
    for i, s in enumerate(recipe.sources):
        p = recipe.resolve(s.path)
        if not any(ch in str(p) for ch in "*?[") and not p.exists():
            problems.append(f"sources[{i}].path: {p} does not exist")
    for kind in ("text", "image", "speech"):
        t = getattr(recipe.tokenizers, kind)
        if t is not None and t.path is not None and not recipe.resolve(t.path).exists():
            problems.append(f"tokenizers.{kind}.path: {recipe.resolve(t.path)} does not exist")
    if problems:
        raise RecipeError("; ".join(problems))
