"""WavTokenizer (speech <-> one codebook of 4096 codes at 40/s), loaded from its official yaml + Lightning ckpt.

No maintained package exists, so the model is implemented here from the facts of jishengpeng/WavTokenizer
(reference §6); attribute names mirror the checkpoint's keys so its ``state_dict`` loads without renaming:

- ``feature_extractor.encodec.encoder``: encodec's SEANet encoder (weight-normalised convs, reflect padding,
  ELU, residual blocks with a 1x1 shortcut, a 2-layer LSTM with skip, strides = reversed ``dowmsamples``).
  The official code fixes its widths (n_filters 32, dimension 512) in code, not in the yaml: they are read from
  the checkpoint's tensor shapes here, so small models load too.
- ``feature_extractor.encodec.quantizer.vq.layers.0._codebook.embed``: one codebook, nearest neighbour by L2.
- ``backbone``: Vocos backbone (embed conv, ``pos_net`` = 2 ResNet blocks, self-attention, 2 ResNet blocks,
  GroupNorm; AdaLayerNorm conditioned on bandwidth id 0; ConvNeXt blocks; final LayerNorm).
- ``head``: ISTFT head (linear to n_fft+2 = log-magnitude and phase, inverse STFT with "same" padding).

Keys outside ``feature_extractor.``/``backbone.``/``head.`` (losses, discriminators) are ignored, as the official
``from_pretrained0802`` does; so is ``feature_extractor.encodec.decoder.`` (encodec's SEANet decoder, trained along
but never used: WavTokenizer decodes with the Vocos backbone and head). Legacy weight-norm pairs
(``weight_g``/``weight_v``) are folded into the weights, never dropped. Everything else must match exactly.

Audio in: any rate, any channels -> mean over channels, resampled to 24 kHz with torchaudio's sinc resampler
(what the official ``convert_audio`` does). Clips are encoded in batches of similar length, and a clip's codes are
bit for bit those it gets alone (so independent of its batch company and the batch size) on CPU in fp32. Two things
would break that, and are handled: padding (the encoder's convolutions reflect-pad each input from its last samples,
so every convolution pads each clip from its own samples; ELU and residual sums are pointwise, the LSTM is
unidirectional so causal, weight norm is folded and there is no normalisation layer) and rounding from kernels torch
chooses per input shape (each conv is routed to the kernel the clip gets alone; the LSTM and the nearest-code search
run per clip): see SeanetEncoder, PaddedConv1d and docs/tokenizers.md. A clip of d seconds gives ceil(d*40)
codes; decoding n codes gives n*600 samples at 24 kHz.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model.checkpoint import (CheckpointError, check_state_dict, fold_weight_norm, load_lightning_state_dict,
                                     check_precision, pick_device, precision_context, sha256_file, stand_in_note,
                                     strip_prefixes)

SAMPLE_RATE = 24000
CONFIG_40HZ = "wavtokenizer_smalldata_frame40_3s_nq1_code4096_dim512_kmeans200_attn.yaml"
CKPT_40HZ = "WavTokenizer_small_600_24k_4096.ckpt"
ENC = "feature_extractor.encodec.encoder."
CODEBOOK = "feature_extractor.encodec.quantizer.vq.layers.0._codebook."
STAND_IN_MARK = "aromni_stand_in"


# ---------------------------------------------------------------------------------------------------------------
# config
@dataclass
class WavTokenizerConfig:
    downsamples: list[int]           # yaml feature_extractor.init_args.dowmsamples (the official spelling)
    vq_bins: int
    num_quantizers: int
    backbone_in: int
    dim: int
    intermediate_dim: int
    num_layers: int
    adanorm_num_embeddings: int | None
    layer_scale_init_value: float | None
    n_fft: int
    hop_length: int
    padding: str
    sample_rate: int = SAMPLE_RATE

    @property
    def hop(self) -> int:
        return math.prod(self.downsamples)

    @classmethod
    def from_yaml(cls, raw: dict, where: str = "config") -> "WavTokenizerConfig":
        """The training yaml (``model.init_args.{feature_extractor,backbone,head}``) or the top-level layout of
        ``configs/pretrained.yaml``."""
        root = ((raw.get("model") or {}).get("init_args")) or raw
        try:
            fe, bb, hd = (root[k]["init_args"] for k in ("feature_extractor", "backbone", "head"))
        except (KeyError, TypeError):
            raise CheckpointError(f"{where}: expected feature_extractor/backbone/head with init_args "
                                  f"(under model.init_args, as in the official yaml)") from None
        for part, name in ((root["feature_extractor"], "EncodecFeatures"), (root["backbone"], "VocosBackbone"),
                           (root["head"], "ISTFTHead")):
            if not str(part.get("class_path", "")).endswith(name):
                raise CheckpointError(f"{where}: {part.get('class_path')!r} is not supported (aromni implements "
                                      f"EncodecFeatures + VocosBackbone + ISTFTHead, the WavTokenizer release)")
        return cls(downsamples=list(fe.get("dowmsamples", [6, 5, 5, 4])), vq_bins=fe.get("vq_bins", 4096),
                   num_quantizers=fe.get("num_quantizers", 1), backbone_in=bb["input_channels"], dim=bb["dim"],
                   intermediate_dim=bb["intermediate_dim"], num_layers=bb["num_layers"],
                   adanorm_num_embeddings=bb.get("adanorm_num_embeddings"),
                   layer_scale_init_value=bb.get("layer_scale_init_value"), n_fft=hd["n_fft"],
                   hop_length=hd["hop_length"], padding=hd.get("padding", "same"),
                   sample_rate=(raw.get("model") or {}).get("init_args", {}).get("sample_rate", SAMPLE_RATE))

    def to_yaml(self, n_filters: int = 32, dimension: int = 512) -> dict:
        """The official training-yaml layout (data/trainer sections as in the release; paths are placeholders)."""
        return {
            "seed_everything": 3407,
            "data": {"class_path": "decoder.dataset.VocosDataModule", "init_args": {
                "train_params": {"filelist_path": "./data/train/libritts_train", "sampling_rate": self.sample_rate,
                                 "num_samples": 72000, "batch_size": 40, "num_workers": 8},
                "val_params": {"filelist_path": "./data/infer/librttts_val", "sampling_rate": self.sample_rate,
                               "num_samples": 72000, "batch_size": 5, "num_workers": 8}}},
            "model": {"class_path": "decoder.experiment.WavTokenizer", "init_args": {
                "sample_rate": self.sample_rate, "initial_learning_rate": 2e-4, "mel_loss_coeff": 45,
                "mrd_loss_coeff": 1.0, "num_warmup_steps": 0, "pretrain_mel_steps": 0, "evaluate_utmos": True,
                "evaluate_pesq": True, "evaluate_periodicty": True, "resume": False,
                "feature_extractor": {"class_path": "decoder.feature_extractors.EncodecFeatures", "init_args": {
                    "encodec_model": "encodec_24khz", "bandwidths": [6.6, 6.6, 6.6, 6.6], "train_codebooks": True,
                    "num_quantizers": self.num_quantizers, "dowmsamples": list(self.downsamples),
                    "vq_bins": self.vq_bins, "vq_kmeans": 200}},
                "backbone": {"class_path": "decoder.models.VocosBackbone", "init_args": {
                    "input_channels": self.backbone_in, "dim": self.dim, "intermediate_dim": self.intermediate_dim,
                    "num_layers": self.num_layers, "adanorm_num_embeddings": self.adanorm_num_embeddings}},
                "head": {"class_path": "decoder.heads.ISTFTHead", "init_args": {
                    "dim": self.dim, "n_fft": self.n_fft, "hop_length": self.hop_length, "padding": self.padding}}}},
            "trainer": {"max_steps": 20000000, "limit_val_batches": 200, "accelerator": "gpu", "strategy": "ddp",
                        "log_every_n_steps": 1000},
        }


# ---------------------------------------------------------------------------------------------------------------
# SEANet encoder (encodec). Each conv is nested twice in the checkpoint (SConv1d.conv -> NormConv1d.conv -> Conv1d).
class _Nest(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv


class PaddedConv1d(nn.Module):
    """Conv1d with encodec's non-causal padding: reflect-pad (k-1)*d-(s-1) split left-heavy, plus right padding
    so the last window is full (ceil(T/s) frames out).

    ``forward(x, lengths)`` runs a batch of clips of different lengths ([B, C, T_max], clip i valid up to
    ``lengths[i]``) and gives each clip exactly (bit for bit) the frames it gets alone:

    - padding: each clip is reflect-padded from ITS OWN last samples (what it gets alone), then zero-extended to
      one width; the frames of clip i below its own output length see only its samples and its own padding, and
      the frames past it are junk that the next layer never reads;
    - kernel: torch picks a CPU convolution backend per call from the input's shape (``_select_conv_backend``:
      oneDNN for a large input or a batch, its own im2col+GEMM "Slow2d" for a small single input or, single-threaded,
      for every unbatched 1x1 conv), and the two round differently. So each clip is routed to the backend torch
      picks for it ALONE: the clips whose alone call is oneDNN are convolved together by oneDNN directly (its
      direct and 1x1 kernels give every output the same sum in the same order whatever the batch size, position
      or width: tested), the others alone, by the very call they get alone."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = _Nest(nn.Conv1d(cin, cout, k, stride, dilation=dilation))

    def _pads(self, length: int) -> tuple[int, int]:
        conv = self.conv.conv
        k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        total = (k - 1) * d - (s - 1)
        frames = (length - k + total) / s + 1
        extra = (math.ceil(frames) - 1) * s + (k - total) - length
        right = total // 2
        return total - right, right + extra

    def out_length(self, length: int) -> int:
        conv = self.conv.conv
        left, right = self._pads(length)
        return (length + left + right - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1

    def forward(self, x, lengths: list[int] | None = None):
        if lengths is None or x.shape[0] == 1:                  # one clip: torch's own call (the reference)
            n = x.shape[-1] if lengths is None else lengths[0]
            return self.conv.conv(_reflect_pad(x[..., :n], *self._pads(n)))
        pads = [self._pads(n) for n in lengths]
        return self._routed(self._pad_each(x, lengths, pads), [n + sum(p) for n, p in zip(lengths, pads)])

    def _pad_each(self, x, lengths: list[int], pads: list[tuple[int, int]]):
        """[B, C, T_max] -> [B, C, W]: clip i reflect-padded from its own valid samples, zeros after."""
        left = pads[0][0]                                    # the left pad does not depend on the length
        if not any(max(p) for p in pads):                    # no padding (1x1 convs): the batch as it is
            return x
        if any(n <= max(p) for n, p in zip(lengths, pads)):  # a clip shorter than its padding: the rare slow path
            padded = [_reflect_pad(x[i:i + 1, :, :n], *p) for i, (n, p) in enumerate(zip(lengths, pads))]
            width = max(q.shape[-1] for q in padded)
            return torch.cat([F.pad(q, (0, width - q.shape[-1])) for q in padded])
        # one copy of the batch into a zeroed buffer (as F.pad does for a single clip), then each clip's edges
        # written from its own samples: left x[l..1], right x[n-2..n-1-r] (what reflect padding gives it alone)
        width = left + max(n + r for n, (_, r) in zip(lengths, pads))
        y = x.new_zeros(x.shape[0], x.shape[1], width)
        y[..., left:left + x.shape[-1]] = x[..., : width - left]
        if left:
            y[..., :left] = x[..., 1:left + 1].flip(-1)
        for i, (n, (_, r)) in enumerate(zip(lengths, pads)):
            if r:
                y[i, :, left + n:left + n + r] = x[i, :, n - 1 - r:n - 1].flip(-1)
        return y

    def _routed(self, y, widths: list[int]):
        """Convolve the padded batch ``y`` (clip i valid up to ``widths[i]``), each clip with its alone backend."""
        conv = self.conv.conv
        if not _exact_batching(y):
            return conv(y)
        onednn = [i for i, w in enumerate(widths) if _alone_backend(conv, y, w) == _ONEDNN]
        if len(onednn) == len(widths):
            return _onednn_conv(conv, y)
        out = y.new_zeros(y.shape[0], conv.out_channels, (y.shape[-1] - conv.dilation[0] * (conv.kernel_size[0] - 1)
                                                            - 1) // conv.stride[0] + 1)
        if onednn:
            rows = torch.tensor(onednn, device=y.device)
            out[rows] = _onednn_conv(conv, y[rows])
        for i in sorted(set(range(len(widths))) - set(onednn)):
            alone = conv(y[i:i + 1, :, :widths[i]].contiguous())     # the very input (and layout) it gets alone
            out[i:i + 1, :, :alone.shape[-1]] = alone
        return out


_ONEDNN = getattr(getattr(torch._C, "_ConvBackend", None), "Mkldnn", None)


def _exact_batching(x) -> bool:
    """Per-clip kernel routing applies to float32 on CPU without autocast (the fp32/tf32 codes); elsewhere (CUDA,
    bf16) the batch runs as one call and its codes may differ from alone codes at near-ties (docs/tokenizers.md)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and _ONEDNN is not None and hasattr(torch._C, "_select_conv_backend") and torch.backends.mkldnn.enabled
            and torch.backends.mkldnn.is_available())


def _alone_backend(conv: nn.Conv1d, like, width: int):
    """The backend torch chooses for this conv on one clip of ``width`` padded samples (what ``forward`` without a
    batch runs). torch decides from shapes, the thread count and flags only: an uninitialised tensor suffices."""
    return torch._C._select_conv_backend(like.new_empty(1, like.shape[1], width), conv.weight, conv.bias,
                                         list(conv.stride), [0], list(conv.dilation), False, [0], conv.groups, None)


def _onednn_conv(conv: nn.Conv1d, x):
    """The oneDNN convolution torch runs when it picks oneDNN itself (``at::mkldnn_convolution``), here called
    for a batch whatever torch's shape heuristics would pick for it."""
    return torch.ops.aten.mkldnn_convolution(x.contiguous(), conv.weight, conv.bias, [0], list(conv.stride),
                                             list(conv.dilation), conv.groups)


def _reflect_pad(x, left: int, right: int):
    """Reflect padding that also works when the input is shorter than the padding (zero-extends first)."""
    length = x.shape[-1]
    grow = max(left, right) - length + 1 if length <= max(left, right) else 0
    if grow:
        x = F.pad(x, (0, grow))
    y = F.pad(x, (left, right), mode="reflect")
    return y[..., : y.shape[-1] - grow] if grow else y


class SeanetResBlock(nn.Module):
    def __init__(self, dim: int, dilation: int, kernel: int = 3, compress: int = 2):
        super().__init__()
        hidden = dim // compress
        self.block = nn.Sequential(ExactELU(), PaddedConv1d(dim, hidden, kernel, dilation=dilation),
                                   ExactELU(), PaddedConv1d(hidden, dim, 1))
        self.shortcut = PaddedConv1d(dim, dim, 1)

    def forward(self, x, lengths=None):
        h = x
        for layer in self.block:
            h = layer(h, lengths) if isinstance(layer, PaddedConv1d) else layer(h)
        return self.shortcut(x, lengths) + h


class SkipLSTM(nn.Module):
    """Unidirectional, so causal: a clip's valid steps never see the zero tail of a shorter clip. In a batch of
    clips it still runs clip by clip on each clip's valid steps: oneDNN's LSTM runs one sequence with other GEMM
    kernels than two or more (batch 1 vs 16 differ in the last bits; 3 vs 16 agree), and bit-equal embeddings are
    what make batched codes equal the alone codes. It is a small share of the encoder's time (40 steps/s)."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers)

    def _run(self, x):                       # [B, C, T]
        y = x.permute(2, 0, 1)               # [T, B, C]
        out, _ = self.lstm(y)
        return (out + y).permute(1, 2, 0)

    def forward(self, x, lengths=None):
        if lengths is None or x.shape[0] == 1:
            return self._run(x)
        out = x.clone()
        for i, n in enumerate(lengths):
            out[i:i + 1, :, :n] = self._run(x[i:i + 1, :, :n].contiguous())   # the very input it gets alone
        return out


class ExactELU(nn.Module):
    """ELU computed in float64 and rounded to the input dtype. torch's float32 ELU runs a vectorised exp on most
    elements and a scalar one on each chunk's tail, which round differently (5 % of negative inputs), and where the
    tail falls depends on the tensor's size: so the same sample could get a different value batched than alone. In
    float64 the two paths still differ in the last bit for ~2 % of inputs, but float32 keeps 29 bits fewer: they
    round to the same float32 unless the exact value lies within ~2^-52 of a float32 rounding midpoint (measured:
    0 of 5e7 negative inputs differ). (No parameters: the checkpoint keys are unchanged.)"""

    def forward(self, x):
        return F.elu(x.double()).to(x.dtype) if x.dtype == torch.float32 else F.elu(x)


class SeanetEncoder(nn.Module):
    """encodec's SEANet encoder. Length-dependent layers: only the reflect-padded convolutions (their right edge
    reflects the clip's last samples). ELU and residual sums are pointwise; the LSTM is causal; there is no
    normalisation layer at inference (weight norm is folded into the weights). So no padding leaks once every conv
    pads each clip from its own valid samples. For the last bits to match too, every layer gives each clip of a batch
    the very arithmetic it gets alone: convs are routed to the clip's alone kernel (PaddedConv1d), the LSTM runs per
    clip (SkipLSTM), ELU is rounded from float64 (ExactELU) and residual sums are single IEEE additions."""

    def __init__(self, n_filters: int, dimension: int, downsamples: list[int], lstm_layers: int):
        super().__init__()
        layers: list[nn.Module] = [PaddedConv1d(1, n_filters, 7)]
        mult = 1
        for ratio in reversed(downsamples):   # the yaml lists decoder order; the encoder runs it reversed
            c = mult * n_filters
            layers += [SeanetResBlock(c, 1), ExactELU(), PaddedConv1d(c, 2 * c, 2 * ratio, stride=ratio)]
            mult *= 2
        layers += [SkipLSTM(mult * n_filters, lstm_layers), ExactELU(), PaddedConv1d(mult * n_filters, dimension, 7)]
        self.model = nn.Sequential(*layers)

    def forward(self, x, lengths: list[int] | None = None):
        """[B, 1, T] -> [B, dimension, ceil(T/hop)]; with ``lengths`` clip i is valid up to lengths[i] samples and
        its first ceil(lengths[i]/hop) frames are bit for bit what it gives alone.

        On CPU with one torch thread the layers before the LSTM (24 kHz down to 40 Hz: most of the work) run clip by
        clip and only the rest as a batch: there a batch cannot add parallelism, only padding and a working set that
        no longer fits the caches (16 clips of 4 s at 32 channels: 200 MB), so it was slower than one clip at a time.
        Either way every clip gets exactly its alone result, so the schedule never changes a code."""
        layers = list(self.model)
        if lengths is not None and x.shape[0] > 1 and x.device.type == "cpu" and torch.get_num_threads() == 1:
            split = next((i for i, m in enumerate(layers) if isinstance(m, SkipLSTM)), len(layers) - 1)
            clips = [self._run(layers[:split], x[i:i + 1, :, :n].contiguous()) for i, n in enumerate(lengths)]
            lengths = [int(c.shape[-1]) for c in clips]
            x = torch.cat([F.pad(c, (0, max(lengths) - c.shape[-1])) for c in clips])
            layers = layers[split:]
        return self._run(layers, x, lengths)

    @staticmethod
    def _run(layers, x, lengths: list[int] | None = None):
        for layer in layers:
            if isinstance(layer, PaddedConv1d):
                x = layer(x, lengths)
                lengths = None if lengths is None else [layer.out_length(n) for n in lengths]
            elif isinstance(layer, (SeanetResBlock, SkipLSTM)):
                x = layer(x, lengths)
            else:
                x = layer(x)
        return x


class Codebook(nn.Module):
    """encodec's EuclideanCodebook buffers (all four are in the checkpoint; only ``embed`` is used to encode)."""

    def __init__(self, bins: int, dim: int):
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(bins))
        self.register_buffer("embed", torch.zeros(bins, dim))
        self.register_buffer("embed_avg", torch.zeros(bins, dim))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N] nearest code (squared L2; ties -> lowest index)."""
        e = self.embed
        d = x.pow(2).sum(1, keepdim=True) - 2 * x @ e.t() + e.pow(2).sum(1)
        return d.argmin(1)


# ---------------------------------------------------------------------------------------------------------------
# Vocos backbone + ISTFT head
class AdaLayerNorm(nn.Module):
    def __init__(self, n: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.dim = eps, dim
        self.scale, self.shift = nn.Embedding(n, dim), nn.Embedding(n, dim)

    def forward(self, x, cond: torch.Tensor):
        return F.layer_norm(x, (self.dim,), eps=self.eps) * self.scale(cond) + self.shift(cond)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, inter: int, adanorm: int | None):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = AdaLayerNorm(adanorm, dim) if adanorm else nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, inter), nn.Linear(inter, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x, cond):              # [B, C, T]
        y = self.dwconv(x).transpose(1, 2)
        y = self.norm(y, cond) if isinstance(self.norm, AdaLayerNorm) else self.norm(y)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.transpose(1, 2)


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock1d(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(c), nn.Conv1d(c, c, 3, padding=1)
        self.norm2, self.conv2 = _gn(c), nn.Conv1d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class AttnBlock1d(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = _gn(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv1d(c, c, 1) for _ in range(4))

    def forward(self, x):                    # [B, C, T]
        y = self.norm(x)
        q, k, v = self.q(y), self.k(y), self.v(y)
        att = torch.softmax(torch.bmm(q.transpose(1, 2), k) * x.shape[1] ** -0.5, dim=2)
        return x + self.proj_out(torch.bmm(v, att.transpose(1, 2)))


class VocosBackbone(nn.Module):
    def __init__(self, cfg: WavTokenizerConfig):
        super().__init__()
        d = cfg.dim
        self.embed = nn.Conv1d(cfg.backbone_in, d, 7, padding=3)
        a = cfg.adanorm_num_embeddings
        self.norm = AdaLayerNorm(a, d) if a else nn.LayerNorm(d, eps=1e-6)
        self.convnext = nn.ModuleList(ConvNeXtBlock(d, cfg.intermediate_dim, a) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(d, eps=1e-6)
        self.pos_net = nn.Sequential(ResnetBlock1d(d), ResnetBlock1d(d), AttnBlock1d(d), ResnetBlock1d(d),
                                     ResnetBlock1d(d), _gn(d))

    def forward(self, x, cond):              # [B, C_in, T] -> [B, T, dim]
        x = self.pos_net(self.embed(x)).transpose(1, 2)
        x = self.norm(x, cond) if isinstance(self.norm, AdaLayerNorm) else self.norm(x)
        x = x.transpose(1, 2)
        for block in self.convnext:
            x = block(x, cond)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFT(nn.Module):
    def __init__(self, n_fft: int, hop: int, padding: str):
        super().__init__()
        self.n_fft, self.hop, self.padding = n_fft, hop, padding
        self.register_buffer("window", torch.hann_window(n_fft))

    def forward(self, spec):                 # complex [B, n_fft//2+1, T] -> [B, samples]
        if self.padding == "center":
            return torch.istft(spec, self.n_fft, self.hop, self.n_fft, self.window, center=True)
        pad = (self.n_fft - self.hop) // 2
        frames = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        t = spec.shape[-1]
        size = (t - 1) * self.hop + self.n_fft
        y = F.fold(frames, (1, size), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0, pad:-pad]
        env = F.fold(self.window.square().expand(1, t, -1).transpose(1, 2), (1, size), (1, self.n_fft),
                     stride=(1, self.hop)).squeeze()[pad:-pad]
        return y / env


class ISTFTHead(nn.Module):
    def __init__(self, dim: int, n_fft: int, hop: int, padding: str):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop, padding)

    def forward(self, x):                    # [B, T, dim]
        mag, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)
        mag = torch.exp(mag).clip(max=1e2)
        return self.istft(mag * (torch.cos(phase) + 1j * torch.sin(phase)))


# ---------------------------------------------------------------------------------------------------------------
class _EncodecParts(nn.Module):
    def __init__(self, enc: SeanetEncoder, bins: int, dim: int):
        super().__init__()
        self.encoder = enc
        self.quantizer = nn.Module()
        self.quantizer.vq = nn.Module()
        self.quantizer.vq.layers = nn.ModuleList([nn.Module()])
        self.quantizer.vq.layers[0]._codebook = Codebook(bins, dim)


class WavTokenizerModel(nn.Module):
    def __init__(self, cfg: WavTokenizerConfig, n_filters: int, dimension: int, lstm_layers: int):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = nn.Module()
        self.feature_extractor.encodec = _EncodecParts(SeanetEncoder(n_filters, dimension, cfg.downsamples,
                                                                     lstm_layers), cfg.vq_bins, dimension)
        self.backbone = VocosBackbone(cfg)
        self.head = ISTFTHead(cfg.dim, cfg.n_fft, cfg.hop_length, cfg.padding)

    @property
    def codebook(self) -> Codebook:
        return self.feature_extractor.encodec.quantizer.vq.layers[0]._codebook

    @torch.inference_mode()
    def encode_wave(self, wave: torch.Tensor) -> torch.Tensor:
        """[T] mono 24 kHz -> [ceil(T/hop)] codes (one clip alone: the reference the batched path must equal)."""
        emb = self.feature_extractor.encodec.encoder(wave.reshape(1, 1, -1))   # [1, D, F]
        with torch.autocast(emb.device.type, enabled=False):
            return self.codebook.codes(emb[0].t().contiguous().float())   # as encode_waves gives it

    @torch.inference_mode()
    def encode_waves(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """Several [T_i] clips in one forward pass -> per clip [ceil(T_i/hop)] codes, equal to ``encode_wave``
        of each clip alone (see SeanetEncoder)."""
        lengths = [int(w.shape[-1]) for w in waves]
        width = max(lengths)
        x = torch.stack([F.pad(w.reshape(-1), (0, width - n)) for w, n in zip(waves, lengths)]).unsqueeze(1)
        emb = self.feature_extractor.encodec.encoder(x, lengths)                # [B, D, F_max]
        frames = [math.ceil(n / self.cfg.hop) for n in lengths]
        with torch.autocast(emb.device.type, enabled=False):                   # nearest code in fp32 always
            # per clip, on its valid frames only: the distance matmul's kernel depends on its row count (a few
            # rows round differently from many), so each clip gets the [frames, D] product it gets alone
            return [self.codebook.codes(emb[i, :, :f].t().contiguous().float()) for i, f in enumerate(frames)]

    @torch.inference_mode()
    def decode_codes(self, codes: torch.Tensor, bandwidth_id: int = 0) -> torch.Tensor:
        """[F] codes -> [F*hop] waveform."""
        feats = F.embedding(codes.reshape(1, -1), self.codebook.embed).transpose(1, 2)   # [1, D, F]
        cond = torch.tensor([bandwidth_id], device=feats.device)
        return self.head(self.backbone(feats, cond))[0]


def widths_from_state_dict(sd: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(n_filters, dimension, lstm layers) of the SEANet encoder, read from tensor shapes: the official code sets
    them in Python (32, 512, 2), not in the yaml."""
    first = sd.get(ENC + "model.0.conv.conv.weight")
    if first is None:
        raise CheckpointError(f"no {ENC}model.0.conv.conv.weight(_g/_v): not a WavTokenizer checkpoint")
    lstm = [int(m.group(1)) for k in sd if (m := re.match(re.escape(ENC) + r"model\.\d+\.lstm\.weight_ih_l(\d+)$", k))]
    last = max((int(m.group(1)) for k in sd if (m := re.match(re.escape(ENC) + r"model\.(\d+)\.conv\.conv\.weight$", k))),
               default=0)
    return int(first.shape[0]), int(sd[ENC + f"model.{last}.conv.conv.weight"].shape[0]), (max(lstm) + 1 if lstm else 0)


