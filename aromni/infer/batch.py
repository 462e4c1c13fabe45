"""Several prompts decoded in one batch: every step forwards one id per row in a single batched forward.

Each prompt is a GROUP of rows with its own ``DecodeState`` (its own allowed ids, greedy switch, stop, room) and its
own repetition-penalty set. A group is one row, or, for a reply that opens with an image (t2i: ``<boi>`` forced)
while guidance is on, the three guided rows of ``cfg.cfg_rows`` (full / image-only / unconditional), whose logits are
mixed per step exactly as the single-prompt loop does; one id is chosen per group and appended to all its rows.

Rows are prefilled one by one (each row's KV cache holds only its own ids) and left-padded with zeros into one batched
cache (``lm.stack_caches``, as the guided rows are); the attention mask hides the padding and each row's positions
count its own ids. A group that has stopped keeps being fed its stop id (its outputs are ignored) until every group
is done, so the batch stays rectangular. Each group draws from its own generator seeded with ``options.seed``, as the
single-prompt loop does, so a batched reply is the reply that prompt gets alone (tested, greedy and sampled, up to
float differences of the padded batch).

An image that opens in the MIDDLE of a batched reply (chat) is decoded without guidance: the single-prompt loop
(``Session.generate``) adds the guided rows there.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from aromni.infer.cfg import cfg_rows, mix
from aromni.infer.generate import Options
from aromni.infer.sampler import choose
from aromni.infer.state import IMAGE, SPEECH, TEXT, Constraints, DecodeError, DecodeState, VocabMasks
from aromni.layout import AR_OMNI_V0_1, Layout


@dataclass
class BatchResult:
    ids: list[list[int]]        # each prompt's reply
    seconds: float              # wall time of the whole batch (prefill included)
    steps: int                  # batched forwards after the prefill


def _group_rows(prompt: list[int], c: Constraints, options: Options, layout: Layout) -> list[list[int]]:
    if c.start == layout.boi and options.guidance.active:
        return [r[:-1] for r in cfg_rows(list(prompt) + [layout.boi], layout)]   # the forced <boi> comes next
    return [list(prompt)]


def generate_batch(lm, prompts: list[list[int]], masks: VocabMasks, constraints: Constraints = Constraints(),
                   options: Options = Options(), layout: Layout = AR_OMNI_V0_1) -> BatchResult:
    """Decode every prompt's reply in lockstep batches. Same rules as ``Session.generate``."""
    if not prompts:
        return BatchResult([], 0.0, 0)
    t0 = time.perf_counter()
    groups = [_group_rows(p, constraints, options, layout) for p in prompts]
    rows = [r for g in groups for r in g]
    owner = [gi for gi, g in enumerate(groups) for _ in g]
    first_row = [owner.index(gi) for gi in range(len(groups))]
    states, limits = [], []
    for p in prompts:
        max_len = min(len(p) + options.max_new_tokens, lm.max_len)
        if max_len <= len(p):
            raise DecodeError(f"a prompt of {len(p)} ids leaves no room: the model allows {lm.max_len}")
        st = DecodeState.after_prompt(p, masks, constraints, max_len)
        if constraints.start == layout.boi and not st._image_may_open():
            raise DecodeError(f"no room for an image: it needs {st.image_room} new ids "
                              f"(max_new_tokens={options.max_new_tokens})")
        states.append(st)
        limits.append(max_len)
    # prefill: one row at a time, then one left-padded batched cache
    caches, logits = [], []
    for r in rows:
        c = lm.new_cache()
        logits.append(lm.forward(torch.tensor([r], dtype=torch.long), c).reshape(-1))
        caches.append(c)
    width = max(len(r) for r in rows)
    steps_max = max(limits) - min(len(p) for p in prompts) + 1
    cache = lm.stack_caches(caches, width)
    dev = getattr(lm, "device", "cpu")
    mask = torch.ones(len(rows), width + steps_max, dtype=torch.long)
    for i, r in enumerate(rows):
        mask[i, :width - len(r)] = 0
    mask = mask.to(dev)
    positions = torch.tensor([[len(r)] for r in rows], device=dev)
    logit_rows = torch.stack(logits)
    # each group draws from its own generator seeded like the single-prompt loop: same seed, same reply
    gens = [torch.Generator(device=masks.device).manual_seed(options.seed) for _ in groups]
    seen = [set(int(t) for t in p) for p in prompts]
    replies: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    steps = 0
    while not all(done):
        step_ids = []
        for gi, st in enumerate(states):
            if done[gi]:
                step_ids.append(replies[gi][-1] if replies[gi] else layout.eos)
                continue
            r0 = first_row[gi]
            if st.forced is not None:
                tok = st.forced
            else:
                allowed = st.allowed()
                if len(groups[gi]) == 3 and st.mode == IMAGE:
                    x = mix(logit_rows[r0:r0 + 3], options.guidance)
                    tok = choose(x, allowed, options.image, st.step_greedy, None, gens[gi], masks.ids(allowed))
                else:
                    s = {IMAGE: options.image, SPEECH: options.speech}.get(st.mode, options.text)
                    seen_t = torch.tensor(sorted(seen[gi]), dtype=torch.long, device=masks.device)
                    tok = choose(logit_rows[r0], allowed, s, st.step_greedy, seen_t, gens[gi],
                                 None if st.mode == TEXT else masks.ids(allowed))
            st.advance(tok)
            replies[gi].append(tok)
            seen[gi].add(tok)
            if st.done or st.length >= limits[gi]:
                done[gi] = True
            step_ids.append(tok)
        if all(done):
            break
        ids = torch.tensor([[step_ids[owner[i]]] for i in range(len(rows))], dtype=torch.long)
        n = lm.cache_length(cache) + 1
        logit_rows = lm.forward(ids, cache, attention_mask=mask[:, :n], position_ids=positions)
        positions = positions + 1
        steps += 1
    return BatchResult(replies, time.perf_counter() - t0, steps)
