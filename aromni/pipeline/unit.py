"""One unit, top to bottom: reader -> clean/decode -> choose task -> tokenize (batched) -> template -> length check.

Pure with respect to (recipe, unit, tokenizers): the rows and rejects it returns depend on nothing else, which is what
makes a build byte-identical whatever the number of workers. Every item the reader yields ends up in exactly one of
``rows`` or ``rejects``.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field

from aromni.layout import AR_OMNI_V0_1, Layout
import numpy as np

from aromni.pipeline.readers import READERS, Example, Rejected, Unit
from aromni.pipeline.steps import build_steps
from aromni.pipeline.steps.media import MediaError, decode_audio, decode_image
from aromni.pipeline.steps.text import TextError, clean_text
from aromni.recipe import Recipe, SourceConfig
from aromni.sample import Sample, check_row
from aromni.templates import TemplateError, render_task, task_templates

# Rejects that mean "the input is broken" (count towards the circuit breaker); filters do not.
FAILURE_REASONS = {"unreadable_file", "truncated_tar", "bad_image", "bad_audio", "bad_text", "bad_metadata",
                   "missing_file", "missing_audio", "missing_columns", "tokenize_error", "bad_tar_member"}
# Which example field a task needs: (text role, media)
TASK_NEEDS = {
    "image_caption": ("response", "image"), "text_to_image": ("input", "image"),
    "speech_to_text": ("response", "speech"), "text_to_speech": ("input", "speech"),
    "text_to_text": ("response", None),
}


def stable_hash(*parts) -> int:
    """A 64-bit hash of the parts that is the same on every machine and Python run (unlike hash())."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big")