def to_mono(wave, sr: int, target: int = SAMPLE_RATE) -> torch.Tensor:
    """Waveform (numpy/torch, [T], [T, C] or [C, T]) -> mono float32 [T] at ``target`` Hz. Channels: the smaller
    axis when 2-D (a clip has more samples than channels); mean over channels; torchaudio's sinc resampler."""
    import torchaudio.functional as AF

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if x.ndim == 2:
        x = x.mean(dim=1 if x.shape[1] < x.shape[0] else 0)
    elif x.ndim != 1:
        raise ValueError(f"audio must be [T] or [T, C]/[C, T], got shape {tuple(x.shape)}")
    if sr <= 0:
        raise ValueError(f"bad sample rate {sr}")
    if sr != target:
        x = AF.resample(x, int(sr), target)
    return x.contiguous()


# ---------------------------------------------------------------------------------------------------------------
def find_wavtokenizer_files(path, checkpoint=None) -> tuple[Path, Path]:
    p = Path(path)
    if checkpoint is not None:
        return p, Path(checkpoint)
    if p.is_file():
        if p.suffix == ".ckpt":
            ymls = sorted(p.parent.glob("*.yaml"))
            if len(ymls) != 1:
                raise FileNotFoundError(f"{p}: need exactly one .yaml beside it (found {len(ymls)}); pass both paths")
            return ymls[0], p
        ckpts = sorted(p.parent.glob("*.ckpt"))
        if len(ckpts) != 1:
            raise FileNotFoundError(f"{p}: need exactly one .ckpt beside it (found {len(ckpts)}); pass both paths")
        return p, ckpts[0]
    if not p.is_dir():
        raise FileNotFoundError(f"speech tokenizer not found: {p}")
    ymls = [p / CONFIG_40HZ] if (p / CONFIG_40HZ).is_file() else sorted(p.glob("*.yaml"))
    ckpts = [p / CKPT_40HZ] if (p / CKPT_40HZ).is_file() else sorted(p.glob("*.ckpt"))
    if len(ymls) != 1 or len(ckpts) != 1:
        raise FileNotFoundError(f"{p}: expected one WavTokenizer .yaml and one .ckpt (e.g. {CONFIG_40HZ} + "
                                f"{CKPT_40HZ}), found {[y.name for y in ymls]} / {[c.name for c in ckpts]}")
    return ymls[0], ckpts[0]


