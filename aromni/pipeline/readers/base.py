"""What every reader shares: the common example, a reject, a unit of work, and the registry.

A reader knows one published data format and nothing about Ray, tokenizers or templates. It
1. splits its input into ``Unit``s (a file, a tar, a parquet row group) — ``units()``, and
2. streams one unit as ``Example``s (normalised: text, encoded image bytes, encoded audio bytes or a waveform, dialog
   turns) or ``Rejected`` items with a reason — ``read(unit)``. Nothing it reads may vanish: every item is one or
   the other.
Register a reader with ``@register``; its ``Options`` pydantic model validates ``sources[].options`` in the recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from pydantic import Field

from aromni.io import paths
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


MiB = 1 << 20


class ReaderOptions(StrictOptions):
    """A reader's ``sources[].options``. Every reader has ``max_file_bytes``: a media file or tar member over it is
    rejected ``too_large`` from its size (header, listing) before a byte of it is read, so one hostile file cannot
    blow up a worker."""
    max_file_bytes: int = Field(64 * MiB, ge=1, description="media file / tar member size cap (bytes): larger ones "
                                                            "are rejected too_large before reading")


READERS: Registry = Registry()
register = READERS.register


CARRIES = frozenset({"text", "image", "speech", "dialog", "tokens"})


class Reader:
    name: ClassVar[str]
    layout_doc: ClassVar[str] = ""
    Options: ClassVar[type[ReaderOptions]] = ReaderOptions
    patterns: ClassVar[tuple[str, ...]] = ("*",)   # which files inside a folder are units
    # What this reader's Examples hold, among CARRIES: the recipe check refuses a task that needs something else.
    carries: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, source_name: str, path, options: dict | None = None, max_files: int | None = None):
        self.source = source_name
        self.path = paths.normalise(str(path))  # a local path or a URL (s3://, gs://, hf://datasets/...)
        self.opts = self.Options(**(options or {}))
        # listing budget: a folder with more candidate files than this is an error, not a walk of the whole disk
        self.max_files = max_files

    def require(self) -> None:
        """A source on an object store that does not exist (missing bucket or prefix) or cannot be reached is one
        InputError naming the URL, not an empty source."""
        if paths.is_url(self.path) and not paths.has_magic(self.path) and not paths.exists(self.path):
            raise paths.InputError(f"{self.path}: not found (no such object, prefix or bucket)")

    def files(self) -> list[str]:
        """The unit files: ``path`` itself, a glob, or the files of a folder matching ``patterns``, sorted."""
        self.require()
        if paths.has_magic(self.path):
            return paths.glob(self.path, self.max_files)
        if paths.isdir(self.path):
            return paths.list_files(self.path, self.patterns, self.max_files)
        return [self.path] if paths.isfile(self.path) else []

    def units(self) -> list[Unit]:
        return [Unit(self.source, f, paths.size(f)) for f in self.files()]

    @classmethod
    def describe(cls) -> str:
        """What ``aromni readers`` prints: the layout and what the examples carry (the tasks it can serve)."""
        return f"{cls.layout_doc.strip()}\n    carries: {', '.join(sorted(cls.carries)) or 'nothing'}"

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        raise NotImplementedError
