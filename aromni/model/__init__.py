"""Tokenizers and models. The pipeline, the decoder and users all load tokenizers through here.

``load_tokenizers(cfg)`` turns a recipe's ``tokenizers:`` section into a ``Tokenizers`` bundle. Image and speech
loaders are registered by kind in ``IMAGE_LOADERS`` / ``SPEECH_LOADERS`` so new checkpoint formats plug in by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model.standin import StandInImageTokenizer, StandInSpeechTokenizer
from aromni.model.text import TextTokenizer, load_text_tokenizer

# kind -> loader(path, layout, stand_in) ; extended by the real checkpoint loaders
IMAGE_LOADERS: dict[str, Callable[..., Any]] = {"standin": lambda path, layout, stand_in: StandInImageTokenizer(layout)}
SPEECH_LOADERS: dict[str, Callable[..., Any]] = {"standin": lambda path, layout, stand_in: StandInSpeechTokenizer(layout)}


@dataclass
class Tokenizers:
    text: TextTokenizer
    image: Any | None
    speech: Any | None

    @property
    def identities(self) -> dict:
        return {"text": self.text.identity,
                "image": self.image.identity if self.image is not None else None,
                "speech": self.speech.identity if self.speech is not None else None}

    @property
    def any_stand_in(self) -> bool:
        return any(i and i.get("stand_in") for i in self.identities.values())


def load_tokenizers(cfg, layout: Layout = AR_OMNI_V0_1) -> Tokenizers:
    """``cfg`` is a recipe ``TokenizersConfig`` (or anything with .text/.image/.speech having kind/path/stand_in)."""
    text = load_text_tokenizer(cfg.text.path, layout, stand_in=cfg.text.stand_in)
    image = IMAGE_LOADERS[cfg.image.kind](cfg.image.path, layout, cfg.image.stand_in) if cfg.image else None
    speech = SPEECH_LOADERS[cfg.speech.kind](cfg.speech.path, layout, cfg.speech.stand_in) if cfg.speech else None
    return Tokenizers(text, image, speech)
