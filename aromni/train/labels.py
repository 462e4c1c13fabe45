"""Labels, loss weights and perceptual positions for a whole row group at once, over flat numpy arrays.

``aromni.sample.labels_and_weights`` is the reference definition of labels and weights, one row at a time; this module
computes the same arrays for every row of a decoded row group with a handful of vectorised passes (a test asserts
equality row by row on the demo shards and on random rows). ``derive_flags`` gives them as one byte of flags a token
(``Derived``: the weight class, whose weights are a 4-entry table, and the perceptual mark), which is what the loader
slices samples out of and ships; ``derive`` spells the flags out as (labels, weights, perceptual mask).

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


def _cover(n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Boolean [n]: True inside any [lo, hi) range (ranges may overlap or be empty). Ranges are segments, a few per
    row: then one slice assignment each (a memset) beats a pass over n; many tiny ranges take one cumsum instead."""
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    keep = hi > lo
    lo, hi = lo[keep], hi[keep]
    if len(lo) * 32 <= n:
        out = np.zeros(n, dtype=bool)
        _fill(out.view(np.uint8), lo, hi, 1)
        return out
    d = np.zeros(n + 1, dtype=np.int32)
    np.add.at(d, lo, 1)
    np.add.at(d, hi, -1)
    return np.cumsum(d[:n], dtype=np.int32) > 0


def _fill(out: np.ndarray, lo: np.ndarray, hi: np.ndarray, value: int) -> None:
    """out[lo[i]:hi[i]] = value for every range (uint8; an empty range, hi <= lo, sets nothing): a memoryview copy
    from a run of the value per range (half the cost of numpy's slice fill)."""
    keep = hi > lo
    if not keep.all():
        lo, hi = lo[keep], hi[keep]
    if not len(lo):
        return
    dst, run = memoryview(out), memoryview(bytes([value]) * int((hi - lo).max()))
    for a, b in zip(lo.tolist(), hi.tolist()):
        dst[a:b] = run[:b - a]


