"""Tokenizers and models. The pipeline, the decoder and users all load tokenizers through here.

``load_tokenizers(cfg)`` turns a recipe's ``tokenizers:`` section into a ``Tokenizers`` bundle. Image and speech
loaders are registered by kind in ``IMAGE_LOADERS`` / ``SPEECH_LOADERS`` so new checkpoint formats plug in by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model.text import TextTokenizer, load_text_tokenizer


# Image and speech tokenizers import torch (~2.5 s per process) only when a recipe has them: a text-only build's
# unit workers never pay for it.
def _standin_image(path, layout, stand_in):
    from aromni.model.standin import StandInImageTokenizer
    return StandInImageTokenizer(layout)


def _standin_speech(path, layout, stand_in):
    from aromni.model.standin import StandInSpeechTokenizer
    return StandInSpeechTokenizer(layout)


# kind -> loader(path, layout, stand_in) ; extended by the real checkpoint loaders
IMAGE_LOADERS: dict[str, Callable[..., Any]] = {"standin": _standin_image}
SPEECH_LOADERS: dict[str, Callable[..., Any]] = {"standin": _standin_speech}


def _real(kind: str, load: Callable[..., Any]) -> Callable[..., Any]:
    """Real checkpoints load lazily: the config is read now (identity, rate, resolution), the weights on first use
    (a build's driver never loads them; its actor pools do, and fail the build early on a bad file)."""
    def loader(path, layout, stand_in):
        if path is None:
            raise ValueError(f"tokenizer kind {kind!r} needs a path (its checkpoint files)")
        return load(path, layout=layout, stand_in=stand_in, lazy=True)
    return loader


def load_image_tokenizer(path, *args, **kw):
    """Chameleon VQGAN: Meta's vqgan.yaml + vqgan.ckpt (encode + decode) or an HF Chameleon/Anole dir (encode only).
    See aromni.model.vqgan.load_image_tokenizer."""
    from aromni.model.vqgan import load_image_tokenizer as load
    return load(path, *args, **kw)


def load_speech_tokenizer(path, *args, **kw):
    """WavTokenizer from a dir with its yaml + Lightning ckpt, or (config_path, checkpoint_path).
    See aromni.model.wavtokenizer.load_speech_tokenizer."""
    from aromni.model.wavtokenizer import load_speech_tokenizer as load
    return load(path, *args, **kw)


IMAGE_LOADERS["vqgan"] = _real("vqgan", load_image_tokenizer)
SPEECH_LOADERS["wavtokenizer"] = _real("wavtokenizer", load_speech_tokenizer)


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
    for tok, c in ((image, cfg.image), (speech, cfg.speech)):
        if tok is not None and hasattr(tok, "batch_size"):  # real models run fixed-shape batches of this size
            tok.batch_size = c.batch_size
        if tok is not None and hasattr(tok, "precision"):   # fp32 | tf32 | bf16, recorded in the identity
            tok.precision = getattr(c, "precision", "fp32")
    return Tokenizers(text, image, speech)
