"""Labels, loss weights and perceptual positions for a whole row group at once, over its flat arrays.

``aromni.sample.labels_and_weights`` is the reference definition of labels and weights, one row at a time; this module
computes the same arrays for every row of a decoded row group in one compiled loop over the rows (numba; tests assert
equality row by row on the demo shards and on random rows, for both rules below). ``derive_flags`` gives them as one
byte of flags a token (``Derived``: the weight class, whose weights are a 4-entry table, and the perceptual mark),
which is what the loader slices samples out of and ships; ``derive`` spells the flags out as (labels, weights,
perceptual mask). Segments are clipped to their row (the build's grammar check keeps them inside it).

Two rules for the weights (``rule``):

* ``aromni`` (the reference above): the response tail excludes the final stop id (eos or eom) only; a transcript span
  runs from each ``<-Ins->`` to the first ``<-Res->`` after it.
* ``upstream`` (AR-Omni's trainers, ModalityDance/AR-Omni ``training/pretrain/pretrain_trainer.py`` and
  ``training/instruction-tuning/trainer.py``): every target equal to eos (2) is left out of the tail; each
  ``<-Ins->`` pairs with the first *unused* ``<-Res->`` after it; and, as upstream has one trainer per stage, the
  tail is weighted only in pretraining (targets ``all``) and the transcript only in SFT (targets ``assistant``).
  On well-formed rows with AR-Omni's stage settings both rules give the same weights.

Perceptual positions: the image codes (boi and eoi excluded) of every image span whose codes are targets, in rows
whose task is among ``perceptual_tasks`` (``"*"``: every row). Rows imported with stored labels (AR-Omni-Instruct:
no segments, no task) count as task ``labels``; their spans are found as upstream does: the 1024 ids after each
labelled boi, when they lie inside the row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from aromni.layout import Layout
from aromni.sample import IGNORE_INDEX, LossPolicy
from aromni.train.memops import fill_bytes

# One byte of flags per token carries everything but the ids (the loader's batches and the trainer's expansion read
# them): the weight class in the low two bits (0: no target, labels -100 and weight 0; 1: a target of weight 1;
# 2: the response tail's weight; 3: the transcript's weight), the perceptual mark, and (set by the loader's collate)
# the first token of a packed piece, where position ids restart.
WEIGHT_CLASS = 3
PERCEPT = 4
PIECE_START = 8
LABELS_TASK = "labels"      # the task name of rows that carry stored labels instead of segments
EVERY_TASK = "*"
WEIGHT_RULES = ("aromni", "upstream")


@dataclass
class FlatRows:
    """A decoded row group: ``ids[offsets[r]:offsets[r+1]]`` is row r and ``task_names[task_codes[r]]`` its task
    (None: a row with stored labels), the task column as Arrow dictionary-encodes it (a per-task test is one per
    name, not one per row). Segment fields are flat over the rows (``seg_offsets`` per row; ``seg_start``/``seg_end``
    relative to the row). ``labels``: stored labels instead."""
    ids: np.ndarray
    offsets: np.ndarray
    task_codes: np.ndarray
    task_names: list
    seg_offsets: np.ndarray | None = None
    seg_start: np.ndarray | None = None
    seg_end: np.ndarray | None = None
    seg_assistant: np.ndarray | None = None   # bool per segment
    seg_image: np.ndarray | None = None       # bool per segment
    seg_speech: np.ndarray | None = None      # bool per segment
    labels: np.ndarray | None = None

    @property
    def tasks(self) -> list:
        """Each row's task name."""
        return [self.task_names[c] for c in self.task_codes.tolist()]


def _task_rows(g: FlatRows, wanted) -> np.ndarray:
    """Per row: is its task among ``wanted`` (rows with stored labels count as task ``labels``): one test per distinct
    task name, then a lookup per row."""
    if EVERY_TASK in wanted:
        return np.ones(len(g.task_codes), dtype=bool)
    hit = np.array([(LABELS_TASK if t is None else t) in wanted for t in g.task_names], dtype=bool)
    return hit[g.task_codes]


# targets (``mode`` of _derive_rows): every token but a leading bos (pretraining), the assistant segments (SFT), or
# the flags as given (rows with stored labels: 1 where the label is not -100)
_ALL, _ASSISTANT, _GIVEN = 0, 1, 2
# which targets the response tail skips: the row's last target when it is a stop id (aromni), every eos (upstream)
_LEAVE_LAST_STOP, _LEAVE_EOS = 0, 1


