"""GigaSpeech as published on the Hugging Face Hub (parquet with an audio struct column)."""
from __future__ import annotations

import re
from typing import Iterator, Literal

from pydantic import Field

from aromni.pipeline.readers.base import Example, Rejected, Unit, register
from aromni.pipeline.readers.parquet import ParquetReader

PUNCTUATION = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
GARBAGE = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")
_TAG = re.compile(r"\s*(<[A-Z]+>)")


def normalise_transcript(text: str, case: str = "sentence") -> str:
    """GigaSpeech text -> plain text: punctuation tags become marks, garbage tags are removed, case restored."""
    def sub(m):
        tag = m.group(1)
        return PUNCTUATION.get(tag, "" if tag in GARBAGE else m.group(0))
    out = re.sub(r"\s+", " ", _TAG.sub(sub, text)).strip()
    if case == "lower":
        out = out.lower()
    elif case == "sentence":
        out = re.sub(r"(^|[.?!]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), out.lower())
        out = re.sub(r"\bi\b", "I", out)
    return out


class GigaSpeechOptions(ParquetReader.Options):
    case: Literal["keep", "lower", "sentence"] = Field("sentence", description="GigaSpeech text is upper case")


@register
class GigaSpeechReader(ParquetReader):
    name = "gigaspeech"
    layout_doc = """GigaSpeech from the HF Hub (speechcolab/gigaspeech), parquet files, one unit per row group:
    columns segment_id, speaker, text (upper case with <COMMA> <PERIOD> <QUESTIONMARK> <EXCLAMATIONPOINT> and
    garbage tags <SIL> <MUSIC> <NOISE> <OTHER>), audio (struct bytes/path, 16 kHz), begin_time, end_time, audio_id,
    title, url, source, category, original_full_path.
    Tags become punctuation; garbage-only utterances are rejected as garbage_only.
    path: a folder of *.parquet, a glob, or one file."""
    Options = GigaSpeechOptions
    columns = ("segment_id", "text", "audio")

    def row(self, r: dict, unit: Unit) -> Iterator[Example | Rejected]:
        key = str(r["segment_id"])
        raw = r.get("text") or ""
        text = normalise_transcript(raw, self.opts.case)
        if not text.strip(" ,.?!"):
            yield Rejected(key, "garbage_only", f"transcript {raw!r} has no words")
            return
        audio = r.get("audio") or {}
        if not audio.get("bytes"):
            yield Rejected(key, "missing_audio", "audio.bytes is empty")
            return
        keep = {k: r[k] for k in ("speaker", "begin_time", "end_time", "audio_id", "source", "category")
                if r.get(k) is not None}
        yield Example(key=key, text=text, audio=audio["bytes"],
                      meta={"transcript": text, "raw_text": raw, "path": f"{unit.label}:{key}", **keep})
