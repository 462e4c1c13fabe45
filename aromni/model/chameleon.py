"""Chameleon/Anole/AR-Omni language model through transformers, with image-token logits NOT masked.

HF's ``ChameleonForConditionalGeneration.forward`` sets the logits of every IMGIMG token to -inf (it cannot generate
images). AR-Omni trains on and generates image tokens, so aromni calls the decoder (``model.model``) and applies
``lm_head`` itself: ``omni_forward`` is the one forward pass that trainer and decoder share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aromni.layout import AR_OMNI_V0_1, Layout


@dataclass
class OmniOutput:
    logits: torch.Tensor        # [B, T, vocab], image ids unmasked
    hidden: torch.Tensor        # [B, T, hidden] last hidden states (after the final norm)
    cache: object | None        # transformers Cache, pass back in to continue decoding


def load_chameleon(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """An HF Chameleon/Anole checkpoint dir (config.json + safetensors) -> ChameleonForConditionalGeneration."""
    from transformers import ChameleonForConditionalGeneration
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} is not an HF Chameleon model dir (no config.json)")
    model = ChameleonForConditionalGeneration.from_pretrained(str(p), dtype=dtype)
    return model.to(device)


def omni_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, cache=None, use_cache: bool = False,
                 logits_to_keep: int = 0) -> OmniOutput:
    """Forward through the decoder and lm_head with every id (image codes included) allowed."""
    out = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      cache=cache, use_cache=use_cache)
    hidden = out[0]
    h = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
    return OmniOutput(model.lm_head(h), hidden, getattr(out, "past_key_values", None) or getattr(out, "cache", None))


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
    return out
