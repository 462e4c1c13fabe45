"""Image classifier-free guidance with three rows decoded in one batch (reference §5, InstructPix2Pix-style).

Rows: the full prompt; the image-only prompt (the same ids keeping only <bos>, image spans and their markers);
the unconditional prompt ``[<bos>, <boi>]``. Each step runs the three rows as one batch, mixes their logits
``uncond + g_img * (img - uncond) + g_txt * (full - img)`` and appends the ONE id chosen from the mix to every
row, so the rows stay in step. Row 0 reuses the session's KV cache (the prompt is not recomputed); rows 1 and 2 are
prefilled on their own and left-padded into one batched cache, the padding masked out and their positions counted
from their own lengths. When the image is complete, row 0's cache is handed back to the session.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from aromni.layout import AR_OMNI_V0_1, Layout


@dataclass(frozen=True)
class Guidance:
    g_txt: float = 3.07
    g_img: float = 1.15
    enabled: bool = True

    @property
    def active(self) -> bool:
        """Whether guidance changes anything (g_txt = g_img = 1 gives the full row's logits back)."""
        return self.enabled and not (self.g_txt == 1.0 and self.g_img == 1.0)


def cfg_rows(tokens, layout: Layout = AR_OMNI_V0_1) -> list[list[int]]:
    """The three prompts for ids ``tokens`` that end with an open image (its ``<boi>`` and any codes so far)."""
    full = [int(t) for t in tokens]
    if not full or full[0] != layout.bos:
        raise ValueError("guided image decoding needs a sequence that starts with <bos>")
    keep = {layout.bos, layout.boi, layout.eoi}
    image_only = [t for t in full if t in keep or layout.is_image_code(t)]
    tail = full[full_last_boi(full, layout):]  # the open image: <boi> and the codes so far
    return [full, image_only, [layout.bos] + tail]


def full_last_boi(tokens: list[int], layout: Layout) -> int:
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] == layout.boi:
            return i
    raise ValueError("no open image (<boi>) in the sequence")


def mix(logits: torch.Tensor, g: Guidance) -> torch.Tensor:
    """[3, vocab] logits (full, image-only, unconditional) -> the guided [vocab] row."""
    full, img, unc = logits.float().unbind(0)
    return unc + g.g_img * (img - unc) + g.g_txt * (full - img)


class GuidedRows:
    """Three rows decoding one image in step. ``logits`` holds each row's next-token logits."""

    def __init__(self, lm, cache, full_logits: torch.Tensor, tokens, guidance: Guidance,
                 layout: Layout = AR_OMNI_V0_1, steps: int | None = None):
        self.lm, self.guidance, self.layout = lm, guidance, layout
        self.rows = cfg_rows(tokens, layout)
        if lm.cache_length(cache) != len(self.rows[0]):
            raise ValueError("the session cache must hold every id of the full prompt")
        # only image codes can follow here: every row's logits are computed over those ids alone
        self.vocab = (layout.image_code_start, layout.image_code_end)
        caches, logits = [cache], [full_logits.reshape(-1)[self.vocab[0]:self.vocab[1] + 1]]
        for row in self.rows[1:]:
            c = lm.new_cache()
            logits.append(lm.forward(torch.tensor([row]), c, vocab=self.vocab).reshape(-1))
            caches.append(c)
        width = len(self.rows[0])
        self.cache = lm.stack_caches(caches, width)
        dev = getattr(lm, "device", "cpu")
        self.positions = torch.tensor([[len(r)] for r in self.rows], device=dev)
        steps = layout.image_tokens + 1 if steps is None else steps
        self.mask = torch.ones(3, width + steps, dtype=torch.long)
        for i, r in enumerate(self.rows):
            self.mask[i, : width - len(r)] = 0
        self.mask = self.mask.to(dev)
        self.width = width
        self.logits = torch.stack(logits)

    def guided(self, vocab_size: int) -> torch.Tensor:
        """The mixed logits as a [vocab_size] row (-inf outside the image codes)."""
        out = torch.full((vocab_size,), float("-inf"), device=self.logits.device)
        out[self.vocab[0]:self.vocab[1] + 1] = mix(self.logits, self.guidance)
        return out

    def push(self, token: int) -> None:
        """Append ``token`` to all three rows and compute their next logits in one batch."""
        n = self.lm.cache_length(self.cache) + 1
        ids = torch.full((3, 1), int(token), dtype=torch.long)
        self.logits = self.lm.forward(ids, self.cache, attention_mask=self.mask[:, :n], position_ids=self.positions,
                                      vocab=self.vocab)
        self.positions += 1
        for r in self.rows:
            r.append(int(token))

    def close(self):
        """Row 0's cache (no padding: the full prompt is the longest row), for the session to continue with."""
        return self.lm.select_rows(self.cache, [0])
