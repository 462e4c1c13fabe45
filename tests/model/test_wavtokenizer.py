"""WavTokenizer: the official yaml + Lightning ckpt load (widths read from tensor shapes, legacy weight norm folded),
the blocks match the encodec and vocos packages on the same weights, 40 codes/s round trips, and broken
checkpoints fail with the keys that are wrong."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aromni.model.checkpoint import CheckpointError, sha256_file
from aromni.model.random_checkpoints import copy_with_edited_state, tiny_wavtokenizer_config, write_wavtokenizer
from aromni.model.wavtokenizer import CKPT_40HZ, CONFIG_40HZ, ENC, load_speech_tokenizer, to_mono

warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
QUANT = "feature_extractor.encodec.quantizer."


@pytest.fixture(scope="module")
def wt_dir(tmp_path_factory):
    return write_wavtokenizer(tmp_path_factory.mktemp("wt"), seed=1)


@pytest.fixture(scope="module")
def tok(wt_dir):
    return load_speech_tokenizer(wt_dir)


def _speech_like(seconds: float, sr: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / sr) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = x + 0.02 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], 1) if channels == 2 else x


def _state(wt_dir):
    return torch.load(wt_dir / CKPT_40HZ, weights_only=True)["state_dict"]


def test_encoder_and_codebook_match_encodec(wt_dir, tok):
    """encodec's SEANetEncoder (built with WavTokenizer's arguments, legacy weight_norm) + ResidualVectorQuantizer,
    loaded with the checkpoint's own keys, give our embeddings and identical codes."""
    from encodec.modules import SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer

    sd = _state(wt_dir)
    cfg = tiny_wavtokenizer_config()
    enc = SEANetEncoder(causal=False, n_residual_layers=1, norm="weight_norm", pad_mode="reflect", lstm=2,
                        dimension=cfg.backbone_in, channels=1, n_filters=4, ratios=cfg.downsamples, activation="ELU",
                        kernel_size=7, residual_kernel_size=3, last_kernel_size=7, dilation_base=2, true_skip=False,
                        compress=2).eval()
    enc.load_state_dict({k.removeprefix(ENC): v for k, v in sd.items() if k.startswith(ENC)}, strict=True)
    q = ResidualVectorQuantizer(dimension=cfg.backbone_in, n_q=1, bins=cfg.vq_bins).eval()
    q.load_state_dict({k.removeprefix(QUANT): v for k, v in sd.items() if k.startswith(QUANT)}, strict=True)

    wave = to_mono(_speech_like(1.3, 16000), 16000)  # resampled to 24 kHz, odd length
    with torch.no_grad():
        ref_emb = enc(wave.reshape(1, 1, -1))
        ref_codes = q.encode(ref_emb, 24000, 6.6).reshape(-1)
        emb = tok.model.feature_extractor.encodec.encoder(wave.reshape(1, 1, -1))
    assert emb.shape == ref_emb.shape == (1, cfg.backbone_in, math.ceil(len(wave) / 600))
    assert torch.allclose(emb, ref_emb, atol=1e-5)
    codes = tok.encode_prepared([wave.numpy()])[0]
    assert torch.equal(codes, ref_codes)
    assert len(set(codes.tolist())) > 5  # the random model is not degenerate


def test_backbone_blocks_and_head_match_vocos(tok):
    """vocos' ConvNeXtBlock (with AdaLayerNorm) and ISTFTHead with our weights give our outputs."""
    from vocos.heads import ISTFTHead
    from vocos.modules import ConvNeXtBlock

    cfg = tiny_wavtokenizer_config()
    ours = tok.model.backbone.convnext[0]
    ref = ConvNeXtBlock(cfg.dim, cfg.intermediate_dim, layer_scale_init_value=0.5,
                        adanorm_num_embeddings=cfg.adanorm_num_embeddings).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, cfg.dim, 17, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0])
    with torch.no_grad():
        assert torch.allclose(ours(x, cond), ref(x, cond_embedding_id=cond), atol=1e-5)
        head = ISTFTHead(cfg.dim, cfg.n_fft, cfg.hop_length, padding="same").eval()
        head.load_state_dict(tok.model.head.state_dict(), strict=True)
        h = torch.randn(1, 9, cfg.dim, generator=torch.Generator().manual_seed(1)) * 0.1
        assert torch.allclose(tok.model.head(h), head(h), atol=1e-5)