@njit(cache=True, nogil=True)
def _derive_rows(ids, off, mode, seg_off, seg_start, seg_end, seg_assistant, seg_image, percept_row, image_tokens,
                 tail_row, leave, transcript, upstream_pairs, bos, boi, eos, ins, res, stop_ids, flags):
    """Write every row's flags (a row's tokens are ids[off[r]:off[r + 1]]; its segments seg_*[seg_off[r]:seg_off[r +
    1]], relative to the row and clipped to it): targets (``mode``), then the perceptual mark on the image codes of
    rows with ``percept_row``, the response tail (class 2) of rows with ``tail_row``, the transcript (class 3) when
    ``transcript``. One pass over each row's tokens for each rule that applies, no temporaries."""
    for r in range(len(off) - 1):
        a, b = off[r], off[r + 1]
        if a >= b:
            continue
        n = b - a
        s0, s1 = seg_off[r], seg_off[r + 1]
        # ---- targets: weight class 1
        if mode == _ALL:
            _fill(flags, a, b, 1)
        elif mode == _ASSISTANT:
            _fill(flags, a, b, 0)
            for s in range(s0, s1):
                if seg_assistant[s]:
                    _fill(flags, a + min(max(seg_start[s], 0), n), a + min(max(seg_end[s], 0), n), 1)
        # ---- perceptual mark: the codes of image spans (boi and eoi excluded) that are targets
        if percept_row[r]:
            if mode == _GIVEN:             # (no segments) the image_tokens ids after a labelled boi, inside the row
                for p in range(a, b - image_tokens):
                    if ids[p] == boi and flags[p] & 1:
                        _mark_targets(flags, p + 1, p + 1 + image_tokens)
            else:
                for s in range(s0, s1):
                    if seg_image[s]:
                        lo, hi = a + min(max(seg_start[s], 0), n) + 1, a + min(max(seg_end[s], 0), n) - 1
                        if mode == _ALL:
                            _fill(flags, lo, hi, 1 | PERCEPT)     # (every code is a target)
                        else:
                            _mark_targets(flags, lo, hi)
        if mode == _ALL and ids[a] == bos:
            flags[a] = 0                    # bos is never a target: nothing precedes it
        # ---- the response tail: the last len(response) targets, skipping ``leave``'s ids
        if tail_row[r]:
            resp = 0
            for s in range(s0, s1):
                if seg_assistant[s]:
                    resp += seg_end[s] - seg_start[s]
            if resp > 0 and _is_stop(ids[b - 1], stop_ids):
                resp -= 1                   # len(response) leaves out the row's final stop id
            last = True                     # (aromni) the first target met from the end is the row's last
            p = b - 1
            while resp > 0 and p >= a:
                f = flags[p]
                if f & WEIGHT_CLASS:
                    skip = ids[p] == eos if leave == _LEAVE_EOS else last and _is_stop(ids[p], stop_ids)
                    last = False
                    if not skip:
                        flags[p] = (f & PERCEPT) | 2
                        resp -= 1
                p -= 1
        # ---- the transcript: targets strictly between an <-Ins-> and the <-Res-> it pairs with, in the row.
        # aromni pairs each <-Ins-> with the first <-Res-> after it, upstream with the first one no earlier <-Ins->
        # took. Either way a position is inside iff an <-Ins-> before it is still waiting (upstream: a queue of them,
        # each <-Res-> takes the oldest; aromni: a <-Res-> answers all) and a <-Res-> comes after it in the row.
        if transcript:
            last_res = a                    # (none: nothing is inside)
            for p in range(b - 1, a - 1, -1):
                if ids[p] == res:
                    last_res = p
                    break
            waiting = 0
            for p in range(a, last_res):
                t = ids[p]
                if t == res:
                    waiting = waiting - 1 if upstream_pairs and waiting else 0
                if waiting:
                    f = flags[p]
                    if f & WEIGHT_CLASS:
                        flags[p] = (f & PERCEPT) | 3
                if t == ins:
                    waiting += 1


@njit(cache=True, nogil=True)
def _fill(flags, lo, hi, value):
    """flags[lo:hi] = value (nothing when hi <= lo), as one memset."""
    if hi > lo:
        fill_bytes(flags, lo, hi - lo, value)


@njit(cache=True, nogil=True)
def _mark_targets(flags, lo, hi):
    """The perceptual mark on the targets of lo..hi, while the weight class of a target is still 1 (no branch: the
    loop vectorises)."""
    for q in range(lo, hi):
        flags[q] |= (flags[q] & 1) * PERCEPT


