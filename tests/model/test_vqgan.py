"""Chameleon VQGAN: both published layouts load, match transformers' ChameleonVQVAE code for code, round-trip at
512x512, pre-process every kind of input, and refuse broken checkpoints with a message that lists what is wrong."""
from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from aromni.model.chameleon import write_tiny_chameleon
from aromni.model.checkpoint import CheckpointError, sha256_file
from aromni.model.random_checkpoints import (STAND_IN, copy_with_edited_state, meta_vqgan_to_hf,
                                             tiny_vqgan_config, write_meta_vqgan)
from aromni.model.vqgan import (META_CKPT, META_CONFIG, center_square, load_image_tokenizer, pixels_to_tensor,
                                to_rgb8)


@pytest.fixture(scope="module")
def meta64(tmp_path_factory):
    return write_meta_vqgan(tmp_path_factory.mktemp("vq64"), tiny_vqgan_config(64), seed=3)


@pytest.fixture(scope="module")
def photos():
    import skimage.data as sd
    return [Image.fromarray(sd.astronaut()), Image.fromarray(sd.coffee()), Image.fromarray(sd.camera()),
            Image.fromarray(sd.chelsea())]


def write_hf_chameleon(out_dir, seed: int = 0):
    """A tiny random Chameleon model saved by transformers itself (config.json + model.safetensors with
    ``model.vqmodel.*``): the HF layout exactly as the library writes it."""
    out = write_tiny_chameleon(out_dir, seed=seed)
    conf = json.loads((out / "config.json").read_text())
    conf.update(STAND_IN)
    (out / "config.json").write_text(json.dumps(conf, indent=2))
    return out


