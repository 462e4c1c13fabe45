"""The sample grammar: what one shard row is, how to check it, and how labels and loss weights derive from it.

A row stores only ``input_ids`` and ``segments`` (plus identity and ``meta``); everything a trainer needs
(labels, loss weights, perceptual positions) is *derived* here, so a loss policy can change without rebuilding shards.

Segments cover the row without gaps or overlap. Span markers belong to their span's segment: an image segment is
``[8197] 1024 codes [8196]``, a speech segment is ``[12821] codes [12820]``; everything else (bos, "USER:", 12830,
eos, ...) sits in text segments. ``role`` is ``user`` or ``assistant``: assistant segments are what a model produces.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from aromni.layout import AR_OMNI_V0_1, Layout, cached

ROLES = ("user", "assistant")
MODALITIES = ("text", "image", "speech")
IGNORE_INDEX = -100

SEGMENT_TYPE = pa.struct([("role", pa.string()), ("modality", pa.string()),
                          ("start", pa.int32()), ("end", pa.int32())])
# The shard row schema (issue "The spine"). Column order is part of the format.
ROW_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("task", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("segments", pa.list_(SEGMENT_TYPE)),
    ("n_tokens", pa.int32()),
    ("meta", pa.string()),
    ("content_hash", pa.string()),  # format 2: what the build's dedup compares (text + media bytes, or imported ids)
])
# json.dumps(meta, sort_keys=True, ensure_ascii=False), without building an encoder per row
meta_json = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode
# Parquet dictionary-encodes only these low-cardinality columns of a row file (shards and parts). Over ids, token
# lists or meta JSON a dictionary only costs: measured on text rows, shards 44 % smaller and written 24 % faster
# without one (the column values are the same either way).
DICTIONARY_COLUMNS = ["source", "task"]
REJECT_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("unit", pa.string()),
                           ("reason", pa.string()), ("message", pa.string())])


@dataclass(frozen=True)
class Segment:
    role: str
    modality: str
    start: int
    end: int  # exclusive

    def as_dict(self) -> dict:
        return {"role": self.role, "modality": self.modality, "start": self.start, "end": self.end}


@dataclass
class Sample:
    id: str
    source: str
    task: str
    input_ids: list[int]
    segments: list[Segment]
    meta: dict = field(default_factory=dict)
    content_hash: str = ""

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def to_row(self) -> dict:
        return {"id": self.id, "source": self.source, "task": self.task, "input_ids": self.input_ids,
                "segments": [s.as_dict() for s in self.segments], "n_tokens": len(self.input_ids),
                "meta": meta_json(self.meta), "content_hash": self.content_hash}

    @classmethod
    def from_row(cls, row: dict) -> "Sample":
        meta = row.get("meta") or "{}"
        return cls(id=row["id"], source=row["source"], task=row["task"], input_ids=list(row["input_ids"]),
                   segments=[Segment(**s) for s in row["segments"]],
                   meta=json.loads(meta) if isinstance(meta, str) else meta,
                   content_hash=row.get("content_hash") or "")


def rows_to_table(samples: Iterable[Sample]) -> pa.Table:
    """Samples -> a ROW_SCHEMA table, built column by column (the same table ``from_pylist`` of ``to_row`` dicts
    gives, tested; a unit writes thousands of rows, and a dict per row and per segment was most of its part write)."""
    samples = list(samples)
    ids = [s.input_ids for s in samples]
    segs = [s.segments for s in samples]
    flat_segs = [g for row in segs for g in row]
    seg_struct = pa.StructArray.from_arrays(
        [pa.array([g.role for g in flat_segs], pa.string()), pa.array([g.modality for g in flat_segs], pa.string()),
         pa.array([g.start for g in flat_segs], pa.int32()), pa.array([g.end for g in flat_segs], pa.int32())],
        fields=list(SEGMENT_TYPE))
    seg_offsets = np.zeros(len(samples) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in segs], out=seg_offsets[1:])
    columns = [
        pa.array([s.id for s in samples], pa.string()),
        pa.array([s.source for s in samples], pa.string()),
        pa.array([s.task for s in samples], pa.string()),
        pa.array(ids, pa.list_(pa.int32())),
        pa.ListArray.from_arrays(pa.array(seg_offsets), seg_struct, type=pa.list_(SEGMENT_TYPE)),
        pa.array([len(x) for x in ids], pa.int32()),
        pa.array([meta_json(s.meta) for s in samples], pa.string()),
        pa.array([s.content_hash for s in samples], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=ROW_SCHEMA)


# ---------------------------------------------------------------------------------------------------------------
# Labels and loss weights
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossPolicy:
    """How labels and weights derive from a row.

    ``on``: ``all`` (pretraining: every token is a target) or ``assistant`` (SFT: only assistant segments).
    ``response_weight`` applies to the response tail of ``response_tasks`` (reference §4: the last len(response)
    label positions, final eos excluded). ``transcript_weight`` applies to tokens strictly between <-Ins-> and
    <-Res-> (SFT). AR-Omni's defaults: 2.0 and 1.0 (no extra weight) unless a recipe says otherwise.
    """
    on: str = "all"
    response_weight: float = 2.0
    response_tasks: tuple[str, ...] = ("image_caption", "speech_to_text")
    transcript_weight: float = 1.0


def labels_and_weights(input_ids: Sequence[int], segments: Sequence, task: str,
                       policy: LossPolicy = LossPolicy(), layout: Layout = AR_OMNI_V0_1
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Derive (labels, weights) for one row, HF convention: labels[t] is the target *for* position t (the model
    shifts). labels are -100 where no loss; weights are 0 there and >0 elsewhere.

    The one function the trainer, the exporter and the tests use.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    n = len(ids)
    segs = [s if isinstance(s, Segment) else Segment(**s) for s in segments]
    if policy.on == "all":
        mask = np.ones(n, dtype=bool)
        mask[0] = ids[0] != layout.bos  # bos is never a target: nothing precedes it
    elif policy.on == "assistant":
        mask = np.zeros(n, dtype=bool)
        for s in segs:
            if s.role == "assistant":
                mask[s.start:s.end] = True
    else:
        raise ValueError(f"unknown loss policy on={policy.on!r} (allowed: all, assistant)")
    labels = np.where(mask, ids, IGNORE_INDEX)
    weights = mask.astype(np.float32)

    if task in policy.response_tasks and policy.response_weight != 1.0:
        resp = response_length(segs, ids, layout)
        valid = np.flatnonzero(mask)
        if len(valid) and ids[valid[-1]] in layout.stop_ids:
            valid = valid[:-1]  # the final eos is excluded from the weighted tail
        if resp > 0:
            weights[valid[-resp:]] = policy.response_weight
    if policy.transcript_weight != 1.0:
        ins = np.flatnonzero(ids == layout.ins)
        for i in ins:
            after = np.flatnonzero(ids[i + 1:] == layout.res)
            if len(after):
                j = i + 1 + after[0]
                sel = np.arange(i + 1, j)
                weights[sel[mask[sel]]] = policy.transcript_weight
    return labels, weights


def response_length(segments: Sequence[Segment], ids: np.ndarray, layout: Layout = AR_OMNI_V0_1) -> int:
    """Number of assistant tokens, final stop id excluded (AR-Omni's ``len(response)``)."""
    n = sum(s.end - s.start for s in segments if s.role == "assistant")
    if n and int(ids[-1]) in layout.stop_ids:
        n -= 1
    return n


def image_code_positions(input_ids: Sequence[int], segments: Sequence, role: str = "assistant",
                         layout: Layout = AR_OMNI_V0_1) -> np.ndarray:
    """Positions of the image codes (without 8197/8196) inside image segments of ``role``: where the perceptual
    loss applies for text_to_image."""
    spans = [np.arange(s.start + 1, s.end - 1, dtype=np.int64)
             for s in (s if isinstance(s, Segment) else Segment(**s) for s in segments)
             if s.modality == "image" and s.role == role]
    return np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)  # arrays, not lists: the loader's hot path


