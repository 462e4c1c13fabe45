"""Shared parquet plumbing: one unit per row group, rows streamed in batches, missing columns reported."""
from __future__ import annotations

from typing import ClassVar, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from aromni.io import paths
from aromni.pipeline.readers.base import Example, Reader, ReaderOptions, Rejected, Unit

GiB = 1 << 30


class ParquetOptions(ReaderOptions):
    max_row_group_bytes: int = Field(2 * GiB, ge=1, description="a row group whose uncompressed size (from the "
                                     "file's footer) is over this is rejected too_large before it is read: a "
                                     "worker holds one row group in memory")


def open_parquet(path: str) -> pq.ParquetFile:
    """A ParquetFile over paths.open_input: on an object store the footer and each row group are range reads."""
    return pq.ParquetFile(paths.open_input(path))


class ParquetReader(Reader):
    Options = ParquetOptions
    patterns = ("*.parquet",)
    columns: ClassVar[tuple[str, ...]] = ()   # required columns
    batch_rows: ClassVar[int] = 256

    def units(self) -> list[Unit]:
        out = []
        for f in self.files():
            try:
                n = open_parquet(f).metadata.num_row_groups
            except paths.InputError:
                raise
            except Exception:  # noqa: BLE001 - unreadable file: one unit that will report it
                n = 1
            size = paths.size(f)
            out += [Unit(self.source, str(f), size, part=i) for i in range(max(n, 1))]
        return out

    def iter_rows(self, unit: Unit) -> Iterator[tuple[int, dict] | Rejected]:
        """(row index within the file, row) for the unit's row group, or a Rejected for a file that cannot be read."""
        try:
            pf = open_parquet(unit.path)
        except Exception as e:  # noqa: BLE001
            yield Rejected(paths.name(unit.path), "unreadable_file", f"{unit.path}: {e}")
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
        cap = getattr(self.opts, "max_row_group_bytes", None)
        if group < pf.metadata.num_row_groups and cap is not None:
            rg = pf.metadata.row_group(group)
            if rg.total_byte_size > cap:
                yield Rejected(unit.label, "too_large", f"{unit.label}: row group of {rg.num_rows} rows is "
                               f"{rg.total_byte_size} bytes uncompressed > max_row_group_bytes {cap}")
                return
        try:
            for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=[group]):
                yield from _batch_rows(batch, unit, index)
                index += batch.num_rows
        except (OSError, pa.ArrowException) as e:
            yield Rejected(unit.label, "unreadable_file", f"{unit.label}: {e}")

    def iter_keyed_rows(self, unit: Unit) -> Iterator[tuple[str, int, dict] | Rejected]:
        """``iter_rows`` with each row's key, ``{file stem}:{row index}``: the one definition of the ids of
        sources that have no id column of their own (stable as long as the file is)."""
        stem = paths.stem(unit.path)
        for item in self.iter_rows(unit):
            yield item if isinstance(item, Rejected) else (f"{stem}:{item[0]}", *item)

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        for item in self.iter_rows(unit):
            if isinstance(item, Rejected):
                yield item
            else:
                yield from self.row(item[1], unit)

    def row(self, r: dict, unit: Unit) -> Iterator[Example | Rejected]:
        raise NotImplementedError


def _batch_rows(batch, unit: Unit, index: int) -> Iterator[tuple[int, dict] | Rejected]:
    """The batch's (row index, row)s. A string that is not UTF-8 (a corrupt writer) makes pyarrow refuse the whole
    batch: then rows go one by one and only the broken ones become rejects."""
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        rows = None
    if rows is not None:
        yield from ((index + i, r) for i, r in enumerate(rows))
        return
    for i in range(batch.num_rows):
        try:
            yield index + i, batch.slice(i, 1).to_pylist()[0]
        except UnicodeDecodeError as e:
            yield Rejected(f"{paths.name(unit.path)}#{unit.part or 0}:row{index + i}", "bad_text",
                           f"{unit.path} row {index + i}: a string column is not UTF-8 ({e})")
