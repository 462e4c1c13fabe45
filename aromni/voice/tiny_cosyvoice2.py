"""A tiny RANDOM CosyVoice2 model directory in the published layout (STAND-IN: it speaks noise, not words).

No CosyVoice2 weights can be downloaded here, so tests and benchmarks build this and load it through exactly the code
path a real ``CosyVoice2-0.5B`` directory takes:
  cosyvoice2.yaml                the published hyperpyyaml (FunAudioLLM/CosyVoice examples/libritts/cosyvoice2) with
                                 the same classes and keys, sizes shrunk, training-only sections left out
  llm.pt / flow.pt / hift.pt     random state dicts of those modules (keys as in the release)
  campplus.onnx                  speaker embedding: kaldi fbank [1, T, 80] -> [1, 192]
  speech_tokenizer_v2.onnx       128-mel [1, 128, T] + int32 length [1] -> speech tokens [1, T/4] (uses the length)
  CosyVoice-BlankEN/             a 1-layer Qwen2 + a small BPE tokenizer, saved by transformers
  STAND_IN.txt                   says what this is
About 60 MB: the flow encoder's pre-lookahead and upsample layers are fixed at 512 channels upstream.
The random LLM would never emit end-of-speech on its own; its decoder bias gives end-of-speech a probability of about 0.3
per step (30 speech tokens share the rest), so it stops a few tokens after CosyVoice's minimum length (2 speech tokens per text token): short and bounded.
"""
from __future__ import annotations

import json
from pathlib import Path

TINY_YAML = """\
# STAND-IN: the published CosyVoice2 hyperpyyaml with sizes shrunk for a tiny random test model.
sample_rate: 24000
llm_input_size: 64
llm_output_size: 64
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2

llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: 512
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: 512
        attention_heads: 2
        linear_units: 64
        num_blocks: 1
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 512
        use_cnn_module: False
        macaron_style: False
        use_dynamic_chunk: True
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [32]
            dropout: 0.0
            attention_head_dim: 16
            n_blocks: 1
            num_mid_blocks: 1
            num_heads: 2
            act_fn: 'gelu'
            static_chunk_size: !ref <token_frame_rate> * <token_mel_ratio>
            num_decoding_left_chunks: 2

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 32
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3]
    resblock_dilation_sizes: [[1]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1], [1], [1]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 32

get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
allowed_special: 'all'
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: 8000
    center: False
"""

_BPE_TEXT = [
    "Ask her to bring these things with her from the store.",
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish.",
    "Hello, how can I help you today? Sure, here is a short answer to your question.",
    "one two three four five six seven eight nine ten hundred thousand point percent",
]


def _write_qwen(d: Path, seed: int) -> int:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_BPE_TEXT * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(d)
    vocab = len(fast) + 64  # room for the special tokens CosyVoice's QwenTokenizer adds
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    return vocab


def _write_onnx(d: Path) -> None:
    import torch

    class Campplus(torch.nn.Module):  # fbank [1, T, 80] -> speaker embedding [1, 192]
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(80, 192)

        def forward(self, feat):
            return torch.tanh(self.proj(feat.mean(dim=1)))

    class SpeechTokenizer(torch.nn.Module):  # whisper 128-mel [1, 128, T] + length -> tokens [1, T/4] in [0, 6561)
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(128, 32, kernel_size=4, stride=4)
            self.out = torch.nn.Linear(32, 6561)

        def forward(self, feats, feats_length):
            h = self.conv(feats).transpose(1, 2)                                  # [1, T/4, 32]
            keep = torch.arange(h.shape[1]).unsqueeze(0) < (feats_length.unsqueeze(1) // 4)
            return (self.out(h).argmax(-1) * keep).to(torch.int32)                # frames past the length -> 0

    kw = dict(dynamo=False, opset_version=17)
    torch.onnx.export(Campplus().eval(), (torch.randn(1, 50, 80),), d / "campplus.onnx", input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {1: "T"}}, **kw)
    torch.onnx.export(SpeechTokenizer().eval(), (torch.randn(1, 128, 100), torch.tensor([100], dtype=torch.int32)),
                      d / "speech_tokenizer_v2.onnx", input_names=["feats", "feats_length"], output_names=["tokens"],
                      dynamic_axes={"feats": {2: "T"}, "tokens": {1: "T4"}}, **kw)


def write_tiny_cosyvoice2(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny random model directory; returns it. Needs the ``aromni[cosyvoice]`` extra."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    d = Path(out)
    (d / "CosyVoice-BlankEN").mkdir(parents=True, exist_ok=True)
    _write_qwen(d / "CosyVoice-BlankEN", seed)
    (d / "cosyvoice2.yaml").write_text(TINY_YAML)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        configs = load_hyperpyyaml(TINY_YAML, overrides={"qwen_pretrain_path": str(d / "CosyVoice-BlankEN")})
        llm = configs["llm"]
        with torch.no_grad():  # 30 speech tokens + end-of-speech share the mass: it stops soon after the minimum
            llm.llm_decoder.weight.mul_(0.01)
            llm.llm_decoder.bias.zero_()
            llm.llm_decoder.bias[torch.linspace(0, llm.speech_token_size - 1, 30).long()] = 6.0
            llm.llm_decoder.bias[llm.speech_token_size] = 9.0
        torch.save(llm.state_dict(), d / "llm.pt")
        torch.save(configs["flow"].state_dict(), d / "flow.pt")
        torch.save(configs["hift"].state_dict(), d / "hift.pt")
        _write_onnx(d)
    (d / "STAND_IN.txt").write_text(
        "stand_in: true\nA tiny RANDOM CosyVoice2 model in the published directory layout, written by "
        "aromni.voice.tiny_cosyvoice2 for tests and benchmarks. It does not speak words.\n")
    (d / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "text-to-speech",
                                                      "stand_in": True}))
    return d
