"""Ultra-FineWeb text documents (parquet)."""
from __future__ import annotations

from typing import Iterator

from pydantic import Field

from aromni.pipeline.readers.base import Example, Rejected, Unit, register
from aromni.pipeline.readers.parquet import ParquetReader


class UltraFineWebOptions(ParquetReader.Options):
    min_score: float | None = Field(None, description="keep documents whose classifier score >= this")


@register
class UltraFineWebReader(ParquetReader):
    name = "ultrafineweb"
    carries = frozenset({"text"})
    layout_doc = """Ultra-FineWeb (openbmb/Ultra-FineWeb) parquet, one unit per row group:
    columns content (the document), score (quality classifier), source.
    Only the English portion is used in the paper (data/ultrafineweb_en/*.parquet).
    Row ids are {file stem}:{row index} (the data set has no id column); below min_score: low_score.
    path: a folder of *.parquet, a glob, or one file."""
    Options = UltraFineWebOptions
    columns = ("content",)

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        for item in self.iter_keyed_rows(unit):
            if isinstance(item, Rejected):
                yield item
                continue
            key, index, r = item
            if self.opts.min_score is not None and (r.get("score") or 0.0) < self.opts.min_score:
                yield Rejected(key, "low_score", f"score {r.get('score')} < {self.opts.min_score}")
                continue
            yield Example(key=key, text=r.get("content"),
                          meta={"path": f"{unit.path}:{index}", "score": r.get("score"), "origin": r.get("source")})
