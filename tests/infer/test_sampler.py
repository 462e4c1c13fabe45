"""The one-vector sampler against transformers' own logits processors (what upstream AR-Omni chains)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from aromni.infer.sampler import choose, penalize_, sample_top_p, top_p_filter
from aromni.infer.state import Sampling

V = 512


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), penalty=st.floats(1.0, 2.0), temp=st.floats(0.3, 2.0), top_p=st.floats(0.05, 1.0),
       n_seen=st.integers(0, 40))
def test_matches_transformers_processors(seed, penalty, temp, top_p, n_seen):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(V, generator=g) * 3
    history = torch.randint(0, V, (n_seen,), generator=g)
    ref = RepetitionPenaltyLogitsProcessor(penalty)(history[None], logits[None].clone())
    ref = TemperatureLogitsWarper(temp)(history[None], ref) if temp != 1.0 else ref
    ref = TopPLogitsWarper(top_p)(history[None], ref)[0]

    ours = penalize_(logits.clone(), history.unique(), penalty) / temp
    ours = top_p_filter(ours, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    keep = ~torch.isinf(ref)
    assert torch.allclose(ours[keep], ref[keep], rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), greedy=st.booleans(), n_allowed=st.integers(1, V), subset=st.booleans())
def test_choose_stays_in_the_mask(seed, greedy, n_allowed, subset):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(V, generator=g) * 5
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[torch.randperm(V, generator=g)[:n_allowed]] = True
    ids = allowed.nonzero().reshape(-1) if subset else None
    t = choose(logits, allowed, Sampling(1.3, 0.9, 1.2), greedy, None, g, ids)
    assert allowed[t]
    if greedy:
        assert t == int(logits.masked_fill(~allowed, float("-inf")).argmax())


def test_greedy_sees_the_penalty():
    logits = torch.tensor([2.0, 1.9, -1.0, 0.0])
    allowed = torch.ones(4, dtype=torch.bool)
    assert choose(logits, allowed, Sampling(repetition_penalty=1.0), True) == 0
    assert choose(logits, allowed, Sampling(repetition_penalty=1.2), True, seen=torch.tensor([0])) == 1
    assert torch.equal(logits, torch.tensor([2.0, 1.9, -1.0, 0.0]))  # the caller's logits are untouched


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 3.0, 8.0]), top_p=st.floats(0.05, 0.999),
       k=st.sampled_from([4, 64, 256]))
def test_top_k_shortcut_draws_from_the_top_p_set(seed, scale, top_p, k):
    """Whichever path it takes, the draw is an id that top_p_filter keeps, with the same distribution: the kept
    set's renormalised probabilities (checked on the shortcut's own candidates)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(V, generator=g) * scale
    kept = ~torch.isinf(top_p_filter(x, top_p))
    draws = [sample_top_p(x, top_p, torch.Generator().manual_seed(seed + i), k=k) for i in range(20)]
    assert all(kept[d] for d in draws)
    vals, idx = x.topk(k)
    p = (vals - torch.logsumexp(x, -1)).exp()
    if float(p.sum()) >= top_p:  # the shortcut's set is exactly the filter's set
        mine = torch.zeros(V, dtype=torch.bool)
        mine[idx[(p.cumsum(-1) - p) < top_p]] = True
        assert torch.equal(mine, kept)
