"""CLIP image-text similarity from a local checkpoint in transformers' ``CLIPModel``/``CLIPProcessor`` format
(``config.json`` + ``model.safetensors`` + the processor's tokenizer and image-processor files, as
``save_pretrained`` writes them; e.g. a copy of openai/clip-vit-large-patch14, which LAION's ``similarity`` column
was computed with). Scores are cosine similarities of the projected, L2-normalised embeddings (no logit scale), the
quantity LAION reports. A directory that does not load raises ``ClipError`` naming the path.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch

from aromni.model.checkpoint import CheckpointError, pick_device


class ClipError(CheckpointError):
    """The CLIP checkpoint could not be loaded (a ValueError: the CLI reports it without a traceback)."""


class ClipScorer:
    def __init__(self, path: str | os.PathLike, device: str | None = None, batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor
        self.path = str(path)
        if not os.path.isdir(self.path):
            raise ClipError(f"CLIP checkpoint {self.path}: not a directory (expected a transformers CLIPModel "
                            f"save_pretrained folder)")
        try:
            self.model = CLIPModel.from_pretrained(self.path, local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(self.path, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/KeyError/... for broken dirs
            raise ClipError(f"CLIP checkpoint {self.path} does not load as CLIPModel/CLIPProcessor: "
                            f"{type(e).__name__}: {str(e)[:300]}") from None
        self.device = pick_device(device)
        self.model.to(self.device)
        self.batch_size = batch_size
        self.max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        self.stand_in = bool(getattr(self.model.config, "aromni_stand_in", False))

    @torch.inference_mode()
    def score(self, images: list, texts: list[str]) -> np.ndarray:
        """Cosine similarity of each (image, text) pair, in batches of ``batch_size``; float32 array."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        out = []
        for s in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[s:s + self.batch_size]]
            batch = self.processor(text=list(texts[s:s + self.batch_size]), images=ims, return_tensors="pt",
                                   padding=True, truncation=True, max_length=self.max_length)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            img = self.model.get_image_features(pixel_values=batch["pixel_values"])
            txt = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            img = _features(img)
            txt = _features(txt)
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            out.append((img * txt).sum(-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def _features(x):
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if isinstance(x, torch.Tensor):
        return x
    for k in ("pooler_output", "image_embeds", "text_embeds"):
        v = getattr(x, k, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"unexpected CLIP feature output {type(x).__name__}")


@lru_cache(maxsize=2)
def load_clip(path: str, device: str | None = None, batch_size: int = 32) -> ClipScorer:
    """One scorer per process and checkpoint."""
    return ClipScorer(path, device, batch_size)


def write_random_clip(path: str | os.PathLike, seed: int = 0) -> str:
    """A tiny RANDOM CLIPModel + CLIPProcessor saved with save_pretrained (tests; a stand-in, marked in its config)."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPTokenizer, CLIPVisionConfig)
    torch.manual_seed(seed)
    # character-level BPE vocabulary (no merges): every letter/digit, alone and word-final
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    cfg = CLIPConfig(text_config=CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1),
                     vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                    num_attention_heads=2, image_size=32, patch_size=8),
                     projection_dim=16)
    cfg.aromni_stand_in = True
    model = CLIPModel(cfg)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return str(path)
