"""One unit, top to bottom, as a list of steps: read -> task -> clean -> decode -> dedup -> [recipe steps] ->
tokenize (batched) -> render -> [recipe steps at "rendered"] -> length/grammar check -> one row per id.

Pure with respect to (recipe, unit, tokenizers): the rows and rejects it returns depend on nothing else, which is what
makes a build byte-identical whatever the number of workers. Every item the reader yields ends up in exactly one of
``rows`` or ``rejects`` (``read = written + rejected``), even when the circuit breaker stops the unit early.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from aromni import __version__
from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.pipeline.manifest import FORMAT_VERSION
from aromni.pipeline.readers import READERS, Rejected, Unit
from aromni.pipeline.stats import UnitStats
from aromni.pipeline.steps import Drop, Step, Work, build_steps, stats_dict
from aromni.pipeline.steps.check import Check, UniqueIds
from aromni.pipeline.steps.prepare import ChooseTask, Clean, Decode, Dedup
from aromni.pipeline.steps.render import Render
from aromni.pipeline.steps.split import SplitLong
from aromni.pipeline.steps.tokenize import Tokenize
from aromni.recipe import Recipe, SourceConfig
from aromni.sample import Sample

# Rejects that mean "the input is broken" (count towards the circuit breaker); filters do not.
FAILURE_REASONS = {"unreadable_file", "truncated_tar", "bad_image", "bad_audio", "bad_text", "bad_metadata",
                   "missing_file", "missing_audio", "missing_columns", "tokenize_error", "bad_tar_member",
                   "bad_dialog", "bad_labels"}


def unit_id(recipe: Recipe, source: SourceConfig, unit: Unit, tokenizer_ids: dict) -> str:
    """What a unit's output depends on: the source's config, the shared filters/seed/steps/tokenizers, the file, and
    the aromni version and row format (parts written by other code are never reused)."""
    key = json.dumps({"source": source.model_dump(mode="json"), "filters": recipe.filters.model_dump(mode="json"),
                      "steps": [s.model_dump(mode="json") for s in recipe.steps], "seed": recipe.seed,
                      "tokenizers": tokenizer_ids, "unit": [unit.path, unit.size, unit.part],
                      "aromni": __version__, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class UnitResult:
    rows: list[Sample] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    stats: UnitStats | None = None
    signatures: list | None = None   # with a near_dup step: each row's (keys, image hash) or None, aligned with rows


class CircuitBreaker(Exception):
    pass


def batch_size(recipe: Recipe) -> int:
    sizes = [c.batch_size for c in (recipe.tokenizers.image, recipe.tokenizers.speech) if c is not None]
    return min(sizes) if sizes else 64


def relative_to_root(recipe: Recipe):
    """A function that says paths relative to data_root inside a string (rows' meta.path, rejects' unit and message):
    the same corpus on a local disk or in a bucket then gives the same bytes (the unit's id, not its label, carries
    the full path)."""
    prefix = str(recipe.data_root).rstrip("/") + "/"
    if prefix == "/":
        return lambda s: s
    return lambda s: s.replace(prefix, "") if isinstance(s, str) else s


def unit_steps(recipe: Recipe, source: SourceConfig, unit: Unit, tok, layout: Layout = AR_OMNI_V0_1,
               on_split=None) -> list[Step]:
    """The unit's steps in order; the recipe's ``steps:`` go in at their stage. ``on_split(work, pieces)``: called
    when ``filters.split_long: paragraphs`` turns one document into several rows (the unit tracks each)."""
    extra = build_steps(recipe)
    at = {stage: [s for s in extra if s.stage == stage] for stage in ("decoded", "rendered")}
    render = Render(source, tok, recipe, layout)
    split = [SplitLong(recipe, render, on_split or (lambda work, pieces: None))] \
        if recipe.filters.split_long == "paragraphs" else []
    return [ChooseTask(source, recipe), Clean(None, recipe), Decode(None, recipe), Dedup(None, recipe),
            *at["decoded"], Tokenize(tok, batch_size(recipe), recipe), render, *split,
            *at["rendered"], Check(recipe, layout), UniqueIds(recipe, relative_to_root(recipe)(unit.label))]


def process_unit(recipe: Recipe, source: SourceConfig, unit: Unit, tok, uid: str = "",
                 layout: Layout = AR_OMNI_V0_1, pools=None) -> UnitResult:
    """``pools``: the build's actor pools (executor.pools.Pools); steps that use one (voice) attach to it."""
    t0 = time.perf_counter()
    res = UnitResult()
    rel = relative_to_root(recipe)
    label = rel(unit.label)
    stats = res.stats = UnitStats(label, uid, source.name, source.group)
    reasons: Counter = Counter()
    reader = READERS[source.reader](source.name, recipe.resolve(source.path), source.options)
    inflight: dict[int, Work] = {}   # read but not yet a row or a reject
    next_seq = [0]

    def on_split(work: Work, pieces: list[Work]) -> None:
        """One document became ``pieces`` rows: each is tracked on its own; the extra ones count as read (so read =
        written + rejected holds; split_long's extra_rows says how many)."""
        inflight.pop(work.seq)
        for w in pieces:
            w.seq = next_seq[0]
            next_seq[0] += 1
            inflight[w.seq] = w
        stats.read += len(pieces) - 1

    steps = unit_steps(recipe, source, unit, tok, layout, on_split)
    if any(s.name == "near_dup" for s in recipe.steps):
        res.signatures = []
    for step in steps:
        if pools is not None and hasattr(step, "attach_pools"):
            step.attach_pools(pools)

    def read() -> Iterator:
        for item in reader.read(unit):
            seq = next_seq[0]
            next_seq[0] += 1
            stats.read += 1
            if isinstance(item, Rejected):
                yield item
                continue
            item.id = f"{source.name}/{item.key}"
            if "path" in item.meta:
                item.meta["path"] = rel(item.meta["path"])
            inflight[seq] = w = Work(item, seq)
            yield w

    def reject(ex_id: str, reason: str, message: str):
        res.rejects.append({"id": ex_id, "source": source.name, "unit": label, "reason": reason,
                            "message": rel(message)[:500]})
        reasons[reason] += 1

    stream = read()
    for step in steps:
        stream = step.run(stream)
    consecutive = 0
    try:
        for item in stream:
            if isinstance(item, Work):
                inflight.pop(item.seq)
                res.rows.append(item.row)
                if res.signatures is not None:
                    res.signatures.append(item.signature)
                consecutive = 0
                continue
            if isinstance(item, Drop):
                inflight.pop(item.work.seq)
                ex = item.work.example
                reject(ex.id, item.reason, item.message)
            else:
                reject(item.id or f"{source.name}/{item.key}", item.reason, item.message)
            consecutive = consecutive + 1 if item.reason in FAILURE_REASONS else 0
            if consecutive >= recipe.filters.max_consecutive_failures:
                raise CircuitBreaker(f"{consecutive} consecutive failures in {label}, last: {item.reason}: "
                                     f"{item.message}")
    except CircuitBreaker as e:
        stats.circuit_breaker = str(e)
        for w in inflight.values():  # read (e.g. decoded, waiting for the tokenizer) but never finished
            reject(w.example.id, "circuit_breaker", str(e))
        inflight.clear()
    stats.written = len(res.rows)
    stats.rejected = dict(sorted(reasons.items()))
    stats.tokens = sum(r.n_tokens for r in res.rows)
    stats.seconds = round(time.perf_counter() - t0, 3)
    stats.dropped_turns = next(s.stats.dropped_turns for s in steps if isinstance(s, Render))
    stats.steps = {s.name: d for s in steps if (d := stats_dict(s.stats))}
    return res
