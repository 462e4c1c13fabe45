"""GigaSpeech: the HF Hub parquet, or the original release (GigaSpeech.json + audio/**/*.opus)."""
from __future__ import annotations

import re
from typing import Iterator, Literal

from pydantic import Field

from aromni.io import paths
from aromni.pipeline.readers.base import Example, Rejected, Unit, register
from aromni.pipeline.readers.files import array_start, array_units, iter_array
from aromni.pipeline.readers.parquet import ParquetReader

PUNCTUATION = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
GARBAGE = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")
_TAG = re.compile(r"\s*(<[A-Z]+>)")
METADATA = "GigaSpeech.json"


def normalise_transcript(text: str, case: str = "sentence") -> str:
    """GigaSpeech text -> plain text: punctuation tags become marks, garbage tags are removed, case restored."""
    def sub(m):
        tag = m.group(1)
        return PUNCTUATION.get(tag, "" if tag in GARBAGE else m.group(0))
    out = re.sub(r"\s+", " ", _TAG.sub(sub, text)).strip()
    return apply_case(out, case)


def apply_case(text: str, case: str) -> str:
    if case == "lower":
        return text.lower()
    if case == "sentence":
        out = re.sub(r"(^|[.?!]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text.lower())
        return re.sub(r"\bi\b", "I", out)
    return text


class GigaSpeechOptions(ParquetReader.Options):
    case: Literal["keep", "lower", "sentence"] = Field("sentence", description="GigaSpeech text is upper case")
    subset: str | None = Field(None, description="original layout: keep segments of this subset (XS, S, M, L, XL, "
                                                 "DEV, TEST); others are rejected as not_in_subset")
    audios_per_unit: int = Field(20, ge=1, description="original layout: long recordings per unit")
    max_segment_seconds: float = Field(600.0, gt=0, description="original layout: a segment whose begin/end times "
                                       "span more than this is rejected audio_too_long before it is read")


@register
class GigaSpeechReader(ParquetReader):
    name = "gigaspeech"
    layout_doc = """GigaSpeech, either layout:
    HF parquet (speechcolab/gigaspeech): *.parquet, one unit per row group; columns segment_id, speaker, text,
      audio (struct bytes/path, 16 kHz), begin_time, end_time, audio_id, title, url, source, category,
      original_full_path.
    original release: GigaSpeech.json ({"audios": [{"aid", "path": "audio/podcast/P0000/POD0000000001.opus",
      "segments": [{"sid", "begin_time", "end_time", "text_tn", "subsets": ["{XL}", ...]}], ...}]}) and the
      decrypted audio/{source}/{P####}/{aid}.opus files (.opus.aes files must be decrypted first with GigaSpeech's
      toolkit: rejected as encrypted_audio). One unit per options.audios_per_unit recordings; segments are cut from
      the recording by begin/end time.
    Text is upper case with <COMMA> <PERIOD> <QUESTIONMARK> <EXCLAMATIONPOINT> (mapped to punctuation) and garbage
    tags <SIL> <MUSIC> <NOISE> <OTHER> (removed; garbage-only utterances are rejected as garbage_only).
    path: the folder holding *.parquet or GigaSpeech.json, a glob, or one file."""
    Options = GigaSpeechOptions
    carries = frozenset({"text", "speech"})
    columns = ("segment_id", "text", "audio")

    def _metadata(self) -> str | None:
        self.require()
        if paths.has_magic(self.path):
            return None
        for cand in (self.path, paths.join(self.path, METADATA)):
            if paths.name(cand) == METADATA and paths.isfile(cand):
                return cand
        return None

    def units(self) -> list[Unit]:
        meta = self._metadata()
        if meta is None:
            return super().units()
        return array_units(self.source, meta, "audios", self.opts.audios_per_unit)

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        if paths.name(unit.path) == METADATA:
            yield from self._read_original(unit)
        else:
            yield from super().read(unit)

    # ---- HF parquet --------------------------------------------------------------------------------------
    def row(self, r: dict, unit: Unit) -> Iterator[Example | Rejected]:
        key = str(r["segment_id"])
        audio = r.get("audio") or {}
        keep = {k: r[k] for k in ("speaker", "begin_time", "end_time", "audio_id", "source", "category")
                if r.get(k) is not None}
        yield from self._segment(key, r.get("text") or "", audio.get("bytes"), f"{unit.label}:{key}", keep)

    def _segment(self, key: str, raw: str, audio, where: str, keep: dict) -> Iterator[Example | Rejected]:
        text = normalise_transcript(raw, self.opts.case)
        if not text.strip(" ,.?!"):
            yield Rejected(key, "garbage_only", f"transcript {raw!r} has no words")
            return
        if audio is None or (isinstance(audio, bytes) and not audio):
            yield Rejected(key, "missing_audio", f"{where}: no audio")
            return
        yield Example(key=key, text=text, audio=audio, meta={"transcript": text, "raw_text": raw, "path": where, **keep})

    # ---- original release --------------------------------------------------------------------------------
    def _read_original(self, unit: Unit) -> Iterator[Example | Rejected]:
        import soundfile as sf

        meta = unit.path
        try:
            start = unit.part if unit.part is not None else array_start(meta, "audios")
            audios = iter_array(meta, start, self.opts.audios_per_unit)
            for a in audios:
                yield from self._recording(a, paths.parent(meta), sf)
        except ValueError as e:
            yield Rejected(unit.label, "bad_metadata", f"{meta}: {e}")

    def _recording(self, a: dict, root: str, sf) -> Iterator[Example | Rejected]:
        segments = a.get("segments") or []
        rel = str(a.get("path") or "")
        audio_path = paths.confine(root, rel)
        want = f"{{{self.opts.subset}}}" if self.opts.subset else None
        base = {k: a[k] for k in ("aid", "source", "category", "speaker") if a.get(k) is not None}
        problem = None
        if audio_path is None:  # "../../../etc/x.opus" or an absolute path: never read outside the release
            problem = ("bad_path", f"recording path {rel!r} leaves {root}")
        elif not paths.isfile(audio_path):
            aes = f"{audio_path}.aes"
            problem = (("encrypted_audio", f"{aes} is encrypted: decrypt it with GigaSpeech's toolkit first")
                       if rel.endswith(".aes") or paths.exists(aes) else ("missing_audio", f"{audio_path} not found"))
        handle = raw = None
        try:
            if problem is None:
                try:
                    raw = paths.open_input(audio_path)
                    handle = sf.SoundFile(raw)
                except Exception as e:  # noqa: BLE001 - libsndfile errors come in several types
                    problem = ("bad_audio", f"{audio_path}: {type(e).__name__}: {e}")
            for s in segments:
                key = str(s.get("sid"))
                if want and want not in (s.get("subsets") or []):
                    yield Rejected(key, "not_in_subset", f"subsets {s.get('subsets')} lack {want}")
                    continue
                if problem:
                    yield Rejected(key, *problem)
                    continue
                try:
                    b, e = float(s["begin_time"]), float(s["end_time"])
                    if e - b > self.opts.max_segment_seconds:
                        yield Rejected(key, "audio_too_long", f"segment [{b}, {e}] is {e - b:.1f} s > "
                                                              f"max_segment_seconds {self.opts.max_segment_seconds}")
                        continue
                    sr = handle.samplerate
                    handle.seek(max(0, int(round(b * sr))))
                    wave = handle.read(max(0, int(round((e - b) * sr))), dtype="float32", always_2d=True)
                except Exception as ex:  # noqa: BLE001
                    yield Rejected(key, "bad_audio", f"{audio_path} [{s.get('begin_time')}, {s.get('end_time')}]: {ex}")
                    continue
                keep = {**base, "begin_time": b, "end_time": e, "subsets": s.get("subsets")}
                yield from self._segment(key, s.get("text_tn") or "", (wave, sr), f"{rel}:{key}", keep)
        finally:
            if handle is not None:
                handle.close()
            if raw is not None:
                raw.close()
