"""Write RANDOM-weight checkpoints in the exact published formats (tests, the demo, benchmarks, other engineers).

The released VQGAN/WavTokenizer weights cannot be downloaded on the build machines, so every loader is proven on
files written here: same file names, same yaml/json keys, same state-dict keys (legacy weight-norm pairs, codebook
buffers, the unused SEANet decoder, training-only loss/discriminator keys), same Lightning envelope; only the widths
are smaller unless ``full_size`` is asked. Each config carries ``aromni_stand_in: true`` (an extra key the official
loaders ignore), so a loader reports ``stand_in`` even when a recipe forgets to.

- ``write_meta_vqgan(dir)``: ``vqgan.yaml`` + ``vqgan.ckpt`` (Meta's Chameleon release layout).
- ``meta_vqgan_to_hf(meta_dir, out_dir)``: the HF layout the same weights get through transformers' conversion
  (``model.vqmodel.<key>`` for every non-decoder key, ``vq_config`` renamed as the conversion renames it).
- ``write_wavtokenizer(dir)``: the 40 Hz yaml + a Lightning ckpt.
- ``write_demo_checkpoints(dir)``: what ``recipes/demo_realformat.yaml`` points at.
- ``write_full_size(dir)``: full-size architectures (random weights) for ``bench/tokenizers.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from aromni.model import vqgan as vq
from aromni.model import wavtokenizer as wt

STAND_IN = {"aromni_stand_in": True}


def _lightning(state_dict: dict, **extra) -> dict:
    """The envelope PyTorch Lightning saves (plain types only, so weights_only loading works as on real files)."""
    return {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.8.6", "state_dict": state_dict,
            "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], **extra}


def _randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Default PyTorch init from a seeded generator, norms' affine params jittered so they are not all 1/0."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    for k, v in sd.items():
        if v.is_floating_point() and ("norm" in k or k.endswith("gamma")):
            sd[k] = v + 0.1 * torch.randn(v.shape, generator=g)
    return sd


# ---------------------------------------------------------------------------------------------------------------
# VQGAN
def tiny_vqgan_config(resolution: int = 64) -> vq.VQGANConfig:
    """The smallest taming VQModel that still gives the layout's 32x32 = 1024 codes of 8192 (GroupNorm(32) needs
    >= 32 channels). resolution 64 -> 2 levels; 512 -> 5 levels like the real one."""
    levels = {64: [1, 2], 128: [1, 1, 2], 256: [1, 1, 1, 2], 512: [1, 1, 1, 1, 2]}[resolution]
    return vq.VQGANConfig(embed_dim=32, n_embed=8192, z_channels=32, resolution=resolution, ch=32, ch_mult=levels,
                          num_res_blocks=1, attn_resolutions=[])


def vqgan_state(cfg: vq.VQGANConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    model = vq.VQModel(cfg, with_decoder=True)
    sd = _randomise(model, seed)
    # codebook drawn from the random encoder's own latents on noise images (as k-means init does on real data), so
    # different pictures get different codes
    model.load_state_dict(sd)
    g = torch.Generator().manual_seed(seed + 2)
    probe = torch.rand(2, 3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1
    probe[1] = probe[1].mean(0, keepdim=True).expand(3, -1, -1)  # and a grey one
    with torch.inference_mode():
        lat = model.quant_conv(model.encoder(probe)).permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim)
    sd["quantize.embedding.weight"] = _codebook_from(lat, cfg.n_embed, g)
    return sd


def _codebook_from(latents: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n entries = random latents plus noise of their per-dim spread."""
    pick = latents[torch.randint(len(latents), (n,), generator=g)]
    return (pick + torch.randn(pick.shape, generator=g) * latents.std(0, keepdim=True)).contiguous()


