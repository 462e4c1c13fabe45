"""A finished build folder, read-only: its manifest, its shards row by row, its rejects.

The one place that knows the folder layout written by ``aromni build`` (see aromni/pipeline/manifest.py), so the
stats, show, card, publish and export commands never disagree on where things are.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aromni.layout import Layout
from aromni.pipeline.manifest import MANIFEST
from aromni.sample import REJECT_SCHEMA


class DatasetError(ValueError):
    """A build folder that cannot be used for what was asked; the message says why and what to do."""


class BuildFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise DatasetError(f"{self.path}: no {MANIFEST} here; point at a folder written by `aromni build`")
        try:
            self.manifest: dict = json.loads(mpath.read_text(encoding="utf-8"))
            self.layout = Layout.from_dict(self.manifest["layout"])
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{mpath}: unreadable or without a valid layout ({e})") from None

    # ---- identity ------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def stand_in(self) -> bool:
        return bool(self.manifest.get("stand_in_tokenizers"))

    @property
    def warning(self) -> str | None:
        return self.manifest.get("warning")

    @property
    def recipe(self) -> dict:
        return self.manifest.get("recipe") or {}

    def group_of(self) -> dict[str, str]:
        """source name -> mixing group, as the recipe says."""
        return {s["name"]: s.get("group") or "?" for s in self.recipe.get("sources", [])}

    # ---- shards --------------------------------------------------------------------------------------------
    @property
    def shards(self) -> list[dict]:
        return list(self.manifest.get("shards", []))

    def shard_paths(self) -> list[Path]:
        paths = [self.path / s["path"] for s in self.shards]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"shard(s) listed in the manifest are missing: {missing[:3]} (run `aromni validate`)")
        return paths

    def tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Each shard as a table, in manifest order (only ``columns`` when given: cheap for big builds)."""
        for p in self.shard_paths():
            yield pq.read_table(p, columns=columns)

    @property
    def rows(self) -> int:
        return int(self.manifest.get("rows", sum(s["rows"] for s in self.shards)))

    def row(self, index: int) -> dict:
        """Row ``index`` counted across shards in manifest order (negative counts from the end)."""
        total = self.rows
        if not -total <= index < total:
            raise DatasetError(f"row {index} does not exist: this build has {total} rows (0..{total - 1})")
        index %= total
        for s, p in zip(self.shards, self.shard_paths()):
            if index < s["rows"]:
                pf = pq.ParquetFile(p)
                for g in range(pf.num_row_groups):  # read only the row group holding the row
                    n = pf.metadata.row_group(g).num_rows
                    if index < n:
                        return pf.read_row_group(g).slice(index, 1).to_pylist()[0]
                    index -= n
            index -= s["rows"]
        raise DatasetError(f"row {index} not found although the manifest lists it (run `aromni validate`)")

    def find(self, row_id: str) -> tuple[int, dict]:
        """(global index, row) of the row whose id is ``row_id``."""
        offset = 0
        for p in self.shard_paths():
            ids = pq.read_table(p, columns=["id"]).column("id")
            hit = pc.index(ids, row_id).as_py()
            if hit >= 0:
                return offset + hit, pq.read_table(p).slice(hit, 1).to_pylist()[0]
            offset += len(ids)
        raise DatasetError(f"no row with id {row_id!r} in {self.path} (ids look like 'laion/000000012')")

    # ---- rejects -------------------------------------------------------------------------------------------
    def rejects(self) -> pa.Table:
        tables = [pq.read_table(self.path / r, schema=REJECT_SCHEMA)
                  for r in self.manifest.get("rejects", []) if (self.path / r).is_file()]
        return pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()
