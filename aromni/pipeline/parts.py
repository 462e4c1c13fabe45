"""Per-unit part files: rows, rejects and the stats JSON that marks the unit done. Written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from aromni.sample import REJECT_SCHEMA, rows_to_table

PARTS = "parts"


def part_paths(out: Path, stem: str) -> dict[str, Path]:
    base = Path(out) / PARTS / stem
    return {"rows": base.with_suffix(".parquet"), "rejects": base.with_name(base.name + ".rejects.parquet"),
            "done": base.with_name(base.name + ".done.json")}


def write_parquet_atomic(table: pa.Table, path: Path, **kw) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, **kw)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet_stream_atomic(tables, schema: pa.Schema, path: Path, **kw) -> None:
    """Tables one after another into one parquet file, holding one in memory at a time; atomic like the above."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema, **kw) as w:
            for t in tables:
                if t.num_rows:
                    w.write_table(t)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:  # a full disk must not leave a half-written temp behind
        if tmp.exists():
            tmp.unlink()


def write_part(out: Path, stem: str, result, recipe) -> None:
    """Rows and rejects first, the done marker last: a unit without its marker is redone."""
    p = part_paths(out, stem)
    p["rows"].parent.mkdir(parents=True, exist_ok=True)
    o = recipe.output
    write_parquet_atomic(rows_to_table(result.rows), p["rows"], compression="zstd", row_group_size=o.row_group_rows)
    write_parquet_atomic(pa.Table.from_pylist(result.rejects, schema=REJECT_SCHEMA), p["rejects"], compression="zstd")
    write_json_atomic(result.stats, p["done"])


def read_done(out: Path, stem: str) -> dict | None:
    p = part_paths(out, stem)
    if not (p["done"].exists() and p["rows"].exists() and p["rejects"].exists()):
        return None
    try:
        return json.loads(p["done"].read_text())
    except (json.JSONDecodeError, OSError):
        return None


def existing_stems(out: Path) -> set[str]:
    root = Path(out) / PARTS
    if not root.exists():
        return set()
    return {f"{d.parent.name}/{d.name.removesuffix('.done.json')}" for d in root.glob("*/*.done.json")}