def test_round_trip_40_codes_per_second(tok):
    for seconds, sr, ch in ((2.0, 16000, 2), (1.37, 44100, 1), (0.5, 24000, 1)):
        codes = tok.encode([(_speech_like(seconds, sr, channels=ch), sr)])[0]
        assert codes.dtype == torch.long and codes.ndim == 1
        assert len(codes) == math.ceil(seconds * 40)
        assert 0 <= int(codes.min()) and int(codes.max()) < 4096
        wave, rate = tok.decode(codes)
        assert rate == 24000 and wave.dtype == np.float32 and np.isfinite(wave).all()
        assert len(wave) == len(codes) * 600 and abs(len(wave) / rate - seconds) < 1 / 40
    with pytest.raises(ValueError, match="0..4095"):
        tok.decode([4096])


def test_clips_are_encoded_independently(tok):
    a, b = (_speech_like(0.9, 24000, seed=1), 24000), (_speech_like(1.6, 16000, seed=2), 16000)
    together = tok.encode([a, b])
    assert torch.equal(together[0], tok.encode([a])[0]) and torch.equal(together[1], tok.encode([b])[0])


# lengths that hit every padding case: shorter than a conv's padding (1, 7 samples), around one hop (599, 600, 601),
# a strided conv's remainder, small enough for torch to pick its non-oneDNN conv alone (4799, 13457), 1-2 s, and two
# equal lengths in one batch
MIXED = [1, 7, 599, 600, 601, 4799, 13457, 24000, 24000, 36011, 48000]


@pytest.fixture(scope="module")
def wt32_dir(tmp_path_factory):
    """The release's SEANet widths (32 filters -> 512 channels after 4 downsamplings, 2-layer LSTM; small backbone)."""
    return write_wavtokenizer(tmp_path_factory.mktemp("wt32"), n_filters=32, seed=2)


@pytest.fixture
def threads(request):
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


