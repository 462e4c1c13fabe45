"""Losses: image tokens are trainable (finite CE), NTP is normalised over the whole window, the perceptual loss reads
the documented hidden state and trains the head."""
from __future__ import annotations

import pytest
import torch

from aromni.layout import AR_OMNI_V0_1 as L
from aromni.model.omni import build_omni
from aromni.sample import IGNORE_INDEX
from aromni.train.loss import micro_sums, perceptual_sse, token_ce, window_loss


@pytest.fixture(scope="module")
def omni(tiny_lm):
    return build_omni(tiny_lm)[0]


def sums_of(model, ids, labels, weights, percept):
    return micro_sums(model, {"input_ids": ids, "labels": labels, "weights": weights, "percept_mask": percept})


def _row(n_text=6):
    ids = [0] + [20000 + i for i in range(n_text)] + [L.boi] + [4 + (7 * k) % 8192 for k in range(1024)] + [L.eoi, 2]
    ids = torch.tensor([ids])
    labels = ids.clone()
    labels[0, 0] = IGNORE_INDEX
    percept = torch.zeros_like(ids, dtype=torch.bool)
    percept[0, n_text + 2:n_text + 2 + 1024] = True
    return ids, labels, torch.ones(ids.shape), percept


def test_image_token_loss_is_finite_where_the_stock_forward_makes_it_infinite(omni):
    ids, labels, weights, percept = _row()
    sums = sums_of(omni, ids, labels, weights, percept)
    n_img = sums.stats[3].item()
    assert n_img == 1024 and 0 < sums.stats[2].item() / n_img < 20      # mean CE over image targets ~ log(vocab)
    with torch.no_grad():
        stock = omni.lm(input_ids=ids).logits                              # HF's forward sets image logits to min
    ce = token_ce(stock[0, :-1], ids[0, 1:])
    is_img = (ids[0, 1:] >= L.image_code_start) & (ids[0, 1:] <= L.image_code_end)
    assert (ce[is_img] > 1e30).all() and torch.isfinite(sums.ntp)


def test_ntp_is_normalised_by_the_weights_of_the_whole_window(omni):
    torch.manual_seed(0)
    micro = []
    for n in (5, 40, 12):                          # micro-batches of very different sizes
        ids = torch.randint(16384, 20000, (1, n))
        labels = ids.clone()
        labels[0, 0] = IGNORE_INDEX
        w = torch.rand(1, n) + 0.5
        micro.append((ids, labels, w, torch.zeros_like(ids, dtype=torch.bool)))
    W = sum(float(w[:, 1:].sum()) for _, _, w, _ in micro)
    step_loss = sum(window_loss(sums_of(omni, *m), W, 0, 1.0, world=1) for m in micro)
    direct_num, direct_den = 0.0, 0.0
    for ids, labels, w, _ in micro:
        out = omni.lm.model(input_ids=ids)[0]
        ce = token_ce(omni.lm.lm_head(out)[0, :-1], labels[0, 1:])
        direct_num = direct_num + (ce * w[0, 1:]).sum()
        direct_den += float(w[0, 1:].sum())
    assert torch.allclose(step_loss, direct_num / direct_den, rtol=1e-5)
    # a per-micro-batch mean would weigh the 5-token batch like the 40-token one: a different number
    per_micro = sum(window_loss(sums_of(omni, *m), float(m[2][:, 1:].sum()), 0, 1.0, 1) for m in micro) / 3
    assert not torch.allclose(per_micro, step_loss, rtol=1e-3)


@pytest.mark.parametrize("align,shift", [("next", 1), ("same", 0)])
def test_perceptual_loss_reads_the_documented_hidden_state(align, shift):
    torch.manual_seed(0)
    hidden = torch.randn(1, 10, 4, requires_grad=True)
    ids = torch.tensor([[0, 1, L.boi, 4, 5, 6, L.eoi, 2, 2, 2]])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 3:6] = True
    codebook = torch.randn(8192, 4)
    head = torch.nn.Linear(4, 4)
    got = perceptual_sse(hidden, ids, mask, head, codebook, L, align)
    want = sum(((head(hidden[0, t - shift]) - codebook[ids[0, t] - 4]) ** 2).mean() for t in (3, 4, 5))
    assert torch.allclose(got, want)
    got.backward()
    assert head.weight.grad.abs().sum() > 0
    touched = hidden.grad[0].abs().sum(-1) > 0
    assert touched.nonzero().flatten().tolist() == [3 - shift, 4 - shift, 5 - shift]


def test_no_perceptual_positions_still_gives_the_head_a_gradient():
    hidden = torch.randn(1, 4, 4)
    head = torch.nn.Linear(4, 4)
    out = perceptual_sse(hidden, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool), head,
                         torch.randn(8192, 4))
    out.backward()
    assert out.item() == 0 and head.weight.grad is not None


def test_the_perceptual_head_is_part_of_the_optimised_module(omni):
    names = {n for n, p in omni.named_parameters() if p.requires_grad}
    assert {"perceptual_head.weight", "perceptual_head.bias"} <= names
    assert not any(n.startswith("lm.model.vqmodel") for n in names)            # the image encoder stays frozen
    assert "codebook" not in omni.state_dict()                                  # rebuilt from the VQ, not saved
    vq = omni.lm.model.vqmodel.quantize.embedding.weight
    assert torch.equal(omni.codebook, vq) and omni.perceptual_head.out_features == vq.shape[1]
    ids, labels, weights, percept = _row()
    sums = sums_of(omni, ids, labels, weights, percept)
    (sums.ntp + sums.perceptual).backward()
    assert omni.perceptual_head.weight.grad.abs().sum() > 0
    omni.zero_grad()
