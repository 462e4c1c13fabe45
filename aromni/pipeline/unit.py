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
from aromni.hashing import stable_hash
from aromni.tasks import DialogTooLong, DialogTurn, TemplateError, get_task, render_dialog, render_task

# Rejects that mean "the input is broken" (count towards the circuit breaker); filters do not.
FAILURE_REASONS = {"unreadable_file", "truncated_tar", "bad_image", "bad_audio", "bad_text", "bad_metadata",
                   "missing_file", "missing_audio", "missing_columns", "tokenize_error", "bad_tar_member",
                   "bad_dialog", "bad_labels"}


def unit_id(recipe: Recipe, source: SourceConfig, unit: Unit, tokenizer_ids: dict) -> str:
    """What a unit's output depends on: the source's config, the shared filters/seed/steps/tokenizers, the file, and
    the aromni version (parts written by other code are never reused)."""
    import json

    from aromni import __version__
    key = json.dumps({"source": source.model_dump(mode="json"), "filters": recipe.filters.model_dump(mode="json"),
                      "steps": [s.model_dump(mode="json") for s in recipe.steps], "seed": recipe.seed,
                      "tokenizers": tokenizer_ids, "unit": [unit.path, unit.size, unit.part],
                      "aromni": __version__}, sort_keys=True)
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
    row_ids: set[str] = set()
    consecutive = 0
    read = 0
    dropped_turns = 0
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
        if ex.task == "chat":
            return emit_chat(ex, media)
        task = get_task(ex.task)
        text_role = task.text
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
        meta["instruction"] = source.instruction if source.instruction is not None else task.instruction
        keep(ex, Sample(ex.id, source.name, ex.task, ids, segs, meta))

    def emit_chat(ex: Example, media: dict):
        nonlocal dropped_turns
        codes = media.get("turns") or []
        turns = [DialogTurn(t.role, t.text or "", *((codes[i] if i < len(codes) else {}).get(k) for k in
                                                    ("image", "speech"))) for i, t in enumerate(ex.turns)]
        try:
            r = render_dialog(turns, tok.text.encode, max_tokens=f.max_chat_tokens, instruction=source.instruction,
                              by_reply=source.chat_instruction == "by_reply", layout=layout)
        except DialogTooLong as e:
            return reject(ex.key, "too_long", str(e), ex.id)
        except (TemplateError, ValueError) as e:
            return reject(ex.key, "bad_dialog", str(e), ex.id)
        dropped_turns += r.dropped_turns
        meta = dict(ex.meta)
        meta.update(kept_turns=r.kept_turns, dropped_turns=r.dropped_turns)
        if r.instructions:  # the append text was used
            meta["instruction"] = r.instructions[0] if len(set(r.instructions)) == 1 else r.instructions
        if r.dropped:
            meta["dropped_reasons"] = dict(sorted(Counter(r.dropped).items()))
        if any(t.meta for t in ex.turns):
            meta["turns"] = [{"role": t.role, **t.meta} for t in ex.turns]
        add_row(ex, r.ids, r.segments, meta)

    def add_row(ex: Example, ids: list[int], segs, meta: dict):
        """Length and grammar checks shared by chat rows and imported rows, then the row."""
        nonlocal consecutive
        limit = f.max_chat_tokens if ex.task == "chat" else f.max_tokens
        if len(ids) > limit:
            return reject(ex.key, "too_long", f"{len(ids)} tokens > {limit}", ex.id)
        if len(ids) < f.min_tokens:
            return reject(ex.key, "too_short", f"{len(ids)} tokens < min_tokens {f.min_tokens}", ex.id)
        problems = check_row(ids, segs, layout)
        if problems:
            return reject(ex.key, "grammar_error", "; ".join(problems), ex.id)
        keep(ex, Sample(ex.id, source.name, ex.task, list(ids), list(segs), meta))

    def keep(ex: Example, row: Sample):
        """The row, unless an earlier row of this unit has its id: one id is one row (the first is kept)."""
        nonlocal consecutive
        if row.id in row_ids:
            return reject(ex.key, "duplicate_id", f"an earlier item of {unit.label} has the id {row.id}; it is kept",
                          ex.id)
        row_ids.add(row.id)
        res.rows.append(row)
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
            if ex.tokens is not None:  # an already tokenized row (aromni_instruct): checks only
                try:
                    mark_content(ex, hashlib.sha1(np.asarray(ex.tokens[0], dtype=np.int32).tobytes()), f, seen_content)
                except TextError as e:
                    reject(ex.key, e.reason, e.message, ex.id)
                    continue
                add_row(ex, *ex.tokens, dict(ex.meta))
                continue
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
        "circuit_breaker": broken, "dropped_turns": dropped_turns,
        "steps": {s.name: dict(sorted(s.stats.items())) for s in steps if getattr(s, "stats", None)},
    }
    return res


