"""Chameleon's VQGAN image tokenizer (encode + decode), loaded from its published checkpoint formats.

Two formats are accepted, both through ``load_image_tokenizer(path)``:

- **Meta** (``tokenizer/vqgan.yaml`` + ``tokenizer/vqgan.ckpt`` of the Chameleon release; Anole ships the same files):
  a taming-transformers ``VQModel``. The yaml's ``model.params`` holds ``embed_dim``, ``n_embed`` and ``ddconfig``;
  the ckpt is a Lightning checkpoint whose ``state_dict`` keys are ``encoder.*``, ``decoder.*``, ``quant_conv.*``,
  ``post_quant_conv.*`` and ``quantize.embedding.weight``. Keys under ``loss.`` (the training loss: LPIPS and the
  discriminator) are ignored, as the official loader does. Encode and decode.
- **HF** (a converted Chameleon/Anole model dir): ``config.json``'s ``vq_config`` and the ``model.vqmodel.*`` tensors
  of its safetensors. transformers' conversion drops the decoder, so this format encodes only; ``decode`` says so.

The modules below keep taming's attribute names, so both formats load without renaming. Architecture facts
(reference §6): 512x512 input, channel multipliers [1,1,2,2,4] -> 32x32 = 1024 codes out of 8192.

Pre-processing follows Meta's ``ImageTokenizer``: transparency blended onto white, shortest edge resized to the
model's resolution with LANCZOS, centre crop, pixels scaled to [-1, 1] as x/255*2-1. (HF's image processor uses a
rescale factor of 0.0078 instead of 2/255; aromni uses Meta's exact scaling for both formats.) EXIF rotation,
greyscale, palette, CMYK and 16-bit inputs are turned into 8-bit RGB first.

Batches are always run at one fixed shape ([batch_size, 3, R, R], the last batch padded with blank images), so an
image's codes depend on that image alone, not on what it was batched with: this is what keeps a build byte-identical
whatever the number of workers or how the actor pool grouped the images.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model.images import to_rgb8
from aromni.model.checkpoint import (CheckpointError, check_state_dict, fold_weight_norm, load_lightning_state_dict,
                                     check_precision, pick_device, precision_context, sha256_file, stand_in_note,
                                     strip_prefixes, tensors_sha256)

META_CONFIG, META_CKPT = "vqgan.yaml", "vqgan.ckpt"
HF_PREFIX = "model.vqmodel."
STAND_IN_MARK = "aromni_stand_in"  # written by aromni.model.random_checkpoints into configs of random weights


# ---------------------------------------------------------------------------------------------------------------
# config
@dataclass
class VQGANConfig:
    embed_dim: int = 256
    n_embed: int = 8192
    z_channels: int = 256
    resolution: int = 512
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=list)
    double_z: bool = False
    attn_type: str = "vanilla"

    @property
    def latent_side(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_meta(cls, cfg: dict) -> "VQGANConfig":
        """From a taming yaml (``model.params``: embed_dim, n_embed, ddconfig)."""
        p = (cfg.get("model") or {}).get("params") or cfg.get("params") or {}
        dd = p.get("ddconfig")
        if not dd or "n_embed" not in p or "embed_dim" not in p:
            raise CheckpointError("vqgan.yaml: expected model.params with embed_dim, n_embed and ddconfig")
        return cls(embed_dim=p["embed_dim"], n_embed=p["n_embed"], z_channels=dd["z_channels"],
                   resolution=dd["resolution"], in_channels=dd.get("in_channels", 3), out_ch=dd.get("out_ch", 3),
                   ch=dd["ch"], ch_mult=list(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
                   attn_resolutions=list(dd.get("attn_resolutions") or []), double_z=bool(dd.get("double_z", False)),
                   attn_type=dd.get("attn_type", "vanilla"))

    @classmethod
    def from_hf(cls, vq: dict) -> "VQGANConfig":
        """From transformers' ChameleonVQVAEConfig names (config.json ``vq_config``)."""
        return cls(embed_dim=vq.get("embed_dim", 256), n_embed=vq.get("num_embeddings", 8192),
                   z_channels=vq.get("latent_channels", 256), resolution=vq.get("resolution", 512),
                   in_channels=vq.get("in_channels", 3), out_ch=vq.get("out_channels", 3),
                   ch=vq.get("base_channels", 128), ch_mult=list(vq.get("channel_multiplier", [1, 1, 2, 2, 4])),
                   num_res_blocks=vq.get("num_res_blocks", 2), attn_resolutions=list(vq.get("attn_resolutions") or []),
                   double_z=bool(vq.get("double_latent", False)), attn_type=vq.get("attn_type", "vanilla") or "none")

    def to_meta_yaml(self) -> dict:
        """The taming yaml layout Meta's release uses (``model.params.ddconfig``)."""
        return {"model": {"target": "taming.models.vqgan.VQModel", "params": {
            "embed_dim": self.embed_dim, "n_embed": self.n_embed,
            "ddconfig": {"double_z": self.double_z, "z_channels": self.z_channels, "resolution": self.resolution,
                         "in_channels": self.in_channels, "out_ch": self.out_ch, "ch": self.ch,
                         "ch_mult": list(self.ch_mult), "num_res_blocks": self.num_res_blocks,
                         "attn_resolutions": list(self.attn_resolutions), "dropout": 0.0},
            "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                           "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0,
                                      "disc_weight": 0.75, "codebook_weight": 1.0}}}}}

    def to_hf(self) -> dict:
        """transformers' ChameleonVQVAEConfig names (what its conversion script writes into ``vq_config``)."""
        return {"embed_dim": self.embed_dim, "num_embeddings": self.n_embed, "double_latent": self.double_z,
                "latent_channels": self.z_channels, "resolution": self.resolution, "in_channels": self.in_channels,
                "out_channels": self.out_ch, "base_channels": self.ch, "channel_multiplier": list(self.ch_mult),
                "num_res_blocks": self.num_res_blocks, "attn_resolutions": list(self.attn_resolutions),
                "attn_type": self.attn_type, "dropout": 0.0}


