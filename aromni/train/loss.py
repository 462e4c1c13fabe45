"""The two training losses, as per-micro-batch *sums* that the loop normalises over the whole step.

Weighted next-token prediction (reference §4): per-token cross-entropy times the loader's weights,
``NTP = sum(w * ce) / sum(w)`` where both sums run over every micro-batch of the accumulation window on every rank
(``normalise="window"``, aromni's default). Normalising each micro-batch by its own weight sum (what a per-batch mean
does) would let a short micro-batch count as much as a long one; here every weighted token counts the same, whatever
the packing or the world size. ``normalise="micro_batch"`` is AR-Omni's objective (HF Trainer around its
``compute_loss``): each micro-batch's ``sum(w*ce)/max(sum(w), 1) + lambda * its MSE``, averaged over the micro-batches
of the step on every rank.

Perceptual loss (the codes of the labelled image spans the loader marks, see ``aromni.train.labels``): ``MSE(head(h), E[code])`` with E the frozen [8192, D] VQ codebook,
averaged over dimensions and over every perceptual position of the window. Alignment: with ``align="next"`` (the
default) the hidden state at t-1 (the one whose logits predict image token t) is regressed to token t's code
embedding, so the loss shapes exactly the representation the image logits are read from. AR-Omni's code uses
``align="same"`` (h_t, whose input already *is* token t); it stays available for reproduction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.sample import IGNORE_INDEX

# Order of the detached per-micro-batch statistics (summed across micro-batches and ranks, then divided).
STATS = ("ce_text", "n_text", "ce_image", "n_image", "ce_speech", "n_speech")


@dataclass
class MicroSums:
    ntp: torch.Tensor        # sum(w * ce), with grad
    perceptual: torch.Tensor  # sum over positions of mean-over-dims squared error, with grad
    stats: torch.Tensor      # float64 [len(STATS)], detached: unweighted CE sums and counts by target modality
    weight: float = 0.0      # sum(w) of this micro-batch's targets
    positions: int = 0       # perceptual positions that entered ``perceptual``


def shift_left(x: torch.Tensor, fill) -> torch.Tensor:
    """x[:, t+1] at t, ``fill`` at the end: labels (HF convention, the model shifts) -> what position t predicts."""
    return torch.cat([x[:, 1:], torch.full_like(x[:, :1], fill)], dim=1)


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in float32 of flat [N, vocab] logits against [N] targets."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def perceptual_sse(hidden: torch.Tensor, input_ids: torch.Tensor, percept_mask: torch.Tensor, head: torch.nn.Module,
                   codebook: torch.Tensor, layout: Layout = AR_OMNI_V0_1, align: str = "next") -> torch.Tensor:
    """Sum over the marked image-code positions of mean((head(h) - E[code])^2)."""
    b, t = torch.nonzero(percept_mask, as_tuple=True)
    if align == "next":
        keep = t > 0
        b, t = b[keep], t[keep]
        h = hidden[b, t - 1]
    else:
        h = hidden[b, t]
    if b.numel() == 0:
        # keep the head in the graph so every rank produces a gradient for it (ZeRO reduces all of them)
        return head(hidden[:1, :1]).sum() * 0.0
    target = codebook[input_ids[b, t] - layout.image_code_start].float()
    return ((head(h).float() - target) ** 2).mean(-1).sum()


def modality_stats(ce: torch.Tensor, targets: torch.Tensor, layout: Layout = AR_OMNI_V0_1) -> torch.Tensor:
    image = (targets >= layout.image_code_start) & (targets <= layout.image_code_end)
    speech = (targets >= layout.speech_code_start) & (targets <= layout.speech_code_end)
    text = ~image & ~speech
    ce = ce.detach().double()
    return torch.stack([ce[text].sum(), text.sum().double(), ce[image].sum(), image.sum().double(),
                        ce[speech].sum(), speech.sum().double()])


def micro_sums(model, micro: dict, layout: Layout = AR_OMNI_V0_1, align: str = "next") -> MicroSums:
    """One micro-batch (the loader's dict) through ``model`` (the DeepSpeed engine or a bare OmniModel)."""
    module = getattr(model, "module", model)
    targets = shift_left(micro["labels"], IGNORE_INDEX)      # targets[:, t] is what position t predicts
    has_target = targets != IGNORE_INDEX
    out = model(input_ids=micro["input_ids"], position_ids=micro.get("position_ids"), logits_mask=has_target)
    ce = token_ce(out.logits, targets[has_target])
    w = shift_left(micro["weights"], 0)[has_target].float()
    pl = perceptual_sse(out.hidden, micro["input_ids"], micro["percept_mask"], module.perceptual_head,
                        module.codebook, layout, align)
    mask = micro["percept_mask"]
    positions = int(mask[:, 1:].sum()) if align == "next" else int(mask.sum())
    return MicroSums((ce * w).sum(), pl, modality_stats(ce, targets[has_target], layout), float(w.sum()), positions)


def micro_loss(sums: MicroSums, totals: dict, lam: float, world: int, normalise: str = "window") -> torch.Tensor:
    """This micro-batch's share of the step loss; ``backward`` of the sum over the step's micro-batches on every
    rank gives the step's gradient. ``totals`` (all ranks, whole window): ``weight``, ``positions``, ``micro``
    (micro-batches that hold rows). Multiplied by ``world`` because DeepSpeed averages gradients over ranks
    (backward with ``scale_wrt_gas=False``: the totals already account for accumulation)."""
    if normalise == "window":
        loss = sums.ntp / max(totals["weight"], 1e-8)
        pl = sums.perceptual / max(totals["positions"], 1)
    elif normalise == "micro_batch":           # AR-Omni: denominators clamped at 1, as its compute_loss does
        share = 1.0 / max(totals["micro"], 1)
        loss = sums.ntp / max(sums.weight, 1.0) * share
        pl = sums.perceptual / max(sums.positions, 1) * share
    else:
        raise ValueError(f"unknown normalisation {normalise!r} (allowed: window, micro_batch)")
    return (loss + (lam * pl if lam > 0 else 0.0 * pl)) * world


def window_loss(sums: MicroSums, weight_total: float, percept_total: int, lam: float, world: int) -> torch.Tensor:
    """``micro_loss`` with window normalisation (aromni's default)."""
    return micro_loss(sums, {"weight": weight_total, "positions": percept_total, "micro": 1}, lam, world)
