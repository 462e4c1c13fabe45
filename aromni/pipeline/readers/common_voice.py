"""Mozilla Common Voice as released (cv-corpus-*/{lang}/ tsv files + clips/*.mp3)."""
from __future__ import annotations

from typing import Iterator

from pydantic import Field, model_validator

from aromni.io import paths
from aromni.pipeline.readers.base import Example, Rejected, Unit, register
from aromni.pipeline.readers.files import LineFileReader, LineOptions, read_header, text_lines

# Columns kept in meta when the release has them (old releases: accent; new: accents, variant, sentence_id, ...).
KEEP = ("sentence_id", "locale", "up_votes", "down_votes", "age", "gender", "accent", "accents", "variant", "segment")
# Splits the community has not validated: clips voted down (invalidated), not yet voted on (other) or reported.
UNVALIDATED = ("invalidated", "other", "reported")
# Common Voice's own rule for "validated": at least two up votes and more up votes than down votes.
VOTE_RULE = {"min_up_votes": 2, "min_vote_margin": 1}


class CommonVoiceOptions(LineOptions):
    split: str = Field("validated", description="which tsv: validated, train, dev, test, other, invalidated, "
                                                "reported. The unvalidated ones (other, invalidated, reported) get "
                                                "Common Voice's vote rule (up_votes >= 2 and up - down >= 1) unless "
                                                "a vote option is set explicitly")
    min_up_votes: int | None = Field(None, description="keep clips with at least this many up votes")
    max_down_votes: int | None = Field(None, description="keep clips with at most this many down votes")
    min_vote_margin: int | None = Field(None, description="keep clips with up_votes - down_votes >= this")

    @model_validator(mode="after")
    def _vote_rule_on_unvalidated_splits(self):
        explicit = any(v is not None for v in (self.min_up_votes, self.max_down_votes, self.min_vote_margin))
        if self.split.removesuffix(".tsv") in UNVALIDATED and not explicit:
            self.min_up_votes, self.min_vote_margin = VOTE_RULE["min_up_votes"], VOTE_RULE["min_vote_margin"]
        return self


@register
class CommonVoiceReader(LineFileReader):
    name = "common_voice"
    carries = frozenset({"text", "speech"})
    layout_doc = """Common Voice release as extracted from cv-corpus-{version}-{date}-{lang}.tar.gz:
    cv-corpus-20.0-2024-12-06/en/validated.tsv (also train/dev/test/other/invalidated/reported.tsv)
    cv-corpus-20.0-2024-12-06/en/clips/common_voice_en_{n}.mp3
    tsv columns (new releases): client_id path sentence_id sentence sentence_domain up_votes down_votes age gender
    accents variant locale segment; old releases: client_id path sentence up_votes down_votes age gender accent
    [locale segment]. Columns are read by header name; path and sentence are required.
    Votes filters (options) reject as votes; a clip missing from clips/ as missing_audio; a path that leaves the
    language folder (../, absolute) as bad_path.
    Unvalidated splits (other, invalidated, reported: clips voted down or not yet voted on) get Common Voice's own
    vote rule by default (up_votes >= 2 and up_votes - down_votes >= 1); set any vote option to choose another.
    Units: byte ranges of the tsv (options.unit_bytes).
    path: the language folder, or one tsv."""
    Options = CommonVoiceOptions

    def files(self) -> list[str]:
        self.require()
        if paths.isdir(self.path):
            f = paths.join(self.path, f"{self.opts.split.removesuffix('.tsv')}.tsv")
            return [f] if paths.isfile(f) else []
        return super().files()

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        tsv = unit.path
        header = read_header(tsv).decode("utf-8", errors="replace").split("\t")
        col = {name: i for i, name in enumerate(header)}
        if "path" not in col or "sentence" not in col:
            if unit.part in (0, None):
                yield Rejected(paths.name(tsv), "missing_columns", f"{tsv}: header {header} lacks path/sentence")
            return
        clips = paths.join(paths.parent(tsv), "clips")
        for item in text_lines(tsv, unit.part or 0, self.opts.unit_bytes, skip_header=True):
            if isinstance(item, Rejected):
                yield item
                continue
            off, line = item
            cells = line.split("\t")
            rec = {name: cells[i] if i < len(cells) else "" for name, i in col.items()}
            yield from self._clip(rec, clips, tsv, off)

    def _clip(self, rec: dict, clips: str, tsv: str, off: int) -> Iterator[Example | Rejected]:
        path = rec["path"]
        key = paths.stem(path) or f"{paths.name(tsv)}@{off}"
        votes = self._votes_reject(rec)
        if votes:
            yield Rejected(key, "votes", votes)
            return
        clip = paths.confine(clips, path)
        if clip is None:  # ../../x.mp3 or /etc/x: never read a file outside the release
            yield Rejected(key, "bad_path", f"{tsv}@{off}: path {path!r} leaves {clips}")
            return
        try:
            audio = paths.read_bytes(clip, self.opts.max_file_bytes)
        except paths.TooLarge as e:
            yield Rejected(key, "too_large", str(e))
            return
        except paths.InputError as e:
            yield Rejected(key, "missing_audio", str(e))
            return
        meta = {"transcript": rec["sentence"], "path": f"{paths.name(paths.parent(tsv))}/clips/{path}",
                "split": paths.stem(tsv)}
        meta.update({k: rec[k] for k in KEEP if rec.get(k) not in (None, "")})
        yield Example(key=key, text=rec["sentence"], audio=audio, meta=meta)

    def _votes_reject(self, rec: dict) -> str | None:
        o = self.opts
        if o.min_up_votes is None and o.max_down_votes is None and o.min_vote_margin is None:
            return None
        try:
            up, down = int(rec.get("up_votes") or 0), int(rec.get("down_votes") or 0)
        except ValueError:
            return f"unreadable votes {rec.get('up_votes')!r}/{rec.get('down_votes')!r}"
        if o.min_up_votes is not None and up < o.min_up_votes:
            return f"up_votes {up} < {o.min_up_votes}"
        if o.max_down_votes is not None and down > o.max_down_votes:
            return f"down_votes {down} > {o.max_down_votes}"
        if o.min_vote_margin is not None and up - down < o.min_vote_margin:
            return f"up_votes - down_votes = {up - down} < {o.min_vote_margin}"
        return None
