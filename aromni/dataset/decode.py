"""Turn a shard row back into what it encodes: text, a picture per image span, a waveform per speech span.

The tokenizers are the ones the build's manifest names, loaded through the same registries the build used
(``aromni.model.IMAGE_LOADERS`` / ``SPEECH_LOADERS``), so a real checkpoint format decodes here as soon as its loader
is registered. Where a tokenizer cannot decode (file not found, kind not registered, encode-only, a different file than
the build used) the decoder says why instead of guessing, and the rest of the row still decodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aromni.dataset.folder import BuildFolder
from aromni.sample import Segment

MODALITIES = ("text", "image", "speech")


@dataclass
class SegmentView:
    """One decoded segment: ``text`` for text spans; ``media`` (a PIL image, or (wave, rate)) for image/speech."""
    index: int
    role: str
    modality: str
    start: int
    end: int
    text: str | None = None
    media: Any = None
    problem: str | None = None  # why media could not be decoded
    file: Path | None = None    # where the media was written (show)


def _cfg(folder: BuildFolder, modality: str) -> dict | None:
    return (folder.recipe.get("tokenizers") or {}).get(modality)


def tokenizer_path(folder: BuildFolder, modality: str, override: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """Where the tokenizer file of ``modality`` is now: the override, else the path the build recorded, else the
    recipe's path under its data_root (relative to the current directory, then to the build folder's parent).
    Returns (path or None, the places tried)."""
    if override:
        return Path(override).expanduser(), [str(override)]
    cfg = _cfg(folder, modality) or {}
    ident = (folder.manifest.get("tokenizers") or {}).get(modality) or {}
    tried: list[Path] = []
    if ident.get("path"):
        tried.append(Path(ident["path"]))
    if cfg.get("path"):
        p = Path(cfg["path"]).expanduser()
        root = Path(folder.recipe.get("data_root") or ".").expanduser()
        if p.is_absolute():
            tried.append(p)
        elif root.is_absolute():
            tried.append(root / p)
        else:
            tried += [Path.cwd() / root / p, folder.path.resolve().parent / root / p]
    for t in tried:
        if t.exists():
            return t, [str(x) for x in tried]
    return None, [str(x) for x in tried]


class RowDecoder:
    """Decode rows of one build. Tokenizers load lazily, once; ``problems[modality]`` says why one cannot decode."""

    def __init__(self, folder: BuildFolder, overrides: dict[str, str | Path] | None = None):
        self.folder = folder
        self.layout = folder.layout
        self.overrides = {k: v for k, v in (overrides or {}).items() if v}
        self.notes: dict[str, str] = {}      # loaded, with a caveat (stand-in, override with another sha256)
        self.problems: dict[str, str] = {}   # cannot decode, and why
        self._tok: dict[str, Any] = {}
        # structural ids by name; the SFT markers as upstream writes them
        self._names = {v: {"ins": "<-Ins->", "res": "<-Res->"}.get(k, f"<{k}>") for k, v in self.layout.markers.items()}

    # ---- loading -------------------------------------------------------------------------------------------
    def tokenizer(self, modality: str):
        if modality in self._tok or modality in self.problems:
            return self._tok.get(modality)
        try:
            self._tok[modality] = self._load(modality)
        except Exception as e:  # noqa: BLE001 - any loader failure becomes a stated reason, not a crash
            self.problems[modality] = f"cannot decode {modality}: {type(e).__name__}: {e}"
        return self._tok.get(modality)

    def _load(self, modality: str):
        from aromni import model  # importing it registers every available loader

        cfg = _cfg(self.folder, modality)
        ident = (self.folder.manifest.get("tokenizers") or {}).get(modality) or {}
        if cfg is None:
            raise LookupError(f"the build's recipe has no {modality} tokenizer")
        needs_file = modality == "text" or cfg.get("path") is not None
        path, tried = tokenizer_path(self.folder, modality, self.overrides.get(modality))
        if needs_file and path is None:
            raise FileNotFoundError(f"tokenizer file not found (tried {', '.join(tried) or 'nothing'}); pass "
                                    f"--{modality}-tokenizer PATH")
        stand_in = bool(cfg.get("stand_in") or ident.get("stand_in"))
        if stand_in:
            what = (ident.get("note") or f"{ident.get('kind', cfg.get('kind'))}, not the released tokenizer")
            self.notes.setdefault(modality, f"STAND-IN {modality} tokenizer ({what.removeprefix('STAND-IN: ')}); "
                                            f"decoded with that same stand-in")
        if modality == "text":
            tok = model.load_text_tokenizer(path, self.layout, stand_in=stand_in)
        else:
            registry = model.IMAGE_LOADERS if modality == "image" else model.SPEECH_LOADERS
            kind = cfg.get("kind")
            if kind not in registry:
                raise LookupError(f"tokenizer kind {kind!r} is not registered in this aromni (known: {sorted(registry)})")
            tok = registry[kind](str(path) if path is not None else None, self.layout, stand_in)
            if not callable(getattr(tok, "decode", None)) or getattr(tok, "can_decode", True) is False:
                raise NotImplementedError(f"the {kind!r} tokenizer at {path} can encode only (no decoder weights); "
                                          f"point --{modality}-tokenizer at a checkpoint that has them")
        # the same checkpoint as the build? (identity sha256: the file for text, the weights for VQGAN/WavTokenizer)
        want, got = ident.get("sha256"), (getattr(tok, "identity", None) or {}).get("sha256")
        if want and got and want != got:
            msg = f"{path} has sha256 {got[:12]}..., the build used {want[:12]}...: decoded output would be wrong"
            if modality not in self.overrides:
                raise ValueError(msg + f"; pass --{modality}-tokenizer to decode with it anyway")
            self.notes[modality] = "override: " + msg
        return tok

    # ---- decoding ------------------------------------------------------------------------------------------
    def text(self, ids) -> str:
        """Structural ids by name (``<bos>``, ``<eoh>``, ``<eos>``...), runs of text ids through the BPE."""
        ids = [int(i) for i in ids]
        tok = self.tokenizer("text")
        out, run = [], []

        def flush():
            if run:
                out.append(tok.decode(run) if tok is not None else "[" + " ".join(map(str, run)) + "]")
                run.clear()

        for i in ids:
            if i in self._names:
                flush()
                out.append(self._names[i])
            else:
                run.append(i)
        flush()
        return "".join(out)

    def image(self, span_ids):
        """Ids of an image segment (with its 8197/8196 markers) -> a PIL image."""
        codes = self.layout.image_codes(list(span_ids)[1:-1])
        tok = self.tokenizer("image")
        if tok is None:
            raise RuntimeError(self.problems["image"])
        return _to_pil(tok.decode(np.asarray([codes], dtype=np.int64)))

    def speech(self, span_ids) -> tuple[np.ndarray, int]:
        """Ids of a speech segment (with 12821 and, when present, 12820) -> (mono float32 wave, sample rate)."""
        body = [int(i) for i in span_ids][1:]
        if body and body[-1] == self.layout.eoa:
            body = body[:-1]
        codes = self.layout.speech_codes(body)
        tok = self.tokenizer("speech")
        if tok is None:
            raise RuntimeError(self.problems["speech"])
        out = tok.decode(np.asarray(codes, dtype=np.int64))
        rate = getattr(tok, "sample_rate", self.layout.speech_sample_rate)
        if isinstance(out, tuple):
            out, rate = out
        wave = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out, dtype=np.float32).reshape(-1)
        return wave, int(rate)

    def segments(self, row: dict) -> list[SegmentView]:
        ids = row["input_ids"]
        views = []
        for k, s in enumerate(row["segments"]):
            s = s if isinstance(s, Segment) else Segment(**s)
            v = SegmentView(k, s.role, s.modality, s.start, s.end)
            span = ids[s.start:s.end]
            try:
                if s.modality == "text":
                    v.text = self.text(span)
                elif s.modality == "image":
                    v.media = self.image(span)
                else:
                    v.media = self.speech(span)
            except Exception as e:  # noqa: BLE001 - one bad span must not hide the rest of the row
                v.problem = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
            views.append(v)
        return views


def _to_pil(out):
    """Whatever an image decoder returns (PIL list, tensor/array CHW or HWC in [-1,1], [0,1] or 0..255) -> PIL."""
    from PIL import Image

    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, Image.Image):
        return out
    a = np.asarray(out.detach().float().cpu() if hasattr(out, "detach") else out)
    while a.ndim > 3:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        if a.min() < 0:
            a = (a + 1) / 2
        if a.max() <= 1.0:
            a = a * 255
        a = a.clip(0, 255).astype(np.uint8)
    return Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a)
