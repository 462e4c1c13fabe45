"""A reply's ids split into text / images / speech (reference §5), and decoded into str / PIL images / waves.

Splitting: an image is ``8197`` … ``8196`` (its codes between); speech is ``12821`` followed by a run of speech codes,
``12820`` optional (a reply cut by max_new_tokens may end inside a span, and a stop id may close one: the decoder
allows ``<eos>`` / ``<eom>`` after a code, as upstream's splitter tolerates a missing ``<eoa>``); every other id is text. Stop ids and
markers are structure, not text: they are dropped from the decoded text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aromni.layout import AR_OMNI_V0_1, Layout


@dataclass
class Part:
    kind: str            # "text" | "image" | "speech"
    ids: list[int]       # the ids of the part (for image/speech: the codes' ids, markers excluded)
    complete: bool = True  # image: exactly 1024 codes and its 8196 seen; speech: its 12820 (or a stop id) seen


def split_reply(ids, layout: Layout = AR_OMNI_V0_1) -> list[Part]:
    parts: list[Part] = []
    ids = [int(i) for i in ids]
    i, n = 0, len(ids)
    while i < n:
        t = ids[i]
        if t == layout.boi:
            j = i + 1
            while j < n and ids[j] != layout.eoi:
                j += 1
            codes = [c for c in ids[i + 1:j] if layout.is_image_code(c)]
            parts.append(Part("image", codes, complete=j < n and len(codes) == layout.image_tokens))
            i = j + 1
        elif t == layout.boa:
            j = i + 1
            while j < n and layout.is_speech_code(ids[j]):
                j += 1
            closed = j < n and ids[j] == layout.eoa
            stopped = j < n and ids[j] in layout.stop_ids   # the span ended with the reply
            parts.append(Part("speech", ids[i + 1:j], complete=closed or stopped))
            i = j + 1 if closed else j
        else:
            j = i
            while j < n and ids[j] not in (layout.boi, layout.boa):
                j += 1
            if parts and parts[-1].kind == "text":
                parts[-1].ids.extend(ids[i:j])
            else:
                parts.append(Part("text", ids[i:j]))
            i = j
    return parts


STRUCTURE = ("bos", "pad", "eos", "eoi", "boi", "eoa", "boa", "eoh", "eom", "ins", "res")


def text_of(ids, text_tokenizer, layout: Layout = AR_OMNI_V0_1) -> str:
    skip = {getattr(layout, k) for k in STRUCTURE}
    return text_tokenizer.decode([i for i in ids if i not in skip and not layout.is_speech_code(i)
                                  and not layout.is_image_code(i)])


@dataclass
class Reply:
    """What a task returns: the reply's ids and their decoded parts, with timings and provenance."""
    ids: list[int]
    text: str = ""
    transcript: str | None = None                        # chat: what the model heard (<-Ins-> ... <-Res->)
    images: list = field(default_factory=list)           # PIL images, 512 x 512
    speech: list[np.ndarray] = field(default_factory=list)
    sample_rate: int = AR_OMNI_V0_1.speech_sample_rate
    parts: list[Part] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)       # tokenizer identities; stand_in flags

    @property
    def audio(self) -> np.ndarray:
        """All speech of the reply, concatenated."""
        return np.concatenate(self.speech) if self.speech else np.zeros(0, dtype=np.float32)

    def summary(self) -> dict:
        return {"text": self.text, "transcript": self.transcript, "n_ids": len(self.ids), "images": len(self.images),
                "speech_seconds": round(len(self.audio) / self.sample_rate, 3),
                "parts": [{"kind": p.kind, "n": len(p.ids), "complete": p.complete} for p in self.parts],
                "metrics": self.metrics, **self.provenance}
