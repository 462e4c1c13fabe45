"""``cosyvoice2``: zero-shot CosyVoice2 synthesis from a model directory in its published layout.

Needs the optional extra ``pip install 'aromni[cosyvoice]'`` (the ``cosyvoice-minicpmo`` package + the dependencies its
metadata forgets). We load the directory ourselves with that package's classes instead of its ``CosyVoice2`` wrapper,
because the wrapper (measured, cosyvoice-minicpmo 0.1.0): never loads ``llm.pt``; downloads from a model hub when the
path does not exist; breaks with ``text_frontend=True``; and runs the LLM in a thread that swallows exceptions.
Here: the directory is checked first (a clear error, never a download); ``llm.pt``/``flow.pt``/``hift.pt`` are loaded
with ``torch.load(weights_only=True)``; text is normalised by ``aromni.voice.text`` beforehand; an exception in the LLM
thread is re-raised and an empty token list is an error; sampling is seeded from (seed, text) inside a forked RNG, so
the same reply gives the same audio and global random state is left untouched.
The voice is AR-Omni's recipe: one reference clip (e.g. 4.9 s at 24 kHz) and its prompt text, for every reply.
"""
from __future__ import annotations

import hashlib
import random
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import Field

from aromni.voice.backend import SAMPLE_RATE, BackendOptions, VoiceBackend, VoiceError, register_backend

LAYOUT = ("cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx",
          "CosyVoice-BlankEN")
AR_OMNI_PROMPT = "Ask her to bring these things with her from the store."


class CosyVoice2Options(BackendOptions):
    model_dir: str = Field(description="CosyVoice2 model directory (cosyvoice2.yaml, llm.pt, flow.pt, hift.pt, "
                                       "campplus.onnx, speech_tokenizer_v2.onnx, CosyVoice-BlankEN/)")
    reference_audio: str = Field(description="the reference speaker clip (any rate; AR-Omni: 4.9 s at 24 kHz)")
    prompt_text: str = Field(AR_OMNI_PROMPT, description="what the reference clip says")
    speed: float = Field(1.0, gt=0.25, le=4.0)
    seed: int = Field(0, description="sampling seed; the RNG of each reply is seeded by hash(seed, text)")
    max_chunk_chars: int = Field(250, ge=20, description="long replies are spoken sentence group by sentence group")
    device: str | None = Field(None, description="cpu / cuda; default: cuda when available")


def hash_dir(d: Path, names=LAYOUT) -> str:
    """sha256 over the layout's files (relative path + content), so any changed weight changes the cache key."""
    h = hashlib.sha256()
    files = []
    for n in names:
        p = d / n
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(d)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


@contextmanager
def preserved_global_rng():
    """The published yaml seeds random/numpy/torch when loaded; keep the process's global state as it was."""
    import torch
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _split(text: str, max_chars: int) -> list[str]:
    import re
    sentences = [s for s in re.split(r"(?<=[.!?;])\s+", text) if s.strip()]
    chunks, cur = [], ""
    for s in sentences:
        while len(s) > max_chars:  # one over-long sentence: cut at a word boundary
            cut = s.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            chunks += [c for c in (cur, s[:cut]) if c]
            cur, s = "", s[cut:].strip()
        if cur and len(cur) + 1 + len(s) > max_chars:
            chunks.append(cur)
            cur = s
        else:
            cur = f"{cur} {s}".strip()
    return chunks + ([cur] if cur else [])


