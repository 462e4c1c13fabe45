"""Meta-format Chameleon / AR-Omni checkpoints -> HF Chameleon model dirs (what upstream AR-Omni inference reads).

The Meta release layout (facebookresearch/chameleon ``inference/loader.py``; AR-Omni's inference reads the same):

    META_DIR/models/7b/consolidated.pth        (or consolidated.00.pth, .01 ... one file per model-parallel shard)
    META_DIR/models/7b/params.json             {"model": {dim, n_layers, n_heads, n_kv_heads, norm_eps, rope_theta,
                                                 qk_normalization, swin_norm, multiple_of, ffn_dim_multiplier, ...}}
    META_DIR/models/7b/consolidate_params.json {"model_parallel_size": N}  (Meta's loader requires it)
    META_DIR/tokenizer/text_tokenizer.json     the BPE (``tokenizers`` JSON)
    META_DIR/tokenizer/vqgan.yaml, vqgan.ckpt  the VQGAN (taming config + Lightning checkpoint)

transformers 5.24 does not ship ``convert_chameleon_weights_to_hf.py`` in the installed package (it lives in the
source repository only, and runs as a script that also downloads a test image), so the conversion is written here
from the same facts (key names, the rotary permutation, the q/k-norm layout, the config derivation):

- ``layers.{i}.attention.wq/wk/wv/wo`` -> ``model.layers.{i}.self_attn.q/k/v/o_proj``; q and k rows are permuted
  from Meta's interleaved rotary pairs to HF's half-split rotary (``_permute``);
- ``attention.q_normalization`` / ``k_normalization`` (one LayerNorm over head_dim shared by the heads) -> HF's
  per-head ``q_norm`` / ``k_norm`` ([heads, head_dim]), permuted the same way and repeated over the heads;
- ``feed_forward.w1/w2/w3`` -> ``mlp.gate/down/up_proj``; ``attention_norm`` / ``ffn_norm`` -> ``input_layernorm`` /
  ``post_attention_layernorm``; ``tok_embeddings`` / ``norm`` / ``output`` -> ``model.embed_tokens`` /
  ``model.norm`` / ``lm_head``; ``rope.freqs`` (a buffer) is dropped;
- the VQGAN's non-decoder keys -> ``model.vqmodel.*``; its yaml -> ``vq_config`` (aromni.model.vqgan's renames);
- ``vocabulary_map`` = the text tokenizer's vocab with ``<reserved08707>`` renamed ``<image>`` (as transformers does);
- intermediate size = multiple_of * ceil(ffn_dim_multiplier * int(8 * dim / 3) / multiple_of); max positions 4096
  (16384 when rope_theta > 10000).

Sharded checkpoints (30B: 4 shards) are concatenated along each tensor's model-parallel axis, as the transformers
script does. The HF dir also gets ``tokenizer.json`` and a copy of ``tokenizer/`` (so the VQGAN decoder, which the HF
format drops, stays available for image output) and aromni's ``aromni_model.json`` saying where it came from.

``cached_conversion(meta_dir)`` converts once into a cache folder (``$AROMNI_CACHE`` or ``~/.cache/aromni``) keyed by
the checkpoint files' names, sizes and mtimes, under a file lock, written to a temporary folder and renamed into
place, so two processes converting the same checkpoint never see a half-written dir.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model import vqgan as vq
from aromni.model.random_checkpoints import write_meta_vqgan
from aromni.model.text import write_chameleon_style_bpe

MODEL_NOTE = "aromni_model.json"   # same name as aromni.model.chameleon.MODEL_NOTE (which imports this module)
STAND_IN_MARK = "aromni_stand_in"
TEXT_TOKENIZER = "tokenizer/text_tokenizer.json"
VQGAN_FILES = ("tokenizer/vqgan.yaml", "tokenizer/vqgan.ckpt")
IMAGE_PLACEHOLDER = "<reserved08707>"   # transformers' conversion names it "<image>"
DONE_MARK = ".aromni_converted"


class MetaCheckpointError(ValueError):
    """A Meta-format dir that is incomplete or inconsistent (the message names the file)."""


# ---------------------------------------------------------------------------------------------------------------
# finding the files
def model_dirs(root: str | os.PathLike) -> list[Path]:
    """``models/<size>/`` dirs holding params.json and consolidated*.pth."""
    base = Path(root) / "models"
    if not base.is_dir():
        return []
    return sorted(d for d in base.iterdir() if d.is_dir() and (d / "params.json").is_file()
                  and any(d.glob("consolidated*.pth")))


def is_meta_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and not (p / "config.json").is_file() and bool(model_dirs(p))


def find_model_dir(root: str | os.PathLike, size: str | None = None) -> Path:
    dirs = model_dirs(root)
    if size is not None:
        dirs = [d for d in dirs if d.name.lower() == size.lower()]
    if not dirs:
        raise MetaCheckpointError(f"{root}: no models/<size>/ with params.json and consolidated*.pth"
                                  + (f" for size {size!r}" if size else ""))
    if len(dirs) > 1:
        raise MetaCheckpointError(f"{root}: several model sizes {[d.name for d in dirs]}: say which (size=...)")
    return dirs[0]


def shard_files(model_dir: Path) -> list[Path]:
    single = model_dir / "consolidated.pth"
    if single.is_file():
        return [single]
    shards = sorted(model_dir.glob("consolidated.[0-9][0-9].pth"))
    if not shards:
        raise MetaCheckpointError(f"{model_dir}: no consolidated.pth or consolidated.NN.pth")
    return shards


def read_params(model_dir: Path) -> dict:
    """params.json merged as Meta's loader merges it: top level, then its "model" section, then
    consolidate_params.json (which carries model_parallel_size)."""
    try:
        raw = json.loads((model_dir / "params.json").read_text())
        extra = model_dir / "consolidate_params.json"
        cons = json.loads(extra.read_text()) if extra.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise MetaCheckpointError(f"{model_dir}: unreadable params: {e}") from e
    params = {**raw, **(raw.get("model") or {}), **cons}
    missing = [k for k in ("dim", "n_layers", "n_heads") if k not in params]
    if missing:
        raise MetaCheckpointError(f"{model_dir / 'params.json'}: missing {missing}")
    return params


# ---------------------------------------------------------------------------------------------------------------
# the conversion
def intermediate_size(dim: int, ffn_dim_multiplier: float | None = 1.0, multiple_of: int = 256) -> int:
    """Meta's FeedForward width for hidden_dim = 4 * dim (2/3 of it, times the multiplier, rounded up)."""
    h = int(8 * dim / 3)
    if ffn_dim_multiplier is not None:
        h = int(ffn_dim_multiplier * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection from interleaved rotary pairs (Meta, xformers rope_padded) to HF's rotate_half
    order: per head, the even rows first, then the odd ones."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _norm_per_head(v: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta's one LayerNorm parameter over head_dim -> HF's [heads, head_dim], permuted like the projection."""
    hd = v.shape[-1]
    return v.reshape(hd // 2, 2).t().reshape(1, hd).repeat_interleave(heads, 0)


def _cat(shards: list[dict], key: str, dim: int | None) -> torch.Tensor:
    """One tensor from every model-parallel shard: concatenated on ``dim``, or (norms: replicated) the mean."""
    parts = [s[key] for s in shards]
    if len(parts) == 1:
        return parts[0]
    return torch.stack(parts).mean(0) if dim is None else torch.cat(parts, dim)


def convert_state_dict(shards: list[dict], params: dict) -> dict[str, torch.Tensor]:
    """Meta's consolidated state dict(s) -> HF ChameleonForConditionalGeneration keys (language model only)."""
    dim, n_heads, n_layers = params["dim"], params["n_heads"], params["n_layers"]
    n_kv = params.get("n_kv_heads") or n_heads
    n_shards = len(shards)
    hd = dim // n_heads
    for key in ("tok_embeddings.weight", "norm.weight", "output.weight"):
        if key not in shards[0]:
            raise MetaCheckpointError(f"consolidated checkpoint has no {key!r}: not a Chameleon checkpoint")
    sd: dict[str, torch.Tensor] = {}
    for i in range(n_layers):
        a, f, out = f"layers.{i}.attention.", f"layers.{i}.feed_forward.", f"model.layers.{i}."

        def heads_cat(key: str, heads: int) -> torch.Tensor:
            # each shard holds heads/n_shards whole heads: stack them back in order
            return torch.cat([s[key].reshape(heads // n_shards, hd, dim) for s in shards]).reshape(heads * hd, dim)

        sd[out + "self_attn.q_proj.weight"] = _permute(heads_cat(a + "wq.weight", n_heads), n_heads)
        sd[out + "self_attn.k_proj.weight"] = _permute(heads_cat(a + "wk.weight", n_kv), n_kv)
        sd[out + "self_attn.v_proj.weight"] = heads_cat(a + "wv.weight", n_kv)
        sd[out + "self_attn.o_proj.weight"] = _cat(shards, a + "wo.weight", 1)
        sd[out + "mlp.gate_proj.weight"] = _cat(shards, f + "w1.weight", 0)
        sd[out + "mlp.down_proj.weight"] = _cat(shards, f + "w2.weight", 1)
        sd[out + "mlp.up_proj.weight"] = _cat(shards, f + "w3.weight", 0)
        sd[out + "input_layernorm.weight"] = _cat(shards, f"layers.{i}.attention_norm.weight", None)
        sd[out + "post_attention_layernorm.weight"] = _cat(shards, f"layers.{i}.ffn_norm.weight", None)
        for meta, hf, heads in (("q_normalization", "q_norm", n_heads), ("k_normalization", "k_norm", n_kv)):
            for p in ("weight", "bias"):
                key = f"{a}{meta}.{p}"
                if key in shards[0]:
                    # sharded: each shard's own parameter serves that shard's heads
                    sd[f"{out}self_attn.{hf}.{p}"] = torch.cat(
                        [_norm_per_head(s[key], heads // n_shards) for s in shards])
                else:  # qk_normalization off: the identity LayerNorm
                    fill = 1.0 if p == "weight" else 0.0
                    sd[f"{out}self_attn.{hf}.{p}"] = torch.full((heads, hd), fill, dtype=shards[0][a + "wq.weight"].dtype)
    sd["model.embed_tokens.weight"] = _cat(shards, "tok_embeddings.weight", 1)
    sd["model.norm.weight"] = _cat(shards, "norm.weight", None)
    sd["lm_head.weight"] = _cat(shards, "output.weight", 0)
    return sd


def vocabulary_map(text_tokenizer_json: Path) -> tuple[dict, dict]:
    """(vocabulary_map for the config, the tokenizer JSON with <reserved08707> renamed <image>)."""
    tok = json.loads(text_tokenizer_json.read_text(encoding="utf-8"))
    vocab = dict(tok["model"]["vocab"])
    if IMAGE_PLACEHOLDER in vocab:
        vocab["<image>"] = vocab.pop(IMAGE_PLACEHOLDER)
        tok["model"]["vocab"] = {("<image>" if k == IMAGE_PLACEHOLDER else k): v for k, v in tok["model"]["vocab"].items()}
    for t in tok.get("added_tokens", []):
        if t.get("content") == IMAGE_PLACEHOLDER:
            t["content"] = "<image>"
    return vocab, tok


def hf_config(params: dict, vocab_size: int, vocab_map: dict, vq_config: dict):
    from transformers import ChameleonConfig
    theta = float(params.get("rope_theta", 10000.0))
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    return ChameleonConfig(
        hidden_size=params["dim"], num_hidden_layers=params["n_layers"], num_attention_heads=params["n_heads"],
        num_key_value_heads=n_kv, rms_norm_eps=float(params.get("norm_eps", 1e-5)), vocab_size=vocab_size,
        intermediate_size=intermediate_size(params["dim"], params.get("ffn_dim_multiplier", 1.0),
                                            params.get("multiple_of", 256)),
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        max_position_embeddings=16384 if theta > 10000.0 else 4096,
        model_parallel_size=int(params.get("model_parallel_size", 1)), swin_norm=bool(params.get("swin_norm", False)),
        vq_config=vq_config, vocabulary_map=vocab_map, bos_token_id=vocab_map.get("<s>", 0),
        eos_token_id=vocab_map.get("</s>", 2), pad_token_id=vocab_map.get("<pad>", 1))


def convert_meta_checkpoint(meta_dir: str | os.PathLike, hf_dir: str | os.PathLike, size: str | None = None,
                            layout: Layout = AR_OMNI_V0_1) -> Path:
    """Write the HF model dir for a Meta-format checkpoint. Returns ``hf_dir``."""
    from huggingface_hub import save_torch_state_dict

    root, out = Path(meta_dir), Path(hf_dir)
    mdir = find_model_dir(root, size)
    params = read_params(mdir)
    for rel in (TEXT_TOKENIZER, *VQGAN_FILES):
        if not (root / rel).is_file():
            raise MetaCheckpointError(f"{root}: missing {rel} (a Meta-format checkpoint has models/, tokenizer/)")
    files = shard_files(mdir)
    mp = int(params.get("model_parallel_size", len(files)))
    if mp != len(files):
        raise MetaCheckpointError(f"{mdir}: model_parallel_size {mp} but {len(files)} consolidated shard(s)")
    shards = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    sd = convert_state_dict(shards, params)
    del shards
    raw_vq = yaml.safe_load((root / VQGAN_FILES[0]).read_text())
    vq_sd = torch.load(root / VQGAN_FILES[1], map_location="cpu", weights_only=True)["state_dict"]
    sd.update({vq.HF_PREFIX + k: v for k, v in vq_sd.items() if "decoder" not in k and not k.startswith("loss.")})
    vocab_map, tok_json = vocabulary_map(root / TEXT_TOKENIZER)
    config = hf_config(params, int(sd["model.embed_tokens.weight"].shape[0]), vocab_map,
                       vq.VQGANConfig.from_meta(raw_vq).to_hf())
    dtype = sd["model.embed_tokens.weight"].dtype
    config.dtype = str(dtype).removeprefix("torch.")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_torch_state_dict({k: v.contiguous() for k, v in sd.items()}, str(out))
    (out / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer").mkdir(exist_ok=True)
    for rel in (TEXT_TOKENIZER, *VQGAN_FILES):   # keep the VQGAN decoder: the HF format drops it
        shutil.copy2(root / rel, out / rel)
    stand_in = bool(params.get(STAND_IN_MARK) or raw_vq.get(STAND_IN_MARK))
    text_sha = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    (out / MODEL_NOTE).write_text(json.dumps({
        "converted_from": str(root.resolve()), "format": "meta", "model_size": mdir.name, "shards": len(files),
        "stand_in": stand_in, "tokenizers": {"text": {"sha256": text_sha, "stand_in": stand_in}}, **({"note": "RANDOM-weight Meta-format stand-in (aromni write_tiny_meta_chameleon)"}
                                 if stand_in else {})}, indent=1))
    return out


# ---------------------------------------------------------------------------------------------------------------
# on-the-fly conversion into a cache
def cache_root() -> Path:
    return Path(os.environ.get("AROMNI_CACHE") or Path.home() / ".cache" / "aromni") / "converted"


def cache_key(meta_dir: str | os.PathLike, size: str | None = None) -> str:
    """Names, sizes and mtimes of every file the conversion reads (hashing 14 GB of weights is not needed to notice
    a changed checkpoint), plus the params themselves."""
    root = Path(meta_dir).resolve()
    mdir = find_model_dir(root, size)
    h = hashlib.sha256(str(root).encode())
    for f in [*shard_files(mdir), mdir / "params.json", mdir / "consolidate_params.json",
              *(root / r for r in (TEXT_TOKENIZER, *VQGAN_FILES))]:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:24]


def cached_conversion(meta_dir: str | os.PathLike, size: str | None = None, root: Path | None = None) -> Path:
    """The HF dir for ``meta_dir``, converted on first use (later calls reuse it)."""
    from filelock import FileLock

    base = root or cache_root()
    target = base / cache_key(meta_dir, size)
    if (target / DONE_MARK).is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / DONE_MARK).is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=base))
        try:
            convert_meta_checkpoint(meta_dir, tmp, size)
            (tmp / DONE_MARK).write_text(str(Path(meta_dir).resolve()))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------------------------
# a tiny RANDOM checkpoint in Meta's layout (tests, demos)
def write_tiny_meta_chameleon(out_dir: str | os.PathLike, seed: int = 0, dim: int = 64, n_layers: int = 2,
                              n_heads: int = 4, n_kv_heads: int | None = None, shards: int = 1,
                              swin_norm: bool = True, dtype: torch.dtype = torch.bfloat16,
                              layout: Layout = AR_OMNI_V0_1) -> Path:
    """Random weights with Meta's key names, shard layout and files (``models/7b/...``, ``tokenizer/...``), marked
    ``aromni_stand_in`` in params.json. The text tokenizer is aromni's Chameleon-layout stand-in BPE and the VQGAN a
    tiny random taming model (aromni.model.random_checkpoints). Not a trained model."""
    g = torch.Generator().manual_seed(seed)
    kv = n_kv_heads or n_heads
    hd = dim // n_heads
    ffn = intermediate_size(dim, 1.0, 32)
    V = layout.vocab_size

    def rnd(*shape, scale=None):
        return (torch.randn(*shape, generator=g) * (scale or shape[-1] ** -0.5)).to(dtype)

    def norm(*shape):
        return (1 + 0.1 * torch.randn(*shape, generator=g)).to(dtype)

    full: dict[str, torch.Tensor] = {"tok_embeddings.weight": rnd(V, dim, scale=1.0), "norm.weight": norm(dim),
                                     "output.weight": rnd(V, dim)}
    for i in range(n_layers):
        a, f = f"layers.{i}.attention.", f"layers.{i}.feed_forward."
        full.update({a + "wq.weight": rnd(n_heads * hd, dim), a + "wk.weight": rnd(kv * hd, dim),
                     a + "wv.weight": rnd(kv * hd, dim), a + "wo.weight": rnd(dim, n_heads * hd),
                     f + "w1.weight": rnd(ffn, dim), f + "w2.weight": rnd(dim, ffn), f + "w3.weight": rnd(ffn, dim),
                     f"layers.{i}.attention_norm.weight": norm(dim), f"layers.{i}.ffn_norm.weight": norm(dim)})
    theta = 10000.0
    freqs = (1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)).to(dtype)
    root = Path(out_dir)
    mdir = root / "models" / "7b"
    mdir.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        part: dict[str, torch.Tensor] = {"rope.freqs": freqs}
        for k, v in full.items():
            if k.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "output.weight")):
                part[k] = v.chunk(shards, 0)[s].clone()
            elif k.endswith(("wo.weight", "w2.weight", "tok_embeddings.weight")):
                part[k] = v.chunk(shards, 1)[s].clone()
            else:   # RMSNorm weights are replicated on every shard
                part[k] = v.clone()
        for i in range(n_layers):   # each shard has its own q/k LayerNorm (one over head_dim)
            for n in ("q_normalization", "k_normalization"):
                part[f"layers.{i}.attention.{n}.weight"] = norm(hd)
                part[f"layers.{i}.attention.{n}.bias"] = (0.1 * torch.randn(hd, generator=g)).to(dtype)
        name = "consolidated.pth" if shards == 1 else f"consolidated.{s:02d}.pth"
        torch.save(part, mdir / name)
    (mdir / "params.json").write_text(json.dumps({
        "model": {"dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": kv, "vocab_size": V,
                  "norm_eps": 1e-5, "rope_theta": theta, "qk_normalization": True, "swin_norm": swin_norm,
                  "multiple_of": 32, "ffn_dim_multiplier": 1.0},
        STAND_IN_MARK: True}, indent=1))
    (mdir / "consolidate_params.json").write_text(json.dumps({"model_parallel_size": shards}))
    texts = ["hello world, this is a test.", "Convert this text into speech. This is input: ",
             "USER: GPT: Describe this image.", "Can you please convert this speech into written text?",
             "Create a picture that matches the essence of this text.", "a red fox in the snow"] * 4
    write_chameleon_style_bpe(texts, root / TEXT_TOKENIZER, vocab_size=300, layout=layout)
    write_meta_vqgan(root / "tokenizer", seed=seed)
    return root
