"""The AR-Omni token layout: the one definition of which id means what.

Every part of aromni (templates, pipeline, validator, trainer, decoder) imports the id map from here, and every
dataset's manifest stores it (``Layout.to_json``), so a shard can always be read back with the layout it was built with.
The default, ``AR_OMNI_V0_1``, is AR-Omni v0.1 on the Chameleon/Anole 65,536-id vocabulary (reference §1).
"""
from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass

_CACHE: dict = {}   # (id(layout), name) -> (layout, value): see cached


def cached(layout: "Layout", name: str, build):
    """A value derived from ``layout``, built once per layout object. Keyed by identity, not by the layout's hash (a
    frozen dataclass hashes all its fields: slower than what it would cache); the entry holds the layout, so its id
    is never reused while the entry lives."""
    hit = _CACHE.get((id(layout), name))
    if hit is not None and hit[0] is layout:
        return hit[1]
    value = build()
    _CACHE[id(layout), name] = (layout, value)
    return value


@dataclass(frozen=True)
class Layout:
    name: str = "ar-omni-v0.1"
    vocab_size: int = 65536
    bos: int = 0
    pad: int = 1            # Chameleon's <pad>; AR-Omni pads training batches with eos (see train_pad)
    eos: int = 2
    train_pad: int = 2      # what the AR-Omni trainer pads input_ids with (labels get -100)
    image_code_start: int = 4
    image_codebook: int = 8192
    image_tokens: int = 1024  # 32 x 32 VQGAN codes per 512 x 512 image
    eoi: int = 8196         # Chameleon <eoss>
    boi: int = 8197         # Chameleon <racm3:break>
    speech_code_start: int = 8724
    speech_codebook: int = 4096
    speech_rate: int = 40   # WavTokenizer codes per second
    speech_sample_rate: int = 24000
    eoa: int = 12820
    boa: int = 12821
    eoh: int = 12830        # end of user input
    eom: int = 12831        # end of an assistant turn in multi-turn chat; also a stop id
    ins: int = 12840        # <-Ins->: start of the transcript of the user's speech (SFT)
    res: int = 12841        # <-Res->: start of the response (SFT)

    # ---- ranges -------------------------------------------------------------------------------------------
    @property
    def image_code_end(self) -> int:
        """Last image-code id, inclusive (8195)."""
        return self.image_code_start + self.image_codebook - 1

    @property
    def speech_code_end(self) -> int:
        """Last speech-code id, inclusive (12819)."""
        return self.speech_code_start + self.speech_codebook - 1

    @property
    def stop_ids(self) -> tuple[int, int]:
        return (self.eos, self.eom)

    @property
    def markers(self) -> Mapping[str, int]:
        """Named structural ids (what a template may place with ``token: NAME``): read-only, and built once per layout
        (the renderer asks for it twice a row; the cache is outside the instance, so the layout pickles as before)."""
        return cached(self, "markers", lambda: types.MappingProxyType(
            {k: getattr(self, k) for k in ("bos", "eos", "eoi", "boi", "eoa", "boa", "eoh", "eom", "ins", "res")}))

    def is_image_code(self, i: int) -> bool:
        return self.image_code_start <= i <= self.image_code_end

    def is_speech_code(self, i: int) -> bool:
        return self.speech_code_start <= i <= self.speech_code_end

    def is_text_id(self, i: int) -> bool:
        """An id that may stand in a text segment: in the vocabulary, not a modality code, not a span marker."""
        return (0 <= i < self.vocab_size and not self.is_image_code(i) and not self.is_speech_code(i)
                and i not in (self.boi, self.eoi, self.boa, self.eoa))

    # ---- code <-> id ------------------------------------------------------------------------------------
    def image_ids(self, codes) -> list[int]:
        """VQGAN codes (0..8191) -> token ids (4..8195). Refuses anything out of range."""
        out = [int(c) for c in codes]
        bad = [c for c in out if not 0 <= c < self.image_codebook]
        if bad:
            raise ValueError(f"image codes out of range 0..{self.image_codebook - 1}: {bad[:5]}")
        return [c + self.image_code_start for c in out]

    def image_codes(self, ids) -> list[int]:
        """Token ids (4..8195) -> VQGAN codes (0..8191). Refuses anything out of range."""
        out = [int(i) for i in ids]
        bad = [i for i in out if not self.is_image_code(i)]
        if bad:
            raise ValueError(f"ids are not image codes ({self.image_code_start}..{self.image_code_end}): {bad[:5]}")
        return [i - self.image_code_start for i in out]

    def speech_ids(self, codes) -> list[int]:
        """WavTokenizer codes (0..4095) -> token ids (8724..12819). Refuses anything out of range."""
        out = [int(c) for c in codes]
        bad = [c for c in out if not 0 <= c < self.speech_codebook]
        if bad:
            raise ValueError(f"speech codes out of range 0..{self.speech_codebook - 1}: {bad[:5]}")
        return [c + self.speech_code_start for c in out]

    def speech_codes(self, ids) -> list[int]:
        """Token ids (8724..12819) -> WavTokenizer codes (0..4095). Refuses anything out of range."""
        out = [int(i) for i in ids]
        bad = [i for i in out if not self.is_speech_code(i)]
        if bad:
            raise ValueError(f"ids are not speech codes ({self.speech_code_start}..{self.speech_code_end}): {bad[:5]}")
        return [i - self.speech_code_start for i in out]

    # ---- serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown layout keys: {sorted(unknown)}")
        return cls(**d)


AR_OMNI_V0_1 = Layout()
