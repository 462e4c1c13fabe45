"""VoiceAssistant-400K (gpt-omni/VoiceAssistant-400K): spoken questions with text answers, parquet."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from pydantic import Field

from aromni.pipeline.readers.base import Example, Rejected, Turn, Unit, register
from aromni.pipeline.readers.parquet import ParquetReader


class VoiceAssistantOptions(ParquetReader.Options):
    multi_round: bool = Field(True, description="join consecutive rows of the same (split_name, index) into one "
                                                "dialog, ordered by round; false: one dialog per row")


def _audio(a):
    """HF Audio column value -> encoded bytes or (waveform, rate); None when empty."""
    if not isinstance(a, dict):
        return a or None
    if a.get("bytes"):
        return a["bytes"]
    if a.get("array") is not None and a.get("sampling_rate"):
        return np.asarray(a["array"], dtype=np.float32), int(a["sampling_rate"])
    return None


def _round(r) -> float:
    try:
        return float(r)
    except (TypeError, ValueError):
        return 0.0


@register
class VoiceAssistantReader(ParquetReader):
    name = "voiceassistant"
    carries = frozenset({"dialog", "text", "speech"})
    layout_doc = """VoiceAssistant-400K (HF gpt-omni/VoiceAssistant-400K), data/*.parquet, one unit per row group:
    columns split_name, index, round, question (text), question_audio (audio struct bytes/path), answer (text),
    answer_snac (the answer's SNAC codes: not AR-Omni's codec, ignored; the voice step re-synthesises replies).
    Rows of one conversation (same split_name and index, consecutive) become one multi-turn dialog ordered by round
    (options.multi_round). Task: chat (speech in; the question text is the <-Ins-> transcript).
    path: the folder of *.parquet, a glob, or one file."""
    Options = VoiceAssistantOptions
    columns = ("question", "question_audio", "answer")

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        group: list[dict] = []
        for item in self.iter_rows(unit):
            if isinstance(item, Rejected):
                yield item
                continue
            r = item[1]
            if group and (not self.opts.multi_round or _conv(group[0]) != _conv(r)):
                yield self._dialog(group, unit)
                group = []
            group.append(r)
        if group:
            yield self._dialog(group, unit)

    def _dialog(self, rows: list[dict], unit: Unit) -> Example | Rejected:
        rows = sorted(rows, key=lambda r: _round(r.get("round")))
        first = rows[0]
        key = "/".join(str(first.get(k)) for k in ("split_name", "index") if first.get(k) is not None) or "row"
        if not self.opts.multi_round or first.get("round") not in (None, "", 0, "0"):
            key += f"/{first.get('round')}"
        turns = []
        for r in rows:
            audio = _audio(r.get("question_audio"))
            if audio is None:
                return Rejected(key, "missing_audio", f"round {r.get('round')}: question_audio is empty")
            turns.append(Turn("user", r.get("question") or "", audio=audio, meta={"round": r.get("round")}))
            turns.append(Turn("assistant", r.get("answer") or "", meta={"has_snac": bool(r.get("answer_snac"))}))
        return Example(key=key, turns=turns, meta={"path": unit.label, "rounds": len(rows)})


def _conv(r: dict):
    return r.get("split_name"), r.get("index")
