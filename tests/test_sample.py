"""The grammar check catches each way a row can break, and labels derive from segments."""
from __future__ import annotations

import numpy as np
import pytest

from aromni.sample import (LossPolicy, Sample, Segment, check_row, check_rows, image_code_positions,
                           labels_and_weights, rows_to_table)

TEXT = [20000, 20001]
IMG = [8197, *range(4, 1028), 8196]
SPEECH = [12821, 8724, 9000, 12820]


def good_row():
    ids = [0, *TEXT, *IMG, 12830, *TEXT, *SPEECH, 2]
    segs = [Segment("user", "text", 0, 3), Segment("user", "image", 3, 1029), Segment("user", "text", 1029, 1030),
            Segment("assistant", "text", 1030, 1032), Segment("assistant", "speech", 1032, 1036),
            Segment("assistant", "text", 1036, 1037)]
    return ids, segs


def test_good_row_is_clean():
    assert check_row(*good_row()) == []


def _mutate(kind):
    ids, segs = good_row()
    if kind == "no_bos":
        ids[0] = 20000
    elif kind == "no_stop":
        ids[-1] = 20000
    elif kind == "short_image":
        del ids[10]
        segs = [s if s.end <= 10 else Segment(s.role, s.modality, s.start - (s.start > 10), s.end - 1) for s in segs]
    elif kind == "code_in_text":
        ids[1] = 9000
    elif kind == "text_in_speech":
        ids[1034] = 20000
    elif kind == "gap":
        segs[1] = Segment("user", "image", 4, 1029)
    elif kind == "overlap":
        segs[2] = Segment("user", "text", 1028, 1030)
    elif kind == "uncovered":
        segs = segs[:-1]
    elif kind == "out_of_vocab":
        ids[1] = 70000
    elif kind == "bad_role":
        segs[0] = Segment("system", "text", 0, 3)
    elif kind == "marker_in_text":
        ids[2] = 8197
    return ids, segs


@pytest.mark.parametrize("kind,needle", [
    ("no_bos", "not bos"), ("no_stop", "ends with"), ("short_image", "1023 image codes"),
    ("code_in_text", "text segment"), ("text_in_speech", "non-speech id"), ("gap", "gap or overlap"),
    ("overlap", "gap or overlap"), ("uncovered", "segments cover"), ("out_of_vocab", "outside"),
    ("bad_role", "role must be"), ("marker_in_text", "text segment")])
def test_each_violation_is_reported(kind, needle):
    problems = check_row(*_mutate(kind))
    assert problems and any(needle in p for p in problems), problems
    assert check_rows([good_row(), _mutate(kind), good_row()]) == [[], problems, []]


def _random_rows(n: int, seed: int = 0):
    """Well-formed rows of every shape, and the same rows broken in one or two random ways (ids changed to ids of
    every class and out of range, ids inserted or deleted, segment bounds moved, roles/modalities renamed, segments
    dropped or repeated, empty rows)."""
    import random
    rng = random.Random(seed)
    odd_ids = [0, 1, 2, 3, 8195, 8196, 8197, 12820, 12821, 12830, 12831, 4, 8199, 8724, 12819, 20000, -1, 65536,
               70000]
    shapes = [good_row(), ([0, *TEXT, 2], [Segment("user", "text", 0, 4)]),
              ([0, *IMG, 12831], [Segment("user", "text", 0, 1), Segment("assistant", "image", 1, 1027),
                                  Segment("assistant", "text", 1027, 1028)]),
              ([0, 12821, 12820, 2], [Segment("user", "text", 0, 1), Segment("user", "speech", 1, 3),
                                      Segment("user", "text", 3, 4)])]
    rows = []
    for _ in range(n):
        ids, segs = rng.choice(shapes)
        ids, segs = list(ids), list(segs)
        for _ in range(rng.choice([0, 1, 1, 2])):
            what = rng.randrange(8)
            if what == 0 and ids:
                ids[rng.randrange(len(ids))] = rng.choice(odd_ids)
            elif what == 1 and ids:
                del ids[rng.randrange(len(ids))]
            elif what == 2:
                ids.insert(rng.randrange(len(ids) + 1), rng.choice(odd_ids))
            elif what == 3 and segs:
                k = rng.randrange(len(segs))
                s = segs[k]
                segs[k] = Segment(s.role, s.modality, s.start + rng.choice([-1, 0, 1]), s.end + rng.choice([-1, 1]))
            elif what == 4 and segs:
                k = rng.randrange(len(segs))
                s = segs[k]
                segs[k] = Segment(rng.choice(["user", "assistant", "system"]),
                                  rng.choice(["text", "image", "speech", "video"]), s.start, s.end)
            elif what == 5 and segs:
                del segs[rng.randrange(len(segs))]
            elif what == 6 and segs:
                k = rng.randrange(len(segs))
                segs.insert(k, segs[k])
            elif what == 7:
                ids, segs = [], segs if rng.random() < 0.5 else []
        rows.append((ids, segs if rng.random() < 0.8 else [s.as_dict() for s in segs]))
    return rows


