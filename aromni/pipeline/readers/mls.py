"""Multilingual LibriSpeech (OpenSLR 94) as released: transcripts.txt + audio/{speaker}/{book}/{id}.flac|.opus."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field

from aromni.pipeline.readers.base import Example, Rejected, Unit, register
from aromni.pipeline.readers.files import LineFileReader, LineOptions, text_lines
from aromni.pipeline.readers.gigaspeech import apply_case

AUDIO_EXTS = (".flac", ".opus", ".wav")


class MLSOptions(LineOptions):
    split: str = Field("train", description="train, dev or test (when path is the mls_{lang} folder)")
    case: Literal["keep", "lower", "sentence"] = Field("keep", description="MLS text is lower case, unpunctuated")


@register
class MLSReader(LineFileReader):
    name = "mls"
    layout_doc = """Multilingual LibriSpeech (mls_english, mls_english_opus, mls_german, ... from OpenSLR 94):
    mls_{lang}[_opus]/{train,dev,test}/transcripts.txt   lines "{speaker}_{book}_{utt}<TAB>text"
    mls_{lang}[_opus]/{split}/audio/{speaker}/{book}/{speaker}_{book}_{utt}.flac (or .opus)
    (segments.txt and the per-split metainfo are not needed). The paper uses the English portion.
    Units: byte ranges of transcripts.txt (options.unit_bytes).
    path: the split folder, the mls_{lang} folder (with options.split), or transcripts.txt."""
    Options = MLSOptions

    def files(self) -> list[Path]:
        p = self.path
        for cand in (p, p / "transcripts.txt", p / self.opts.split / "transcripts.txt"):
            if cand.is_file():
                return [cand]
        return []

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        txt = Path(unit.path)
        audio_root = txt.parent / "audio"
        for item in text_lines(txt, unit.part or 0, self.opts.unit_bytes):
            if isinstance(item, Rejected):
                yield item
                continue
            off, line = item
            utt, sep, text = line.partition("\t")
            if not sep or utt.count("_") < 2:
                yield Rejected(f"{txt.name}@{off}", "bad_metadata", f"not 'speaker_book_utt<TAB>text': {line[:80]!r}")
                continue
            speaker, book, _ = utt.split("_", 2)
            folder = audio_root / speaker / book
            audio = next((folder / f"{utt}{ext}" for ext in AUDIO_EXTS if (folder / f"{utt}{ext}").is_file()), None)
            if audio is None:
                yield Rejected(utt, "missing_audio", f"no {folder}/{utt}{{{','.join(AUDIO_EXTS)}}}")
                continue
            try:
                data = audio.read_bytes()
            except OSError as e:
                yield Rejected(utt, "missing_audio", f"{audio}: {e}")
                continue
            text = apply_case(text.strip(), self.opts.case)
            yield Example(key=utt, text=text, audio=data,
                          meta={"transcript": text, "speaker": speaker, "book": book,
                                "path": str(audio.relative_to(txt.parent.parent))})
