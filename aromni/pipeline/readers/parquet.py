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

    def iter_rows(self, unit: Unit) -> Iterator[tuple[int, dict] | Rejected]:
        """(row index within the file, row) for the unit's row group, or a Rejected for a file that cannot be read."""
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
        group = unit.part or 0
        index = sum(pf.metadata.row_group(g).num_rows for g in range(group))
        try:
            for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=[group]):
                for r in batch.to_pylist():
                    yield index, r
                    index += 1
        except OSError as e:
            yield Rejected(unit.label, "unreadable_file", f"{unit.label}: {e}")

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        for item in self.iter_rows(unit):
            if isinstance(item, Rejected):
                yield item
            else:
                yield from self.row(item[1], unit)

    def row(self, r: dict, unit: Unit) -> Iterator[Example | Rejected]:
        raise NotImplementedError
