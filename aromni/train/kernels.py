"""The loader's loops over samples, pieces and tokens, compiled by numba.

A window is ~100 samples and pieces and ~70 k tokens. As Python, or as numpy calls of a few microseconds each, the
first fit, a window's layout, the copies into its buffers and the counts of its flags took about as long as decoding
the row groups the window reads; these are the plain loops a reader would write (copies and fills of runs go through
``memops``: numba's slice assignment is a strided loop). ``cache=True`` keeps the machine code on disk (next to this
file, or in NUMBA_CACHE_DIR), so only the first process on a machine pays the compile (~8.5 s with labels' loop; a
later one loads it in ~0.6 s). ``nogil``: a prefetch thread runs them beside the trainer.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from aromni.train.labels import PERCEPT, WEIGHT_CLASS
from aromni.train.memops import copy_run, fill_bytes

# flag_counts reads eight flag bytes a word by bit position: the weight class in bits 0-1, the perceptual mark bit 2
if (WEIGHT_CLASS, PERCEPT) != (3, 4):
    raise ImportError("aromni.train.kernels.flag_counts assumes WEIGHT_CLASS == 3 and PERCEPT == 4")


@njit(cache=True, nogil=True)
def _first_row(remaining, n):
    """The first row with room for n tokens; -1 when none has."""
    for j in range(len(remaining)):
        if remaining[j] >= n:
            return j
    return -1


@njit(cache=True, nogil=True)
def first_fit(lens, i0, remaining, max_len, rows_out):
    """Place whole samples ``lens[i0:]`` first fit into rows with ``remaining`` room (updated in place), writing each
    one's row to ``rows_out``. Stops at the first sample longer than ``max_len`` (status 2: the caller splits or
    drops it), at the first that fits no row (status 1: the window is full) or at the end of ``lens`` (status 0).
    Returns (samples placed, status)."""
    return first_fit_stream(i0, len(lens), np.zeros(0, np.int32), lens, remaining, max_len, rows_out,
                            np.empty(len(rows_out), np.int64))


@njit(cache=True, nogil=True)
def first_fit_stream(g, g_end, perm, lengths, remaining, max_len, rows_out, srows_out):
    """``first_fit`` over the stream from index g: its sample is row ``perm[g % n]`` of the shard set (row g % n
    when ``perm`` is empty; n = len(lengths)), of length ``lengths[row]``. Writes each placed sample's row in the
    window to ``rows_out`` and in the shard set to ``srows_out``; stops as first_fit does, status 0 at ``g_end`` (the
    epoch's end) or when the outputs are full. Returns (samples placed, status)."""
    n = len(lengths)
    placed = 0
    while g < g_end and placed < len(rows_out):
        k = g % n
        r = perm[k] if len(perm) else k
        m = lengths[r]
        if m > max_len:
            return placed, 2
        j = _first_row(remaining, m)
        if j < 0:
            return placed, 1
        remaining[j] -= m
        rows_out[placed], srows_out[placed] = j, r
        placed += 1
        g += 1
    return placed, 0


@njit(cache=True, nogil=True)
def by_row(g, rows, srows, lengths, cut_at, cut_spans, n_rows):
    """A window's pieces as a plan holds them, from the pieces in the order placed (each one's stream index ``g``,
    its row in the window, its sample's row in the shard set ``srows``; ``lengths`` each row's length; pieces
    ``cut_at`` cover ``cut_spans`` of their sample, the others all of it): (pieces [n, 4] as (stream index, row in
    the shard set, lo, hi), row after row, each row's pieces in the order placed; the number of pieces in each
    row)."""
    n = len(g)
    sizes = np.zeros(n_rows, np.int64)
    for i in range(n):
        sizes[rows[i]] += 1
    at = np.empty(n_rows, np.int64)            # where each row's next piece goes
    total = 0
    for r in range(n_rows):
        at[r] = total
        total += sizes[r]
    where = np.empty(n, np.int64)
    out = np.empty((n, 4), np.int64)
    for i in range(n):
        j = at[rows[i]]
        at[rows[i]] += 1
        where[i] = j
        out[j, 0], out[j, 1], out[j, 2], out[j, 3] = g[i], srows[i], 0, lengths[srows[i]]
    for c in range(len(cut_at)):
        j = where[cut_at[c]]
        out[j, 2], out[j, 3] = cut_spans[c, 0], cut_spans[c, 1]
    return out, sizes


@njit(cache=True, nogil=True)
def layout(spec, per_row, per_batch, rg_start):
    """Where the pieces ``spec`` (rows of (stream index, row in the shard set, lo, hi), row after row; ``per_row``
    pieces in each row, ``per_batch`` rows in each micro-batch) go in a window's flat buffers, micro-batch after
    micro-batch, each [its rows, its longest row]: (each piece's destination and length, its row group and row in
    that group (``rg_start``: the first row of each row group), each row's padding as start and length, each
    micro-batch's width, the buffers' size)."""
    n, R = len(spec), len(per_row)
    dst, length = np.empty(n, np.int64), np.empty(n, np.int64)
    rg, local = np.empty(n, np.int64), np.empty(n, np.int64)
    pad_at, pad_len = np.empty(R, np.int64), np.empty(R, np.int64)
    widths = np.empty(len(per_batch), np.int64)
    sizes = np.empty(R, np.int64)
    i = 0
    for r in range(R):                     # each row's size
        size = 0
        for _ in range(per_row[r]):
            length[i] = spec[i, 3] - spec[i, 2]
            size += length[i]
            i += 1
        sizes[r] = size
    i = r = base = 0
    for b in range(len(per_batch)):        # each micro-batch's width, then its rows one after another
        T = 0
        for q in range(r, r + per_batch[b]):
            T = max(T, sizes[q])
        widths[b] = T
        for _ in range(per_batch[b]):
            at = base
            for _ in range(per_row[r]):
                dst[i] = at
                at += length[i]
                i += 1
            pad_at[r], pad_len[r] = at, base + T - at
            base += T
            r += 1
    g = 0
    for i in range(n):                     # each piece's row group (pieces come from a few neighbouring ones)
        row = spec[i, 1]
        if row < rg_start[g] or row >= rg_start[g + 1]:
            g = np.searchsorted(rg_start, row, side="right") - 1
        rg[i], local[i] = g, row - rg_start[g]
    return dst, length, rg, local, pad_at, pad_len, widths, base


@njit(cache=True, nogil=True)
def collate(spec, per_row, per_batch, rg_start, group_rg, group_ids, group_flags, group_offsets, pad_id, pad_flag,
            first_flag, keep):
    """A window's micro-batches in one call: ``layout``, then each piece copied from its row group (``group_rg[j]``
    holds ``group_ids[j]``, ``group_flags[j]``, ``group_offsets[j]``: tuples, one entry per row group the pieces come
    from), a piece's first flag becoming ``(flag & keep) | first_flag`` (nothing before it predicts it, positions
    restart), then each row's padding (``pad``) and the flag counts (``flag_counts``).
    Returns (ids, flags, each micro-batch's width, the flag counts and the real tokens, each piece's source,
    destination and length)."""
    dst, length, rg, local, pad_at, pad_len, widths, N = layout(spec, per_row, per_batch, rg_start)
    n = len(spec)
    out_ids = np.empty(N, group_ids[0].dtype)
    out_flags = np.empty(N, np.uint8)
    src = np.empty(n, np.int64)
    for i in range(n):
        j = 0
        while group_rg[j] != rg[i]:
            j += 1
        s = group_offsets[j][local[i]] + spec[i, 2]
        src[i] = s
        d, m = dst[i], length[i]
        if m > 0:
            copy_run(out_ids, d, group_ids[j], s, m)
            copy_run(out_flags, d, group_flags[j], s, m)
            out_flags[d] = (out_flags[d] & keep) | first_flag
    pad(out_ids, out_flags, pad_at, pad_len, pad_id, pad_flag)
    counts = np.empty(5, np.int64)
    counts[:4] = flag_counts(out_flags)
    counts[4] = length.sum()
    return out_ids, out_flags, widths, counts, src, dst, length


@njit(cache=True, nogil=True)
def pad(out_ids, out_flags, starts, length, pad_id, first_flag):
    """Fill each run [starts[i], starts[i] + length[i]) with ``pad_id`` and zero flags, its first flag ``first_flag``
    (a packed row's padding is a piece of its own: its positions restart)."""
    for i in range(len(starts)):
        a, m = starts[i], length[i]
        if m > 0:
            out_ids[a:a + m] = pad_id
            fill_bytes(out_flags, a, m, 0)
            out_flags[a] = first_flag


@njit(cache=True, nogil=True)
def flag_counts(flags):
    """[tokens of weight class 1, 2, 3, perceptual tokens] of a window's flags (uint8, C-contiguous): one pass, eight
    bytes at a time."""
    whole = len(flags) // 8 * 8
    return _flag_counts(flags[:whole].view(np.uint64), flags[whole:])


_LANES = np.uint64(0x0101010101010101)     # bit 0 of each of a word's 8 bytes
_PAIRS = np.uint64(0x00FF00FF00FF00FF)
_SUM16 = np.uint64(0x0001000100010001)


@njit(cache=True, nogil=True)
def _byte_sum(acc):
    """The sum of a word's 8 bytes (each <= 255)."""
    pairs = (acc & _PAIRS) + ((acc >> np.uint64(8)) & _PAIRS)      # 4 lanes of 16 bits, each <= 510
    return (pairs * _SUM16) >> np.uint64(48)                       # their sum, <= 2040, in the top 16 bits


@njit(cache=True, nogil=True)
def _flag_counts(words, tail):
    # each byte of a word is one token's flags (aromni.train.labels): bits 0-1 the weight class (WEIGHT_CLASS),
    # bit 2 the perceptual mark (PERCEPT). Per byte lane, class 1 = b0 and not b1, class 2 = b1 and not b0,
    # class 3 = both. A lane's counter is a byte, so the lanes are summed out every 255 words.
    out = np.zeros(4, np.int64)
    one, two = np.uint64(1), np.uint64(2)
    i, n = 0, len(words)
    while i < n:
        a1 = a2 = a3 = ap = np.uint64(0)
        stop = min(i + 255, n)
        while i < stop:
            x = words[i]
            b0 = x & _LANES
            b1 = (x >> one) & _LANES
            a1 += b0 & ~b1
            a2 += b1 & ~b0
            a3 += b0 & b1
            ap += (x >> two) & _LANES
            i += 1
        out[0] += _byte_sum(a1)
        out[1] += _byte_sum(a2)
        out[2] += _byte_sum(a3)
        out[3] += _byte_sum(ap)
    for f in tail:
        c = f & WEIGHT_CLASS
        if c:
            out[c - 1] += 1
        if f & PERCEPT:
            out[3] += 1
    return out
