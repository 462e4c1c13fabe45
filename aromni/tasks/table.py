"""The one task table (tasks.yaml), loaded: per task its group, the media it needs, the text it reads and its pieces.

Recipe validation (known tasks, groups, needed tokenizers, what a reader must carry), units (which text and media an
example feeds the row with), the dataset card (Hugging Face categories) and inference prompts (``aromni infer --task``
names) all read it here; rendering is ``aromni.tasks.render``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

MEDIA = ("image", "speech")
TEXT_ROLES = ("response", "input", "dialog")
REPLY_MODALITIES = ("text", "speech", "image")


@dataclass(frozen=True)
class Task:
    name: str
    group: str
    needs: frozenset[str]          # media an example must carry (image, speech)
    text: str                      # response | input | dialog
    instruction: str
    pieces: dict                   # start / user / assistant
    instructions: dict | None = None   # chat: reply modality -> append instruction
    hf_category: str | None = None
    infer: str | None = None

    @property
    def dialog(self) -> bool:
        return self.text == "dialog"

    def media_role(self, kind: str) -> str | None:
        """Which turn of the one exchange holds media ``kind`` (user or assistant), None when the task has none."""
        for role in ("user", "assistant"):
            if any(kind in p and p[kind] == "turn" for p in self.pieces[role]):
                return role
        return None

    @property
    def carries(self) -> frozenset[str]:
        """What a reader's examples must carry for this task (Reader.carries vocabulary)."""
        return frozenset({"dialog"}) if self.dialog else frozenset({"text", *self.needs})


class TemplateError(ValueError):
    """A template or its inputs cannot produce a valid row (unknown task, missing field, empty text, no media)."""


class TaskTableError(ValueError):
    """tasks.yaml itself is malformed (a packaging bug, not a user error)."""


def _parse(name: str, d: dict) -> Task:
    missing = [k for k in ("group", "needs", "text", "instruction", "start", "user", "assistant") if k not in d]
    if missing:
        raise TaskTableError(f"tasks.yaml: task {name} lacks {missing}")
    if d["text"] not in TEXT_ROLES or set(d["needs"]) - set(MEDIA):
        raise TaskTableError(f"tasks.yaml: task {name}: text must be one of {TEXT_ROLES}, needs among {MEDIA}")
    instructions = d.get("instructions")
    if instructions is not None and set(instructions) != set(REPLY_MODALITIES):
        raise TaskTableError(f"tasks.yaml: task {name}: instructions must name {REPLY_MODALITIES}")
    return Task(name, d["group"], frozenset(d["needs"]), d["text"], d["instruction"],
                {k: d[k] for k in ("start", "user", "assistant")}, instructions, d.get("hf_category"), d.get("infer"))


@lru_cache(maxsize=None)
def task_table() -> dict[str, Task]:
    text = resources.files("aromni.tasks").joinpath("tasks.yaml").read_text(encoding="utf-8")
    return {name: _parse(name, d) for name, d in yaml.safe_load(text).items()}


def get_task(name: str) -> Task:
    table = task_table()
    if name not in table:
        raise TemplateError(f"unknown task {name!r}; known: {sorted(table)}")
    return table[name]


def task_names() -> list[str]:
    return sorted(task_table())


def default_instruction(task: str) -> str:
    return get_task(task).instruction


def task_groups() -> dict[str, str]:
    return {n: t.group for n, t in task_table().items()}


def tasks_needing(kind: str) -> set[str]:
    """Tasks whose rows hold ``kind`` (image / speech) codes; chat rows may hold both (its sources decide)."""
    return {n for n, t in task_table().items() if kind in t.needs}
