"""OmniModel: codebook sources, the HF-format save that transformers loads, the perceptual head beside it."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from aromni.model.chameleon import write_tiny_chameleon
from aromni.model.omni import HEAD_FILE, build_omni, load_codebook


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_chameleon(tmp_path_factory.mktemp("omni"), vocab_size=16384)


def test_codebook_from_a_vqgan_ckpt_a_safetensors_or_an_hf_dir(tiny_dir, tmp_path):
    model, _ = build_omni(tiny_dir)
    vq = model.lm.model.vqmodel.quantize.embedding.weight.detach()
    torch.save({"state_dict": {"quantize.embedding.weight": vq, "encoder.conv_in.weight": torch.zeros(1)}},
               tmp_path / "vqgan.ckpt")                                   # Meta's Lightning layout
    save_file({"quantize.embedding.weight": vq.contiguous()}, str(tmp_path / "cb.safetensors"))
    for src in (tmp_path / "vqgan.ckpt", tmp_path / "cb.safetensors", tiny_dir):
        assert torch.equal(load_codebook(src), vq)
    other = torch.randn_like(vq)
    torch.save({"state_dict": {"quantize.embedding.weight": other}}, tmp_path / "other.ckpt")
    assert torch.equal(build_omni(tiny_dir, codebook=tmp_path / "other.ckpt")[0].codebook, other)
    torch.save({"state_dict": {"x": other}}, tmp_path / "bad.ckpt")
    with pytest.raises(KeyError, match="quantize.embedding.weight"):
        load_codebook(tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="8192"):
        build_omni(tiny_dir, codebook=_write(tmp_path / "small.safetensors", vq[:100]))


def _write(path, t):
    save_file({"quantize.embedding.weight": t.contiguous()}, str(path))
    return path


def test_save_hf_loads_in_transformers_and_keeps_the_head(tiny_dir, tmp_path):
    from transformers import ChameleonForConditionalGeneration
    model, note = build_omni(tiny_dir, seed=3)
    with torch.no_grad():
        model.perceptual_head.weight.add_(1.0)
    out = model.save_hf(tmp_path / "final", source_dir=tiny_dir, note={"stand_in": note["stand_in"]})
    back = ChameleonForConditionalGeneration.from_pretrained(str(out))
    for k, v in model.lm.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    head = load_file(str(out / HEAD_FILE))
    assert torch.equal(head["weight"], model.perceptual_head.weight)
    again, note2 = build_omni(out)                     # continuing from a saved run keeps the trained head
    assert torch.equal(again.perceptual_head.weight, model.perceptual_head.weight) and note2["stand_in"] is True
    frozen, _ = build_omni(out, seed=3, head="frozen")  # upstream's projection: fresh every run, never optimised
    assert torch.allclose(frozen.perceptual_head.weight, model.perceptual_head.weight - 1.0, atol=1e-6)
    assert not any(p.requires_grad for p in frozen.perceptual_head.parameters())


def test_forward_gives_logits_where_asked_and_the_last_hidden_state(tiny_dir):
    model, _ = build_omni(tiny_dir)
    ids = torch.tensor([[0, 100, 101, 2]])
    mask = torch.tensor([[True, False, True, False]])
    out = model(ids, logits_mask=mask)
    assert out.logits.shape == (2, model.config.vocab_size) and out.hidden.shape == (1, 4, model.config.hidden_size)
    assert torch.allclose(out.logits, model.lm.lm_head(out.hidden[mask]))


def test_missing_model_dir_says_how_to_get_a_stand_in(tmp_path):
    with pytest.raises(FileNotFoundError, match="random_init"):
        build_omni(tmp_path / "none")
    model, note = build_omni(tmp_path / "made", random_init="tiny")
    assert note["stand_in"] and (tmp_path / "made" / "config.json").is_file()
