"""The loader: windows are a prefix of the sample stream, independent of world size, resumable from one number;
rows carry exactly the spine's labels and weights; long samples are never cut inside an image or speech span."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aromni.layout import AR_OMNI_V0_1 as L
from aromni.sample import IGNORE_INDEX, LossPolicy, Sample, Segment, image_code_positions, labels_and_weights, \
    rows_to_table
from aromni.train.loader import DataError, Loader, ShardSet, split_sample


def loader(shards, **kw):
    args = dict(rank=0, world=1, micro_batch=1, train_batch=4, max_len=1100)
    args.update(kw)
    return Loader(shards, **args)


def windows(ld, n):
    return [ld.next_window() for _ in range(n)]


def piece_starts(position_ids: torch.Tensor) -> list[int]:
    p = position_ids.tolist()
    return [i for i in range(len(p)) if p[i] == 0]


@pytest.fixture(scope="module")
def shards(shards_dir):
    return ShardSet(str(shards_dir))


def test_windows_are_a_prefix_of_the_stream_packed_within_max_len(shards):
    ws = windows(loader(shards), 12)   # 12 windows run past the end of the 72-row demo: epoch 2 starts
    assert ws[0].start == 0
    assert ws[-1].end > len(shards)
    for a, b in zip(ws, ws[1:]):
        assert a.end == b.start
    for w in ws:
        assert sorted(w.samples) == list(range(w.start, w.end))   # every sample of the prefix, exactly once
        for m in w.micro:
            assert m["input_ids"].shape[1] <= 1100
            for b in range(m["input_ids"].shape[0]):
                starts = piece_starts(m["position_ids"][b])
                assert all(m["labels"][b, s] == IGNORE_INDEX and m["weights"][b, s] == 0 for s in starts)
        assert w.tokens == sum(int(shards.lengths[shards.order(g, g + 1, False, 0)[0]]) for g in w.samples)


def test_rows_carry_the_spines_labels_weights_and_perceptual_positions(shards):
    policy = LossPolicy(on="all", response_weight=2.0)
    ld = loader(shards, pack=False, train_batch=2, policy=policy)
    seen_tasks = set()
    for w in windows(ld, 36):                    # one epoch, one sample per row
        for m, g in zip(w.micro, w.samples):
            ids, segs, task, _ = shards.row(int(shards.order(g, g + 1, False, 0)[0]))
            n = len(ids)
            lab, wt = labels_and_weights(ids, segs, task, policy, L)
            lab[0], wt[0] = IGNORE_INDEX, 0
            assert m["input_ids"][0, :n].tolist() == ids.tolist()
            assert m["labels"][0, :n].tolist() == lab.tolist()
            assert np.allclose(m["weights"][0, :n].numpy(), wt)
            assert (m["input_ids"][0, n:] == L.train_pad).all() and (m["labels"][0, n:] == IGNORE_INDEX).all()
            want = image_code_positions(ids, segs) if task == "text_to_image" else []
            assert torch.nonzero(m["percept_mask"][0]).flatten().tolist() == list(want)
            seen_tasks.add(task)
            if task in ("image_caption", "speech_to_text"):
                assert (m["weights"][0] == 2.0).any()          # the weighted response tail is there
    assert {"text_to_image", "image_caption", "speech_to_text", "text_to_text"} <= seen_tasks


def test_sft_policy_keeps_only_assistant_targets(shards):
    m = loader(shards, pack=False, train_batch=1, policy=LossPolicy(on="assistant")).next_window().micro[0]
    ids, segs, _, _ = shards.row(0)
    want = np.zeros(len(ids), dtype=bool)
    for s in segs:
        want[s.start:s.end] = s.role == "assistant"
    want[0] = False
    assert ((m["labels"][0, :len(ids)] != IGNORE_INDEX).numpy() == want).all() and want.any() and not want.all()


def test_world_size_changes_who_reads_a_row_not_which_rows_a_step_reads(shards):
    one = windows(loader(shards, train_batch=4), 6)
    two = [windows(loader(shards, train_batch=4, world=2, rank=r), 6) for r in (0, 1)]
    four = [windows(loader(shards, train_batch=4, world=4, rank=r), 6) for r in range(4)]
    for k, w in enumerate(one):
        assert sorted(two[0][k].samples + two[1][k].samples) == sorted(w.samples)
        assert sorted(s for r in range(4) for s in four[r][k].samples) == sorted(w.samples)
        assert two[0][k].end == two[1][k].end == w.end
        # rank r of 2 runs micro step k//2 with global row 2*(k//2)+r: the same tensors as world 1's rows
        for j, m in enumerate(w.micro):
            other = two[j % 2][k].micro[j // 2]
            assert torch.equal(m["input_ids"], other["input_ids"]) and torch.equal(m["weights"], other["weights"])


def test_resume_from_consumed_samples_gives_the_same_windows(shards):
    ref = windows(loader(shards, train_batch=2), 10)
    again = windows(loader(shards, train_batch=2, consumed=ref[4].start), 6)
    for a, b in zip(ref[4:], again):
        assert (a.start, a.end, a.samples) == (b.start, b.end, b.samples)
        for x, y in zip(a.micro, b.micro):
            assert all(torch.equal(x[k], y[k]) for k in x)


def test_prefetch_thread_yields_the_same_windows(shards):
    a = windows(loader(shards, train_batch=2), 5)
    ld = loader(shards, train_batch=2, prefetch=2)
    b = windows(ld, 5)
    ld.close()
    assert [w.samples for w in a] == [w.samples for w in b] and ld.consumed == a[-1].end


def test_shuffle_is_a_seeded_permutation_of_each_epoch(shards):
    n = len(shards)
    o = shards.order(0, 2 * n, True, 7)
    assert sorted(o[:n]) == list(range(n)) and sorted(o[n:]) == list(range(n))
    assert not np.array_equal(o[:n], o[n:]) and not np.array_equal(o[:n], np.arange(n))
    assert np.array_equal(o, shards.order(0, 2 * n, True, 7))
    assert not np.array_equal(o, shards.order(0, 2 * n, True, 8))


def test_fsspec_url_reads_the_same_shards(shards, shards_dir):
    url = ShardSet(f"file://{shards_dir}")
    assert url.fingerprint == shards.fingerprint and np.array_equal(url.lengths, shards.lengths)
    assert url.stand_in and shards.stand_in        # the demo build's manifest flags stand-in tokenizers


# ---- synthetic shards ------------------------------------------------------------------------------------
def _text(n, start=20000):
    return [start + i % 100 for i in range(n)]


def _sample(i, task, parts):
    """parts: list of (role, modality, ids)"""
    ids, segs = [], []
    for role, mod, body in parts:
        segs.append(Segment(role, mod, len(ids), len(ids) + len(body)))
        ids += body
    return Sample(f"s{i}", "synthetic", task, ids, segs)


IMAGE = [L.boi] + [L.image_code_start + (k * 7) % 8192 for k in range(1024)] + [L.eoi]


def _write(tmp_path, samples):
    d = tmp_path / "data"
    d.mkdir(parents=True)
    pq.write_table(rows_to_table(samples), d / "train-00000-of-00001.parquet", row_group_size=2)
    return tmp_path


def test_long_samples_are_dropped_or_cut_outside_spans(tmp_path):
    samples = [
        _sample(0, "text_to_text", [("assistant", "text", [0] + _text(40) + [2])]),
        # 600 text + image + 600 text: too long for 1100, cuttable before or after the image
        _sample(1, "text_to_image", [("user", "text", [0] + _text(599)), ("assistant", "image", IMAGE),
                                     ("assistant", "text", _text(599) + [2])]),
        _sample(2, "text_to_text", [("assistant", "text", [0] + _text(10) + [2])]),
    ]
    d = _write(tmp_path, samples)
    s = ShardSet(str(d))
    # one sample (or piece) per row, so a window ends with the data's first epoch
    w = loader(s, train_batch=2, pack=False, long_samples="drop").next_window()
    assert w.dropped == {"too_long": 1} and sorted(w.samples) == [0, 2] and w.end == 3

    w = loader(s, train_batch=5, pack=False, long_samples="split").next_window()
    assert w.end == 3
    assert not w.dropped and sorted(set(w.samples)) == [0, 1, 2]
    img_rows = 0
    for m in w.micro:
        ids = m["input_ids"][0].tolist()
        assert len(ids) <= 1100
        if L.boi in ids:                          # the image travels whole, with its perceptual targets
            b = ids.index(L.boi)
            assert ids[b + 1025] == L.eoi and int(m["percept_mask"][0].sum()) == 1024
            img_rows += 1
    assert img_rows == 1
    assert split_sample(2226, samples[1].segments, 1100) == [(0, 600), (600, 1700), (1700, 2226)]
    assert split_sample(2226, samples[1].segments, 500) is None
    w = loader(s, train_batch=2, pack=False, max_len=500, long_samples="split").next_window()
    assert w.dropped == {"span_longer_than_max_len": 1}
    packed = loader(s, train_batch=3, long_samples="split").next_window()   # pieces pack like samples
    assert packed.samples.count(1) == 3 and max(m["input_ids"].shape[1] for m in packed.micro) <= 1100


def test_instruct_layout_uses_stored_labels(tmp_path):
    ids = [[0, 20001, 20002, 12830, 20003, 2], [0, 20004, 2]]
    labels = [[-100, -100, -100, -100, 20003, 2], [-100, 20004, 2]]
    t = pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "labels": pa.array(labels, pa.list_(pa.int64()))})
    pq.write_table(t, tmp_path / "instruct.parquet")
    s = ShardSet(str(tmp_path / "instruct.parquet"))
    assert s.kind == "labels" and s.lengths.tolist() == [6, 3]
    m = loader(s, train_batch=1, max_len=10).next_window().micro[0]   # both rows packed into one
    assert m["labels"][0].tolist() == [-100, -100, -100, -100, 20003, 2, -100, 20004, 2]
    assert m["weights"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 1, 1]
    assert m["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2]


def test_bad_data_gets_a_clear_error(tmp_path, shards_dir):
    s = ShardSet(str(shards_dir))
    with pytest.raises(DataError, match="vocabulary of 100"):
        loader(s, vocab_size=100).next_window()
    with pytest.raises(DataError, match="not found"):
        ShardSet(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet"):
        ShardSet(str(tmp_path / "empty"))
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="input_ids"):
        ShardSet(str(tmp_path / "x.parquet"))
    copy = tmp_path / "copy"
    shutil.copytree(shards_dir / "data", copy / "data")
    m = json.loads((shards_dir / "manifest.json").read_text())
    m["shards"][0]["rows"] += 1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="manifest says"):
        ShardSet(str(copy))


def test_a_sample_that_fits_no_window_is_dropped_and_all_dropped_data_is_an_error(tmp_path):
    long_text = _sample(0, "text_to_text", [("assistant", "text", [0] + _text(2500) + [2])])
    short = _sample(1, "text_to_text", [("assistant", "text", [0] + _text(5) + [2])])
    s = ShardSet(str(_write(tmp_path, [long_text, short])))
    w = loader(s, train_batch=2, pack=False, long_samples="split").next_window()   # 3 pieces > 2 rows
    assert w.dropped == {"more_pieces_than_rows": 1} and w.samples == [1] and w.end == 2
    with pytest.raises(DataError, match="no sample"):
        loader(ShardSet(str(_write(tmp_path / "b", [long_text]))), train_batch=2).next_window()


# ---- the batched collate against the per-piece reference it replaced ---------------------------------------
def reference_collate(ld, rows):
    """The loader's collate before it was batched (one piece at a time, positions per piece): kept to prove the
    fast one byte-identical."""
    B = len(rows)
    T = max(sum(p.hi - p.lo for p in r) for r in rows)
    ids = np.full((B, T), ld.layout.train_pad, dtype=np.int64)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
    weights = np.zeros((B, T), dtype=np.float32)
    percept = np.zeros((B, T), dtype=bool)
    position = np.zeros((B, T), dtype=np.int64)
    ramp = np.arange(T)
    for b, pieces in enumerate(rows):
        at = 0
        for p in pieces:
            a, lab, w, per = ld.sample_arrays(p.row)
            k = p.hi - p.lo
            ids[b, at:at + k], labels[b, at:at + k] = a[p.lo:p.hi], lab[p.lo:p.hi]
            weights[b, at:at + k], percept[b, at:at + k] = w[p.lo:p.hi], per[p.lo:p.hi]
            position[b, at:at + k] = ramp[:k]
            labels[b, at], weights[b, at] = IGNORE_INDEX, 0.0
            at += k
        position[b, at:] = ramp[:T - at] if ld.pack else ramp[at:]
    return {"input_ids": ids, "labels": labels, "weights": weights, "percept_mask": percept, "position_ids": position}


def assert_collate_matches_reference(ld, n_windows):
    """Every micro-batch of a window (built together, as build_window does) and each one built alone equal the
    reference byte for byte, in dtype, shape and C order."""
    checked = 0
    for _ in range(n_windows):
        plan = ld.plan(ld.consumed)
        window = ld.build_window(ld.consumed)
        for k in range(0, len(plan.rows), ld.mb):
            rows = plan.rows[k:k + ld.mb]
            want = reference_collate(ld, rows)
            for got in (window.micro[k // ld.mb], ld._collate(rows)):
                # what leaves the loader is compact: the ids as stored and one byte of flags a token ...
                assert got.ids.dtype == torch.int32 and got.flags.dtype == torch.uint8
                assert got.labels is None or got.labels.shape == got.ids.shape
                # ... and what the model sees after the trainer's widening (Batch.to, as the loop calls it; and
                # indexing, which tests use) is the reference, byte for byte
                for tensors in (got.to("cpu"), got):
                    for key, w in want.items():
                        g = tensors[key].numpy()
                        assert g.dtype == w.dtype and g.shape == w.shape and g.flags.c_contiguous, key
                        assert g.tobytes() == w.tobytes(), key
            # the window's weight sum and perceptual count (the loss denominators) are those of the tensors
            ws = [window.micro[j // ld.mb] for j in range(0, len(plan.rows), ld.mb)]
            assert window.weight_sum == sum(float(m["weights"].numpy().astype(np.float64).sum()) for m in ws)
            assert window.percept_count == sum(int(m["percept_mask"].sum()) for m in ws)
            checked += len(rows)
        ld.consumed = plan.end
    assert checked


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("policy", [LossPolicy(), LossPolicy(on="assistant", transcript_weight=0.5),
                                    LossPolicy(response_weight=0.3, transcript_weight=1.7)])
def test_batched_collate_is_byte_identical_to_the_reference_on_the_demo(shards, pack, policy):
    ld = loader(shards, micro_batch=3, train_batch=6, pack=pack, policy=policy, max_len=2100)
    assert_collate_matches_reference(ld, 14)     # past the end of the demo: windows span epochs and row groups


def test_batched_collate_is_byte_identical_to_the_reference_on_random_rows(tmp_path):
    rng = np.random.default_rng(3)
    samples = []
    for i in range(60):
        kind = i % 3
        head = [0] + _text(int(rng.integers(1, 30)))
        if kind == 0:
            samples.append(_sample(i, "text_to_text", [("assistant", "text", head + _text(int(rng.integers(1, 900)))
                                                        + [2])]))
        elif kind == 1:
            samples.append(_sample(i, "text_to_image", [("user", "text", head + [L.eoh]),
                                                        ("assistant", "image", IMAGE), ("assistant", "text", [2])]))
        else:
            speech = [L.boa] + [L.speech_code_start + int(x) for x in rng.integers(0, 4096, int(rng.integers(5, 300)))]
            samples.append(_sample(i, "speech_to_text", [("user", "text", head), ("user", "speech", speech + [L.eoa]),
                                                         ("assistant", "text", [L.eoh] + _text(20) + [2])]))
    s = ShardSet(str(_write(tmp_path, samples)))
    for pack, long_samples, max_len in ((True, "split", 700), (True, "drop", 1100), (False, "split", 1100)):
        ld = loader(s, micro_batch=2, train_batch=8, pack=pack, long_samples=long_samples, max_len=max_len)
        assert_collate_matches_reference(ld, 12)


def test_stored_labels_that_are_not_the_ids_are_carried_as_stored(tmp_path):
    """Imported rows whose labels differ from their ids (here: already shifted, as some exporters write them) keep
    their labels exactly; the compact batch carries them instead of deriving them from the ids."""
    rng = np.random.default_rng(7)
    ids, labels = [], []
    for i in range(40):
        row = [0] + (20000 + rng.integers(0, 3000, int(rng.integers(2, 400)))).tolist() + [2]
        lab = row[1:] + [IGNORE_INDEX]              # labels[t] = ids[t + 1]; a prompt quarter without loss
        lab[:len(row) // 4] = [IGNORE_INDEX] * (len(row) // 4)
        ids.append(row)
        labels.append(lab)
    t = pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "labels": pa.array(labels, pa.list_(pa.int64()))})
    pq.write_table(t, tmp_path / "shifted.parquet", row_group_size=16)
    s = ShardSet(str(tmp_path / "shifted.parquet"))
    for pack, long_samples in ((True, "split"), (False, "drop")):
        ld = loader(s, micro_batch=2, train_batch=4, pack=pack, long_samples=long_samples, max_len=300)
        w = ld.build_window(0)
        assert w.micro[0].labels is not None
        assert_collate_matches_reference(ld, 6)


# ---- the plan against the plain first fit it must equal --------------------------------------------------------
def reference_plan(shards, start, n_rows, max_len, pack, long_samples, shuffle=False, seed=0):
    """First fit one sample at a time, as the module docstring states it (every row scanned for every piece): the
    plan's shortcuts (no scan when no row in use has room, the tight loop for whole samples) must not change it."""
    from collections import Counter
    remaining, used, rows, dropped, g = [max_len] * n_rows, 0, [[] for _ in range(n_rows)], Counter(), start
    while True:
        r = int(shards.order(g, g + 1, shuffle, seed)[0])
        n = int(shards.lengths[r])
        pieces = [(0, n)]
        if n > max_len:
            pieces = split_sample(n, shards.row(r)[1], max_len) if long_samples == "split" else None
            if pieces is None:
                dropped["too_long" if long_samples == "drop" else "span_longer_than_max_len"] += 1
                g += 1
                continue
        if pack:
            trial, where = list(remaining), []
            for lo, hi in pieces:
                j = next((j for j, room in enumerate(trial) if room >= hi - lo), None)
                if j is None:
                    break
                trial[j] -= hi - lo
                where.append(j)
            fits = len(where) == len(pieces)
        else:
            fits, where = used + len(pieces) <= n_rows, list(range(used, used + len(pieces)))
        if not fits:
            if any(rows):
                break
            dropped["more_pieces_than_rows"] += 1
            g += 1
            continue
        if pack:
            remaining = trial
        else:
            used += len(pieces)
        for j, (lo, hi) in zip(where, pieces):
            rows[j].append((g, r, lo, hi))
        g += 1
    return g, [row for row in rows if row], dropped