@register_backend
class CosyVoice2Backend(VoiceBackend):
    name = "cosyvoice2"
    Options = CosyVoice2Options

    def __init__(self, options=None, root=None):
        super().__init__(options, root)
        self.model_dir = self._resolve(self.opts.model_dir)
        self.reference = self._resolve(self.opts.reference_audio)
        self._model = None
        self._sha: str | None = None
        self._lock = threading.Lock()
        missing = [n for n in LAYOUT if not (self.model_dir / n).exists()]
        if not self.model_dir.is_dir() or missing:
            raise VoiceError(f"{self.model_dir} is not a CosyVoice2 model directory: missing "
                             f"{missing if self.model_dir.is_dir() else 'the directory itself'} "
                             f"(expected {', '.join(LAYOUT)}; nothing is downloaded)")
        if not self.reference.is_file():
            raise VoiceError(f"reference_audio {self.reference} does not exist")
        self.stand_in = (self.model_dir / "STAND_IN.txt").exists()

    def _resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.root / q

    def model_sha256(self) -> str:
        if self._sha is None:
            self._sha = hash_dir(self.model_dir)
        return self._sha

    def _reference_16k(self) -> np.ndarray:
        import soundfile as sf
        import soxr
        wave, sr = sf.read(self.reference, dtype="float32", always_2d=True)
        wave = wave.mean(axis=1)
        return soxr.resample(wave, sr, 16000).astype(np.float32) if sr != 16000 else wave

    def voice(self) -> str:
        ref = hashlib.sha256(self._reference_16k().tobytes()).hexdigest()[:16]
        o = self.opts
        return f"cosyvoice2:zero-shot:ref={ref}:prompt={o.prompt_text}:speed={o.speed}:seed={o.seed}"

    def check(self) -> None:
        """Everything cosyvoice2.yaml names (``!new:`` / ``!name:`` / ``!apply:``) must exist in the installed
        cosyvoice package, else loading would fail later inside a unit with a bare ImportError. Raises VoiceError
        naming the file, the package version and what to do."""
        import importlib
        import importlib.metadata
        import re
        yaml_path = self.model_dir / "cosyvoice2.yaml"
        try:
            version = importlib.metadata.version("cosyvoice")
        except importlib.metadata.PackageNotFoundError:
            version = "not installed as a distribution"
        for ref in sorted(set(re.findall(r"!(?:new|name|apply):([A-Za-z_][\w.]*)", yaml_path.read_text()))):
            parts = ref.split(".")
            obj, err = None, None
            for i in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError as e:
                    err = e
                    continue
                try:
                    for attr in parts[i:]:
                        obj = getattr(obj, attr)
                except AttributeError as e:
                    err, obj = e, None
                break
            if obj is None:
                raise VoiceError(f"{yaml_path} names {ref}, which the installed cosyvoice package ({version}) cannot "
                                 f"load ({type(err).__name__}: {err}). Use the cosyvoice2.yaml published with this "
                                 f"package version, or install the CosyVoice version the model directory was "
                                 f"published for (see docs/speech.md)")

    def _load(self):
        if self._model is not None:
            return self._model
        try:
            import torch
            from hyperpyyaml import load_hyperpyyaml
            from cosyvoice.cli.frontend import CosyVoiceFrontEnd
            from cosyvoice.cli.model import CosyVoice2Model
        except ImportError as e:
            raise VoiceError(f"the cosyvoice2 backend needs the optional extra: pip install 'aromni[cosyvoice]' "
                             f"({type(e).__name__}: {e})") from None
        d = self.model_dir
        device = torch.device(self.opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with preserved_global_rng(), open(d / "cosyvoice2.yaml") as f:
            configs = load_hyperpyyaml(f, overrides={"qwen_pretrain_path": str(d / "CosyVoice-BlankEN")})
        frontend = CosyVoiceFrontEnd(configs["get_tokenizer"], configs["feat_extractor"], str(d / "campplus.onnx"),
                                     str(d / "speech_tokenizer_v2.onnx"), "", configs["allowed_special"])
        frontend.device = device
        model = CosyVoice2Model(configs["llm"], configs["flow"], configs["hift"], fp16=False)
        model.device = device
        model.llm = configs["llm"]  # the package's CosyVoice2Model forgets the LLM
        model.llm.load_state_dict(torch.load(d / "llm.pt", map_location=device, weights_only=True), strict=True)
        model.flow.load_state_dict(torch.load(d / "flow.pt", map_location=device, weights_only=True), strict=True)
        hift = {k.replace("generator.", ""): v
                for k, v in torch.load(d / "hift.pt", map_location=device, weights_only=True).items()}
        model.hift.load_state_dict(hift, strict=True)
        for m in (model.llm, model.flow, model.hift):
            m.to(device).eval()
        self._errors: list[BaseException] = []
        inner = model.llm_job

        def llm_job(*args, **kwargs):  # the package runs this in a thread and loses its exceptions
            try:
                inner(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._errors.append(e)
                model.llm_end_dict[args[-1]] = True
        model.llm_job = llm_job
        # the speaker prompt is the same for every reply: extract it once
        ref = torch.from_numpy(self._reference_16k()).unsqueeze(0)
        prompt = frontend.frontend_zero_shot("", self.opts.prompt_text, ref, configs["sample_rate"], "")
        self._model = (frontend, model, prompt, int(configs["sample_rate"]))
        return self._model

    def synthesise(self, text: str) -> np.ndarray:
        import torch
        frontend, model, prompt, sr = self._load()
        pieces = []
        with self._lock:
            for i, chunk in enumerate(_split(text, self.opts.max_chunk_chars)):
                tokens, tokens_len = frontend._extract_text_token(chunk)
                seed = int.from_bytes(hashlib.sha256(f"{self.opts.seed}\x1f{i}\x1f{chunk}".encode()).digest()[:8],
                                      "big") % (2**63)
                self._errors.clear()
                with torch.random.fork_rng(devices=[]), torch.inference_mode():
                    torch.manual_seed(seed)
                    try:
                        out = [o["tts_speech"] for o in model.tts(**{**prompt, "text": tokens, "text_len": tokens_len},
                                                                  stream=False, speed=self.opts.speed)]
                    except Exception as e:  # noqa: BLE001 - an empty token list fails inside the flow model
                        if self._errors:
                            raise VoiceError(f"CosyVoice2 LLM failed: {self._errors[0]!r}") from None
                        raise VoiceError(f"CosyVoice2 synthesis failed: {type(e).__name__}: {e}") from None
                if self._errors:
                    raise VoiceError(f"CosyVoice2 LLM failed: {self._errors[0]!r}")
                wave = torch.cat(out, dim=1).reshape(-1).float().cpu().numpy() if out else np.zeros(0, np.float32)
                if wave.size == 0:
                    raise VoiceError(f"CosyVoice2 produced no speech tokens for {chunk[:60]!r}")
                pieces.append(wave)
        wave = np.concatenate(pieces).astype(np.float32)
        if sr != SAMPLE_RATE:
            import soxr
            wave = soxr.resample(wave, sr, SAMPLE_RATE).astype(np.float32)
        return wave
