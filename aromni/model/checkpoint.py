"""Reading published checkpoints safely and checking them key by key.

Shared by the VQGAN and WavTokenizer loaders:
- ``load_lightning_state_dict``: a PyTorch Lightning ``.ckpt`` (``{"state_dict": ..., ...}``) through
  ``torch.load(weights_only=True)``: no pickled code runs, whatever the file holds.
- ``fold_weight_norm``: weight-normalised convolutions are stored as ``weight_g`` + ``weight_v`` (the legacy
  ``torch.nn.utils.weight_norm``, what encodec/WavTokenizer checkpoints hold) or as
  ``parametrizations.weight.original0/1`` (the newer parametrization). Both are folded into the plain ``weight``
  that inference uses (w = g * v / ||v||, norm over every dim but the first), never dropped.
- ``check_state_dict``: missing, unexpected and misshapen keys are listed in one error, so a wrong file says what
  is wrong with it instead of loading half a model.
- ``sha256_file`` / ``tensors_sha256``: the identity a manifest records, cached per (path, size, mtime).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that does not match the architecture its config describes; the message lists why."""


def load_lightning_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict), loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) (it pickles objects that are not plain "
            f"tensors/containers: {str(e).splitlines()[0][:300]}). aromni never unpickles code from a checkpoint; "
            f"re-save only its state_dict: torch.save({{'state_dict': ckpt['state_dict']}}, path)") from None
    except RuntimeError as e:  # not a torch file at all (truncated, HTML error page, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {str(e).splitlines()[0][:300]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a Lightning checkpoint with a 'state_dict' of tensors")
    return obj


def fold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every (weight_g, weight_v) pair and every weight-norm parametrization by the weight it encodes."""
    out: dict[str, torch.Tensor] = {}
    pairs = {"weight_g": "weight_v", "parametrizations.weight.original0": "parametrizations.weight.original1"}
    for k, v in sd.items():
        for g_name, v_name in pairs.items():
            if k.endswith(v_name):
                break
            if k.endswith(g_name):
                stem = k[: -len(g_name)]
                if stem + v_name not in sd:
                    raise CheckpointError(f"{k} has no matching {stem + v_name} (weight norm needs both)")
                w = sd[stem + v_name].float()
                dims = tuple(range(1, w.dim()))
                out[stem + "weight"] = sd[k].float() * w / w.norm(2, dim=dims, keepdim=True)
                break
        else:
            out[k] = v
    return out


def check_state_dict(expected: dict[str, torch.Size], got: dict[str, torch.Tensor], what: str) -> None:
    """Raise one CheckpointError listing every missing, unexpected and misshapen key (first 20 of each)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k])}"
                    for k in set(expected) & set(got) if tuple(got[k].shape) != tuple(expected[k]))
    if not (missing or extra or shapes):
        return
    parts = []
    for name, items in (("missing", missing), ("unexpected", extra), ("misshapen", shapes)):
        if items:
            more = f" (+{len(items) - 20} more)" if len(items) > 20 else ""
            parts.append(f"{len(items)} {name} key(s): " + ", ".join(items[:20]) + more)
    raise CheckpointError(f"{what} does not match its config: " + "; ".join(parts))


def strip_prefixes(sd: dict[str, torch.Tensor], keep: tuple[str, ...], ignore: tuple[str, ...] = ()) -> dict:
    """Keys under ``keep`` prefixes (prefix kept), minus those under ``ignore``; everything else is left out, as the
    official loaders do with training-only modules (losses, discriminators)."""
    return {k: v for k, v in sd.items() if k.startswith(keep) and not k.startswith(ignore)}


_SHA_CACHE: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file, computed once per process for a given (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of the tensors in name order: the identity of a checkpoint's part
    (e.g. the VQ model inside a 7B HF model dir, whose files mostly hold language-model weights)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def stand_in_note(ident: dict, what: str, marked: bool) -> dict:
    """Add the loud STAND-IN note to an identity whose ``stand_in`` is set (by the recipe or the file's own mark)."""
    if ident.get("stand_in"):
        ident["note"] = (f"STAND-IN: weights in the real {what} format but not the released checkpoint"
                         + (" (random weights written by aromni)" if marked else ""))
    return ident


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: allowed {', '.join(PRECISIONS)}")
    return precision


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device):
    """The numerics a tokenizer's encode runs under (recipe ``tokenizers.*.precision``):

    - fp32: float32 everywhere, TF32 off (the reference codes);
    - tf32: on CUDA, matmuls and cuDNN convolutions may use TF32 (10-bit mantissa inputs, fp32 accumulation); on CPU
      there is no TF32, so it is exactly fp32;
    - bf16: ``torch.autocast`` to bfloat16 (convolutions and matmuls in bf16, reductions and norms in fp32); the
      nearest-code search always runs in fp32.
    The previous TF32 flags are restored after the block, so one process can hold tokenizers of different precisions.
    """
    check_precision(precision)
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