# ---------------------------------------------------------------------------------------------------------------
# modules (taming attribute names)
def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (1x1 convs for q, k, v and the output)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(b, c, h * w).transpose(1, 2)      # b, hw, c
        k = self.k(y).reshape(b, c, h * w)                      # b, c, hw
        v = self.v(y).reshape(b, c, h * w)
        att = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # b, hw(query), hw(key)
        out = torch.bmm(v, att.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right/bottom only


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _attn(c: int, kind: str) -> nn.Module:
    return AttnBlock(c) if kind == "vanilla" else nn.Identity()


def _level(level: nn.Module, h: torch.Tensor, resample: str) -> torch.Tensor:
    """One resolution level: res blocks (each followed by its attention block when the level has them), then the
    level's down/upsampling if it has one."""
    for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[j](h)
    return getattr(level, resample)(h) if hasattr(level, resample) else h


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        mults = (1,) + tuple(cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i, m in enumerate(cfg.ch_mult):
            level = nn.Module()
            cin, cout = cfg.ch * mults[i], cfg.ch * m
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, cout))
                cin = cout
                if res in cfg.attn_resolutions:
                    level.attn.append(_attn(cout, cfg.attn_type))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(cout)
                res //= 2
            self.down.append(level)
        c = cfg.ch * cfg.ch_mult[-1]
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(c, c), _attn(c, cfg.attn_type), ResnetBlock(c, c)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = _level(level, h, "downsample")
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(c, c), _attn(c, cfg.attn_type), ResnetBlock(c, c)
        up = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            cout = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(c, cout))
                c = cout
                if res in cfg.attn_resolutions:
                    level.attn.append(_attn(c, cfg.attn_type))
            if i != 0:
                level.upsample = Upsample(c)
                res *= 2
            up.insert(0, level)  # index i = resolution level i, as in taming
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            h = _level(level, h, "upsample")
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    def __init__(self, n_embed: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] latents -> [B, H*W] nearest-code indices (row-major), squared L2 distance."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        e = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        return d.argmin(1).reshape(b, h * w)


class VQModel(nn.Module):
    def __init__(self, cfg: VQGANConfig, with_decoder: bool = True):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg) if with_decoder else None
        self.quantize = Quantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @torch.inference_mode()
    def encode_codes(self, pixels: torch.Tensor) -> torch.Tensor:
        z = self.quant_conv(self.encoder(pixels))
        with torch.autocast(z.device.type, enabled=False):   # nearest code in fp32 whatever the encoder ran in
            return self.quantize.codes(z.float().contiguous())

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        side = self.cfg.latent_side
        z = self.quantize.embedding(codes.reshape(-1, side, side)).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z))


# ---------------------------------------------------------------------------------------------------------------
# pre/post-processing
def center_square(img: Image.Image, side: int) -> np.ndarray:
    """Shortest edge -> ``side`` (LANCZOS), centre crop; uint8 [side, side, 3]."""
    img = to_rgb8(img)
    scale = side / min(img.size)
    img = img.resize((max(side, round(scale * img.size[0])), max(side, round(scale * img.size[1]))),
                     Image.Resampling.LANCZOS)
    x0, y0 = (img.width - side) // 2, (img.height - side) // 2
    return np.asarray(img.crop((x0, y0, x0 + side, y0 + side)), dtype=np.uint8)