def _rand_pixels(n, side, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def test_hf_conversion_matches_transformers_chameleon_vqvae(meta64, tmp_path):
    """Same random weights: Meta ckpt through our loader, the converted HF dir through our loader, and transformers'
    ChameleonVQVAE loaded with the conversion's key mapping all give identical codes."""
    from transformers import ChameleonVQVAEConfig
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE
    from safetensors.torch import load_file

    hf_dir = meta_vqgan_to_hf(meta64, tmp_path / "hf")
    vq_config = json.loads((hf_dir / "config.json").read_text())["vq_config"]
    ref = ChameleonVQVAE(ChameleonVQVAEConfig(**vq_config)).eval()
    sd = {k.removeprefix("model.vqmodel."): v for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    ref.load_state_dict(sd, strict=True)

    arrays = _rand_pixels(3, 64)
    with torch.no_grad():
        want = ref.encode(pixels_to_tensor(arrays)).image_tokens.reshape(3, -1)
    meta = load_image_tokenizer(meta64, batch_size=2)
    hf = load_image_tokenizer(hf_dir, batch_size=2)
    got_meta, got_hf = meta.encode_prepared(arrays), hf.encode_prepared(arrays)
    assert torch.equal(got_meta, want) and torch.equal(got_hf, want)
    assert len(set(want.flatten().tolist())) > 100  # the random model is not degenerate
    assert hf.identity["format"] == "hf" and not hf.can_decode
    with pytest.raises(NotImplementedError, match="cannot decode"):
        hf.decode(got_hf)


def test_transformers_saved_chameleon_dir_loads_and_matches(tmp_path):
    """An HF dir exactly as transformers saves it (config.json vq_config + model.safetensors with model.vqmodel.*)."""
    from transformers import ChameleonForConditionalGeneration

    d = write_hf_chameleon(tmp_path / "cham", seed=1)
    tok = load_image_tokenizer(d)
    side = tok.resolution
    arrays = _rand_pixels(2, side, seed=5)
    model = ChameleonForConditionalGeneration.from_pretrained(str(d)).eval()
    with torch.no_grad():
        want = model.model.vqmodel.encode(pixels_to_tensor(arrays)).image_tokens.reshape(2, -1)
    assert torch.equal(tok.encode_prepared(arrays), want)
    assert tok.identity["stand_in"] is True  # the random dir is marked as such


def test_meta_round_trip_512(tmp_path, photos):
    tok = load_image_tokenizer(write_meta_vqgan(tmp_path, tiny_vqgan_config(512), seed=0), batch_size=2)
    codes = tok.encode(photos[:2])
    assert codes.shape == (2, 1024) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 8192
    assert not torch.equal(codes[0], codes[1])
    imgs = tok.decode(codes)
    assert [(i.size, i.mode) for i in imgs] == [((512, 512), "RGB")] * 2
    # decoding one image alone gives the same picture (decode is not padded to a fixed batch: float noise only)
    alone = np.asarray(tok.decode(codes[1])[0]).astype(int)
    assert np.abs(alone - np.asarray(imgs[1]).astype(int)).max() <= 2
    assert torch.equal(tok.encode(photos[1:2]), codes[1:2])  # encoding is exact whatever the batch


def test_codes_do_not_depend_on_batch_company(meta64, photos):
    tok = load_image_tokenizer(meta64, batch_size=2)
    photos = photos[:3]
    alone = torch.cat([tok.encode([p]) for p in photos])
    together = tok.encode(photos)           # one full batch of 2 + a padded batch of 1
    shuffled = tok.encode(photos[::-1]).flip(0)
    assert torch.equal(alone, together) and torch.equal(alone, shuffled)


def test_preprocessing_modes_exif_alpha_16bit(meta64):
    # alpha blended onto white exactly as Meta: (1-a)*255 + a*rgb, truncated
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :30, 3] = 0          # transparent half -> white
    rgba[:, 30:, 3] = 128        # half-transparent red
    out = np.asarray(to_rgb8(Image.fromarray(rgba, "RGBA")))
    assert out[0, 0].tolist() == [255, 255, 255]
    a = 128 / 255
    assert out[0, 59].tolist() == [int((1 - a) * 255 + a * 200), int((1 - a) * 255), int((1 - a) * 255)]
    # EXIF orientation 6 (rotate 90 CW): a 60x40 file is a 40x60 picture
    img = Image.fromarray(np.zeros((40, 60, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert to_rgb8(Image.open(io.BytesIO(buf.getvalue()))).size == (40, 60)
    # 16-bit grey is scaled, not clipped
    g16 = Image.fromarray((np.ones((32, 32)) * 65535).astype(np.uint16))
    assert np.asarray(to_rgb8(g16)).min() == 255
    tok = load_image_tokenizer(meta64)
    inputs = [Image.new("L", (100, 70), 9), Image.new("P", (70, 100)), Image.new("CMYK", (64, 64)), g16,
              Image.fromarray(rgba, "RGBA"), Image.new("1", (80, 80))]
    codes = tok.encode(inputs)
    assert codes.shape == (len(inputs), 1024)
    # shortest edge to the model's side, centre crop
    wide = Image.fromarray(np.concatenate([np.zeros((64, 64, 3), np.uint8), np.full((64, 128, 3), 255, np.uint8),
                                           np.zeros((64, 64, 3), np.uint8)], 1))
    sq = center_square(wide, 64)
    assert sq.shape == (64, 64, 3) and sq.min() == 255


def test_lazy_identity_reads_no_weights(meta64):
    tok = load_image_tokenizer(meta64, lazy=True)
    ident = tok.identity
    assert tok.model is None
    assert ident["sha256"] == sha256_file(meta64 / META_CKPT)
    assert ident["files"][META_CONFIG] == sha256_file(meta64 / META_CONFIG)
    assert ident["stand_in"] is True and "STAND-IN" in ident["note"]
    # the same files found from the yaml path, the ckpt path and the release root's tokenizer/ folder
    assert load_image_tokenizer(meta64 / META_CKPT, lazy=True).identity["sha256"] == ident["sha256"]


def _rewrite(src, dst, edit):
    return copy_with_edited_state(src, dst, META_CKPT, edit)


def test_broken_checkpoints_fail_with_the_keys(meta64, tmp_path):
    def drop(sd):
        del sd["encoder.conv_in.weight"]

    def extra(sd):
        sd["encoder.bogus.weight"] = torch.zeros(1)

    def shape(sd):
        sd["quant_conv.weight"] = torch.zeros(7, 32, 1, 1)

    for name, edit, match in (("drop", drop, "1 missing key.*encoder.conv_in.weight"),
                              ("extra", extra, "1 unexpected key.*encoder.bogus.weight"),
                              ("shape", shape, r"misshapen.*quant_conv.weight: checkpoint \(7, 32, 1, 1\)")):
        with pytest.raises(CheckpointError, match=match):
            load_image_tokenizer(_rewrite(meta64, tmp_path / name, edit))
    # training-loss keys are ignored (written by write_meta_vqgan), the official loader does the same
    assert any(k.startswith("loss.") for k in torch.load(meta64 / META_CKPT, weights_only=True)["state_dict"])

    # a checkpoint that pickles code is refused, never unpickled
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / META_CONFIG).write_text((meta64 / META_CONFIG).read_text())
    torch.save({"state_dict": {}, "callback": pickle.PickleError}, evil / META_CKPT)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_image_tokenizer(evil)
    # a config that gives the wrong number of codes is refused at once
    bad = tmp_path / "badcfg"
    bad.mkdir()
    cfg = yaml.safe_load((meta64 / META_CONFIG).read_text())
    cfg["model"]["params"]["ddconfig"]["resolution"] = 128
    (bad / META_CONFIG).write_text(yaml.safe_dump(cfg))
    (bad / META_CKPT).write_bytes((meta64 / META_CKPT).read_bytes())
    with pytest.raises(CheckpointError, match="1024"):
        load_image_tokenizer(bad, lazy=True)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_precision_is_deterministic_recorded_and_close_to_fp32(meta64, precision):
    """Codes for a given (precision, device type) repeat exactly; the identity (hence the manifest) records the
    precision; bf16 stays mostly on fp32's codes; tf32 on CPU is fp32 (there is no TF32 there)."""
    arrays = _rand_pixels(3, 64, seed=5)
    tok = load_image_tokenizer(meta64, batch_size=2, precision=precision)
    first = tok.encode_prepared(arrays)
    assert torch.equal(first, tok.encode_prepared(arrays))
    assert tok.identity["precision"] == precision
    fp32 = load_image_tokenizer(meta64, batch_size=2).encode_prepared(arrays)
    same = (first == fp32).float().mean().item()
    if precision == "bf16":
        assert 0.5 < same  # 0.9+ on these weights; the share is what bench/tokenizers.py reports
    elif tok.device.type == "cpu":
        assert same == 1.0
    with pytest.raises(ValueError, match="precision 'fp16'"):
        load_image_tokenizer(meta64, precision="fp16", lazy=True)
