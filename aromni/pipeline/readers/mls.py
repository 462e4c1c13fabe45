"""Multilingual LibriSpeech (OpenSLR 94) as released: transcripts.txt + audio/{speaker}/{book}/{id}.flac|.opus."""
from __future__ import annotations

from typing import Iterator, Literal

from pydantic import Field

from aromni.io import paths
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
    carries = frozenset({"text", "speech"})

    def files(self) -> list[str]:
        self.require()
        p = self.path
        for cand in (p, paths.join(p, "transcripts.txt"), paths.join(p, self.opts.split, "transcripts.txt")):
            if paths.isfile(cand):
                return [cand]
        return []

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        txt = unit.path
        audio_root = paths.join(paths.parent(txt), "audio")
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
            folder = paths.confine(audio_root, f"{speaker}/{book}")
            if folder is None or "/" in utt or "\\" in utt:  # an id such as ../../x_y_z names a file elsewhere
                yield Rejected(utt, "bad_path", f"{txt}@{off}: id {utt!r} leaves {audio_root}")
                continue
            cands = [paths.join(folder, f"{utt}{ext}") for ext in AUDIO_EXTS]
            audio = next((c for c in cands if paths.isfile(c)), None)
            if audio is None:
                yield Rejected(utt, "missing_audio", f"no {folder}/{utt}{{{','.join(AUDIO_EXTS)}}}")
                continue
            try:
                data = paths.read_bytes(audio, self.opts.max_file_bytes)
            except paths.TooLarge as e:
                yield Rejected(utt, "too_large", str(e))
                continue
            except paths.InputError as e:
                yield Rejected(utt, "missing_audio", str(e))
                continue
            text = apply_case(text.strip(), self.opts.case)
            yield Example(key=utt, text=text, audio=data,
                          meta={"transcript": text, "speaker": speaker, "book": book,
                                "path": audio[len(paths.parent(paths.parent(txt))) + 1:]})
