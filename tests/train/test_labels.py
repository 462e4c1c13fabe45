"""The loader's vectorised derivation (aromni.train.labels) equals the reference definitions row by row: the spine's
labels_and_weights and image_code_positions, on the demo shards, on chat rows and on random rows."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aromni.layout import AR_OMNI_V0_1 as L
from aromni.sample import IGNORE_INDEX, LossPolicy, Sample, Segment, image_code_positions, labels_and_weights, \
    response_length, rows_to_table
from aromni.train.labels import derive
from aromni.train.loader import ShardSet

from .chat_rows import write_chat_build

POLICIES = [LossPolicy(on="all", response_weight=2.0), LossPolicy(on="all", response_weight=3.0,
                                                                  transcript_weight=1.7),
            LossPolicy(on="assistant", transcript_weight=1.5), LossPolicy(on="assistant", response_weight=1.0)]


def reference(ids, segs, task, policy, perceptual_tasks):
    lab, w = labels_and_weights(ids, segs, task, policy, L)
    pos = np.concatenate([image_code_positions(ids, segs, role, L) for role in ("user", "assistant")])
    percept = np.zeros(len(ids), dtype=bool)
    if "*" in perceptual_tasks or task in perceptual_tasks:
        percept[pos] = True
    return lab, w, percept & (lab != IGNORE_INDEX)


def assert_rows_equal(shards: ShardSet, policy, perceptual_tasks, rule="aromni"):
    checked = 0
    for rg in range(len(shards.rg_rows)):
        g = shards.row_group(rg)
        labels, weights, percept = derive(g, policy, L, perceptual_tasks, rule)
        for k in range(len(g.offsets) - 1):
            ids, segs, task, _ = shards.row(int(shards.rg_start[rg]) + k)
            lo, hi = g.offsets[k], g.offsets[k + 1]
            lab, w, per = reference(ids, segs, task, policy, perceptual_tasks)
            assert labels[lo:hi].tolist() == lab.tolist(), (rg, k, task)
            assert weights[lo:hi].tolist() == w.tolist(), (rg, k, task)
            assert percept[lo:hi].tolist() == per.tolist(), (rg, k, task)
            checked += 1
    assert checked == len(shards)


@pytest.mark.parametrize("policy", POLICIES)
def test_demo_shards_row_by_row(shards_dir, policy):
    shards = ShardSet(str(shards_dir))
    for tasks in (("text_to_image",), ("*",), ("image_caption", "chat")):
        assert_rows_equal(shards, policy, tasks)


@pytest.mark.parametrize("policy", POLICIES)
def test_chat_rows_row_by_row_and_their_images_get_the_perceptual_loss(tmp_path, policy):
    shards = ShardSet(str(write_chat_build(tmp_path)))
    assert_rows_equal(shards, policy, ("chat",))
    g = shards.row_group(0)
    _, _, percept = derive(g, policy, L, ("chat",))
    assert percept.sum() >= L.image_tokens                         # chat image spans are perceptual targets
    assert not derive(g, policy, L, ("text_to_image",))[2].any()  # ... and only for the tasks asked for


def random_rows(n: int, seed: int) -> list[Sample]:
    """Rows with random segment layouts, roles, tasks, and the markers the weights depend on at random places."""
    rng = np.random.default_rng(seed)
    special = [L.ins, L.res, L.eos, L.eom, L.bos, L.boi]
    out = []
    for i in range(n):
        segs, ids, pos = [], [], 0
        for _ in range(int(rng.integers(1, 6))):
            mod = str(rng.choice(["text", "text", "image", "speech"]))
            k = int(rng.integers(3, 30))
            body = rng.integers(16384, 20000, k)
            mask = rng.random(k) < 0.2
            body[mask] = rng.choice(special, int(mask.sum()))
            ids += body.tolist()
            segs.append(Segment(str(rng.choice(["user", "assistant"])), mod, pos, pos + k))
            pos += k
        if rng.random() < 0.7:
            ids[0] = L.bos
        if rng.random() < 0.7:
            ids[-1] = int(rng.choice([L.eos, L.eom]))
        task = str(rng.choice(["image_caption", "speech_to_text", "text_to_image", "chat", "text_to_text"]))
        out.append(Sample(f"r/{i}", "random", task, ids, segs))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_rows_row_by_row(tmp_path, seed):
    pq.write_table(rows_to_table(random_rows(300, seed)), tmp_path / "rows.parquet", row_group_size=37)
    shards = ShardSet(str(tmp_path / "rows.parquet"))
    for policy in POLICIES:
        for tasks in (("text_to_image",), ("*",)):
            assert_rows_equal(shards, policy, tasks)


def upstream_reference(ids, segs, task, policy):
    """(labels, weights) by AR-Omni's trainers' rules (the module docstring of aromni.train.labels), one row at a
    time: the tail (pretraining only) is the last len(response) targets that are not eos; the transcript (SFT only)
    pairs each <-Ins-> with the first unused <-Res-> after it."""
    lab, w = labels_and_weights(ids, segs, task, LossPolicy(on=policy.on, response_weight=1.0), L)
    ids, target = np.asarray(ids), lab != IGNORE_INDEX
    if policy.on == "all" and task in policy.response_tasks and policy.response_weight != 1.0:
        resp = response_length(segs, ids, L)
        tail = np.flatnonzero(target & (ids != L.eos))
        if resp > 0:
            w[tail[-resp:]] = policy.response_weight
    if policy.on == "assistant" and policy.transcript_weight != 1.0:
        res, used = np.flatnonzero(ids == L.res).tolist(), set()
        for i in np.flatnonzero(ids == L.ins).tolist():
            j = next((r for r in res if r > i and r not in used), None)
            if j is not None:
                used.add(j)
                inside = np.arange(i + 1, j)
                w[inside[target[inside]]] = policy.transcript_weight
    return lab, w


@pytest.mark.parametrize("seed", [0, 1])
def test_upstream_rule_row_by_row(tmp_path, seed):
    pq.write_table(rows_to_table(random_rows(300, seed)), tmp_path / "rows.parquet", row_group_size=37)
    shards = ShardSet(str(tmp_path / "rows.parquet"))
    for policy in POLICIES + [LossPolicy(on="assistant", transcript_weight=1.5, response_weight=3.0)]:
        for rg in range(len(shards.rg_rows)):
            g = shards.row_group(rg)
            labels, weights, _ = derive(g, policy, L, (), "upstream")
            for k in range(len(g.offsets) - 1):
                ids, segs, task, _ = shards.row(int(shards.rg_start[rg]) + k)
                lab, w = upstream_reference(ids, segs, task, policy)
                lo, hi = g.offsets[k], g.offsets[k + 1]
                assert labels[lo:hi].tolist() == lab.tolist() and weights[lo:hi].tolist() == w.tolist(), (rg, k)


def test_rows_with_stored_labels_keep_them_and_find_labelled_image_spans_as_upstream(tmp_path):
    """AR-Omni-Instruct rows (input_ids + labels): labels as stored; perceptual positions are the 1024 ids after a
    labelled boi that lie inside the row (upstream's extract_image_parts), for task `labels`."""
    img = (4 + np.arange(L.image_tokens) % 8192).tolist()
    a = [0, 20000, L.eoh, L.boi, *img, L.eoi, L.eom]            # an assistant image: labelled
    b = [0, L.boi, *img, L.eoi, 20001, L.eoh, 20002, L.eom]      # a user image: not labelled
    c = [0, 20003, L.boi, *img[:100]]                           # a cut span: out of the row
    rows = [(a, [IGNORE_INDEX] * 3 + a[3:]), (b, [IGNORE_INDEX] * (len(b) - 2) + b[-2:]),
            (c, [IGNORE_INDEX, *c[1:]])]
    t = pa.table({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]})
    pq.write_table(t, tmp_path / "instruct.parquet")
    shards = ShardSet(str(tmp_path / "instruct.parquet"))
    g = shards.row_group(0)
    labels, weights, percept = derive(g, LossPolicy(on="assistant"), L, ("labels",))
    assert labels.tolist() == [x for r in rows for x in r[1]]
    assert weights.tolist() == [float(x != IGNORE_INDEX) for r in rows for x in r[1]]
    want = np.zeros(len(labels), dtype=bool)
    want[4:4 + L.image_tokens] = True
    assert percept.tolist() == want.tolist()
    assert not derive(g, LossPolicy(on="assistant"), L, ("chat",))[2].any()
    # SFT transcript weights apply to stored-label rows too
    d = [0, 20000, L.eoh, L.ins, 20001, 20002, L.res, 20003, L.eom]
    pq.write_table(pa.table({"input_ids": [d], "labels": [[IGNORE_INDEX] * 3 + d[3:]]}), tmp_path / "t.parquet")
    g = ShardSet(str(tmp_path / "t.parquet")).row_group(0)
    assert derive(g, LossPolicy(on="assistant", transcript_weight=2.0), L)[1].tolist() == \
        [0, 0, 0, 1, 2, 2, 1, 1, 1]


def test_task_codes_give_back_each_rows_task():
    """The task column's dictionary codes give back each row's task, a null one as None."""
    from aromni.train.loader import _codes
    tasks = ["chat", None, "text_to_image", "chat", None, "speech_to_text"]
    for col in (pa.array(tasks), pa.array(tasks).dictionary_encode()):
        codes, names = _codes(col)
        assert [names[c] for c in codes.tolist()] == tasks
