"""Task templates (data, in tasks.yaml) and the one renderer that turns pieces into ids + segments.

``SampleBuilder`` is the only place ids are appended to a row, so segments are always exact; task templates and
dialog rendering both go through it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable, Sequence

import yaml

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.sample import Segment


class TemplateError(ValueError):
    """A template or its inputs cannot produce a valid row (missing field, empty text, no media)."""


@dataclass
class SampleBuilder:
    """Appends pieces for a role and keeps segments: adjacent pieces of the same role and modality merge."""
    encode_text: Callable[[str], list[int]]
    layout: Layout = AR_OMNI_V0_1
    ids: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    def _push(self, role: str, modality: str, new_ids: Sequence[int]) -> None:
        if not new_ids:
            return
        start = len(self.ids)
        self.ids.extend(int(i) for i in new_ids)
        last = self.segments[-1] if self.segments else None
        if last and last.role == role and last.modality == modality and modality == "text":
            self.segments[-1] = Segment(role, modality, last.start, len(self.ids))
        else:
            self.segments.append(Segment(role, modality, start, len(self.ids)))

    def token(self, role: str, name: str) -> None:
        if name not in self.layout.markers:
            raise TemplateError(f"unknown token {name!r}; allowed: {sorted(self.layout.markers)}")
        self._push(role, "text", [self.layout.markers[name]])

    def text(self, role: str, s: str) -> None:
        self._push(role, "text", self.encode_text(s))

    def image(self, role: str, codes: Sequence[int]) -> None:
        if len(codes) != self.layout.image_tokens:
            raise TemplateError(f"an image needs {self.layout.image_tokens} codes, got {len(codes)}")
        self._push(role, "image", [self.layout.boi, *self.layout.image_ids(codes), self.layout.eoi])

    def speech(self, role: str, codes: Sequence[int]) -> None:
        if len(codes) == 0:
            raise TemplateError("a speech span needs at least one code")
        self._push(role, "speech", [self.layout.boa, *self.layout.speech_ids(codes), self.layout.eoa])


@lru_cache(maxsize=None)
def task_templates() -> dict:
    text = resources.files("aromni.templates").joinpath("tasks.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def task_names() -> list[str]:
    return sorted(task_templates())


def default_instruction(task: str) -> str:
    return task_templates()[task]["instruction"]


def render_task(task: str, encode_text: Callable[[str], list[int]], *, input_text: str | None = None,
                response: str | None = None, image_codes: Sequence[int] | None = None,
                speech_codes: Sequence[int] | None = None, instruction: str | None = None,
                layout: Layout = AR_OMNI_V0_1) -> tuple[list[int], list[Segment]]:
    """Render one single-turn task row. Text fields are encoded piece by piece, never joined."""
    templates = task_templates()
    if task not in templates:
        raise TemplateError(f"unknown task {task!r}; known: {sorted(templates)}")
    t = templates[task]
    fields = {"instruction": t["instruction"] if instruction is None else instruction,
              "input": input_text, "response": response}
    b = SampleBuilder(encode_text, layout)
    for role in ("user", "assistant"):
        for piece in t[role]:
            (kind, value), = piece.items()
            if kind == "token":
                b.token(role, value)
            elif kind == "text":
                b.text(role, value)
            elif kind == "field":
                v = fields.get(value)
                if v is None or (value != "instruction" and not v.strip()):
                    raise TemplateError(f"task {task} needs a non-empty {value!r}")
                b.text(role, v)
            elif kind == "image":
                if image_codes is None:
                    raise TemplateError(f"task {task} needs an image")
                b.image(role, image_codes)
            elif kind == "speech":
                if speech_codes is None:
                    raise TemplateError(f"task {task} needs speech")
                b.speech(role, speech_codes)
            else:
                raise TemplateError(f"unknown template piece {kind!r} in task {task}")
    return b.ids, b.segments
