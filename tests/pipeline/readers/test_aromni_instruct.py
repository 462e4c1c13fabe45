"""The published AR-Omni-Instruct parquet: input_ids + labels in, our rows (segments from labels) out."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from aromni.pipeline.readers.aromni_instruct import LabelError, segments_from_labels
from aromni.sample import LossPolicy, labels_and_weights
from tests.pipeline.readers.published import fixture_tree, run_source, unit_level


def test_import_recovers_segments_and_round_trips_labels():
    root, expect = fixture_tree()
    r = run_source("aromni_instruct", "AR-Omni-Instruct-v0.1", ["chat"])
    assert {k: r[k] for k in ("read", "written", "rejected")} == unit_level(expect["aromni_instruct"])
    src = pq.read_table(root / "AR-Omni-Instruct-v0.1" / "train.parquet").to_pylist()
    for row in r["rows"]:
        i = int(row.id.rsplit(":", 1)[1])
        assert row.input_ids == src[i]["input_ids"]
        labels, _ = labels_and_weights(row.input_ids, row.segments, "chat", LossPolicy(on="assistant"))
        assert labels.tolist() == src[i]["labels"]            # our derived labels are upstream's labels
    with_image = next(x for x in r["rows"] if x.input_ids.count(8197))
    assert [(s.role, s.modality) for s in with_image.segments][:3] == [("user", "text"), ("user", "image"),
                                                                        ("user", "speech")]


def test_labels_that_split_a_span_or_disagree_are_refused():
    ids = [0, 100, 8197, *range(4, 1028), 8196, 12830, 200, 12831]
    ok = [-100] * 1029 + [200, 12831]
    segs = segments_from_labels(ids, ok)
    assert [(s.role, s.modality, s.start, s.end) for s in segs] == [
        ("user", "text", 0, 2), ("user", "image", 2, 1028), ("user", "text", 1028, 1029),
        ("assistant", "text", 1029, 1031)]
    split = list(ok)
    split[500] = ids[500]
    with pytest.raises(LabelError, match="partly labelled"):
        segments_from_labels(ids, split)
    with pytest.raises(LabelError, match="differ"):
        segments_from_labels(ids, ok[:-1] + [2])
    with pytest.raises(LabelError, match="labels"):
        segments_from_labels(ids, ok[:-1])
    with pytest.raises(LabelError, match="never closed"):
        segments_from_labels([0, 12821, 9000], [-100] * 3)