def _mixed_waves():
    rng = np.random.default_rng(7)
    waves = [_speech_like(n / 24000 + 1e-9, 24000, seed=i)[:n] if n > 24 else
             (0.3 * rng.standard_normal(n)).astype(np.float32) for i, n in enumerate(MIXED)]
    assert [len(w) for w in waves] == MIXED
    return waves


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("width", ["tiny", "release"])
def test_batched_codes_equal_one_by_one_for_mixed_lengths(wt_dir, wt32_dir, width, threads):
    """Batches of mixed lengths give bit for bit the embeddings, so exactly the codes, of each clip encoded alone
    through the unbatched reference path (``encode_wave``), whatever the batch size (1, 3, 8, 16), the order the
    clips come in and so the company each clip is batched with; with one torch thread (front clip by clip) and two
    (everything batched, each conv routed to the kernel the clip gets alone)."""
    d = wt_dir if width == "tiny" else wt32_dir
    waves = _mixed_waves()
    ref = load_speech_tokenizer(d, batch_size=1)
    enc = ref.model.feature_extractor.encodec.encoder
    with torch.inference_mode():
        alone_emb = [enc(torch.from_numpy(w).reshape(1, 1, -1))[0] for w in waves]
    alone = [ref.model.codebook.codes(e.t().contiguous()) for e in alone_emb]   # what encode_wave does
    assert torch.equal(alone[-1], ref.model.encode_wave(torch.from_numpy(waves[-1])))
    assert [len(c) for c in alone] == [math.ceil(n / 600) for n in MIXED]
    shuffled = [3, 9, 0, 7, 10, 1, 8, 2, 4, 6, 5]
    runs = [(1, list(range(len(waves)))), (3, shuffled), (8, shuffled[::-1]), (16, list(range(len(waves)))),
            (16, shuffled)]
    if width == "release" and threads > 1:   # two threads on a shared 2-core machine are slow: the batched path only
        runs = runs[-1:]
    for bs, order in runs:
        tok = load_speech_tokenizer(d, batch_size=bs)
        assert tok.batch_invariant
        got = tok.encode_prepared([waves[i] for i in order])
        for i, codes in zip(order, got):
            assert torch.equal(codes, alone[i]), (bs, MIXED[i])
    x = torch.stack([F.pad(torch.from_numpy(w), (0, max(MIXED) - len(w))) for w in waves])
    with torch.inference_mode():
        batched = enc(x.unsqueeze(1), MIXED)
    for i, one in enumerate(alone_emb):
        assert torch.equal(batched[i, :, :one.shape[-1]], one), MIXED[i]


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_conv_routing_gives_each_clip_its_alone_bits(threads):
    """The leak that made batched codes differ: torch picks the conv kernel from the input's shape (oneDNN for a
    batch or a large input; its own im2col+GEMM for one small input, and single-threaded for every unbatched 1x1), and
    the two round differently. PaddedConv1d routes each clip of a batch to the kernel it gets alone: bit-equal."""
    from aromni.model.wavtokenizer import PaddedConv1d

    torch.manual_seed(0)
    lengths = [9, 40, 300, 700, 1600, 5000]     # with 32 channels: 9-640 samples alone use torch's GEMM, more oneDNN
    for cin, cout, k, stride, dil in ((1, 32, 7, 1, 1), (32, 16, 3, 1, 1), (16, 32, 1, 1, 1), (32, 32, 1, 1, 1),
                                      (32, 64, 8, 4, 1), (64, 64, 3, 1, 2), (4, 8, 8, 4, 1)):
        conv = PaddedConv1d(cin, cout, k, stride, dil).eval()
        x = torch.randn(len(lengths), cin, max(lengths))
        with torch.inference_mode():
            batched = conv(x, lengths)
            alone = [conv(x[i:i + 1, :, :n].contiguous())[0] for i, n in enumerate(lengths)]
            for i, a in enumerate(alone):
                assert a.shape[-1] == conv.out_length(lengths[i])
                assert torch.equal(batched[i, :, :a.shape[-1]], a), (cin, cout, k, lengths[i])
    # without the routing (one call for the whole padded batch: oneDNN), a small clip (alone: torch's GEMM conv)
    # gets other low bits
    torch.manual_seed(0)
    conv = PaddedConv1d(64, 64, 3).eval()
    x = torch.randn(2, 64, 600)
    with torch.inference_mode():
        plain = conv.conv.conv(F.pad(x, (1, 1), mode="reflect"))[:1, :, :39]   # frames that see only x[:40]
        alone = conv(x[:1, :, :40].contiguous())[..., :39]
        assert torch.equal(conv(x, [40, 600])[:1, :, :39], alone)
        assert not torch.equal(plain, alone) and torch.allclose(plain, alone, atol=1e-5)


