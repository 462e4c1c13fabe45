"""The Chameleon wrapper: image logits unmasked, the vocabulary map checked at load, stand-ins say so."""
from __future__ import annotations

import json

import pytest
import torch

from aromni.layout import AR_OMNI_V0_1 as L
from aromni.model.chameleon import (MODEL_NOTE, check_image_vocabulary, load_chameleon, model_note, omni_forward,
                                    tiny_chameleon_config, write_tiny_chameleon)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_chameleon(tmp_path_factory.mktemp("cham"), vocab_size=16384)


def test_omni_forward_keeps_image_logits_and_can_compute_them_only_where_needed(tiny_dir):
    m = load_chameleon(tiny_dir).eval()
    ids = torch.tensor([[0, 9000, L.boi, 4, 5, 6]])
    with torch.no_grad():
        full = omni_forward(m, ids)
        stock = m(input_ids=ids).logits
        mask = torch.tensor([[False, True, False, True, True, False]])
        some = omni_forward(m, ids, logits_mask=mask)
    img = slice(L.image_code_start, L.image_code_end + 1)
    assert torch.isfinite(full.logits[..., img]).all()
    assert (stock[..., img] == torch.finfo(stock.dtype).min).all()             # what HF's class does
    assert full.hidden.shape == (1, 6, m.config.hidden_size) and m.config.swin_norm
    assert some.logits.shape == (3, m.config.vocab_size)
    assert torch.allclose(some.logits, full.logits[mask], atol=1e-5)


def test_the_vocabulary_map_is_checked_at_load():
    check_image_vocabulary(tiny_chameleon_config())
    cfg = tiny_chameleon_config()
    vm = dict(cfg.vocabulary_map)
    first, second = [k for k, v in vm.items() if v in (4, 5)]
    vm[first], vm[second] = 5, 4                                                   # two codes swapped
    cfg.vocabulary_map = vm
    with pytest.raises(ValueError, match="disagrees"):
        check_image_vocabulary(cfg)
    cfg.vocabulary_map = {}
    with pytest.raises(ValueError, match="IMGIMG"):
        check_image_vocabulary(cfg)


def test_a_written_tiny_model_says_it_is_a_stand_in(tiny_dir):
    assert model_note(tiny_dir)["stand_in"] is True
    assert json.loads((tiny_dir / MODEL_NOTE).read_text())["stand_in"] is True
    assert model_note(tiny_dir.parent) == {}


def test_swin_norm_comes_from_the_config_unless_overridden(tiny_dir):
    assert load_chameleon(tiny_dir).config.swin_norm is True
    off = load_chameleon(tiny_dir, swin_norm=False)
    assert off.config.swin_norm is False and off.model.layers[0].__class__.__name__ == "ChameleonDecoderLayer"
    assert load_chameleon(tiny_dir, swin_norm=True).model.layers[0].__class__.__name__ == "ChameleonSwinDecoderLayer"