def _tail_starts(unflagged: np.ndarray, starts: np.ndarray, ends: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per row [starts[r], ends[r]): where its last ``count[r]`` flagged positions begin (its start when it has
    fewer), from the sorted *unflagged* positions (a few per row when most positions are flagged), so no pass over
    every token: rank(p) = p - #unflagged before p, and the flagged position of rank k is
    k + #{i: unflagged[i] - i <= k}."""
    rank_end = ends - np.searchsorted(unflagged, ends)        # flagged positions before each row's end
    k = rank_end - count                                      # rank of the first flagged position kept
    first = k + np.searchsorted(unflagged - np.arange(len(unflagged)), k, side="right")
    return np.clip(first, starts, ends)


def _positions(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Every position of the ranges [lo, hi), concatenated."""
    size = hi - lo
    total = int(size.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(lo - (np.cumsum(size) - size), size) + np.arange(total)


def _last_flagged(flag: np.ndarray, starts: np.ndarray, ends: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Positions of the last ``count[r]`` flagged positions of each row [starts[r], ends[r]) (all of the row's
    flagged ones when it has fewer), concatenated."""
    pos = _positions(_tail_starts(np.flatnonzero(~flag), starts, ends, count), ends)
    return pos[flag[pos]]


def _task_rows(g: FlatRows, wanted) -> np.ndarray:
    """Per row: is its task among ``wanted`` (rows with stored labels count as task ``labels``)."""
    if EVERY_TASK in wanted:
        return np.ones(len(g.task_codes), dtype=bool)
    hit = np.array([(LABELS_TASK if t is None else t) in wanted for t in g.task_names], dtype=bool)
    return hit[g.task_codes]


def _members(x: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """x in sorted_values, per element (np.isin builds a table as wide as the values' range: a row group's)."""
    if not len(sorted_values):
        return np.zeros(len(x), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)
    return sorted_values[at] == x


def _is_any(x: np.ndarray, values) -> np.ndarray:
    """x == any of a few values (np.isin sorts: for two stop ids, two compares are cheaper)."""
    out = x == values[0]
    for v in values[1:]:
        out |= x == v
    return out


def _last_assistant_target(R: int, seg_row, seg_end, seg_assistant) -> np.ndarray:
    """Per row (SFT: targets are the assistant segments): the position of its last target, the end of its last
    assistant segment; -1 when none. (Pretraining rows: their last token, unless a hole; see derive_flags.)"""
    last = np.full(R, -1, dtype=np.int64)
    np.maximum.at(last, seg_row[seg_assistant], seg_end[seg_assistant] - 1)
    return last


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
    """The row group's labels, weights and perceptual positions as one byte of flags a token. Pretraining rows
    (``on: all``) never get a target mask: their only non-targets are a leading bos per row (``holes``), so each
    step works from those, the row ends and the segments, and one pass over the tokens (writing the flags) is all
    a row group costs. (Large temporaries cost more than their pass here: a fresh array of a row group's size is
    fresh pages from the kernel.)"""
    if rule not in WEIGHT_RULES:
        raise ValueError(f"unknown weight rule {rule!r} (allowed: {', '.join(WEIGHT_RULES)})")
    ids = np.asarray(g.ids)                       # int32 as stored: no widened copy
    off = np.asarray(g.offsets, dtype=np.int64)
    n, R = len(ids), len(off) - 1
    lens = np.diff(off)
    starts, ends = off[:-1], off[1:]
    nonempty = lens > 0

    stored = None
    mask = holes = None                            # targets: mask, or (on all) everything but the holes
    if g.labels is not None:                       # stored labels: used as they are
        labels = np.asarray(g.labels)
        mask = labels != IGNORE_INDEX
        seg_row = None
        if not np.array_equal(labels[mask], ids[mask]):
            stored = labels                        # (labels that are not the ids: carried as they are)
    else:
        seg_row = np.repeat(np.arange(R), np.diff(g.seg_offsets))
        gs = starts[seg_row] + g.seg_start
        ge = starts[seg_row] + g.seg_end
        if policy.on == "all":
            first = starts[nonempty]
            holes = first[ids[first] == layout.bos]   # bos is never a target
        elif policy.on == "assistant":
            mask = _cover(n, gs[g.seg_assistant], ge[g.seg_assistant])
        else:
            raise ValueError(f"unknown loss policy on={policy.on!r} (allowed: all, assistant)")
    if mask is None:
        flags = np.ones(n, dtype=np.uint8)        # weight class 1 where a target, 0 elsewhere
        is_target = lambda pos: ~_members(pos, holes)  # noqa: E731
    else:
        flags = mask.view(np.uint8).copy()
        is_target = lambda pos: mask[pos]              # noqa: E731

    # ---- perceptual positions: the codes of every labelled image span in the chosen tasks ---------------------
    # (set first, while a target is a 1: the weight classes below keep the bit)
    percept_rows = _task_rows(g, set(perceptual_tasks))
    if percept_rows.any():
        if seg_row is not None:
            img = g.seg_image & percept_rows[seg_row]
            lo, hi = gs[img] + 1, ge[img] - 1
        else:
            boi = np.flatnonzero((ids == layout.boi) & mask)
            r = np.searchsorted(off, boi, side="right") - 1
            boi = boi[percept_rows[r] & (boi + layout.image_tokens < off[1:][r])]   # the whole span inside the row
            lo, hi = boi + 1, boi + 1 + layout.image_tokens
        if mask is None:                           # every code is a target (the holes are cleared below)
            _fill(flags, lo, hi, 1 | PERCEPT)
        else:                                      # only where labels are not IGNORE_INDEX
            codes = _cover(n, lo, hi)
            codes &= mask
            bits = codes.view(np.uint8)
            np.multiply(bits, PERCEPT, out=bits)
            flags |= bits
    if holes is not None:
        flags[holes] = 0

    # ---- the response tail of response_tasks (segments rows: the response length comes from the segments) ----
    # (upstream: only its pretraining trainer weights the tail, only its SFT trainer the transcript)
    upstream_sft = rule == "upstream" and policy.on == "assistant"
    if seg_row is not None and policy.response_weight != 1.0 and policy.response_tasks and not upstream_sft:
        tail_rows = _task_rows(g, set(policy.response_tasks))
        if tail_rows.any():
            asst = g.seg_assistant
            resp = np.bincount(seg_row[asst], weights=(ge - gs)[asst], minlength=R).astype(np.int64)
            last = np.full(R, -1, dtype=np.int64)
            last[nonempty] = ids[ends[nonempty] - 1]
            stop_end = _is_any(last, layout.stop_ids)      # rows that end with a stop id
            resp -= (resp > 0) & stop_end
            resp[~tail_rows] = 0
            if rule == "aromni" and mask is None:  # the row's last target (its last token, unless a hole) leaves
                leave = (ends - 1)[stop_end]       # the tail if it is a stop id
                leave = leave[is_target(leave)]
            elif rule == "aromni":
                final = _last_assistant_target(R, seg_row, ge, g.seg_assistant)
                leave = final[(final >= 0) & _is_any(ids[np.maximum(final, 0)], layout.stop_ids)]
            else:                                  # upstream: every eos target leaves it
                leave = np.flatnonzero(ids == layout.eos)
            some = resp > 0
            if mask is None:                       # out of the tail: the holes and those, a few per row (disjoint:
                out = np.sort(np.concatenate([holes, leave]))   # the holes are no targets, those are)
                keep = flags[out]                  # (they keep their flags)
                tail = _positions(_tail_starts(out, starts[some], ends[some], resp[some]), ends[some])
                flags[tail] = (flags[tail] & PERCEPT) | 2
                flags[out] = keep
            else:
                eligible = mask.copy()
                eligible[leave] = False
                tail = _last_flagged(eligible, starts[some], ends[some], resp[some])
                flags[tail] = (flags[tail] & PERCEPT) | 2

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
            if j < len(res) and res[j] < off[np.searchsorted(off, i, side="right")]:   # in i's row
                used[j] = True
                lo.append(i + 1)
                hi.append(res[j])
        inside = _cover(n, np.asarray(lo, np.int64), np.asarray(hi, np.int64))
        inside &= (flags & WEIGHT_CLASS) != 0      # targets only
        flags[inside] = (flags[inside] & PERCEPT) | 3
    return Derived(flags, weight_table(policy), stored)
