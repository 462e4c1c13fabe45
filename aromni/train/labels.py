"""Labels, loss weights and perceptual positions for a whole row group at once, over flat numpy arrays.

``aromni.sample.labels_and_weights`` is the reference definition of labels and weights, one row at a time; this module
computes the same arrays for every row of a decoded row group with a handful of vectorised passes (a test asserts
equality row by row on the demo shards and on random rows). The loader slices samples out of the result, so the
per-row Python cost of the hot path is a few array slices.

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

from aromni.layout import Layout
from aromni.sample import IGNORE_INDEX, LossPolicy

LABELS_TASK = "labels"      # the task name of rows that carry stored labels instead of segments
EVERY_TASK = "*"
WEIGHT_RULES = ("aromni", "upstream")


@dataclass
class FlatRows:
    """A decoded row group: ``ids[offsets[r]:offsets[r+1]]`` is row r. Segment fields are flat over the rows
    (``seg_offsets`` per row; ``seg_start``/``seg_end`` relative to the row). ``labels``: stored labels instead."""
    ids: np.ndarray
    offsets: np.ndarray
    tasks: list
    seg_offsets: np.ndarray | None = None
    seg_start: np.ndarray | None = None
    seg_end: np.ndarray | None = None
    seg_assistant: np.ndarray | None = None   # bool per segment
    seg_image: np.ndarray | None = None       # bool per segment
    seg_speech: np.ndarray | None = None      # bool per segment
    labels: np.ndarray | None = None


def _cover(n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Boolean [n]: True inside any [lo, hi) range (ranges may overlap or be empty)."""
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    keep = hi > lo
    if not keep.any():
        return np.zeros(n, dtype=bool)
    d = np.bincount(lo[keep], minlength=n + 1)[:n + 1] - np.bincount(hi[keep], minlength=n + 1)[:n + 1]
    return np.cumsum(d[:n]) > 0


def _task_rows(tasks: list, wanted) -> np.ndarray:
    names = [LABELS_TASK if t is None else t for t in tasks]
    if EVERY_TASK in wanted:
        return np.ones(len(names), dtype=bool)
    return np.fromiter((t in wanted for t in names), dtype=bool, count=len(names))


def _rank_from_end(flag: np.ndarray, row: np.ndarray, starts: np.ndarray, R: int) -> np.ndarray:
    """For each position: how many flagged positions of its row come after it (0 for the row's last flagged one)."""
    c = np.cumsum(flag, dtype=np.int64)
    before = np.concatenate([[0], c])[starts]          # flagged positions before each row
    total = np.bincount(row, weights=flag.astype(np.float64), minlength=R).astype(np.int64)
    return total[row] - (c - before[row])


def derive(g: FlatRows, policy: LossPolicy, layout: Layout, perceptual_tasks=("text_to_image",),
           rule: str = "aromni") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels int64, weights float32, perceptual mask bool), flat over the row group, HF convention (labels[t] is
    the target of position t; the model shifts)."""
    if rule not in WEIGHT_RULES:
        raise ValueError(f"unknown weight rule {rule!r} (allowed: {', '.join(WEIGHT_RULES)})")
    ids = np.asarray(g.ids, dtype=np.int64)
    off = np.asarray(g.offsets, dtype=np.int64)
    n, R = len(ids), len(off) - 1
    lens = np.diff(off)
    starts = off[:-1]
    row = np.repeat(np.arange(R), lens)
    nonempty = lens > 0

    if g.labels is not None:                       # stored labels: used as they are
        labels = np.asarray(g.labels, dtype=np.int64)
        mask = labels != IGNORE_INDEX
        seg_row = None
    else:
        seg_row = np.repeat(np.arange(R), np.diff(g.seg_offsets))
        gs = starts[seg_row] + g.seg_start
        ge = starts[seg_row] + g.seg_end
        if policy.on == "all":
            mask = np.ones(n, dtype=bool)
            mask[starts[nonempty]] = ids[starts[nonempty]] != layout.bos   # bos is never a target
        elif policy.on == "assistant":
            mask = _cover(n, gs[g.seg_assistant], ge[g.seg_assistant])
        else:
            raise ValueError(f"unknown loss policy on={policy.on!r} (allowed: all, assistant)")
        labels = np.where(mask, ids, IGNORE_INDEX)
    weights = mask.astype(np.float32)

    # ---- the response tail of response_tasks (segments rows: the response length comes from the segments) ----
    # (upstream: only its pretraining trainer weights the tail, only its SFT trainer the transcript)
    upstream_sft = rule == "upstream" and policy.on == "assistant"
    if seg_row is not None and policy.response_weight != 1.0 and policy.response_tasks and not upstream_sft:
        tail_rows = _task_rows(g.tasks, set(policy.response_tasks))
        if tail_rows.any():
            asst = g.seg_assistant
            resp = np.bincount(seg_row[asst], weights=(ge - gs)[asst], minlength=R).astype(np.int64)
            last = np.full(R, -1, dtype=np.int64)
            last[nonempty] = ids[off[1:][nonempty] - 1]
            resp -= (resp > 0) & np.isin(last, layout.stop_ids)
            if rule == "aromni":                   # the row's last target leaves the tail if it is a stop id
                final = mask & (_rank_from_end(mask, row, starts, R) == 0) & np.isin(ids, layout.stop_ids)
                eligible = mask & ~final
            else:                                  # upstream: every eos target leaves it
                eligible = mask & (ids != layout.eos)
            k = _rank_from_end(eligible, row, starts, R)
            tail = eligible & tail_rows[row] & (resp[row] > 0) & (k < resp[row])
            weights[tail] = policy.response_weight

    # ---- the transcript between <-Ins-> and <-Res-> (SFT) ----------------------------------------------------
    if policy.transcript_weight != 1.0 and not (rule == "upstream" and policy.on == "all"):
        ins, res = np.flatnonzero(ids == layout.ins), np.flatnonzero(ids == layout.res)
        lo, hi = [], []
        used = np.zeros(len(res), dtype=bool)
        for i in ins:                              # the markers are rare: a loop over them, not over tokens
            j = int(np.searchsorted(res, i, side="right"))
            if rule == "upstream":
                while j < len(res) and used[j]:
                    j += 1
            if j < len(res) and row[res[j]] == row[i]:
                used[j] = True
                lo.append(i + 1)
                hi.append(res[j])
        inside = _cover(n, np.asarray(lo, np.int64), np.asarray(hi, np.int64)) & mask
        weights[inside] = policy.transcript_weight

    # ---- perceptual positions: the codes of every labelled image span in the chosen tasks ---------------------
    percept_rows = _task_rows(g.tasks, set(perceptual_tasks))
    if not percept_rows.any():
        return labels, weights, np.zeros(n, dtype=bool)
    if seg_row is not None:
        img = g.seg_image & percept_rows[seg_row]
        codes = _cover(n, gs[img] + 1, ge[img] - 1)
    else:
        boi = np.flatnonzero((ids == layout.boi) & percept_rows[row] & (labels != IGNORE_INDEX))
        boi = boi[boi + layout.image_tokens < off[1:][row[boi]]]     # the whole span lies inside the row
        codes = _cover(n, boi + 1, boi + 1 + layout.image_tokens)
    return labels, weights, codes & (labels != IGNORE_INDEX)
