"""`objective: upstream` reproduces AR-Omni's training loss on a fixed batch.

The reference below is written from AR-Omni's trainers (ModalityDance/AR-Omni, commit 2715ae9d15f3aa84ba011e7ac523350ea1adbe5b,
the version of the stored repository; the reference notes cite febe449 for the same files):

* ``training/pretrain/pretrain_trainer.py``: ``PretrainWeightedAndPerceptionTrainer.compute_loss`` (shifted CE with
  ignore_index -100; weights = valid + (2.0 - 1) * tail, the tail being the last ``resp_len`` valid shifted labels that
  are not eos, for image_caption / speech_to_text; ``sum(ce * w) / w.sum().clamp_min(1.0)``) and
  ``extract_image_parts_for_tasks`` (every 8197 whose label is not -100, task text_to_image only, the 1024 ids after
  it and the *same* positions of ``hidden_states[-1]``; spans past the batch length dropped);
* ``training/instruction-tuning/trainer.py``: ``WeightedTrainer.compute_loss`` (the same CE; weights = valid +
  (seg_weight - 1) * inside, ``inside`` from ``_build_inside_mask``: each 12840 paired with the first unused 12841
  after it, strictly between, aligned to the shifted labels) and ``extract_image_parts`` (every labelled 8197, any task);
* ``training/*/perception.py``: ``PerceptionLoss`` = ``nn.MSELoss()`` (mean over every element) between
  ``states_to_hidden(h)`` (an ``nn.Linear(4096, 256)`` that no optimizer holds) and the frozen codebook at ``id - 4``;
* total = local + weight * perception per micro-batch; HF Trainer divides each micro-batch's loss by the accumulation
  steps and DeepSpeed averages ranks: the step's loss is the mean over its micro-batches.

The model's logits are ``lm_head(hidden_states[-1])``: AR-Omni's transformers fork does not suppress image-token logits
(the stock HF class does), so the reference applies the head itself.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from aromni.layout import AR_OMNI_V0_1 as L
from aromni.model.omni import build_omni
from aromni.sample import LossPolicy, response_length, rows_to_table, Sample
from aromni.train.config import LossConfig, load_train_recipe
from aromni.train.loader import Loader, ShardSet
from aromni.train.loss import micro_loss, micro_sums

from .chat_rows import write_chat_build
from .conftest import TINY_RECIPE

IGNORE = -100
EOS, SEG_START, SEG_END, BOI, SPAN = 2, 12840, 12841, 8197, 1024


# ---- the reference, from upstream's formulas ---------------------------------------------------------------------
def upstream_inside_mask(input_ids):
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for b in range(input_ids.shape[0]):
        starts = (input_ids[b] == SEG_START).nonzero().flatten().tolist()
        ends = (input_ids[b] == SEG_END).nonzero().flatten().tolist()
        e_ptr = 0
        for s in starts:
            while e_ptr < len(ends) and ends[e_ptr] <= s:
                e_ptr += 1
            if e_ptr >= len(ends):
                break
            if ends[e_ptr] - s > 1:
                mask[b, s + 1:ends[e_ptr]] = True
            e_ptr += 1
    return mask


def upstream_micro_loss(model, input_ids, attention_mask, labels, tasks, resp_lens, stage, seg_weight, lam):
    out = model.lm.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    last_hidden = out.hidden_states[-1]
    logits = model.lm.lm_head(last_hidden).float()
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    per_tok = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                              reduction="none", ignore_index=IGNORE).view_as(shift_labels)
    valid = shift_labels != IGNORE
    weights = valid.float()
    if stage == "pretrain":                          # response_seg_weight 2.0 on image_caption / speech_to_text
        tail = torch.zeros_like(valid)
        for i in range(len(tasks)):
            if tasks[i] not in ("image_caption", "speech_to_text") or resp_lens[i] <= 0:
                continue
            idx = torch.nonzero(valid[i] & (shift_labels[i] != EOS)).squeeze(-1)
            if idx.numel():
                tail[i, idx[-min(resp_lens[i], idx.numel()):]] = True
        weights = weights + (2.0 - 1.0) * (tail & valid).float()
    elif seg_weight != 1.0:
        weights = weights + (seg_weight - 1.0) * (upstream_inside_mask(input_ids)[:, 1:] & valid).float()
    local = (per_tok * weights).sum() / weights.sum().clamp_min(1.0)
    ids_, hid_ = [], []
    for b, s in torch.nonzero(input_ids == BOI).tolist():
        if stage == "pretrain" and tasks[b] != "text_to_image":
            continue
        if labels[b, s] == IGNORE or s + SPAN + 1 > input_ids.shape[1]:
            continue
        ids_.append(input_ids[b, s + 1:s + SPAN + 1])
        hid_.append(last_hidden[b, s + 1:s + SPAN + 1])
    perception = torch.zeros(())
    if ids_:
        target = model.codebook[torch.stack(ids_) - 4]
        perception = F.mse_loss(model.perceptual_head(torch.stack(hid_)).float(), target.float())
    return local + lam * perception


# ---- the fixed batch ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed(shards_dir, tmp_path_factory):
    """Demo rows of every single-turn task and chat rows with images, in one shard."""
    d = tmp_path_factory.mktemp("mixed")
    demo, chat = ShardSet(str(shards_dir)), ShardSet(str(write_chat_build(d / "chat", n=6)))
    picked, seen = [], set()
    for i in range(len(demo)):
        ids, segs, task, _ = demo.row(i)
        if task not in seen or (task == "text_to_image" and sum(p.task == task for p in picked) < 2):
            seen.add(task)
            picked.append(Sample(f"d{i}", "demo", task, ids.tolist(), segs))
    for i in (0, 2, 3, 5):
        ids, segs, task, _ = chat.row(i)
        picked.append(Sample(f"c{i}", "chat", task, ids.tolist(), segs))
    pq.write_table(rows_to_table(picked), d / "mixed.parquet", row_group_size=5)
    return ShardSet(str(d / "mixed.parquet")), len(picked)


@pytest.fixture(scope="module")
def model(tiny_lm):
    return build_omni(tiny_lm, head="frozen", seed=0)[0]


def batch_loss(model, shards, n, stage, seg_weight, objective):
    """(aromni's loss for the window, upstream's reference loss for the same micro-batches)."""
    lam = 0.7
    policy = LossPolicy(on="all", response_weight=2.0) if stage == "pretrain" else \
        LossPolicy(on="assistant", transcript_weight=seg_weight)
    tasks_ = ("text_to_image",) if stage == "pretrain" else ("*",)
    upstream = objective == "upstream"
    ld = Loader(shards, rank=0, world=1, micro_batch=3, train_batch=n - n % 3, max_len=2400, pack=False,
                policy=policy, perceptual_tasks=tasks_, weight_rule="upstream" if upstream else "aromni")
    w = ld.next_window()
    totals = {"weight": w.weight_sum, "positions": w.percept_count, "micro": w.filled}
    ours = sum(micro_loss(micro_sums(model, m, L, "same" if upstream else "next"), totals, lam, 1,
                          "micro_batch" if upstream else "window") for m in w.micro)
    ref, g = [], iter(w.samples)                     # pack=False: one sample per row, in row order
    for m in w.micro:
        B, T = m["input_ids"].shape
        real = torch.zeros(B, T, dtype=torch.bool)
        tasks, resp = [], []
        for b in range(B):
            s = next(g)
            ids, segs, task, _ = shards.row(int(shards.order(s, s + 1, False, 0)[0]))
            real[b, :len(ids)] = True
            assert m["input_ids"][b, :len(ids)].tolist() == ids.tolist()
            tasks.append(task)
            resp.append(response_length(segs, ids))   # = len(response) that aromni's export writes for upstream
        if stage == "pretrain":                       # upstream's collate: every real token is a label
            labels = torch.where(real, m["input_ids"], torch.full_like(m["input_ids"], IGNORE))
        else:                                         # SFT rows carry their labels (assistant tokens)
            labels = m["labels"]
        with torch.no_grad():
            ref.append(upstream_micro_loss(model, m["input_ids"], real.long(), labels, tasks, resp, stage,
                                           seg_weight, lam))
    return ours, torch.stack(ref).mean(), w


@pytest.mark.parametrize("stage,seg_weight", [("pretrain", 1.0), ("sft", 1.0), ("sft", 1.5)])
def test_upstream_objective_reproduces_ar_omnis_loss(mixed, model, stage, seg_weight):
    shards, n = mixed
    with torch.no_grad():
        ours, ref, w = batch_loss(model, shards, n, stage, seg_weight, "upstream")
    assert w.percept_count >= 1024 and len(w.micro) >= 3               # image spans and accumulation are exercised
    assert abs(ours.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item())), (ours.item(), ref.item())
    with torch.no_grad():
        aromni, _, _ = batch_loss(model, shards, n, stage, seg_weight, "aromni")
    assert abs(aromni.item() - ref.item()) > 1e-3                       # the default is a different objective


def test_the_upstream_projection_is_frozen_and_initialised_as_an_nn_linear(model, tiny_lm):
    assert not any(p.requires_grad for p in model.perceptual_head.parameters())
    assert any(p.requires_grad for p in model.lm.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = torch.nn.Linear(model.config.hidden_size, model.codebook.shape[1])   # PyTorch's default init
    assert torch.equal(model.perceptual_head.weight, fresh.weight) and torch.equal(model.perceptual_head.bias, fresh.bias)


def test_one_switch_sets_every_piece_and_each_piece_can_be_overridden(shards_dir, tiny_lm, tmp_path):
    base = [f"data.path={shards_dir}", f"model.path={tiny_lm}", f"output_dir={tmp_path}"]
    r, _ = load_train_recipe(TINY_RECIPE, base)
    assert (r.objective, r.loss.normalise, r.loss.weights, r.loss.perceptual.align, r.loss.perceptual.head) == \
        ("aromni", "window", "aromni", "next", "trained")
    r, _ = load_train_recipe(TINY_RECIPE, [*base, "objective=upstream"])
    assert (r.loss.normalise, r.loss.weights, r.loss.perceptual.align, r.loss.perceptual.head) == \
        ("micro_batch", "upstream", "same", "frozen")
    r, _ = load_train_recipe(TINY_RECIPE, [*base, "objective=upstream", "loss.perceptual.head=trained"])
    assert (r.loss.normalise, r.loss.perceptual.head) == ("micro_batch", "trained")
    for targets, tasks in (("all", ["text_to_image"]), ("assistant", ["*"])):   # left null: as upstream's stages
        loss = LossConfig(targets=targets)
        loss.resolve("aromni")
        assert loss.perceptual.tasks == tasks
