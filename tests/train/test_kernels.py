"""The loader's compiled loops against the plain numpy/Python they replace (test_loader checks whole batches)."""
import numpy as np
import pytest

from aromni.train import kernels
from aromni.train.labels import PERCEPT, WEIGHT_CLASS


def numpy_counts(flags: np.ndarray) -> list[int]:
    cls = flags & WEIGHT_CLASS
    return [int((cls == 1).sum()), int((cls == 2).sum()), int((cls == 3).sum()), int(((flags & PERCEPT) != 0).sum())]


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 255 * 8, 255 * 8 + 3, 256 * 8 * 3 + 5, 100_003])
def test_flag_counts_equal_numpy(n):
    rng = np.random.default_rng(n)
    flags = rng.integers(0, 16, n).astype(np.uint8)
    assert kernels.flag_counts(flags).tolist() == numpy_counts(flags)


def test_flag_counts_saturated_lanes():
    # every byte counts in every field: a byte lane's counter would overflow without the summing every 255 words
    flags = np.full(8 * 1000 + 3, 3 | PERCEPT, np.uint8)
    assert kernels.flag_counts(flags).tolist() == [0, 0, len(flags), len(flags)]
    flags[:] = 1
    assert kernels.flag_counts(flags[1:]).tolist() == [len(flags) - 1, 0, 0, 0]   # an unaligned start


def plain_first_fit(lens, i0, remaining, max_len):
    rows = []
    for n in lens[i0:]:
        if n > max_len:
            return rows, 2
        fit = [j for j, r in enumerate(remaining) if r >= n]
        if not fit:
            return rows, 1
        remaining[fit[0]] -= n
        rows.append(fit[0])
    return rows, 0