def pixels_to_tensor(arrays: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1] (x/255*2-1, Meta's scaling)."""
    a = torch.from_numpy(np.ascontiguousarray(np.stack(arrays) if isinstance(arrays, list) else arrays))
    return (a.permute(0, 3, 1, 2).double() / 255.0 * 2 - 1).float()


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] float [B, 3, H, W] -> PIL RGB, as Meta's ``_pil_from_chw_tensor`` (clamp, (x+1)/2*255, truncate)."""
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((i * 255).astype(np.uint8), "RGB") for i in a]


# ---------------------------------------------------------------------------------------------------------------
# locating files
@dataclass
class VQGANFiles:
    format: str              # "meta" | "hf"
    config: Path
    weights: list[Path]      # meta: [vqgan.ckpt]; hf: safetensors files holding model.vqmodel.*
    raw_config: dict


def find_vqgan_files(path: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> VQGANFiles:
    import yaml

    p = Path(path)
    if checkpoint is not None:
        return VQGANFiles("meta", p, [Path(checkpoint)], yaml.safe_load(p.read_text()) or {})
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        ck = p.with_suffix(".ckpt")
        if not ck.is_file():
            raise FileNotFoundError(f"{p}: no {ck.name} beside it; pass the checkpoint path too")
        return VQGANFiles("meta", p, [ck], yaml.safe_load(p.read_text()) or {})
    if p.is_file() and p.suffix == ".ckpt":
        return find_vqgan_files(p.with_suffix(".yaml"))
    if p.is_file() and p.name == "config.json":
        p = p.parent
    if not p.is_dir():
        raise FileNotFoundError(f"image tokenizer not found: {p}")
    for d in (p, p / "tokenizer"):
        if (d / META_CONFIG).is_file() and (d / META_CKPT).is_file():
            return find_vqgan_files(d / META_CONFIG)
    if (p / "config.json").is_file():
        cfg = json.loads((p / "config.json").read_text())
        if "vq_config" not in cfg and "num_embeddings" not in cfg:
            raise CheckpointError(f"{p / 'config.json'} has no vq_config: not a Chameleon/Anole model dir")
        index = p / "model.safetensors.index.json"
        if index.is_file():
            wmap = json.loads(index.read_text())["weight_map"]
            files = sorted({p / f for k, f in wmap.items() if k.startswith(HF_PREFIX)})
        else:
            files = sorted(p.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{p}: no safetensors holding {HF_PREFIX}* tensors")
        return VQGANFiles("hf", p / "config.json", files, cfg)
    raise FileNotFoundError(f"{p}: neither {META_CONFIG} + {META_CKPT} (Meta/Anole) nor an HF model dir "
                            f"(config.json with vq_config + safetensors)")


def _hf_vq_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if k.startswith(HF_PREFIX):
                    out[k[len(HF_PREFIX):]] = st.get_tensor(k)
    return out


# ---------------------------------------------------------------------------------------------------------------
class VQGANTokenizer:
    """Encode PIL images to 1024 VQ codes and decode codes to images. ``identity`` goes into the manifest.

    ``lazy=True`` reads only the config (cheap: the driver of a build needs the identity and the resolution, not the
    weights); the weights load on first use. ``load()`` loads them now and raises CheckpointError on a bad file.
    """

    kind = "chameleon-vqgan"

    def __init__(self, path, layout: Layout = AR_OMNI_V0_1, stand_in: bool = False, *, checkpoint=None,
                 device=None, batch_size: int = 8, lazy: bool = False, precision: str = "fp32"):
        self.files = find_vqgan_files(path, checkpoint)
        self.layout = layout
        raw = self.files.raw_config
        self.cfg = (VQGANConfig.from_meta(raw) if self.files.format == "meta"
                    else VQGANConfig.from_hf(raw.get("vq_config", raw)))
        self.marked_stand_in = bool(raw.get(STAND_IN_MARK))
        self.stand_in = stand_in or self.marked_stand_in
        self.device = pick_device(device)
        self.batch_size = max(1, int(batch_size))
        self.precision = check_precision(precision)
        self.model: VQModel | None = None
        if self.cfg.latent_side ** 2 != layout.image_tokens:
            raise CheckpointError(f"{self.files.config}: resolution {self.cfg.resolution} with {len(self.cfg.ch_mult)} "
                                  f"levels gives {self.cfg.latent_side}^2 codes, layout {layout.name} needs "
                                  f"{layout.image_tokens}")
        if self.cfg.n_embed > layout.image_codebook:
            raise CheckpointError(f"{self.files.config}: {self.cfg.n_embed} codes do not fit the layout's "
                                  f"{layout.image_codebook} image ids")
        if not lazy:
            self.load()

    # -- identity ------------------------------------------------------------------------------------------------
    @property
    def can_decode(self) -> bool:
        return self.files.format == "meta"

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def identity(self) -> dict:
        if self.files.format == "meta":
            files = {f.name: sha256_file(f) for f in [self.files.config, *self.files.weights]}
            sha = files[self.files.weights[0].name]
        else:
            files = {self.files.config.name: sha256_file(self.files.config)}
            sha = tensors_sha256(_hf_vq_tensors(self.files.weights))
            files["model.vqmodel.* tensors"] = sha
        ident = {"kind": self.kind, "format": self.files.format, "path": str(self.files.config.parent),
                 "sha256": sha, "files": files, "resolution": self.cfg.resolution, "codebook": self.cfg.n_embed,
                 "decode": self.can_decode, "precision": self.precision, "stand_in": self.stand_in}
        return stand_in_note(ident, "Chameleon VQGAN", self.marked_stand_in)

    # -- weights -------------------------------------------------------------------------------------------------
    def load(self) -> "VQGANTokenizer":
        if self.model is not None:
            return self
        meta = self.files.format == "meta"
        if meta:
            sd = strip_prefixes(load_lightning_state_dict(self.files.weights[0]),
                                keep=("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize."))
        else:
            sd = _hf_vq_tensors(self.files.weights)
        sd = fold_weight_norm(sd)
        model = VQModel(self.cfg, with_decoder=meta)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        where = f"{self.files.weights[0]}" if meta else f"{self.files.config.parent} ({HF_PREFIX}*)"
        check_state_dict(expected, sd, f"VQGAN checkpoint {where}")
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        self.model = model.eval().to(self.device)
        return self

    # -- encode --------------------------------------------------------------------------------------------------
    def preprocess(self, img: Image.Image) -> np.ndarray:
        """PIL -> uint8 [R, R, 3], ready for ``encode_prepared`` (cheap: runs in the pipeline's workers)."""
        return center_square(img, self.cfg.resolution)

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images (any mode/size) -> LongTensor [B, 1024] of codes 0..n_embed-1."""
        return self.encode_prepared([self.preprocess(i) for i in images])

    def encode_prepared(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """uint8 [R, R, 3] arrays -> LongTensor [B, 1024], in fixed-shape batches of ``batch_size``."""
        self.load()
        n, bs = len(arrays), self.batch_size
        if n == 0:
            return torch.zeros(0, self.layout.image_tokens, dtype=torch.long)
        blank = np.full((self.cfg.resolution, self.cfg.resolution, 3), 255, np.uint8)
        # bf16: channels_last too (the layout tensor cores and oneDNN's bf16 kernels want); fp32/tf32 keep NCHW
        layout = torch.channels_last if self.precision == "bf16" else torch.contiguous_format
        if getattr(self, "_layout", torch.contiguous_format) != layout:
            self.model.to(memory_format=layout)
            self._layout = layout
        out = []
        with precision_context(self.precision, self.device):
            for i in range(0, n, bs):
                chunk = list(arrays[i:i + bs])
                real = len(chunk)
                chunk += [blank] * (bs - real)  # same shape every time: codes independent of batch company
                pixels = pixels_to_tensor(chunk).to(self.device).contiguous(memory_format=layout)
                out.append(self.model.encode_codes(pixels)[:real].cpu())
        return torch.cat(out).long()

    # -- decode --------------------------------------------------------------------------------------------------
    def decode(self, codes) -> list[Image.Image]:
        """[B, 1024] (or [1024]) codes -> list of RGB images at the model's resolution (512x512 for Chameleon)."""
        if not self.can_decode:
            raise NotImplementedError(
                f"{self.files.config.parent} is an HF Chameleon/Anole dir: transformers' conversion keeps only the VQ "
                f"encoder, so it cannot decode. Point at Meta's tokenizer/vqgan.yaml + vqgan.ckpt (Anole ships them) "
                f"to decode images.")
        self.load()
        c = torch.as_tensor(codes, dtype=torch.long).reshape(-1, self.layout.image_tokens)
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= self.cfg.n_embed):
            raise ValueError(f"image codes must be in 0..{self.cfg.n_embed - 1}, got {int(c.min())}..{int(c.max())}")
        imgs = []
        for i in range(0, len(c), self.batch_size):
            imgs += tensor_to_images(self.model.decode_codes(c[i:i + self.batch_size].to(self.device)))
        return imgs


def load_image_tokenizer(path, layout: Layout = AR_OMNI_V0_1, stand_in: bool = False, *, checkpoint=None,
                         device=None, batch_size: int = 8, lazy: bool = False,
                         precision: str = "fp32") -> VQGANTokenizer:
    """Chameleon VQGAN from Meta's ``vqgan.yaml`` + ``vqgan.ckpt`` (a file or the dir holding them, or the release's
    root with ``tokenizer/``) or from an HF Chameleon/Anole model dir (encode only)."""
    return VQGANTokenizer(path, layout, stand_in, checkpoint=checkpoint, device=device, batch_size=batch_size,
                          lazy=lazy, precision=precision)
