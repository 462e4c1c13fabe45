"""Choosing one id from one row of logits under a mask: repetition penalty, mask, temperature, top-p, then argmax
or a draw. The order and the formulas are those of transformers' RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper and TopPLogitsWarper, which upstream AR-Omni chains; doing it on one vector here keeps the
decode loop free of per-step processor objects.
"""
from __future__ import annotations

import torch

from aromni.infer.state import Sampling


def penalize_(logits: torch.Tensor, seen: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """In place: every id in ``seen`` (ids already in the sequence) has a positive logit divided by ``penalty``
    and a negative one multiplied by it."""
    if penalty != 1.0 and seen is not None and len(seen):
        g = logits[seen]
        logits[seen] = torch.where(g < 0, g * penalty, g / penalty)
    return logits


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of ids whose probability adds up to ``top_p`` (at least one id); others -> -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - top_p)
    remove[..., -1:] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def sample_top_p(x: torch.Tensor, top_p: float, generator: torch.Generator | None = None, k: int = 256) -> int:
    """Draw from softmax(x) restricted to its top-p set, the same set ``top_p_filter`` keeps.

    The set is a prefix of the ids sorted by probability (an id stays while the mass ranked above it is below
    ``top_p``). When the ``k`` most likely ids already hold ``top_p`` of the mass, the set lies inside them, so a
    top-k replaces sorting the whole vocabulary (the usual case for a trained model); otherwise the full sort."""
    if top_p < 1.0 and x.numel() > k:
        vals, idx = x.topk(k)
        p = (vals - torch.logsumexp(x, dim=-1)).exp()
        if float(p.sum()) >= top_p:
            keep = (p.cumsum(-1) - p) < top_p
            i = int(torch.multinomial(vals[keep].softmax(-1), 1, generator=generator))
            return int(idx[i])
    return int(torch.multinomial(top_p_filter(x, top_p).softmax(-1), 1, generator=generator))


def choose(logits: torch.Tensor, allowed: torch.Tensor, sampling: Sampling, greedy: bool,
           seen: torch.Tensor | None = None, generator: torch.Generator | None = None,
           allowed_ids: torch.Tensor | None = None) -> int:
    """One id from a [vocab] row of logits; never an id outside the boolean mask ``allowed``.

    ``seen``: ids already in the sequence (for the repetition penalty). ``allowed_ids``: the mask's ids, when the
    caller has them; sampling then looks at those only (8192 image codes instead of the whole vocabulary)."""
    x = logits.float().masked_fill(~allowed, float("-inf"))
    penalize_(x, seen, sampling.repetition_penalty)
    if greedy:
        return int(x.argmax())
    if allowed_ids is not None:
        x = x[allowed_ids]
    if sampling.temperature != 1.0:
        x = x / sampling.temperature
    i = sample_top_p(x, sampling.top_p, generator)
    return int(allowed_ids[i]) if allowed_ids is not None else i
