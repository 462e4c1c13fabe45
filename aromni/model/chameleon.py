"""Chameleon/Anole/AR-Omni language model through transformers, with image-token logits NOT masked.

HF's ``ChameleonForConditionalGeneration.forward`` sets the logits of every IMGIMG token to -inf (it cannot generate
images). AR-Omni trains on and generates image tokens, so aromni calls the decoder (``model.model``) and applies
``lm_head`` itself: ``omni_forward`` is the one forward pass that trainer and decoder share.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model.meta_checkpoint import cached_conversion, is_meta_checkpoint


@dataclass
class OmniOutput:
    logits: torch.Tensor        # [B, T, vocab] (or [N, vocab] with logits_mask), image ids unmasked
    hidden: torch.Tensor        # [B, T, hidden] last hidden states (after the final norm)
    cache: object | None        # transformers Cache, pass back in to continue decoding


# Written beside the weights of every model aromni makes up, trains or converts, so nothing downstream mistakes a
# stand-in (the same name as meta_checkpoint.MODEL_NOTE).
MODEL_NOTE = "aromni_model.json"


def resolve_model_dir(path: str | Path) -> Path:
    """The HF model dir to load for ``path``: itself, or for a Meta-format checkpoint (models/7b/consolidated*.pth,
    params.json, tokenizer/) its conversion, made once into aromni's cache (aromni.model.meta_checkpoint)."""
    p = Path(path)
    return cached_conversion(p) if is_meta_checkpoint(p) else p


def load_chameleon(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   layout: Layout = AR_OMNI_V0_1, swin_norm: bool | None = None):
    """An HF Chameleon/Anole checkpoint dir (config.json + safetensors), or a Meta-format one (converted on the fly,
    see ``resolve_model_dir``) -> ChameleonForConditionalGeneration.

    ``swin_norm`` None keeps the checkpoint's config; True/False overrides it (the saved config then says so).
    Refuses a checkpoint whose vocabulary map does not put VQ code c at id c + 4 (the layout's image ids)."""
    from transformers import ChameleonForConditionalGeneration
    p = resolve_model_dir(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} is neither an HF Chameleon model dir (no config.json) nor a Meta-format "
                                f"checkpoint (models/<size>/params.json + consolidated*.pth)")
    extra = {} if swin_norm is None else {"swin_norm": bool(swin_norm)}
    model = ChameleonForConditionalGeneration.from_pretrained(str(p), dtype=dtype, **extra)
    check_image_vocabulary(model.config, layout)
    return model.to(device)


def check_image_vocabulary(config, layout: Layout = AR_OMNI_V0_1) -> None:
    """The checkpoint's IMGIMG names must map VQ code c to token id c + layout.image_code_start."""
    vm = getattr(config, "vocabulary_map", None) or {}
    digits = {chr(ord("A") + i): str(i) for i in range(10)}
    img = {v: int("".join(digits.get(c, c) for c in k[len("IMGIMG"):-1])) for k, v in vm.items()
           if k.startswith("IMGIMG")}
    if not img:
        raise ValueError("the checkpoint's config has no IMGIMG entries in vocabulary_map: cannot check that "
                         "image codes sit at ids 4..8195")
    bad = [(i, c) for i, c in img.items() if i != c + layout.image_code_start]
    if bad or len(img) != layout.image_codebook:
        raise ValueError(f"vocabulary_map disagrees with layout {layout.name}: {len(img)} image tokens, "
                         f"first mismatches (id, code) {bad[:3]}")


def model_note(path: str | Path) -> dict:
    """aromni's note beside a model dir ({} for a checkpoint aromni did not write, e.g. the released Anole)."""
    p = Path(path) / MODEL_NOTE
    return json.loads(p.read_text()) if p.is_file() else {}


def omni_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, cache=None, use_cache: bool = False,
                 logits_to_keep: int = 0, logits_mask: torch.Tensor | None = None) -> OmniOutput:
    """Forward through the decoder and lm_head with every id (image codes included) allowed.

    ``logits_mask`` ([B, T] bool, training): compute logits only where it is true and return them flat,
    [N, vocab]; the full [B, T, vocab] tensor is never built (positions without a target cost no lm_head work).
    """
    out = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      cache=cache, use_cache=use_cache)
    hidden = out[0]
    if logits_mask is not None:
        h = hidden[logits_mask]
    else:
        h = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
    return OmniOutput(model.lm_head(h), hidden, getattr(out, "cache", None))  # transformers 5 names it `cache`


def tiny_chameleon_config(layout: Layout = AR_OMNI_V0_1, hidden: int = 64, layers: int = 2, heads: int = 4,
                          swin_norm: bool = True, vocab_size: int | None = None, max_positions: int = 4096):
    """A small ChameleonConfig with the real vocabulary map (IMGIMG names at ids 4..8195) and a small VQ config."""
    from transformers import ChameleonConfig
    from aromni.model.text import chameleon_special_tokens
    names = chameleon_special_tokens(layout)
    vocab_map = {n: i for i, n in enumerate(names)}
    vocab_map["<image>"] = 8711  # Chameleon's image placeholder id (reserved08707)
    # GroupNorm(32) in the VQ encoder needs channel counts divisible by 32.
    vq = {"embed_dim": 32, "num_embeddings": layout.image_codebook, "latent_channels": 32, "resolution": 64,
          "in_channels": 3, "base_channels": 32, "channel_multiplier": [1, 1], "num_res_blocks": 1,
          "attn_resolutions": []}
    return ChameleonConfig(vocab_size=vocab_size or layout.vocab_size, hidden_size=hidden,
                           intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, max_position_embeddings=max_positions, swin_norm=swin_norm,
                           vocabulary_map=vocab_map, vq_config=vq, bos_token_id=layout.bos,
                           eos_token_id=layout.eos, pad_token_id=layout.pad)


def write_tiny_chameleon(out_dir: str | Path, seed: int = 0, **kw) -> Path:
    """Save a tiny random ChameleonForConditionalGeneration in HF format (tests, demos). Not a trained model."""
    from transformers import ChameleonForConditionalGeneration
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(tiny_chameleon_config(**kw))
    out = Path(out_dir)
    model.save_pretrained(str(out))
    (out / MODEL_NOTE).write_text(json.dumps(
        {"stand_in": True, "note": "tiny RANDOM Chameleon written by aromni (write_tiny_chameleon) for tests and "
                                   "CPU demos; not a trained model", "seed": seed}, indent=1))
    return out
