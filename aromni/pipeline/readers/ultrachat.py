"""UltraChat (stingning/ultrachat): text-only multi-turn dialogs, train_{0..9}.jsonl."""
from __future__ import annotations

from typing import Iterator

from pydantic import Field

from aromni.pipeline.readers.base import Example, Rejected, Turn, Unit, register
from aromni.pipeline.readers.files import MiB, LineFileReader, LineOptions, json_lines


class UltraChatOptions(LineOptions):
    unit_bytes: int = Field(32 * MiB, ge=1, description="bytes of jsonl per unit (text only: cheap per byte)")


@register
class UltraChatReader(LineFileReader):
    name = "ultrachat"
    carries = frozenset({"dialog", "text"})
    layout_doc = """UltraChat (HF stingning/ultrachat): train_0.jsonl ... train_9.jsonl, one dialog per line:
    {"id": "0", "data": ["user turn", "assistant turn", "user turn", ...]}.
    Turns alternate user/assistant starting with the user; a trailing user turn has no reply and is dropped
    (counted in the row's meta and the unit's dropped_turns). Task: chat (text in, text out).
    Units: byte ranges of each jsonl (options.unit_bytes).
    path: the folder of train_*.jsonl, a glob, or one file."""
    Options = UltraChatOptions
    patterns = ("*.jsonl",)

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        for item in json_lines(unit.path, unit.part or 0, self.opts.unit_bytes):
            if isinstance(item, Rejected):
                yield item
                continue
            off, digest, rec = item
            key = str(rec.get("id", digest))
            data = rec.get("data")
            if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
                yield Rejected(key, "bad_dialog", "data is not a list of strings")
                continue
            turns = [Turn("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(data)]
            yield Example(key=key, turns=turns, meta={"path": f"{unit.path}@{off}", "turns_in_source": len(data)})