# ---------------------------------------------------------------------------------------------------------------
# Grammar check
# ---------------------------------------------------------------------------------------------------------------
def _where(k: int, s) -> str:
    """A segment as check_row's messages name it (formatted only when there is a problem to report)."""
    return f"segment {k} ({s.role}/{s.modality} {s.start}:{s.end})"


_TEXT, _IMAGE, _SPEECH, _MARKER = 0, 1, 2, 3


def _id_classes(layout: Layout) -> np.ndarray:
    """Every vocabulary id's class: text, image code, speech code, or span marker (boi/eoi/boa/eoa), as one uint8
    table per layout (is_text_id etc. for the whole vocabulary at once)."""
    def build():
        t = np.full(layout.vocab_size, _TEXT, dtype=np.uint8)
        t[layout.image_code_start:layout.image_code_end + 1] = _IMAGE
        t[layout.speech_code_start:layout.speech_code_end + 1] = _SPEECH
        t[[layout.boi, layout.eoi, layout.boa, layout.eoa]] = _MARKER
        t.flags.writeable = False
        return t
    return cached(layout, "id_classes", build)


def check_row(input_ids: Sequence[int], segments: Sequence, layout: Layout = AR_OMNI_V0_1) -> list[str]:
    """Every way this row breaks the sample grammar, as short messages; [] when it is well formed. The id classes
    (image code, speech code, text id) are computed once over the whole row as numpy masks."""
    a = np.asarray(input_ids, dtype=np.int64).reshape(-1)
    ids = input_ids if type(input_ids) is list else a.tolist()   # a row's ids are already a list of ints
    n = len(ids)
    problems: list[str] = []
    if n == 0:
        return ["row is empty"]
    in_vocab = (a >= 0) & (a < layout.vocab_size)
    if not in_vocab.all():
        problems.append(f"ids outside 0..{layout.vocab_size - 1}: {a[~in_vocab][:3].tolist()}")
    cls = _id_classes(layout)[np.where(in_vocab, a, 0)]   # one table lookup instead of a dozen comparisons a row
    image, speech = cls == _IMAGE, cls == _SPEECH
    text = in_vocab & (cls == _TEXT)
    if ids[0] != layout.bos:
        problems.append(f"row starts with {ids[0]}, not bos {layout.bos}")
    if ids[-1] not in layout.stop_ids:
        problems.append(f"row ends with {ids[-1]}, not {layout.eos} or {layout.eom}")

    segs = [s if isinstance(s, Segment) else Segment(**s) for s in segments]
    pos = 0
    for k, s in enumerate(segs):
        if s.role not in ROLES or s.modality not in MODALITIES:
            problems.append(f"{_where(k, s)}: role must be one of {ROLES}, modality one of {MODALITIES}")
            continue
        if s.start != pos:
            problems.append(f"{_where(k, s)}: starts at {s.start}, previous ended at {pos} (gap or overlap)")
        if s.start < 0 or s.end <= s.start or s.end > n:   # a negative start would slice from the end
            problems.append(f"{_where(k, s)}: bad bounds for a row of {n} tokens")
            pos = max(pos, min(s.end, n))
            continue
        pos = s.end
        if s.modality == "image":
            body = ids[s.start:s.end]
            if body[0] != layout.boi or body[-1] != layout.eoi:
                problems.append(f"{_where(k, s)}: image segment must be [{layout.boi}] codes [{layout.eoi}]")
            codes = body[1:-1]
            if len(codes) != layout.image_tokens:
                problems.append(f"{_where(k, s)}: {len(codes)} image codes, expected {layout.image_tokens}")
            if not image[s.start + 1:s.end - 1].all():
                problems.append(f"{_where(k, s)}: non-image id inside the image span")
        elif s.modality == "speech":
            body = ids[s.start:s.end]
            if body[0] != layout.boa or body[-1] != layout.eoa:
                problems.append(f"{_where(k, s)}: speech segment must be [{layout.boa}] codes [{layout.eoa}]")
            if not speech[s.start + 1:s.end - 1].all():
                problems.append(f"{_where(k, s)}: non-speech id inside the speech span")
        else:
            ok = text[s.start:s.end]
            if not ok.all():
                stray = a[s.start:s.end][~ok][:3].tolist()
                problems.append(f"{_where(k, s)}: image/speech codes or span markers in a text segment: {stray}")
    if pos != n:
        problems.append(f"segments cover {pos} of {n} tokens")
    return problems


