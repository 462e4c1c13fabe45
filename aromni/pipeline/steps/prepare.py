"""The unit's first steps: choose the task, clean the text, decode the media, drop in-unit duplicates.

The bodies of the cleaning and decoding are ``steps.text.clean_text`` and ``steps.media.decode_image/decode_audio``;
these classes only apply them to an example (single-turn or dialog) and count.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from aromni.hashing import stable_hash
from aromni.pipeline.steps.base import Step, StepStats, Work
from aromni.pipeline.steps.media import MediaError, decode_audio, decode_image
from aromni.pipeline.steps.text import TextError, clean_text
from aromni.tasks import get_task


@dataclass
class TaskStats(StepStats):
    chosen: dict = field(default_factory=dict)


class ChooseTask(Step):
    """Each example becomes a row of one of the source's tasks, chosen by hash(seed, id): reruns agree."""
    name = "task"
    uses_rng = False
    Stats = TaskStats

    def __init__(self, source, recipe):
        super().__init__(None, recipe)
        self.source = source

    def process(self, work: Work, rng) -> None:
        ex, tasks = work.example, self.source.tasks
        ex.task = tasks[stable_hash(self.seed, ex.id) % len(tasks)] if len(tasks) > 1 else tasks[0]  # (x % 1 == 0)
        self.stats.chosen[ex.task] = self.stats.chosen.get(ex.task, 0) + 1


@dataclass
class CleanStats(StepStats):
    cleaned: int = 0        # texts the cleanup changed (meta.text_cleanup says how)


class Clean(Step):
    """Normalise the text (single-turn) or every turn's text (dialog); too short / unreadable texts are rejected."""
    name = "clean"
    uses_rng = False
    Stats = CleanStats

    def process(self, work: Work, rng) -> None:
        ex, f = work.example, self.recipe.filters
        if ex.tokens is not None:   # an already tokenized row (aromni_instruct): nothing to clean
            return
        if get_task(ex.task).dialog:
            if not ex.turns:
                raise TextError("bad_dialog", "the example has no turns")
            for i, turn in enumerate(ex.turns):
                turn.text = turn.text if isinstance(turn.text, str) else ""
                if not turn.text.strip():
                    turn.text = ""
                    continue
                try:
                    turn.text, info = clean_text(turn.text, 1, f.max_text_chars)
                except TextError as e:
                    raise TextError(e.reason, f"turn {i} ({turn.role}): {e.message}") from None
                if info:
                    turn.meta["text_cleanup"] = info
                    self.stats.cleaned += 1
            return
        ex.text, info = clean_text(ex.text, f.min_text_chars, f.max_text_chars)
        if info:
            ex.meta["text_cleanup"] = info
            self.stats.cleaned += 1


@dataclass
class DecodeStats(StepStats):
    images: int = 0
    clips: int = 0


class Decode(Step):
    """Decode the media the task needs (single-turn) or every turn's media (dialog) into ``work.media``."""
    name = "decode"
    uses_rng = False
    Stats = DecodeStats

    def process(self, work: Work, rng) -> None:
        ex, f = work.example, self.recipe.filters
        if ex.tokens is not None:
            return
        task = get_task(ex.task)
        if task.dialog:
            work.media = {"turns": [self._turn(i, t, f) for i, t in enumerate(ex.turns)]}
            return
        if "image" in task.needs:
            if ex.image is None:
                raise MediaError("missing_file", "example has no image")
            work.media["image"], ex.meta["image"] = decode_image(ex.image, f.min_image_side)
            self.stats.images += 1
        elif "speech" in task.needs:
            if ex.audio is None:
                raise MediaError("missing_audio", "example has no audio")
            wave, sr, ex.meta["audio"] = decode_audio(ex.audio, f.min_audio_seconds, f.max_audio_seconds)
            work.media["speech"] = (wave, sr)
            self.stats.clips += 1

    def _turn(self, i: int, turn, f) -> dict:
        """``media["turns"][i]`` (aligned with ``example.turns``): the noise step noises user speech there, the voice
        step adds assistant speech there."""
        m: dict = {}
        try:
            if turn.image is not None:
                m["image"], turn.meta["image"] = decode_image(turn.image, f.min_image_side)
                self.stats.images += 1
            if turn.audio is not None:
                wave, sr, turn.meta["audio"] = decode_audio(turn.audio, f.min_audio_seconds, f.max_audio_seconds)
                m["speech"] = (wave, sr)
                self.stats.clips += 1
        except MediaError as e:
            raise MediaError(e.reason, f"turn {i} ({turn.role}): {e.message}") from None
        if not turn.text and not m:
            raise TextError("empty_text", f"turn {i} ({turn.role}) has no text, speech or image")
        return m


def content_hash(ex) -> str:
    """What two examples must share to be duplicates: the cleaned text and the media bytes (per turn for dialogs),
    or the ids of an imported row. The mix drops duplicates across units by it (the row's content_hash column)."""
    if ex.tokens is not None:
        return hashlib.sha1(np.asarray(ex.tokens[0], dtype=np.int32).tobytes()).hexdigest()[:32]
    digest = hashlib.sha1()
    if ex.turns is not None and get_task(ex.task).dialog:
        for turn in ex.turns:
            digest.update(f"{turn.role}\x1f{turn.text}\x1e".encode("utf-8", "surrogatepass"))
            if turn.image is not None:
                digest.update(turn.image)
            if turn.audio is not None:
                digest.update(turn.audio if isinstance(turn.audio, bytes) else np.asarray(turn.audio[0]).tobytes())
        return digest.hexdigest()[:32]
    digest.update(ex.text.encode("utf-8", "surrogatepass"))
    needs = get_task(ex.task).needs
    if "image" in needs:
        digest.update(ex.image)
    elif "speech" in needs:
        digest.update(ex.audio if isinstance(ex.audio, bytes) else ex.audio[0].tobytes())
    return digest.hexdigest()[:32]


@dataclass
class DedupStats(StepStats):
    duplicate: int = 0


class Dedup(Step):
    """Record the content hash and drop duplicates within the unit right away, before any tokenizing (the mix drops
    the ones across units). With ``filters.dedup: false`` only the hash is recorded."""
    name = "dedup"
    uses_rng = False
    Stats = DedupStats

    def __init__(self, options=None, recipe=None):
        super().__init__(options, recipe)
        self.seen: set[str] = set()

    def process(self, work: Work, rng) -> None:
        h = work.content_hash = content_hash(work.example)
        if self.recipe.filters.dedup:
            if h in self.seen:
                self.stats.duplicate += 1
                raise TextError("duplicate", f"same content as an earlier example of this unit ({h[:12]})")
            self.seen.add(h)