@njit(cache=True, nogil=True)
def _is_stop(x, stop_ids):
    for v in stop_ids:
        if x == v:
            return True
    return False


@dataclass
class Derived:
    """Labels, weights and perceptual positions of a row group in one byte a token (``flags``, see WEIGHT_CLASS):
    labels are the ids where the weight class is not 0 (``labels``: the stored labels instead, only for rows
    imported with labels that differ from their ids), weights are ``weight_table[class]``."""
    flags: np.ndarray             # uint8 [n]
    weight_table: np.ndarray      # float32 [4]: the weight of each class
    labels: np.ndarray | None = None

    def arrays(self, ids: np.ndarray, lo: int = 0, hi: int | None = None):
        """(labels, weights float32, perceptual mask bool) of positions lo..hi."""
        f = self.flags[lo:hi]
        cls = f & WEIGHT_CLASS
        labels = self.labels[lo:hi] if self.labels is not None else np.where(cls != 0, ids[lo:hi], IGNORE_INDEX)
        return labels, self.weight_table[cls], (f & PERCEPT) != 0


def weight_table(policy: LossPolicy) -> np.ndarray:
    return np.array([0.0, 1.0, policy.response_weight, policy.transcript_weight], dtype=np.float32)


def derive(g: FlatRows, policy: LossPolicy, layout: Layout, perceptual_tasks=("text_to_image",),
           rule: str = "aromni") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels int, weights float32, perceptual mask bool), flat over the row group, HF convention (labels[t] is
    the target of position t; the model shifts): ``derive_flags`` spelled out."""
    return derive_flags(g, policy, layout, perceptual_tasks, rule).arrays(np.asarray(g.ids))


def derive_flags(g: FlatRows, policy: LossPolicy, layout: Layout, perceptual_tasks=("text_to_image",),
                 rule: str = "aromni") -> Derived:
    """The row group's labels, weights and perceptual positions as one byte of flags a token: the per-task tests here
    (one per distinct task name), every row's flags in one compiled loop (``_derive_rows``)."""
    if rule not in WEIGHT_RULES:
        raise ValueError(f"unknown weight rule {rule!r} (allowed: {', '.join(WEIGHT_RULES)})")
    if policy.on not in ("all", "assistant"):
        raise ValueError(f"unknown loss policy on={policy.on!r} (allowed: all, assistant)")
    ids = np.asarray(g.ids)                       # as stored (int32): no widened copy
    off = np.asarray(g.offsets, dtype=np.int64)
    R = len(off) - 1
    stored = None
    if g.labels is not None:                       # stored labels: used as they are
        labels = np.asarray(g.labels)
        given = labels != IGNORE_INDEX
        if not np.array_equal(labels[given], ids[given]):
            stored = labels                        # (labels that are not the ids: carried as they are)
        flags, mode = given.view(np.uint8), _GIVEN
        seg_off, seg_start, no = np.zeros(R + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
        seg_end, seg_assistant, seg_image = seg_start, no, no
    else:
        flags, mode = np.empty(len(ids), np.uint8), _ALL if policy.on == "all" else _ASSISTANT
        seg_off, seg_start, seg_end = (np.asarray(x, np.int64) for x in (g.seg_offsets, g.seg_start, g.seg_end))
        seg_assistant, seg_image = np.asarray(g.seg_assistant, bool), np.asarray(g.seg_image, bool)
    # (upstream has one trainer per stage: only its pretraining trainer weights the tail, only its SFT trainer the
    # transcript)
    upstream = rule == "upstream"
    tail = (g.labels is None and policy.response_weight != 1.0 and bool(policy.response_tasks)
            and not (upstream and policy.on == "assistant"))
    tail_rows = _task_rows(g, set(policy.response_tasks)) if tail else np.zeros(R, bool)
    transcript = policy.transcript_weight != 1.0 and not (upstream and policy.on == "all")
    _derive_rows(ids, off, mode, seg_off, seg_start, seg_end, seg_assistant, seg_image,
                 _task_rows(g, set(perceptual_tasks)), layout.image_tokens, tail_rows,
                 _LEAVE_EOS if upstream else _LEAVE_LAST_STOP, transcript, upstream, layout.bos, layout.boi,
                 layout.eos, layout.ins, layout.res, np.asarray(layout.stop_ids, ids.dtype), flags)
    return Derived(flags, weight_table(policy), stored)
