"""Ultra-FineWeb text documents (parquet)."""
from __future__ import annotations

import hashlib
from typing import Iterator

from pydantic import Field

from aromni.pipeline.readers.base import Example, Rejected, Unit, register
from aromni.pipeline.readers.parquet import ParquetReader


class UltraFineWebOptions(ParquetReader.Options):
    min_score: float | None = Field(None, description="keep documents whose classifier score >= this")


@register
class UltraFineWebReader(ParquetReader):
    name = "ultrafineweb"
    layout_doc = """Ultra-FineWeb (openbmb/Ultra-FineWeb) parquet, one unit per row group:
    columns content (the document), score (quality classifier), source.
    Only the English portion is used in the paper (data/ultrafineweb_en/*.parquet).
    path: a folder of *.parquet, a glob, or one file."""
    Options = UltraFineWebOptions
    columns = ("content",)

    def row(self, r: dict, unit: Unit) -> Iterator[Example | Rejected]:
        text = r.get("content")
        # Ultra-FineWeb has no id column: the document's own content hash is its stable key.
        key = hashlib.sha1((text or "").encode("utf-8", "surrogatepass")).hexdigest()[:16]
        if self.opts.min_score is not None and (r.get("score") or 0.0) < self.opts.min_score:
            yield Rejected(key, "low_score", f"score {r.get('score')} < {self.opts.min_score}")
            return
        yield Example(key=key, text=text, meta={"path": unit.label, "score": r.get("score"),
                                                 "origin": r.get("source")})
