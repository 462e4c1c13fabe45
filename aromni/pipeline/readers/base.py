"""What every reader shares: the common example, a reject, a unit of work, and the registry.

A reader knows one published data format and nothing about Ray, tokenizers or templates. It
1. splits its input into ``Unit``s (a file, a tar, a parquet row group) — ``units()``, and
2. streams one unit as ``Example``s (normalised: text, encoded image bytes, encoded audio bytes or a waveform, dialog
   turns) or ``Rejected`` items with a reason — ``read(unit)``. Nothing it reads may vanish: every item is one or
   the other.
Register a reader with ``@register``; its ``Options`` pydantic model validates ``sources[].options`` in the recipe.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

from aromni.registry import Registry, StrictOptions


@dataclass
class Turn:
    """One dialog turn. ``audio`` is encoded bytes or (waveform, rate); ``image`` is encoded bytes."""
    role: str  # user | assistant
    text: str = ""
    audio: Any = None
    image: bytes | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Example:
    """A source item normalised for the steps. ``key`` is the item's own key in its source (stable across runs)."""
    key: str
    text: str | None = None          # caption / transcript / document
    image: bytes | None = None       # encoded image file bytes (decoded by the decode step)
    audio: Any = None                # encoded audio bytes, or (np.ndarray, sample_rate)
    turns: list[Turn] | None = None  # instruction dialogs
    tokens: Any = None               # already tokenized: (input_ids, segments), e.g. an imported AR-Omni-Instruct row
    meta: dict = field(default_factory=dict)
    # filled in by the steps
    task: str | None = None
    id: str | None = None


@dataclass
class Rejected:
    key: str
    reason: str    # short, stable, snake_case: it is a column in stats and plots
    message: str = ""
    id: str | None = None


@dataclass(frozen=True)
class Unit:
    """One piece of work: ``path`` (and, for row-group units, ``part``). ``size`` enters the unit's id, so a file
    that changed is rebuilt."""
    source: str
    path: str
    size: int
    part: int | None = None

    @property
    def label(self) -> str:
        return self.path if self.part is None else f"{self.path}#{self.part}"


class ReaderOptions(StrictOptions):
    """A reader's ``sources[].options``."""


READERS: Registry = Registry()
register = READERS.register


class Reader:
    name: ClassVar[str]
    layout_doc: ClassVar[str] = ""
    Options: ClassVar[type[ReaderOptions]] = ReaderOptions
    patterns: ClassVar[tuple[str, ...]] = ("*",)   # which files inside a folder are units

    def __init__(self, source_name: str, path: Path, options: dict | None = None):
        self.source = source_name
        self.path = Path(path)
        self.opts = self.Options(**(options or {}))

    def files(self) -> list[Path]:
        """The unit files: ``path`` itself, a glob, or the files of a folder matching ``patterns``, sorted."""
        p = str(self.path)
        if any(ch in p for ch in "*?["):
            found = [Path(f) for f in glob.glob(p, recursive=True)]
        elif self.path.is_dir():
            found = [f for pat in self.patterns for f in self.path.rglob(pat)]
        else:
            found = [self.path] if self.path.exists() else []
        return sorted({f for f in found if f.is_file()}, key=lambda f: str(f))

    def units(self) -> list[Unit]:
        return [Unit(self.source, str(f), os.path.getsize(f)) for f in self.files()]

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        raise NotImplementedError