def write_meta_vqgan(out_dir, cfg: vq.VQGANConfig | None = None, seed: int = 0, *, loss_keys: bool = True,
                     mark_stand_in: bool = True) -> Path:
    """Meta's layout: ``out_dir/vqgan.yaml`` (taming config) + ``out_dir/vqgan.ckpt`` (Lightning, ``state_dict``).
    ``loss_keys`` adds training-loss keys (``loss.discriminator...``) that loaders must ignore."""
    cfg = cfg or tiny_vqgan_config()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = vqgan_state(cfg, seed)
    if loss_keys:
        g = torch.Generator().manual_seed(seed + 3)
        sd["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4, generator=g)
        sd["loss.discriminator.main.0.bias"] = torch.zeros(64)
        sd["loss.logvar"] = torch.zeros(())
    conf = cfg.to_meta_yaml()
    conf["model"]["params"]["ckpt_path"] = str(out / vq.META_CKPT)  # Meta's yaml names its ckpt; loaders ignore it
    if mark_stand_in:
        conf.update(STAND_IN)
    (out / vq.META_CONFIG).write_text(yaml.safe_dump(conf, sort_keys=False))
    torch.save(_lightning(sd), out / vq.META_CKPT)
    return out


def meta_vqgan_to_hf(meta_dir, out_dir) -> Path:
    """What transformers' convert_chameleon_weights_to_hf does to the VQGAN: every ``state_dict`` key except the
    decoder's becomes ``model.vqmodel.<key>``; yaml ddconfig names become ChameleonVQVAEConfig names. Only the VQ part
    is written (config.json ``vq_config`` + model.safetensors); a real HF dir also holds the language model."""
    from safetensors.torch import save_file

    src = Path(meta_dir)
    raw = yaml.safe_load((src / vq.META_CONFIG).read_text())
    cfg = vq.VQGANConfig.from_meta(raw)
    sd = torch.load(src / vq.META_CKPT, map_location="cpu", weights_only=True)["state_dict"]
    hf = {vq.HF_PREFIX + k: v.contiguous() for k, v in sd.items() if "decoder" not in k and not k.startswith("loss.")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(out / "model.safetensors"), metadata={"format": "pt"})
    conf = {"model_type": "chameleon", "architectures": ["ChameleonForConditionalGeneration"], "vq_config": cfg.to_hf()}
    if raw.get(vq.STAND_IN_MARK):
        conf.update(STAND_IN)
    (out / "config.json").write_text(json.dumps(conf, indent=2))
    return out


# ---------------------------------------------------------------------------------------------------------------
# WavTokenizer
def tiny_wavtokenizer_config() -> wt.WavTokenizerConfig:
    """40 Hz (hop 600, n_fft 2400) and 4096 codes as released; small backbone (GroupNorm(32) needs dim % 32 == 0)."""
    return wt.WavTokenizerConfig(downsamples=[6, 5, 5, 4], vq_bins=4096, num_quantizers=1, backbone_in=32, dim=64,
                                 intermediate_dim=128, num_layers=2, adanorm_num_embeddings=4,
                                 layer_scale_init_value=None, n_fft=2400, hop_length=600, padding="same")


def full_wavtokenizer_config() -> wt.WavTokenizerConfig:
    """wavtokenizer_smalldata_frame40_3s_nq1_code4096_dim512_kmeans200_attn.yaml (reference §6)."""
    return wt.WavTokenizerConfig(downsamples=[6, 5, 5, 4], vq_bins=4096, num_quantizers=1, backbone_in=512, dim=768,
                                 intermediate_dim=2304, num_layers=12, adanorm_num_embeddings=4,
                                 layer_scale_init_value=None, n_fft=2400, hop_length=600, padding="same")


def _seanet_decoder_shapes(n_filters: int, dimension: int, lstm: int, ratios=(8, 5, 4, 2)) -> dict[str, tuple]:
    """Key -> shape of encodec's SEANetDecoder as WavTokenizer builds it (weight-norm pairs, ratios [8,5,4,2]).
    The checkpoint carries it although WavTokenizer never runs it; loaders must accept and ignore it."""
    shapes: dict[str, tuple] = {}

    def conv(prefix, cin, cout, k):
        shapes[prefix + "weight_g"], shapes[prefix + "weight_v"], shapes[prefix + "bias"] = (cout, 1, 1), (cout, cin, k), (cout,)

    mult = 2 ** len(ratios)
    conv("model.0.conv.conv.", dimension, mult * n_filters, 7)
    h = mult * n_filters
    for layer in range(lstm):
        for kind in ("ih", "hh"):
            shapes[f"model.1.lstm.weight_{kind}_l{layer}"] = (4 * h, h)
            shapes[f"model.1.lstm.bias_{kind}_l{layer}"] = (4 * h,)
    i = 2
    for r in ratios:  # [ELU, transposed conv (up by r), residual block] per ratio
        c = mult * n_filters
        p = f"model.{i + 1}.convtr.convtr."
        shapes[p + "weight_g"], shapes[p + "weight_v"], shapes[p + "bias"] = (c, 1, 1), (c, c // 2, 2 * r), (c // 2,)
        conv(f"model.{i + 2}.block.1.conv.conv.", c // 2, c // 4, 3)
        conv(f"model.{i + 2}.block.3.conv.conv.", c // 4, c // 2, 1)
        conv(f"model.{i + 2}.shortcut.conv.conv.", c // 2, c // 2, 1)
        mult //= 2
        i += 3
    conv(f"model.{i + 1}.conv.conv.", n_filters, 1, 7)
    return shapes


def wavtokenizer_state(cfg: wt.WavTokenizerConfig, n_filters: int, dimension: int, lstm: int = 2, seed: int = 0,
                       *, legacy_weight_norm: bool = True, extra_keys: bool = True) -> dict[str, torch.Tensor]:
    """A WavTokenizer Lightning ``state_dict``: encoder convs as weight-norm pairs (``weight_g``/``weight_v``, as
    torch.nn.utils.weight_norm saves them), the codebook's four buffers, the SEANet decoder, backbone, head."""
    model = wt.WavTokenizerModel(cfg, n_filters, dimension, lstm)
    sd = _randomise(model, seed)
    g = torch.Generator().manual_seed(seed + 2)
    cb = wt.CODEBOOK
    # codebook drawn from the random encoder's own outputs on noise and tones (as k-means init does on real data),
    # so different audio gets different codes
    model.load_state_dict(sd)
    t = torch.arange(cfg.sample_rate) / cfg.sample_rate
    probe = [torch.randn(len(t), generator=g) * a for a in (0.01, 0.1, 0.5)]
    probe += [torch.sin(2 * torch.pi * f * t) * 0.3 for f in (110.0, 440.0, 1760.0)]
    with torch.inference_mode():
        frames = torch.cat([model.feature_extractor.encodec.encoder(x.reshape(1, 1, -1))[0].t() for x in probe])
    sd[cb + "embed"] = _codebook_from(frames, cfg.vq_bins, g)
    sd[cb + "embed_avg"] = sd[cb + "embed"].clone()
    sd[cb + "cluster_size"] = torch.rand(cfg.vq_bins, generator=g)
    sd[cb + "inited"] = torch.ones(1)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if legacy_weight_norm and k.startswith(wt.ENC) and k.endswith(".conv.conv.weight"):
            stem = k[: -len("weight")]
            out[stem + "weight_g"] = v.flatten(1).norm(dim=1).reshape(-1, 1, 1)
            out[stem + "weight_v"] = v
        else:
            out[k] = v
    if extra_keys:
        dec = "feature_extractor.encodec.decoder."
        for k, shape in _seanet_decoder_shapes(n_filters, dimension, lstm).items():
            out[dec + k] = torch.randn(shape, generator=g) * 0.05
        out["multiperioddisc.discriminators.0.convs.0.weight"] = torch.randn(32, 1, 5, 1, generator=g)
        out["melspec_loss.mel_spec.spectrogram.window"] = torch.hann_window(1024)
    return out


def write_wavtokenizer(out_dir, cfg: wt.WavTokenizerConfig | None = None, *, n_filters: int = 4,
                       dimension: int | None = None, lstm: int = 2, seed: int = 0, legacy_weight_norm: bool = True,
                       extra_keys: bool = True, mark_stand_in: bool = True) -> Path:
    """``out_dir/<official 40 Hz yaml name>`` + ``out_dir/WavTokenizer_small_600_24k_4096.ckpt``."""
    cfg = cfg or tiny_wavtokenizer_config()
    dimension = dimension or cfg.backbone_in
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = cfg.to_yaml()
    if mark_stand_in:
        conf.update(STAND_IN)
    (out / wt.CONFIG_40HZ).write_text(yaml.safe_dump(conf, sort_keys=False))
    sd = wavtokenizer_state(cfg, n_filters, dimension, lstm, seed, legacy_weight_norm=legacy_weight_norm,
                            extra_keys=extra_keys)
    torch.save(_lightning(sd, hparams_name="kwargs", hyper_parameters={"sample_rate": cfg.sample_rate}),
               out / wt.CKPT_40HZ)
    return out


def copy_with_edited_state(src_dir, dst_dir, ckpt_name: str, edit) -> Path:
    """Copy a checkpoint dir and apply ``edit(state_dict)`` to its ckpt: broken-checkpoint fixtures for tests."""
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != ckpt_name:
            (dst / f.name).write_bytes(f.read_bytes())
    ck = torch.load(src / ckpt_name, map_location="cpu", weights_only=True)
    edit(ck["state_dict"])
    torch.save(ck, dst / ckpt_name)
    return dst


# ---------------------------------------------------------------------------------------------------------------
def write_demo_checkpoints(root) -> dict[str, Path]:
    """Random-weight STAND-IN tokenizers for ``recipes/demo_realformat.yaml``: ``root/vqgan`` (Meta layout, 512x512
    input, 1024 codes of 8192) and ``root/wavtokenizer`` (40 Hz, 4096 codes). Small widths, so the demo runs on a
    laptop CPU; the formats and the code path are the real ones."""
    root = Path(root)
    return {"vqgan (STAND-IN, random weights)": write_meta_vqgan(root / "vqgan", tiny_vqgan_config(512), seed=0),
            "wavtokenizer (STAND-IN, random weights)": write_wavtokenizer(root / "wavtokenizer", seed=0)}


def write_full_size(root, seed: int = 0) -> dict[str, Path]:
    """Full-size architectures with random weights (VQGAN: 512, ch 128, [1,1,2,2,4], 2 res blocks, 256-d codes;
    WavTokenizer: SEANet 32/512, backbone 768x12): what a benchmark must time. About 0.6 GB on disk."""
    root = Path(root)
    return {"vqgan": write_meta_vqgan(root / "vqgan", vq.VQGANConfig(), seed=seed),
            "wavtokenizer": write_wavtokenizer(root / "wavtokenizer", full_wavtokenizer_config(), n_filters=32,
                                               dimension=512, seed=seed)}
