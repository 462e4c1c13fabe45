"""Shared parquet plumbing: one unit per row group, rows streamed in batches, missing columns reported."""
from __future__ import annotations

import os
from typing import ClassVar, Iterator

import pyarrow.parquet as pq

from aromni.pipeline.readers.base import Example, Reader, Rejected, Unit


class ParquetReader(Reader):
    patterns = ("*.parquet",)
    columns: ClassVar[tuple[str, ...]] = ()   # required columns
    batch_rows: ClassVar[int] = 256

    def units(self) -> list[Unit]:
        out = []
        for f in self.files():
            try:
                n = pq.ParquetFile(f).metadata.num_row_groups
            except Exception:  # noqa: BLE001 - unreadable file: one unit that will report it
                n = 1
            out += [Unit(self.source, str(f), os.path.getsize(f), part=i) for i in range(max(n, 1))]
        return out

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        try:
            pf = pq.ParquetFile(unit.path)
        except Exception as e:  # noqa: BLE001
            yield Rejected(os.path.basename(unit.path), "unreadable_file", f"{unit.path}: {e}")
            return
        missing = [c for c in self.columns if c not in pf.schema_arrow.names]
        if missing:
            yield Rejected(unit.label, "missing_columns",
                           f"{unit.path} lacks column(s) {missing}; has {pf.schema_arrow.names}")
            return
        if pf.metadata.num_row_groups == 0:
            return
        try:
            for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=[unit.part or 0]):
                for r in batch.to_pylist():
                    yield from self.row(r, unit)
        except OSError as e:
            yield Rejected(unit.label, "unreadable_file", f"{unit.label}: {e}")

    def row(self, r: dict, unit: Unit) -> Iterator[Example | Rejected]:
        raise NotImplementedError
