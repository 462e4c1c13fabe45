"""The language model as the decode loop sees it: next-token logits for new ids given a KV cache.

``ChameleonLM`` wraps an HF Chameleon model through ``aromni.model.chameleon.omni_forward`` (image logits unmasked).
The loop only uses the four methods below, so tests can put a cheap fake in its place.
"""
from __future__ import annotations

import torch

from aromni.model.chameleon import omni_forward


class ChameleonLM:
    def __init__(self, model):
        self.model = model.eval()
        self.config = model.config
        self.vocab_size = int(model.config.vocab_size)
        self.max_len = int(getattr(model.config, "max_position_embeddings", 4096))
        self.device = next(model.parameters()).device

    def new_cache(self):
        from transformers import DynamicCache
        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, vocab: tuple[int, int] | None = None) -> torch.Tensor:
        """ids [B, T] appended to ``cache`` (updated in place) -> logits [B, vocab] for the position after the last.

        ``vocab=(lo, hi)``: logits of ids lo..hi only (the image rows of guided decoding need only the 8192 image
        codes: an 8x smaller output projection). Same computation as ``omni_forward``, the head cut to those rows."""
        ids = ids.to(self.device)
        if vocab is None:
            out = omni_forward(self.model, ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1]
        hidden = self.model.model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids,
                                  cache=cache, use_cache=True)[0][:, -1]
        return torch.nn.functional.linear(hidden, self.model.lm_head.weight[vocab[0]:vocab[1] + 1])

    @staticmethod
    def cache_length(cache) -> int:
        return int(cache.get_seq_length())

    @staticmethod
    def stack_caches(caches: list, length: int):
        """Batch single-row caches into one, each row left-padded with zeros to ``length`` positions (the padded
        positions are masked out by the attention mask the caller passes)."""
        from transformers import DynamicCache
        layers = []
        for per_row in zip(*(iter(c) for c in caches)):
            ks, vs = [], []
            for k, v, *_ in per_row:
                pad = length - k.shape[-2]
                ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            layers.append((torch.cat(ks, 0), torch.cat(vs, 0)))
        return DynamicCache(layers)

    @staticmethod
    def crop(cache, n: int) -> None:
        """Forget the last ``n`` positions."""
        cache.crop(-n)

    @staticmethod
    def select_rows(cache, rows: list[int]):
        cache.batch_select_indices(torch.tensor(rows))
        return cache