def unit_id(recipe: Recipe, source: SourceConfig, unit: Unit, tokenizer_ids: dict) -> str:
    """What a unit's output depends on: the source's config, the shared filters/seed/tokenizers, and the file."""
    import json
    key = json.dumps({"source": source.model_dump(mode="json"), "filters": recipe.filters.model_dump(mode="json"),
                      "steps": [s.model_dump(mode="json") for s in recipe.steps], "seed": recipe.seed, "tokenizers": tokenizer_ids,
                      "unit": [unit.path, unit.size, unit.part]}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class UnitResult:
    rows: list[Sample] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


class CircuitBreaker(Exception):
    pass


def process_unit(recipe: Recipe, source: SourceConfig, unit: Unit, tok, uid: str = "",
                 layout: Layout = AR_OMNI_V0_1) -> UnitResult:
    t0 = time.perf_counter()
    res = UnitResult()
    reasons: Counter = Counter()
    f = recipe.filters
    reader = READERS[source.reader](source.name, recipe.resolve(source.path), source.options)
    steps = build_steps(recipe)
    seen_content: set[str] = set()
    consecutive = 0
    read = 0
    pending: list[tuple[Example, dict]] = []

    def reject(key: str, reason: str, message: str, ex_id: str | None = None):
        nonlocal consecutive
        res.rejects.append({"id": ex_id or f"{source.name}/{key}", "source": source.name, "unit": unit.label,
                            "reason": reason, "message": message[:500]})
        reasons[reason] += 1
        consecutive = consecutive + 1 if reason in FAILURE_REASONS else 0
        if consecutive >= f.max_consecutive_failures:
            raise CircuitBreaker(f"{consecutive} consecutive failures in {unit.label}, last: {reason}: {message}")

    def flush():
        if pending:
            for ex, media in tokenize_batch(pending, tok, reject):
                emit(ex, media)
            pending.clear()

    def emit(ex: Example, media: dict):
        nonlocal consecutive
        tmpl = task_templates()[ex.task]
        text_role, _ = TASK_NEEDS[ex.task]
        try:
            ids, segs = render_task(ex.task, tok.text.encode, instruction=source.instruction,
                                    layout=layout, **{("response" if text_role == "response" else "input_text"): ex.text},
                                    image_codes=media.get("image"), speech_codes=media.get("speech"))
        except (TemplateError, ValueError) as e:
            return reject(ex.key, "template_error", str(e), ex.id)
        if len(ids) > f.max_tokens:
            return reject(ex.key, "too_long", f"{len(ids)} tokens > max_tokens {f.max_tokens}", ex.id)
        if len(ids) < f.min_tokens:
            return reject(ex.key, "too_short", f"{len(ids)} tokens < min_tokens {f.min_tokens}", ex.id)
        problems = check_row(ids, segs, layout)
        if problems:  # a bug, not bad input: still never silent
            return reject(ex.key, "grammar_error", "; ".join(problems), ex.id)
        meta = dict(ex.meta)
        meta["instruction"] = source.instruction if source.instruction is not None else tmpl["instruction"]
        res.rows.append(Sample(ex.id, source.name, ex.task, ids, segs, meta))
        consecutive = 0

    broken = None
    try:
        for item in reader.read(unit):
            read += 1
            if isinstance(item, Rejected):
                reject(item.key, item.reason, item.message, item.id)
                continue
            ex = item
            ex.id = f"{source.name}/{ex.key}"
            ex.task = source.tasks[stable_hash(recipe.seed, ex.id) % len(source.tasks)]
            try:
                prepared = prepare(ex, recipe, seen_content)
                for step in steps:
                    step.apply(ex, prepared, np.random.default_rng(stable_hash(recipe.seed, step.name, ex.id)))
            except (MediaError, TextError) as e:
                reject(ex.key, e.reason, e.message, ex.id)
                continue
            pending.append((ex, prepared))
            if len(pending) >= batch_size(tok, recipe):
                flush()
        flush()
    except CircuitBreaker as e:
        broken = str(e)
        for ex, _ in pending:  # decoded but never tokenized: still accounted for
            res.rejects.append({"id": ex.id, "source": source.name, "unit": unit.label,
                                "reason": "circuit_breaker", "message": broken[:500]})
            reasons["circuit_breaker"] += 1
        pending.clear()
    res.stats = {
        "unit": unit.label, "unit_id": uid, "source": source.name, "group": source.group,
        "read": read, "written": len(res.rows), "rejected": dict(sorted(reasons.items())),
        "tokens": sum(r.n_tokens for r in res.rows), "seconds": round(time.perf_counter() - t0, 3),
        "circuit_breaker": broken,
    }
    return res


def batch_size(tok, recipe: Recipe) -> int:
    sizes = [c.batch_size for c in (recipe.tokenizers.image, recipe.tokenizers.speech) if c is not None]
    return min(sizes) if sizes else 64


def prepare(ex: Example, recipe: Recipe, seen: set) -> dict:
    """Clean text, decode media, drop duplicates; returns the decoded media (not yet tokenized)."""
    f = recipe.filters
    _, media_kind = TASK_NEEDS[ex.task]
    ex.text, info = clean_text(ex.text, f.min_text_chars, f.max_text_chars)
    if info:
        ex.meta["text_cleanup"] = info
    digest = hashlib.sha1(ex.text.encode("utf-8", "surrogatepass"))
    out: dict = {}
    if media_kind == "image":
        if ex.image is None:
            raise MediaError("missing_file", "example has no image")
        digest.update(ex.image)
        out["image"], ex.meta["image"] = decode_image(ex.image, f.min_image_side)
    elif media_kind == "speech":
        if ex.audio is None:
            raise MediaError("missing_audio", "example has no audio")
        digest.update(ex.audio if isinstance(ex.audio, bytes) else ex.audio[0].tobytes())
        wave, sr, ex.meta["audio"] = decode_audio(ex.audio, f.min_audio_seconds, f.max_audio_seconds)
        out["speech"] = (wave, sr)
    if f.dedup:
        h = digest.hexdigest()
        if h in seen:
            raise TextError("duplicate", f"same content as an earlier example of this unit ({h[:12]})")
        seen.add(h)
    return out


def tokenize_batch(pending, tok, reject):
    """Encode the batch's images and audio in one call per modality; yields (example, {image/speech: codes})."""
    results = [dict() for _ in pending]
    for kind, model in (("image", tok.image), ("speech", tok.speech)):
        idx = [i for i, (_, m) in enumerate(pending) if kind in m]
        if not idx:
            continue
        if model is None:
            for i in idx:
                results[i] = None
                ex = pending[i][0]
                reject(ex.key, "tokenize_error", f"recipe has no {kind} tokenizer", ex.id)
            continue
        try:
            codes = model.encode([pending[i][1][kind] for i in idx])
        except Exception as e:  # noqa: BLE001 - one bad batch is retried item by item to isolate the culprit
            codes = []
            for i in idx:
                try:
                    codes.append(model.encode([pending[i][1][kind]])[0])
                except Exception as e1:  # noqa: BLE001
                    codes.append(e1)
        for i, c in zip(idx, codes):
            if results[i] is None:
                continue
            if isinstance(c, Exception):
                ex = pending[i][0]
                results[i] = None
                reject(ex.key, "tokenize_error", f"{type(c).__name__}: {c}", ex.id)
            else:
                results[i][kind] = [int(x) for x in c.reshape(-1).tolist()]
    for (ex, _), r in zip(pending, results):
        if r is not None:
            yield ex, r