def test_plain_zero_padding_would_change_codes(wt_dir):
    """Why the per-clip padding exists: zero-padding a short clip to a long one's width and running the plain
    encoder changes its last codes (reflect padding sees zeros instead of the clip's own end)."""
    tok = load_speech_tokenizer(wt_dir)
    enc = tok.model.feature_extractor.encodec.encoder
    short = torch.from_numpy(_speech_like(0.73, 24000, seed=3))
    with torch.inference_mode():
        alone = enc(short.reshape(1, 1, -1))[0]
        naive = enc(torch.nn.functional.pad(short, (0, 24000)).reshape(1, 1, -1))[0, :, :alone.shape[-1]]
    assert not torch.allclose(alone[:, -1], naive[:, -1], atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_precision_is_deterministic_and_recorded(wt_dir, precision):
    clips = [_speech_like(s, 24000, seed=i) for i, s in enumerate((0.4, 1.1, 0.77))]
    a = load_speech_tokenizer(wt_dir, precision=precision, batch_size=2)
    b = load_speech_tokenizer(wt_dir, precision=precision, batch_size=3)
    first, again, other = a.encode_prepared(clips), a.encode_prepared(clips), b.encode_prepared(clips)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    if precision != "bf16":   # fp32 kernels give the same codes in any batch; bf16 rounding may differ by company
        assert all(torch.equal(x, y) for x, y in zip(first, other))
    if a.device.type == "cpu":   # the pools may merge units' clips only where the codes are company-independent
        assert a.batch_invariant == (precision != "bf16")
    assert a.identity["precision"] == precision
    if precision == "tf32" and a.device.type == "cpu":   # no TF32 on CPU: exactly fp32
        fp32 = load_speech_tokenizer(wt_dir).encode_prepared(clips)
        assert all(torch.equal(x, y) for x, y in zip(first, fp32))
    with pytest.raises(ValueError, match="precision 'fp16'"):
        load_speech_tokenizer(wt_dir, precision="fp16", lazy=True)


def test_widths_come_from_the_checkpoint_and_new_style_weight_norm_loads(tmp_path, tok):
    """The yaml never states n_filters/dimension; an 8-filter model loads from the same yaml layout. A checkpoint
    saved with torch's parametrized weight norm (original0/original1) gives the same codes as the legacy pair."""
    wide = load_speech_tokenizer(write_wavtokenizer(tmp_path / "w8", n_filters=8, seed=4))
    assert wide.model.feature_extractor.encodec.encoder.model[0].conv.conv.out_channels == 8

    legacy = write_wavtokenizer(tmp_path / "legacy", seed=5)
    ck = torch.load(legacy / CKPT_40HZ, weights_only=True)
    sd = ck["state_dict"]
    for k in [k for k in sd if k.startswith(ENC) and k.endswith("weight_g")]:
        stem = k[: -len("weight_g")]
        sd[stem + "parametrizations.weight.original0"] = sd.pop(stem + "weight_g")
        sd[stem + "parametrizations.weight.original1"] = sd.pop(stem + "weight_v")
    new = tmp_path / "new"
    new.mkdir()
    (new / CONFIG_40HZ).write_text((legacy / CONFIG_40HZ).read_text())
    torch.save(ck, new / CKPT_40HZ)
    clip = [(_speech_like(1.0, 24000, seed=3), 24000)]
    a = load_speech_tokenizer(legacy).encode(clip)[0]
    b = load_speech_tokenizer(new / CONFIG_40HZ, new / CKPT_40HZ).encode(clip)[0]
    assert torch.equal(a, b)


def test_identity_lazy_and_marked(wt_dir):
    lazy = load_speech_tokenizer(wt_dir, lazy=True)
    ident = lazy.identity
    assert lazy.model is None
    assert ident["sha256"] == sha256_file(wt_dir / CKPT_40HZ) and ident["codes_per_second"] == 40
    assert ident["stand_in"] is True and "STAND-IN" in ident["note"]


def _rewrite(src, dst, edit):
    return copy_with_edited_state(src, dst, CKPT_40HZ, edit)


def test_broken_checkpoints_fail_with_the_keys(wt_dir, tmp_path):
    sd = _state(wt_dir)
    # what the official loader ignores is there and ignored: the SEANet decoder, discriminators, loss buffers
    assert any(k.startswith("feature_extractor.encodec.decoder.") for k in sd)
    assert any(k.startswith("multiperioddisc.") for k in sd)

    def drop(sd):
        del sd["backbone.pos_net.2.q.weight"]

    def extra(sd):
        sd["head.bogus"] = torch.zeros(2)

    def shape(sd):
        sd["head.out.weight"] = torch.zeros(10, 64)

    def half_pair(sd):
        del sd[ENC + "model.0.conv.conv.weight_v"]

    for name, edit, match in (("drop", drop, "missing key.*backbone.pos_net.2.q.weight"),
                              ("extra", extra, "unexpected key.*head.bogus"),
                              ("shape", shape, r"misshapen.*head.out.weight: checkpoint \(10, 64\)"),
                              ("pair", half_pair, "weight norm needs both")):
        with pytest.raises(CheckpointError, match=match):
            load_speech_tokenizer(_rewrite(wt_dir, tmp_path / name, edit))
    with pytest.raises(FileNotFoundError, match="one WavTokenizer .yaml and one .ckpt"):
        load_speech_tokenizer(tmp_path)