class WavTokenizerTokenizer:
    """Encode audio to WavTokenizer codes (40/s for the 40 Hz release) and decode codes to 24 kHz audio.

    ``lazy=True`` reads only the yaml (the build's driver needs identity and rate, not weights); ``load()`` loads the
    checkpoint and raises CheckpointError listing missing/unexpected/misshapen keys.
    """

    kind = "wavtokenizer"

    def __init__(self, path, layout: Layout = AR_OMNI_V0_1, stand_in: bool = False, *, checkpoint=None,
                 device=None, batch_size: int = 8, lazy: bool = False, precision: str = "fp32"):
        import yaml

        self.config_path, self.ckpt_path = find_wavtokenizer_files(path, checkpoint)
        raw = yaml.safe_load(self.config_path.read_text()) or {}
        self.cfg = WavTokenizerConfig.from_yaml(raw, str(self.config_path))
        self.layout = layout
        self.marked_stand_in = bool(raw.get(STAND_IN_MARK))
        self.stand_in = stand_in or self.marked_stand_in
        self.device = pick_device(device)
        self.batch_size = max(1, int(batch_size))
        self.precision = check_precision(precision)
        self.sample_rate = self.cfg.sample_rate
        self.model: WavTokenizerModel | None = None
        if self.cfg.vq_bins > layout.speech_codebook:
            raise CheckpointError(f"{self.config_path}: {self.cfg.vq_bins} codes do not fit the layout's "
                                  f"{layout.speech_codebook} speech ids")
        if self.cfg.num_quantizers != 1:
            raise CheckpointError(f"{self.config_path}: num_quantizers {self.cfg.num_quantizers}; AR-Omni uses the "
                                  f"single-codebook WavTokenizer (nq1)")
        if self.cfg.hop != self.cfg.hop_length:
            raise CheckpointError(f"{self.config_path}: encoder hop {self.cfg.hop} != head hop {self.cfg.hop_length}")
        if not lazy:
            self.load()

    @property
    def codes_per_second(self) -> float:
        return self.sample_rate / self.cfg.hop

    @property
    def identity(self) -> dict:
        files = {self.config_path.name: sha256_file(self.config_path), self.ckpt_path.name: sha256_file(self.ckpt_path)}
        ident = {"kind": self.kind, "path": str(self.ckpt_path.parent), "sha256": files[self.ckpt_path.name],
                 "files": files, "sample_rate": self.sample_rate, "codes_per_second": self.codes_per_second,
                 "codebook": self.cfg.vq_bins, "precision": self.precision, "stand_in": self.stand_in}
        return stand_in_note(ident, "WavTokenizer", self.marked_stand_in)

    def load(self) -> "WavTokenizerTokenizer":
        if self.model is not None:
            return self
        sd = strip_prefixes(load_lightning_state_dict(self.ckpt_path),
                            keep=("feature_extractor.", "backbone.", "head."),
                            ignore=("feature_extractor.encodec.decoder.",))
        sd = fold_weight_norm(sd)
        n_filters, dimension, lstm = widths_from_state_dict(sd)
        if dimension != self.cfg.backbone_in:
            raise CheckpointError(f"{self.ckpt_path}: encoder dimension {dimension} != backbone input_channels "
                                  f"{self.cfg.backbone_in} in {self.config_path.name}")
        model = WavTokenizerModel(self.cfg, n_filters, dimension, lstm)
        check_state_dict({k: v.shape for k, v in model.state_dict().items()}, sd,
                         f"WavTokenizer checkpoint {self.ckpt_path}")
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        self.model = model.eval().to(self.device)
        return self

    def preprocess(self, audio: tuple) -> np.ndarray:
        """(waveform, rate) -> mono float32 at the model's rate (cheap: runs in the pipeline's workers)."""
        wave, sr = audio
        return to_mono(wave, sr, self.sample_rate).numpy()

    def encode(self, audios: list[tuple]) -> list[torch.Tensor]:
        """[(waveform, rate), ...] -> one LongTensor of codes per clip (ceil(seconds*40) of them)."""
        return self.encode_prepared([self.preprocess(a) for a in audios])

    @property
    def batch_invariant(self) -> bool:
        """Whether a clip's codes are independent of the clips it is batched with (the actor pools read this: only
        then may they merge several units' clips into one batch by arrival time). True for fp32 on CPU (tf32 is fp32
        there): every layer gives each clip its alone result bit for bit (SeanetEncoder). On CUDA, and in bf16, the
        batch runs as one call whose kernels depend on its shape: codes equal alone codes but for rare near-ties."""
        return self.device.type == "cpu" and self.precision in ("fp32", "tf32")

    def encode_prepared(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Mono 24 kHz clips -> codes, in forward passes of up to ``batch_size`` clips of similar length (sorted by
        length, so little is padded). Each clip is padded from its own samples at every convolution (see
        SeanetEncoder), so its codes are those it gets alone, whatever it is batched with."""
        self.load()
        if any(len(w) == 0 for w in waves):
            raise ValueError("empty audio")
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        out: list[torch.Tensor | None] = [None] * len(waves)
        with precision_context(self.precision, self.device):
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                codes = self.model.encode_waves([torch.as_tensor(waves[i]).to(self.device) for i in idx])
                for i, c in zip(idx, codes):
                    out[i] = c.cpu().long()
        return out

    def decode(self, codes) -> tuple[np.ndarray, int]:
        """Codes (any shape, flattened) -> (float32 waveform, 24000)."""
        self.load()
        c = torch.as_tensor(np.asarray(codes), dtype=torch.long).reshape(-1)
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= self.cfg.vq_bins):
            raise ValueError(f"speech codes must be in 0..{self.cfg.vq_bins - 1}, got {int(c.min())}..{int(c.max())}")
        if len(c) == 0:
            return np.zeros(0, np.float32), self.sample_rate
        return self.model.decode_codes(c.to(self.device)).float().cpu().numpy(), self.sample_rate


def load_speech_tokenizer(path, checkpoint=None, layout: Layout = AR_OMNI_V0_1, stand_in: bool = False, *,
                          device=None, batch_size: int = 8, lazy: bool = False,
                          precision: str = "fp32") -> WavTokenizerTokenizer:
    """WavTokenizer from a dir holding its yaml + ckpt, or ``load_speech_tokenizer(config_path, checkpoint_path)``."""
    return WavTokenizerTokenizer(path, layout, stand_in, checkpoint=checkpoint, device=device,
                                 batch_size=batch_size, lazy=lazy, precision=precision)