def test_check_rows_equals_check_row_on_good_and_broken_rows():
    rows = _random_rows(3000)
    want = [check_row(ids, segs) for ids, segs in rows]
    assert 500 < sum(not w for w in want) < 2500   # both kinds are well represented
    assert check_rows(rows) == want
    assert check_rows(rows[:1]) == want[:1] and check_rows([]) == []
    assert check_rows([([], [])]) == [check_row([], [])]


def test_labels_assistant_only_and_perceptual_positions():
    ids, segs = good_row()
    labels, w = labels_and_weights(ids, segs, "chat", LossPolicy(on="assistant"))
    assert (labels[:1030] == -100).all() and labels[1030:].tolist() == ids[1030:]
    assert w.sum() == len(ids) - 1030
    # image is a *user* segment here: no perceptual positions for the assistant, 1024 for the user
    assert len(image_code_positions(ids, segs)) == 0
    pos = image_code_positions(ids, segs, role="user")
    assert pos.tolist() == list(range(4, 1028))


def test_transcript_weight_between_ins_and_res():
    ids = [0, 20000, 12830, 20001, 12840, 20002, 20003, 12841, 20004, 2]
    segs = [Segment("user", "text", 0, 3), Segment("assistant", "text", 3, 10)]
    _, w = labels_and_weights(ids, segs, "chat", LossPolicy(on="assistant", transcript_weight=3.0))
    assert w.tolist() == [0, 0, 0, 1, 1, 3, 3, 1, 1, 1]


def test_row_round_trip_through_arrow():
    ids, segs = good_row()
    s = Sample("src/k", "src", "chat", ids, segs, {"caption": "é"})
    t = rows_to_table([s])
    back = Sample.from_row(t.to_pylist()[0])
    assert back == s and t.schema.field("input_ids").type.value_type.bit_width == 32


def test_check_rows_id_class_table_agrees_with_the_layout_over_the_whole_vocabulary():
    """check_row classifies ids with one lookup table; it must say what Layout's own predicates say for every id."""
    from aromni.layout import AR_OMNI_V0_1 as L
    from aromni.sample import _IMAGE, _SPEECH, _TEXT, _id_classes
    c = _id_classes(L)
    ids = np.arange(L.vocab_size)
    assert ((c == _TEXT) == np.array([L.is_text_id(i) for i in ids])).all()
    assert ((c == _IMAGE) == np.array([L.is_image_code(i) for i in ids])).all()
    assert ((c == _SPEECH) == np.array([L.is_speech_code(i) for i in ids])).all()
    assert L.markers["boi"] == L.boi and dict(L.markers) == dict(type(L)().markers)


def test_rows_to_table_equals_the_row_dicts_table_byte_for_byte():
    """The column-by-column table is the one from_pylist builds from to_row dicts: equal, and the same parquet bytes
    (parts' sha256s are in their done markers), for rows of every shape and for no rows."""
    import io
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aromni.sample import MODALITIES, ROLES, ROW_SCHEMA
    rng = random.Random(3)
    rows = []
    for i in range(60):
        n = rng.randint(1, 40)
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 3)))) if n > 1 else []
        bounds = [0, *cuts, n]
        segs = [Segment(rng.choice(ROLES), rng.choice(MODALITIES), a, b) for a, b in zip(bounds, bounds[1:])]
        meta = rng.choice([{}, {"caption": "é ü 字"}, {"b": [1, 2], "a": {"z": None}}])
        rows.append(Sample(f"src/{i}", "src", rng.choice(["text", "chat"]),
                           [rng.randrange(65536) for _ in range(n)], segs, meta, rng.choice(["", f"{i:016x}"])))

    def parquet(t):
        buf = io.BytesIO()
        pq.write_table(t, buf, compression="zstd")
        return buf.getvalue()
    for picked in (rows, rows[:1], []):
        want = pa.Table.from_pylist([s.to_row() for s in picked], schema=ROW_SCHEMA)
        got = rows_to_table(picked)
        assert got.equals(want) and parquet(got) == parquet(want)