@pytest.mark.parametrize("seed", range(20))
def test_first_fit_equals_plain(seed):
    rng = np.random.default_rng(seed)
    max_len, n_rows = int(rng.integers(5, 200)), int(rng.integers(1, 9))
    lens = rng.integers(1, max_len + (max_len // 4 if seed % 2 else 1), int(rng.integers(0, 60))).astype(np.int64)
    start = np.full(n_rows, max_len, np.int64) - rng.integers(0, max_len // 2, n_rows)
    i0 = int(rng.integers(0, len(lens) + 1))
    want_rows, want_status = plain_first_fit(lens.tolist(), i0, start.tolist(), max_len)
    remaining, out = start.copy(), np.empty(len(lens), np.int64)
    placed, status = kernels.first_fit(lens, i0, remaining, max_len, out)
    assert (out[:placed].tolist(), status) == (want_rows, want_status)
    want_remaining = start.copy()
    np.subtract.at(want_remaining, out[:placed], lens[i0:i0 + placed])
    assert remaining.tolist() == want_remaining.tolist()


def plain_layout(spec, per_row, per_batch, rg_start):
    """kernels.layout's definition, one piece at a time."""
    rows, i = [], 0
    for m in per_row:
        rows.append(list(range(i, i + m)))
        i += m
    dst, pad_at, pad_len, widths, base, r = [0] * len(spec), [], [], [], 0, 0
    for B in per_batch:
        batch = rows[r:r + B]
        T = max(sum(spec[p][3] - spec[p][2] for p in row) for row in batch)
        widths.append(T)
        for row in batch:
            at = base
            for p in row:
                dst[p] = at
                at += spec[p][3] - spec[p][2]
            pad_at.append(at)
            pad_len.append(base + T - at)
            base += T
        r += B
    rg = [max(j for j in range(len(rg_start) - 1) if rg_start[j] <= p[1]) for p in spec]
    local = [p[1] - rg_start[g] for p, g in zip(spec, rg)]
    return [dst, [p[3] - p[2] for p in spec], rg, local, pad_at, pad_len, widths, base]


@pytest.mark.parametrize("seed", range(20))
def test_layout_equals_plain(seed):
    rng = np.random.default_rng(seed)
    rg_start = np.concatenate([[0], np.cumsum(rng.integers(1, 50, int(rng.integers(1, 6))))]).astype(np.int64)
    per_batch = rng.integers(1, 5, int(rng.integers(1, 5))).astype(np.int64)
    per_row = rng.integers(1, 4, int(per_batch.sum())).astype(np.int64)
    n = int(per_row.sum())
    lo = rng.integers(0, 20, n)
    spec = np.stack([np.arange(n) + 100, rng.integers(0, rg_start[-1], n), lo, lo + rng.integers(0, 30, n)], 1)
    got = kernels.layout(spec.astype(np.int64), per_row, per_batch, rg_start)
    want = plain_layout(spec.tolist(), per_row.tolist(), per_batch.tolist(), rg_start.tolist())
    assert [x.tolist() if isinstance(x, np.ndarray) else int(x) for x in got] == want


def test_memops_equal_slices():
    """copy_run and fill_bytes (memcpy / memset inside compiled loops) against numpy slices, for each id type."""
    from numba import njit

    from aromni.train.memops import copy_run, fill_bytes

    @njit
    def copy(dst, d, src, s, m):
        copy_run(dst, d, src, s, m)

    @njit
    def fill(dst, d, m, v):
        fill_bytes(dst, d, m, v)

    rng = np.random.default_rng(1)
    for dtype in (np.uint8, np.int32, np.int64):
        src = rng.integers(0, 120, 500).astype(dtype)
        for d, s, m in ((0, 0, 500), (3, 17, 0), (100, 250, 250), (499, 0, 1)):
            dst = rng.integers(0, 120, 600).astype(dtype)
            want = dst.copy()
            want[d:d + m] = src[s:s + m]
            copy(dst, d, src, s, m)
            assert dst.tolist() == want.tolist()
    for d, m, v in ((0, 600, 7), (5, 0, 9), (10, 300, 255)):
        dst = rng.integers(0, 120, 600).astype(np.uint8)
        want = dst.copy()
        want[d:d + m] = v
        fill(dst, d, m, v)
        assert dst.tolist() == want.tolist()


@pytest.mark.parametrize("seed", range(10))
def test_by_row_is_a_stable_sort_by_row(seed):
    """by_row lays the pieces placed out row after row, each row's in the order placed, cut pieces with their span."""
    rng = np.random.default_rng(seed)
    n, n_rows, start = int(rng.integers(1, 40)), int(rng.integers(1, 9)), int(rng.integers(0, 100))
    g = start + np.sort(rng.integers(0, 60, n))
    rows = rng.integers(0, n_rows, n)
    idx = rng.permutation(200)
    lengths = rng.integers(1, 500, 200)
    cut_at = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
    spans = rng.integers(0, 100, (len(cut_at), 2))
    pieces, sizes = kernels.by_row(g, rows, idx[g - start], lengths, cut_at, spans, n_rows)
    placed = [[int(g[i]), int(idx[g[i] - start]), 0, int(lengths[idx[g[i] - start]])] for i in range(n)]
    for c, i in enumerate(cut_at):
        placed[i][2:] = spans[c].tolist()
    want = [placed[i] for i in sorted(range(n), key=lambda i: rows[i])]     # (sorted is stable)
    assert pieces.tolist() == want
    assert sizes.tolist() == np.bincount(rows, minlength=n_rows).tolist()


@pytest.mark.parametrize("seed", range(10))
def test_collate_equals_slices(seed):
    """kernels.collate against numpy slices: pieces from two or three row groups, each row padded to its micro-batch's
    width, a piece's first flag (perceptual bit kept) marked as a piece start, the flag counts and the real tokens."""
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(2, 4))
    rows_per = rng.integers(3, 9, n_groups + 1)
    rg_start = np.concatenate([[0], np.cumsum(rows_per)]).astype(np.int64)
    groups = []
    for j in range(n_groups + 1):
        lens = rng.integers(0, 40, rows_per[j])
        off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        ids = rng.integers(0, 65536, off[-1]).astype(np.int32)
        ids.flags.writeable = False                  # as Arrow hands the decoded ids over
        groups.append((ids, rng.integers(0, 16, off[-1]).astype(np.uint8), off))
    used = np.sort(rng.choice(n_groups + 1, n_groups, replace=False)).astype(np.int64)
    per_batch = rng.integers(1, 4, int(rng.integers(1, 4))).astype(np.int64)
    per_row = rng.integers(1, 4, int(per_batch.sum())).astype(np.int64)
    spec = []
    for i in range(int(per_row.sum())):
        rg = int(rng.choice(used))
        local = int(rng.integers(0, rows_per[rg]))
        n = int(groups[rg][2][local + 1] - groups[rg][2][local])
        lo = int(rng.integers(0, n + 1))
        spec.append([i, int(rg_start[rg]) + local, lo, int(rng.integers(lo, n + 1))])
    spec = np.array(spec, np.int64)
    pick = [groups[r] for r in used]
    ids, flags, widths, counts, _, _, _ = kernels.collate(
        spec, per_row, per_batch, rg_start, used, tuple(p[0] for p in pick), tuple(p[1] for p in pick),
        tuple(p[2] for p in pick), 7, 8, 8, PERCEPT)
    want_ids, want_flags, want_widths, r, i = [], [], [], 0, 0
    for B in per_batch.tolist():
        rows = []
        for _ in range(B):
            row_ids, row_flags = [], []
            for _ in range(per_row[r]):
                g, row, lo, hi = spec[i].tolist()
                rg = int(np.searchsorted(rg_start, row, side="right") - 1)
                a = int(groups[rg][2][row - rg_start[rg]])
                f = groups[rg][1][a + lo:a + hi].tolist()
                if f:
                    f[0] = (f[0] & PERCEPT) | 8
                row_ids += groups[rg][0][a + lo:a + hi].tolist()
                row_flags += f
                i += 1
            rows.append((row_ids, row_flags))
            r += 1
        T = max(len(x) for x, _ in rows)
        want_widths.append(T)
        for row_ids, row_flags in rows:
            pad = T - len(row_ids)
            want_ids += row_ids + [7] * pad
            want_flags += row_flags + ([8] + [0] * (pad - 1) if pad else [])
    assert ids.tolist() == want_ids and flags.tolist() == want_flags and widths.tolist() == want_widths
    # (padding flags are 0 or a piece start: weight class 0, not perceptual)
    assert counts.tolist() == numpy_counts(np.array(want_flags, np.uint8)) + [int((spec[:, 3] - spec[:, 2]).sum())]
