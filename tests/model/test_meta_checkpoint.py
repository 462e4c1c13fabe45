"""Meta-format checkpoints: a tiny random model in Meta's layout converts, loads, and gives the logits that Meta's
own transformer computes from the same weights.

``meta_logits`` below is written from facebookresearch/chameleon ``inference/transformer.py`` (not from the
converter): fused-free wq/wk/wv, one LayerNorm over head_dim shared by the heads (``q_normalization``), rotary on
ADJACENT pairs (xformers ``rope_padded``), RMSNorm, SiLU-gated feed-forward, swin-norm's post-norm residual. A wrong
permutation of q/k rows or of the q/k norms in the conversion changes these logits.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aromni.model.chameleon import load_chameleon, omni_forward, resolve_model_dir  # noqa: E402
from aromni.model.meta_checkpoint import (MetaCheckpointError, cached_conversion, convert_meta_checkpoint,  # noqa: E402
                                          is_meta_checkpoint, write_tiny_meta_chameleon)


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope_adjacent(x, theta):
    """x [T, H, hd]: rotate each adjacent pair (2i, 2i+1) by pos * theta^(-2i/hd)."""
    T, H, hd = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None]
    rot = torch.polar(torch.ones_like(ang), ang)[:, None, :]
    xc = torch.view_as_complex(x.double().reshape(T, H, hd // 2, 2).contiguous())
    return torch.view_as_real(xc * rot).reshape(T, H, hd)


def meta_logits(root, ids: list[int]) -> torch.Tensor:
    """Logits [T, V] of Meta's Transformer for one sequence, from the consolidated shard(s) (float64)."""
    mdir = root / "models" / "7b"
    p = json.loads((mdir / "params.json").read_text())["model"]
    shards = [torch.load(f, weights_only=True) for f in sorted(mdir.glob("consolidated*.pth"))]
    sd = {k: v.double() for k, v in shards[0].items()}
    n = len(shards)
    dim, H, KV = p["dim"], p["n_heads"], p["n_kv_heads"]
    hd = dim // H

    def cat(key, d):
        return torch.cat([s[key].double() for s in shards], d) if n > 1 else sd[key]

    h = cat("tok_embeddings.weight", 1)[torch.tensor(ids)]
    T = len(ids)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(p["n_layers"]):
        a = f"layers.{i}.attention."

        def attn(x):
            outs = []
            for s in shards:   # each model-parallel shard: its own heads and its own q/k LayerNorm
                s = {k: v.double() for k, v in s.items() if k.startswith(a)}
                q = (x @ s[a + "wq.weight"].T).reshape(T, H // n, hd)
                k = (x @ s[a + "wk.weight"].T).reshape(T, KV // n, hd)
                v = (x @ s[a + "wv.weight"].T).reshape(T, KV // n, hd)
                q = F.layer_norm(q, (hd,), s[a + "q_normalization.weight"], s[a + "q_normalization.bias"], 1e-5)
                k = F.layer_norm(k, (hd,), s[a + "k_normalization.weight"], s[a + "k_normalization.bias"], 1e-5)
                q, k = _rope_adjacent(q, p["rope_theta"]), _rope_adjacent(k, p["rope_theta"])
                k = k.repeat_interleave(H // KV, 1)
                v = v.repeat_interleave(H // KV, 1)
                w = torch.einsum("thd,shd->hts", q, k) / hd ** 0.5
                w = w.masked_fill(~causal, float("-inf")).softmax(-1)
                o = torch.einsum("hts,shd->thd", w, v).reshape(T, -1)
                outs.append(o @ s[a + "wo.weight"].T)
            return sum(outs)   # row-parallel wo: the all_reduce

        def ffn(x):
            f = f"layers.{i}.feed_forward."
            return (F.silu(x @ cat(f + "w1.weight", 0).T) * (x @ cat(f + "w3.weight", 0).T)) @ cat(f + "w2.weight", 1).T

        an, fn = sd[f"layers.{i}.attention_norm.weight"], sd[f"layers.{i}.ffn_norm.weight"]
        eps = p["norm_eps"]
        if p["swin_norm"]:
            h = h + _rms(attn(h), an, eps)
            h = h + _rms(ffn(h), fn, eps)
        else:
            h = h + attn(_rms(h, an, eps))
            h = h + ffn(_rms(h, fn, eps))
    return _rms(h, sd["norm.weight"], p["norm_eps"]) @ cat("output.weight", 0).T


IDS = [0, 300, 16500, 8197, 4, 90, 8196, 12821, 9000, 12820, 2]


@pytest.mark.parametrize("kw", [dict(), dict(swin_norm=False, n_kv_heads=2), dict(shards=2)],
                         ids=["swin", "prenorm-gqa", "two-shards"])
def test_converted_model_gives_metas_logits(tmp_path, kw):
    meta = write_tiny_meta_chameleon(tmp_path / "meta", seed=1, **kw)
    assert is_meta_checkpoint(meta) and not is_meta_checkpoint(tmp_path)
    hf = convert_meta_checkpoint(meta, tmp_path / "hf")
    model = load_chameleon(hf, dtype=torch.float64)
    with torch.no_grad():
        got = omni_forward(model, torch.tensor([IDS])).logits[0]
    want = meta_logits(meta, IDS)
    assert got.shape == want.shape == (len(IDS), 65536)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-6), (got - want).abs().max()
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["vocabulary_map"]["<image>"] == 8711 and "<reserved08707>" not in cfg["vocabulary_map"]
    assert cfg["intermediate_size"] == 192 and cfg["swin_norm"] == kw.get("swin_norm", True)
    note = json.loads((hf / "aromni_model.json").read_text())
    assert note["stand_in"] is True and note["format"] == "meta" and note["shards"] == kw.get("shards", 1)
    # the HF dir keeps the VQGAN decoder (tokenizer/) and the VQ encoder weights under model.vqmodel.
    assert (hf / "tokenizer" / "vqgan.ckpt").is_file() and (hf / "tokenizer.json").is_file()
    assert any(k.startswith("vqmodel.encoder") for k in model.model.state_dict())


def test_a_wrong_permutation_would_be_seen(tmp_path):
    """The reference is sensitive to what the conversion must get right: Meta's weights loaded WITHOUT the rotary
    permutation give other logits."""
    from aromni.model import meta_checkpoint as mc
    meta = write_tiny_meta_chameleon(tmp_path / "meta", seed=2)
    orig = mc._permute
    try:
        mc._permute = lambda w, heads: w
        hf = convert_meta_checkpoint(meta, tmp_path / "hf")
    finally:
        mc._permute = orig
    with torch.no_grad():
        got = omni_forward(load_chameleon(hf, dtype=torch.float64), torch.tensor([IDS])).logits[0]
    assert not torch.allclose(got, meta_logits(meta, IDS), atol=1e-4)


def test_on_the_fly_conversion_is_cached_and_refreshed(tmp_path, monkeypatch):
    monkeypatch.setenv("AROMNI_CACHE", str(tmp_path / "cache"))
    meta = write_tiny_meta_chameleon(tmp_path / "meta", seed=3)
    first = resolve_model_dir(meta)
    assert first.parent == tmp_path / "cache" / "converted" and (first / "config.json").is_file()
    stamp = (first / "config.json").stat().st_mtime_ns
    assert cached_conversion(meta) == first and (first / "config.json").stat().st_mtime_ns == stamp  # reused
    # the loader everyone uses (train and infer) takes the Meta dir itself
    with torch.no_grad():
        a = omni_forward(load_chameleon(meta, dtype=torch.float64), torch.tensor([IDS])).logits
    assert torch.allclose(a[0], meta_logits(meta, IDS), atol=1e-6)
    # a changed checkpoint gets a new conversion (the key follows the files)
    params = meta / "models" / "7b" / "params.json"
    params.write_text(params.read_text().replace('"norm_eps": 1e-05', '"norm_eps": 1e-06'))
    assert resolve_model_dir(meta) != first
    assert not list((tmp_path / "cache" / "converted").glob("*.*.*"))   # no temporary dir left behind


def test_incomplete_meta_dirs_are_refused_by_name(tmp_path):
    meta = write_tiny_meta_chameleon(tmp_path / "meta", seed=4)
    (meta / "tokenizer" / "vqgan.ckpt").unlink()
    with pytest.raises(MetaCheckpointError, match="tokenizer/vqgan.ckpt"):
        convert_meta_checkpoint(meta, tmp_path / "hf")
    meta = write_tiny_meta_chameleon(tmp_path / "meta2", seed=4)
    (meta / "models" / "7b" / "consolidate_params.json").write_text('{"model_parallel_size": 2}')
    with pytest.raises(MetaCheckpointError, match="model_parallel_size 2 but 1"):
        convert_meta_checkpoint(meta, tmp_path / "hf")


def test_the_trainers_model_loading_takes_a_meta_dir(tmp_path, monkeypatch):
    """build_omni (train) goes through the same loader: a Meta dir gives the converted model, its codebook and note."""
    from aromni.model.omni import build_omni
    monkeypatch.setenv("AROMNI_CACHE", str(tmp_path / "cache"))
    meta = write_tiny_meta_chameleon(tmp_path / "meta", seed=6)
    model, note = build_omni(meta, dtype=torch.float64)
    assert note["format"] == "meta" and note["stand_in"] is True
    assert model.codebook.shape[0] == 8192
    with torch.no_grad():
        got = omni_forward(model.lm, torch.tensor([IDS])).logits[0]
    assert torch.allclose(got, meta_logits(meta, IDS), atol=1e-6)
