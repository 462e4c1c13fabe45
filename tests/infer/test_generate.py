"""The decode loop on a real (tiny, random) Chameleon: the KV cache and the batched guided rows compute exactly
what full forwards of the same ids compute."""
from __future__ import annotations

import torch

from aromni.infer.cfg import Guidance, GuidedRows, mix
from aromni.infer.generate import Options, Session
from aromni.infer.state import Constraints
from aromni.layout import AR_OMNI_V0_1 as L


def fresh_logits(lm, ids, vocab=None):
    return lm.forward(torch.tensor([ids]), lm.new_cache(), vocab=vocab).reshape(-1)


def test_cache_across_segments_and_turns_matches_a_full_forward(omni):
    lm = omni.lm
    s = Session(lm, L)
    s.extend([L.bos, 16500, 16501, L.eoh, 16502])
    list(s.generate(Constraints(), Options(max_new_tokens=12, seed=1)))
    s.extend([L.eom, 16503, L.boa, *L.speech_ids([1, 2, 3]), L.eoa, L.eoh])   # a second user turn
    turn2 = [x.token for x in s.generate(Constraints(), Options(max_new_tokens=12, seed=2))]
    assert s.timing.prefill_tokens == 8 + 1  # only the new ids (and the last reply id) were forwarded
    s._sync()
    assert s.cached == len(s.tokens) and len(turn2) >= 1
    assert torch.allclose(s.logits, fresh_logits(lm, s.tokens), atol=1e-4)


def test_guided_rows_match_independent_forwards(omni):
    """Row i's logits after k shared codes == a plain forward of row i's ids: padding, masks and positions are
    right, and all three rows advance by the same id."""
    lm = omni.lm
    image = [L.boi] + L.image_ids(list(range(0, 2048, 2))) + [L.eoi]
    prompt = [L.bos, 16500, *image, 16501, L.eoh, 16502, L.boi]
    s = Session(lm, L)
    s.extend(prompt)
    s._sync()
    rows = GuidedRows(lm, s.cache, s.logits, s.tokens, Guidance())
    assert rows.rows[1] == [L.bos, *image, L.boi] and rows.rows[2] == [L.bos, L.boi]
    vocab = (L.image_code_start, L.image_code_end)
    for code in [None, 17, 4000, 8191]:
        if code is not None:
            rows.push(L.image_code_start + code)
        for i in range(3):
            assert torch.allclose(rows.logits[i], fresh_logits(lm, rows.rows[i], vocab), atol=1e-4), (code, i)
    tails = {tuple(r[-4:]) for r in rows.rows}
    assert len(tails) == 1
    g = rows.guided(lm.vocab_size)
    assert torch.isinf(g[:4]).all() and torch.isinf(g[L.image_code_end + 1:]).all()
    assert torch.allclose(g[4:8196], mix(rows.logits, Guidance()))
    # back to one row: the session's cache holds the full row
    cache = rows.close()
    assert lm.cache_length(cache) == len(rows.rows[0])


def test_same_seed_same_reply(omni):
    def run(seed):
        s = Session(omni.lm, L)
        s.extend([L.bos, 16500, L.eoh])
        return [x.token for x in s.generate(Constraints(), Options(max_new_tokens=15, seed=seed))]
    assert run(5) == run(5)
