"""``aromni export``: a build in AR-Omni's own training formats, so upstream's scripts consume our shards unchanged.

- ``aromni-pretrain-jsonl`` (reference §3, upstream ``training/pretrain/pretrain.py``): a folder of ``*.jsonl`` shards
  read in sorted order; one line per row ``{"discrete_code": ids, "task": str, "response": ids, "id": str}``. Upstream
  uses only ``len(response)``: the weighted tail for image_caption / speech_to_text. We write the assistant ids without
  the final stop id, so ``len(response) == aromni.sample.response_length`` (the value our own trainer uses). Upstream
  keeps rows with 0 < len < 1300 and knows only its seven task names (any other name fails its collate), so rows
  outside that are skipped here and counted by reason instead of failing a run later.
- ``aromni-sft-parquet`` (upstream ``training/instruction-tuning/sft.py``, the AR-Omni-Instruct layout): one parquet
  with ``input_ids`` and ``labels`` (list<int64>); labels are -100 outside assistant segments, derived by
  ``aromni.sample.labels_and_weights`` with ``LossPolicy(on="assistant")``.

Each export writes ``export.json`` beside its files: counts, skips by reason, the build it came from and its stand-in
status (upstream readers only look at ``*.jsonl`` / the parquet path, so it does not disturb them).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from aromni.dataset.folder import BuildFolder, DatasetError
from aromni.sample import LossPolicy, Segment, labels_and_weights, response_length

# Upstream's pretraining TASK2ID keys (training/pretrain/pretrain.py): its collate looks every row's task up here.
UPSTREAM_PRETRAIN_TASKS = ("image_caption", "speech_to_text", "text_to_image", "text_to_speech", "image_to_text",
                           "speech_to_image", "text_to_text")
PRETRAIN_MAX_LEN = 1299  # upstream keeps 0 < len(discrete_code) < 1300
SFT_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64()))])
REPORT = "export.json"


@dataclass
class ExportReport:
    format: str
    out: str
    files: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0
    skipped: dict = field(default_factory=dict)
    max_length: int | None = None
    build: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def pretrain_record(row: dict, layout) -> dict:
    ids = [int(i) for i in row["input_ids"]]
    segs = [Segment(**s) for s in row["segments"]]
    n = response_length(segs, ids, layout)
    resp = [i for s in segs if s.role == "assistant" for i in ids[s.start:s.end]][:n]
    return {"discrete_code": ids, "task": row["task"], "response": resp, "id": row["id"]}


def sft_record(row: dict, layout) -> tuple[list[int], list[int]]:
    labels, _ = labels_and_weights(row["input_ids"], row["segments"], row["task"], LossPolicy(on="assistant"), layout)
    return [int(i) for i in row["input_ids"]], labels.tolist()


def _prepare_out(out: Path, patterns: tuple[str, ...], force: bool) -> None:
    """Upstream reads every ``*.jsonl`` in the folder: stale files from another export would train silently."""
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted({p for pat in patterns for p in out.glob(pat)})
    if stale and not force:
        raise DatasetError(f"{out} already holds {len(stale)} exported file(s) (e.g. {stale[0].name}); use another "
                           f"--out, or --force to replace them")
    for p in stale:
        p.unlink()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def export_pretrain_jsonl(folder: BuildFolder, out: Path, rep: ExportReport) -> None:
    skipped: Counter = Counter()
    max_len = rep.max_length
    for s, t in zip(folder.shards, folder.tables()):
        path = out / (Path(s["path"]).stem + ".jsonl")
        tmp = _tmp(path)
        written = 0
        with open(tmp, "w", encoding="utf-8") as f:
            for row in t.to_pylist():
                rep.rows_in += 1
                if row["task"] not in UPSTREAM_PRETRAIN_TASKS:
                    skipped[f"task_not_in_upstream_pretrain ({row['task']})"] += 1
                    continue
                if not 0 < len(row["input_ids"]) <= max_len:
                    skipped[f"length_over_{max_len}"] += 1
                    continue
                f.write(json.dumps(pretrain_record(row, folder.layout), separators=(",", ":"), ensure_ascii=False))
                f.write("\n")
                written += 1
        if written:
            tmp.replace(path)
            rep.files.append(path.name)
            rep.rows_out += written
        else:
            tmp.unlink()  # an empty shard would skew upstream's "rows of the first shard x shards" estimate
    rep.skipped = dict(skipped)


def export_sft_parquet(folder: BuildFolder, out: Path, rep: ExportReport) -> None:
    skipped: Counter = Counter()
    path = out / "train.parquet"
    tmp = _tmp(path)
    with pq.ParquetWriter(tmp, SFT_SCHEMA, compression="zstd") as w:
        for t in folder.tables(columns=["task", "input_ids", "segments"]):
            ids_col, labels_col = [], []
            for row in t.to_pylist():
                rep.rows_in += 1
                if rep.max_length is not None and len(row["input_ids"]) > rep.max_length:
                    skipped[f"length_over_{rep.max_length}"] += 1
                    continue
                ids, labels = sft_record(row, folder.layout)
                if all(x == -100 for x in labels):
                    skipped["no_assistant_tokens"] += 1
                    continue
                ids_col.append(ids)
                labels_col.append(labels)
            if ids_col:
                w.write_table(pa.table({"input_ids": ids_col, "labels": labels_col}, schema=SFT_SCHEMA))
                rep.rows_out += len(ids_col)
    tmp.replace(path)
    rep.files.append(path.name)
    rep.skipped = dict(skipped)


FORMATS = {
    "aromni-pretrain-jsonl": (export_pretrain_jsonl, ("*.jsonl",), PRETRAIN_MAX_LEN),
    "aromni-sft-parquet": (export_sft_parquet, ("train.parquet",), None),
}


def export(path: str | Path, fmt: str, out: str | Path, *, max_length: int | None = None,
           force: bool = False) -> ExportReport:
    """Write the build at ``path`` to ``out`` in format ``fmt``; returns what was written and skipped."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown export format {fmt!r}; known: {sorted(FORMATS)}")
    folder = BuildFolder(path)
    fn, patterns, default_max = FORMATS[fmt]
    if max_length is not None and fmt == "aromni-pretrain-jsonl" and max_length > PRETRAIN_MAX_LEN:
        raise DatasetError(f"--max-length {max_length}: upstream pretraining drops rows of {PRETRAIN_MAX_LEN + 1}+ "
                           f"tokens itself, so an export cannot keep them")
    out = Path(out)
    if out.resolve() == folder.path.resolve() or folder.path.resolve() in out.resolve().parents:
        raise DatasetError(f"--out {out} is inside the build folder; export somewhere else")
    _prepare_out(out, patterns + (REPORT,), force)
    m = folder.manifest
    rep = ExportReport(fmt, str(out), max_length=max_length if max_length is not None else default_max,
                       build={"path": str(folder.path), "name": folder.name, "recipe_sha256": m.get("recipe_sha256"),
                              "layout": folder.layout.name, "stand_in": folder.stand_in, "warning": folder.warning,
                              "tokenizers": m.get("tokenizers")})
    fn(folder, out, rep)
    (out / REPORT).write_text(json.dumps(rep.as_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return rep