def batch_size(tok, recipe: Recipe) -> int:
    sizes = [c.batch_size for c in (recipe.tokenizers.image, recipe.tokenizers.speech) if c is not None]
    return min(sizes) if sizes else 64


def prepare(ex: Example, recipe: Recipe, seen: set) -> dict:
    """Clean text, decode media, drop duplicates; returns the decoded media (not yet tokenized)."""
    f = recipe.filters
    if ex.task == "chat":
        out, digest = prepare_dialog(ex, f)
        mark_content(ex, digest, f, seen)
        return out
    media_kind = next(iter(get_task(ex.task).needs), None)
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
    mark_content(ex, digest, f, seen)
    return out


def mark_content(ex: Example, digest, f, seen: set) -> None:
    """Record the content hash in meta (the mix drops duplicates across units by it) and drop duplicates within the
    unit right away, before any tokenizing."""
    h = digest.hexdigest()[:32]
    ex.meta["content_hash"] = h
    if f.dedup:
        if h in seen:
            raise TextError("duplicate", f"same content as an earlier example of this unit ({h[:12]})")
        seen.add(h)


def prepare_dialog(ex: Example, f) -> tuple[dict, object]:
    """Clean each turn's text and decode its media into ``media["turns"][i]`` (aligned with ``ex.turns``): the noise
    step noises user speech there, the voice step adds assistant speech there."""
    if not ex.turns:
        raise TextError("bad_dialog", "the example has no turns")
    digest = hashlib.sha1()
    media = []
    for i, turn in enumerate(ex.turns):
        m: dict = {}
        turn.text = turn.text if isinstance(turn.text, str) else ""
        if turn.text.strip():
            try:
                turn.text, info = clean_text(turn.text, 1, f.max_text_chars)
            except TextError as e:
                raise TextError(e.reason, f"turn {i} ({turn.role}): {e.message}") from None
            if info:
                turn.meta["text_cleanup"] = info
        else:
            turn.text = ""
        digest.update(f"{turn.role}\x1f{turn.text}\x1e".encode("utf-8", "surrogatepass"))
        try:
            if turn.image is not None:
                digest.update(turn.image)
                m["image"], turn.meta["image"] = decode_image(turn.image, f.min_image_side)
            if turn.audio is not None:
                digest.update(turn.audio if isinstance(turn.audio, bytes) else np.asarray(turn.audio[0]).tobytes())
                wave, sr, turn.meta["audio"] = decode_audio(turn.audio, f.min_audio_seconds, f.max_audio_seconds)
                m["speech"] = (wave, sr)
        except MediaError as e:
            raise MediaError(e.reason, f"turn {i} ({turn.role}): {e.message}") from None
        if not turn.text and not m:
            raise TextError("empty_text", f"turn {i} ({turn.role}) has no text, speech or image")
        media.append(m)
    return {"turns": media}, digest


def tokenize_batch(pending, tok, reject):
    """Encode the batch's images and audio (dialog turns' included) in one call per modality; yields
    (example, codes) with codes shaped like the media: {"image": [...]}, {"speech": [...]} or {"turns": [{...}, ...]}."""
    results = [{"turns": [dict() for _ in m["turns"]]} if "turns" in m else {} for _, m in pending]
    for kind, model in (("image", tok.image), ("speech", tok.speech)):
        jobs = [(i, t, v) for i, (_, m) in enumerate(pending) for t, v in _media_items(m, kind)]
        if not jobs:
            continue
        if model is None:
            for i, _, _ in jobs:
                if results[i] is not None:
                    results[i] = None
                    ex = pending[i][0]
                    reject(ex.key, "tokenize_error", f"recipe has no {kind} tokenizer", ex.id)
            continue
        try:
            codes = model.encode([v for _, _, v in jobs])
        except Exception as e:  # noqa: BLE001 - one bad batch is retried item by item to isolate the culprit
            codes = []
            for _, _, v in jobs:
                try:
                    codes.append(model.encode([v])[0])
                except Exception as e1:  # noqa: BLE001
                    codes.append(e1)
        for (i, t, _), c in zip(jobs, codes):
            if results[i] is None:
                continue
            if isinstance(c, Exception):
                ex = pending[i][0]
                results[i] = None
                reject(ex.key, "tokenize_error", f"{type(c).__name__}: {c}", ex.id)
            else:
                target = results[i] if t is None else results[i]["turns"][t]
                target[kind] = [int(x) for x in c.reshape(-1).tolist()]
    for (ex, _), r in zip(pending, results):
        if r is not None:
            yield ex, r


def _media_items(media: dict, kind: str):
    """(turn index or None, decoded media) of one kind in an example's media."""
    if kind in media:
        yield None, media[kind]
    for t, m in enumerate(media.get("turns") or []):
        if kind in m:
            yield t, m[kind]
