"""The published AR-Omni-Instruct parquet (input_ids + labels) imported as rows, so its rows and ours mix."""
from __future__ import annotations

from typing import Iterator, Sequence

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.pipeline.readers.base import Example, Rejected, Unit, register
from aromni.pipeline.readers.parquet import ParquetReader
from aromni.sample import IGNORE_INDEX, Segment


class LabelError(ValueError):
    pass


def segments_from_labels(input_ids: Sequence[int], labels: Sequence[int],
                         layout: Layout = AR_OMNI_V0_1) -> list[Segment]:
    """Recover our segments from an upstream row: a token is the assistant's where its label is not -100 (HF
    convention: labels[t] is the target for position t), the modality comes from the span markers
    ([8197] ... [8196] image, [12821] ... [12820] speech, the rest text). A span whose labels are mixed cannot be one
    segment and is refused, as are labels that disagree with the ids."""
    ids, labels = [int(i) for i in input_ids], [int(x) for x in labels]
    if len(ids) != len(labels):
        raise LabelError(f"{len(ids)} input_ids but {len(labels)} labels")
    wrong = [t for t, (i, y) in enumerate(zip(ids, labels)) if y != IGNORE_INDEX and y != i]
    if wrong:
        raise LabelError(f"labels differ from input_ids at {len(wrong)} position(s), first {wrong[0]}")
    role = ["user" if y == IGNORE_INDEX else "assistant" for y in labels]
    segs: list[Segment] = []

    def push(r: str, m: str, a: int, b: int):
        last = segs[-1] if segs else None
        if m == "text" and last and last.modality == "text" and last.role == r and last.end == a:
            segs[-1] = Segment(r, m, last.start, b)
        else:
            segs.append(Segment(r, m, a, b))

    t, n = 0, len(ids)
    closers = {layout.boi: (layout.eoi, "image"), layout.boa: (layout.eoa, "speech")}
    while t < n:
        if ids[t] in closers:
            close, modality = closers[ids[t]]
            try:
                end = ids.index(close, t + 1) + 1
            except ValueError:
                raise LabelError(f"{modality} span opened at {t} is never closed") from None
            if len(set(role[t:end])) != 1:
                raise LabelError(f"{modality} span {t}:{end} is partly labelled: cannot assign one role")
            push(role[t], modality, t, end)
            t = end
        else:
            push(role[t], "text", t, t + 1)
            t += 1
    return segs


@register
class AROmniInstructReader(ParquetReader):
    name = "aromni_instruct"
    carries = frozenset({"tokens", "dialog"})
    layout_doc = """The published AR-Omni-Instruct-v0.1 (ModalityDance), one parquet, one unit per row group:
    columns input_ids (list<int>) and labels (list<int>, -100 where no loss), already tokenized with the AR-Omni
    layout. Segments are recovered from the labels (assistant where labels != -100, modality from the span markers);
    rows whose labels disagree with the ids or split a span are rejected as bad_labels, rows that break the grammar
    as grammar_error. Row ids are {file stem}:{row index}. Task: chat.
    path: the parquet file, its folder, or a glob."""
    columns = ("input_ids", "labels")

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        for item in self.iter_keyed_rows(unit):
            if isinstance(item, Rejected):
                yield item
                continue
            key, index, r = item
            ids, labels = r.get("input_ids"), r.get("labels")
            if not ids:
                yield Rejected(key, "empty_row", "input_ids is empty")
                continue
            try:
                segs = segments_from_labels(ids, labels or [])
            except LabelError as e:
                yield Rejected(key, "bad_labels", str(e))
                continue
            yield Example(key=key, tokens=([int(i) for i in ids], segs),
                          meta={"path": f"{unit.label}:{index}", "imported_from": "AR-Omni-Instruct"})