def test_plans_equal_the_plain_first_fit_on_random_lengths(tmp_path):
    rng = np.random.default_rng(11)
    samples = []
    for i in range(400):
        kind = int(rng.integers(0, 4))
        if kind == 0:       # short and long texts (some longer than max_len: split anywhere, or dropped)
            samples.append(_sample(i, "text_to_text", [("assistant", "text", [0] + _text(int(rng.integers(0, 900))))]))
        elif kind == 1:     # an image span: never cut
            samples.append(_sample(i, "text_to_image", [("user", "text", [0] + _text(int(rng.integers(1, 200)))),
                                                        ("assistant", "image", IMAGE)]))
        elif kind == 2:     # tiny rows fill the gaps the first fit leaves
            samples.append(_sample(i, "text_to_text", [("assistant", "text", [0] + _text(int(rng.integers(0, 6))))]))
        else:
            speech = [L.boa] + [L.speech_code_start + int(x) for x in rng.integers(0, 4096, int(rng.integers(5, 500)))]
            samples.append(_sample(i, "speech_to_text", [("user", "speech", speech + [L.eoa]),
                                                         ("assistant", "text", _text(int(rng.integers(1, 40))))]))
    s = ShardSet(str(_write(tmp_path, samples)))
    checked = 0
    configs = ((True, "split", 700, 8, False), (True, "drop", 1100, 16, True), (False, "split", 800, 4, False),
               (True, "split", 1100, 3, True), (False, "drop", 1030, 6, True))
    for pack, long_samples, max_len, n_rows, shuffle in configs:
        ld = loader(s, micro_batch=1, train_batch=n_rows, pack=pack, long_samples=long_samples, max_len=max_len,
                    shuffle=shuffle, seed=5)
        start = 0
        while start < 2 * len(s):                      # two epochs: windows across the epoch boundary too
            plan = ld.plan(start)
            end, rows, dropped = reference_plan(s, start, n_rows, max_len, pack, long_samples, shuffle, 5)
            assert (plan.end, [[tuple(p) for p in r] for r in plan.rows], plan.dropped) == (end, rows, dropped)
            assert plan.pieces.shape == (sum(map(len, rows)), 4) and plan.row_sizes.tolist() == list(map(len, rows))
            start = plan.end
            checked += 1
    assert checked > 100
