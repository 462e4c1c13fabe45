"""The module DeepSpeed optimises: the Chameleon LM *and* the perceptual head, with the frozen VQ codebook.

AR-Omni's own trainer kept the perceptual projection outside the optimised module, so it was never trained nor saved.
Here it is a submodule: its weights get gradients, sit in the optimizer, and travel in every checkpoint. With
``head="frozen"`` (the upstream objective) it is a fresh ``nn.Linear`` (PyTorch's default init, as upstream's) that is
never updated.

``forward`` returns the model's outputs (logits where there is a target, the last hidden state); the losses are the
trainer's business (``aromni.train.loss``), which keeps this layer free of any training import.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model.chameleon import (MODEL_NOTE, OmniOutput, load_chameleon, model_note, omni_forward,
                                    resolve_model_dir, write_tiny_chameleon)

HEAD_FILE = "perceptual_head.safetensors"
# Files of an HF model dir that are not weights and belong with a re-saved model (tokenizer, processor, templates).
_COPY = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
         "processor_config.json", "chat_template.json", "chat_template.jinja", "generation_config.json")


def load_codebook(path: str | Path) -> torch.Tensor:
    """The [8192, D] VQ codebook from a Meta ``vqgan.ckpt`` (Lightning, key ``quantize.embedding.weight``), a
    safetensors/.pt file holding that key (or ``model.vqmodel.quantize.embedding.weight``), or an HF Chameleon dir."""
    p = Path(path)
    keys = ("quantize.embedding.weight", "model.vqmodel.quantize.embedding.weight")
    if p.is_dir():
        from safetensors import safe_open
        for f in sorted(p.glob("*.safetensors")):
            with safe_open(str(f), "pt") as st:
                for k in keys:
                    if k in st.keys():
                        return st.get_tensor(k).float()
        raise FileNotFoundError(f"{p}: no safetensors file holds {keys[1]}")
    if not p.is_file():
        raise FileNotFoundError(f"codebook {p} not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(p))
    else:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else {"quantize.embedding.weight": sd}
    for k in keys:
        if k in sd:
            return sd[k].float()
    raise KeyError(f"{p}: none of {keys} in it (keys start {sorted(sd)[:5]})")


class OmniModel(nn.Module):
    def __init__(self, lm: nn.Module, codebook: torch.Tensor, layout: Layout = AR_OMNI_V0_1, seed: int = 0,
                 head: str = "trained"):
        super().__init__()
        if codebook.shape[0] != layout.image_codebook:
            raise ValueError(f"codebook has {codebook.shape[0]} codes, layout {layout.name} has "
                             f"{layout.image_codebook}")
        if head not in ("trained", "frozen"):
            raise ValueError(f"perceptual head must be trained or frozen, got {head!r}")
        self.lm = lm
        self.layout, self.head_mode = layout, head
        with torch.random.fork_rng(devices=[]):  # the same head on every rank and in every run, whatever came before
            torch.manual_seed(seed)
            self.perceptual_head = nn.Linear(lm.config.hidden_size, codebook.shape[1])
        self.perceptual_head.requires_grad_(head == "trained")   # frozen: gradients pass through to h, no update
        # Frozen target, rebuilt from the checkpoint's VQ on load: not in the state dict, never in the optimizer.
        self.register_buffer("codebook", codebook.detach().clone(), persistent=False)
        vq = getattr(getattr(lm, "model", None), "vqmodel", None)
        if vq is not None:  # the image encoder is not trained here
            vq.requires_grad_(False)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids, position_ids=None, logits_mask=None) -> OmniOutput:
        """Logits (flat [N, vocab] at ``logits_mask``, else [B, T, vocab]) and the last hidden state [B, T, H]."""
        return omni_forward(self.lm, input_ids, position_ids=position_ids, logits_mask=logits_mask)

    # ---- saving --------------------------------------------------------------------------------------------
    def save_hf(self, out_dir: str | Path, source_dir: str | Path | None = None, note: dict | None = None) -> Path:
        """An HF-format model dir transformers loads (ChameleonForConditionalGeneration.from_pretrained), the
        perceptual head beside it, the source dir's tokenizer files, and aromni's note (stand_in etc.)."""
        from safetensors.torch import save_file
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(out))
        head = {k: v.detach().to("cpu").contiguous() for k, v in self.perceptual_head.state_dict().items()}
        save_file(head, str(out / HEAD_FILE))
        if source_dir is not None:
            for name in _COPY:
                if (Path(source_dir) / name).is_file() and not (out / name).exists():
                    shutil.copy2(Path(source_dir) / name, out / name)
        (out / MODEL_NOTE).write_text(json.dumps({**(note or {}), "perceptual_head": HEAD_FILE,
                                                  "perceptual_head_mode": self.head_mode}, indent=1, default=str))
        return out

    def load_head(self, model_dir: str | Path) -> bool:
        """Continue with the head a previous aromni run saved beside the model (pretraining -> SFT)."""
        p = Path(model_dir) / HEAD_FILE
        if not p.is_file():
            return False
        from safetensors.torch import load_file
        self.perceptual_head.load_state_dict(load_file(str(p)))
        return True


def build_omni(path: str | Path, *, random_init: str | None = None, codebook: str | Path | None = None,
               layout: Layout = AR_OMNI_V0_1, dtype: torch.dtype = torch.float32, seed: int = 0,
               swin_norm: bool | None = None, head: str = "trained") -> tuple[OmniModel, dict]:
    """Load (or, with random_init="tiny", first create) a Chameleon dir and wrap it. Returns (model, note). A trained
    head continues from the one saved beside the model, if any; a frozen head is always fresh (as upstream's)."""
    p = resolve_model_dir(path)   # a Meta-format checkpoint: its HF conversion (cached)
    if not (p / "config.json").is_file():
        if random_init != "tiny":
            raise FileNotFoundError(f"model.path {p}: no config.json (set model.random_init: tiny to create a "
                                    f"tiny random stand-in there)")
        write_tiny_chameleon(p, seed=seed)
    lm = load_chameleon(p, dtype=dtype, layout=layout, swin_norm=swin_norm)
    if codebook is not None:
        cb = load_codebook(codebook)
    else:
        vq = getattr(getattr(lm, "model", None), "vqmodel", None)
        if vq is None:
            raise ValueError(f"{p} has no VQ model: give model.codebook")
        cb = vq.quantize.embedding.weight.detach().float()
    model = OmniModel(lm, cb, layout, seed=seed, head=head).to(dtype)
    if head == "trained":
        model.load_head(p)
    return model, model_note(p)
