"""aromni export: AR-Omni's own formats (reference §3), read back the way upstream's training scripts read them."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aromni.dataset.export import UPSTREAM_PRETRAIN_TASKS, export
from aromni.dataset.folder import DatasetError
from aromni.sample import IGNORE_INDEX, LossPolicy, Segment, labels_and_weights


def _rows(build):
    return [r for p in sorted((build / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def upstream_weighted_positions(rec: dict, eos: int = 2) -> set[int]:
    """Which tokens upstream's pretrain trainer weights (training/pretrain/pretrain_trainer.py): on the shifted label
    axis (token t = position t-1; position 0 carries packed meta), among labels that are not eos, the last
    len(response) ones, for image_caption and speech_to_text only."""
    ids, k = rec["discrete_code"], len(rec["response"])
    if rec["task"] not in ("image_caption", "speech_to_text") or k <= 0:
        return set()
    eligible = [t for t in range(1, len(ids)) if ids[t] != eos]
    return set(eligible[-k:])


@pytest.fixture(scope="module")
def pretrain(build_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "pretrain"
    return out, export(build_dir, "aromni-pretrain-jsonl", out)


@pytest.fixture(scope="module")
def sft(build_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "sft"
    return out, export(build_dir, "aromni-sft-parquet", out)


def test_pretrain_jsonl_is_what_upstream_reads(build_dir, pretrain):
    out, rep = pretrain
    rows = _rows(build_dir)
    shards = sorted(out.glob("*.jsonl"))  # upstream: sorted(f for f in listdir if f.endswith(".jsonl"))
    assert [p.name for p in shards] == rep.files and len(shards) == len(list((build_dir / "data").glob("*.parquet")))
    recs = [json.loads(line) for p in shards for line in p.read_text().splitlines()]
    assert rep.rows_in == rep.rows_out == len(recs) == len(rows) and rep.skipped == {}
    for rec, row in zip(recs, rows):
        assert set(rec) == {"discrete_code", "task", "response", "id"}
        assert rec["discrete_code"] == row["input_ids"] and rec["id"] == row["id"] and rec["task"] == row["task"]
        assert 0 < len(rec["discrete_code"]) < 1300 and rec["task"] in UPSTREAM_PRETRAIN_TASKS
        # the tokens upstream weights from len(response) are exactly the ones our trainer weights
        _, w = labels_and_weights(row["input_ids"], row["segments"], row["task"], LossPolicy())
        assert upstream_weighted_positions(rec) == set(np.flatnonzero(w == 2.0).tolist())
    weighted = [r for r in recs if r["task"] in ("image_caption", "speech_to_text")]
    assert weighted and all(r["response"] == r["discrete_code"][-len(r["response"]) - 1:-1] for r in weighted)
    report = json.loads((out / "export.json").read_text())
    assert report["build"]["stand_in"] is True and report["rows_out"] == len(rows)


def test_sft_parquet_labels_mask_everything_but_the_assistant(build_dir, sft, tmp_path):
    import datasets

    out, rep = sft
    t = pq.read_table(out / "train.parquet")
    assert t.column_names == ["input_ids", "labels"] and rep.rows_out == t.num_rows == len(_rows(build_dir))
    for rec, row in zip(t.to_pylist(), _rows(build_dir)):
        assert rec["input_ids"] == row["input_ids"]
        assistant = {i for s in row["segments"] if s["role"] == "assistant" for i in range(s["start"], s["end"])}
        assert [i for i, y in enumerate(rec["labels"]) if y != IGNORE_INDEX] == sorted(assistant)
        assert all(rec["labels"][i] == rec["input_ids"][i] for i in assistant)
    # upstream sft.py: load_dataset("parquet", data_files=path, split="train")
    ds = datasets.load_dataset("parquet", data_files=str(out / "train.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert len(ds) == t.num_rows and ds[0]["labels"] == t.column("labels")[0].as_py()


def test_sft_round_trip_through_the_aromni_instruct_reader(build_dir, sft):
    """Our SFT export read by the AR-Omni-Instruct importer gives back our rows' ids and segments."""
    mod = pytest.importorskip("aromni.pipeline.readers.aromni_instruct")
    from aromni.pipeline.readers import READERS

    out, _ = sft
    reader = READERS["aromni_instruct"]("instruct", out / "train.parquet", {})
    items = [it for u in reader.units() for it in reader.read(u)]
    rows = _rows(build_dir)
    assert len(items) == len(rows) and not [it for it in items if not hasattr(it, "tokens")]
    for it, row in zip(items, rows):
        ids, segs = it.tokens
        assert ids == row["input_ids"]
        assert segs == [Segment(**s) for s in row["segments"]]
        assert mod.segments_from_labels(ids, labels_and_weights(ids, segs, row["task"], LossPolicy(on="assistant"))[0]
                                        .tolist()) == segs


def test_rows_upstream_cannot_take_are_skipped_and_counted(fresh_build, tmp_path):
    p = sorted((fresh_build / "data").glob("*.parquet"))[0]
    t = pq.read_table(p)
    tasks = t.column("task").to_pylist()
    tasks[0] = "chat"  # upstream pretraining has no such task: its collate would fail on it
    pq.write_table(t.set_column(t.schema.get_field_index("task"), "task", pa.array(tasks)), p)
    rep = export(fresh_build, "aromni-pretrain-jsonl", tmp_path / "a", max_length=200)
    long_rows = sum(len(r["input_ids"]) > 200 for r in _rows(fresh_build) if r["task"] != "chat")
    assert rep.skipped == {"task_not_in_upstream_pretrain (chat)": 1, "length_over_200": long_rows}
    assert rep.rows_in == rep.rows_out + sum(rep.skipped.values()) and long_rows > 0
    lines = sum(len(f.read_text().splitlines()) for f in (tmp_path / "a").glob("*.jsonl"))
    assert lines == rep.rows_out


def test_refusals(build_dir, pretrain, tmp_path):
    out, _ = pretrain
    with pytest.raises(DatasetError, match="already holds"):
        export(build_dir, "aromni-pretrain-jsonl", out)  # stale shards would be read by upstream too
    with pytest.raises(DatasetError, match="inside the build"):
        export(build_dir, "aromni-sft-parquet", build_dir / "x")
    with pytest.raises(DatasetError, match="unknown export format"):
        export(build_dir, "megatron", tmp_path / "m")
    with pytest.raises(DatasetError, match="drops rows of 1300"):
        export(build_dir, "aromni-pretrain-jsonl", tmp_path / "p", max_length=4096)