_ROLE_CODES = {r: i for i, r in enumerate(ROLES)}
_MODALITY_CODES = {m: i for i, m in enumerate(MODALITIES)}
_M_TEXT, _M_IMAGE, _M_SPEECH = (_MODALITY_CODES[m] for m in MODALITIES)


def check_rows(rows: Sequence[tuple[Sequence[int], Sequence]], layout: Layout = AR_OMNI_V0_1) -> list[list[str]]:
    """``check_row`` for many ``(input_ids, segments)`` rows at once: the same list for every row ([] when well formed).

    Every rule is evaluated over all the rows' ids and segments as flat arrays (a unit checks hundreds of rows in a
    few numpy calls instead of a dozen per row); a row found at fault gets its messages from ``check_row``, the
    definition, so the messages are the same. Tested equal to ``check_row`` on well-formed and broken rows."""
    n = len(rows)
    out: list[list[str]] = [[] for _ in range(n)]
    if n == 0:
        return out
    lens = np.fromiter((len(ids) for ids, _ in rows), np.int64, n)
    start_of = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=start_of[1:])
    flat = np.fromiter(itertools.chain.from_iterable(ids for ids, _ in rows), np.int64, int(start_of[-1]))
    segs = [(k, s if isinstance(s, Segment) else Segment(**s)) for k, (_, row_segs) in enumerate(rows)
            for s in row_segs]
    m = len(segs)
    seg_row = np.fromiter((k for k, _ in segs), np.int64, m)
    role = np.fromiter((_ROLE_CODES.get(s.role, -1) for _, s in segs), np.int64, m)
    modality = np.fromiter((_MODALITY_CODES.get(s.modality, -1) for _, s in segs), np.int64, m)
    start = np.fromiter((s.start for _, s in segs), np.int64, m)
    end = np.fromiter((s.end for _, s in segs), np.int64, m)

    bad = lens == 0
    nonempty = ~bad
    in_vocab = (flat >= 0) & (flat < layout.vocab_size)
    row_of = np.repeat(np.arange(n), lens)
    bad |= np.bincount(row_of[~in_vocab], minlength=n) > 0
    first = flat[np.minimum(start_of[:-1], max(len(flat) - 1, 0))] if len(flat) else np.zeros(n, np.int64)
    last = flat[np.maximum(start_of[1:] - 1, 0)] if len(flat) else np.zeros(n, np.int64)
    bad |= nonempty & ((first != layout.bos) | ~np.isin(last, list(layout.stop_ids)))

    # segments tile each row: the first starts at 0, each next one where the previous ended, the last ends at n
    new_row = np.ones(m, dtype=bool)
    new_row[1:] = seg_row[1:] != seg_row[:-1]
    expected = np.where(new_row, 0, np.concatenate([[0], end[:-1]]))
    bounds_ok = (end > start) & (end <= lens[seg_row]) & (start >= 0)
    seg_bad = (role < 0) | (modality < 0) | (start != expected) | ~bounds_ok
    has_seg = np.bincount(seg_row, minlength=n) > 0
    last_seg = np.searchsorted(seg_row, np.arange(n), side="right") - 1
    covered = np.where(has_seg, end[np.maximum(last_seg, 0)] if m else 0, 0)
    bad |= nonempty & (covered != lens)

    # what each segment holds, by prefix sums of the id classes over the flat ids
    cls = _id_classes(layout)[np.where(in_vocab, flat, 0)]
    def prefix(mask):
        c = np.zeros(len(mask) + 1, dtype=np.int64)
        np.cumsum(mask, out=c[1:])
        return c
    n_text, n_image, n_speech = prefix(in_vocab & (cls == _TEXT)), prefix(cls == _IMAGE), prefix(cls == _SPEECH)
    a = np.where(bounds_ok, start_of[seg_row] + start, 0)   # absolute [a, b); broken bounds are already bad
    b = np.where(bounds_ok, start_of[seg_row] + end, 0)
    inner = np.maximum(b - a - 2, 0)
    a1, b1 = np.minimum(a + 1, b), np.maximum(b - 1, a)
    text_seg, image_seg, speech_seg = modality == _M_TEXT, modality == _M_IMAGE, modality == _M_SPEECH
    if len(flat):
        head, tail = flat[np.minimum(a, len(flat) - 1)], flat[np.maximum(b - 1, 0)]
    else:
        head = tail = np.zeros(m, np.int64)
    seg_bad |= bounds_ok & text_seg & (n_text[b] - n_text[a] != b - a)
    seg_bad |= bounds_ok & image_seg & ((head != layout.boi) | (tail != layout.eoi) | (b - a - 2 != layout.image_tokens)
                                        | (n_image[b1] - n_image[a1] != inner))
    seg_bad |= bounds_ok & speech_seg & ((head != layout.boa) | (tail != layout.eoa) | (b - a < 2)
                                         | (n_speech[b1] - n_speech[a1] != inner))
    bad |= np.bincount(seg_row[seg_bad], minlength=n) > 0
    for k in np.flatnonzero(bad):
        out[k] = check_row(*rows[k], layout)
    return out
