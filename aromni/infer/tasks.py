"""Every task from Python: ``Omni.load(model_dir)`` then ``tts`` / ``asr`` / ``caption`` / ``t2i`` / ``chat``.

    omni = Omni.load("runs/model")                    # tokenizers: from the model dir, else stand-ins (loudly)
    reply = omni.tts("hello")                         # reply.audio (24 kHz), reply.metrics (FTL, RTF)
    for chunk in omni.tts_stream("hello"): ...        # AudioChunk(samples, sample_rate, ...) as they are ready
    omni.t2i("a red fox").images[0].save("fox.png")   # 512 x 512
    chat = omni.chat(); chat.send(Message(text="hi")).text

Each task pins what its reply may contain (``Constraints``) as its template's assistant part does: tts opens a
speech span at once, t2i an image; asr and caption answer in text; chat may mix all three. Greedy vs sampling
defaults follow upstream's scripts (tts / asr / caption greedy, t2i and chat sampled).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from aromni.infer.generate import Options, Session
from aromni.infer.lm import ChameleonLM
from aromni.infer.outputs import Reply, split_reply, text_of
from aromni.infer.prompts import Message, assistant_turn, chat_turn, task_prompt
from aromni.infer.spoken import Padding, spoken_codes
from aromni.infer.state import Constraints, DecodeError, VocabMasks, unused_reserved_ids
from aromni.infer.stream import AudioChunk, SpeechStream
from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.model.chameleon import MODEL_NOTE, load_chameleon, model_note, resolve_model_dir

TASKS = ("tts", "asr", "caption", "t2i", "chat")


@dataclass(frozen=True)
class TaskSpec:
    constraints: Constraints
    max_new_tokens: int


def task_specs(layout: Layout = AR_OMNI_V0_1) -> dict[str, TaskSpec]:
    image = layout.image_tokens + 3  # <boi> 1024 codes <eoi> and a stop id
    return {
        "tts": TaskSpec(Constraints(text=False, images=0, speech=1, start=layout.boa, greedy=True), 2000),
        "asr": TaskSpec(Constraints(text=True, images=0, speech=0, greedy=True), 512),
        "caption": TaskSpec(Constraints(text=True, images=0, speech=0, greedy=True), 512),
        "t2i": TaskSpec(Constraints(text=False, images=1, speech=0, start=layout.boi), image),
        "chat": TaskSpec(Constraints(), 2048),
    }


# ---------------------------------------------------------------------------------------------------------------
# tokenizers: explicit "KIND[:PATH]" specs, else real checkpoints found in the model dir, else stand-ins
def _media_tokenizer(registry: dict, spec: str | None, model_dir: Path, auto_kind: str, what: str, layout: Layout):
    if spec:
        kind, _, path = spec.partition(":")
        if kind not in registry:
            raise ValueError(f"unknown {what} tokenizer kind {kind!r}; registered: {sorted(registry)} "
                             f"(write KIND or KIND:PATH)")
        return registry[kind](path or str(model_dir), layout, False)
    if auto_kind in registry:
        for where in (model_dir, model_dir / "tokenizer", model_dir / auto_kind):
            if not where.is_dir():
                continue
            try:
                tok = registry[auto_kind](str(where), layout, False)
            except (OSError, ValueError):
                continue
            if getattr(tok, "can_decode", True):
                return tok
    warnings.warn(f"no {what} tokenizer checkpoint in {model_dir}: using the STAND-IN {what} tokenizer "
                  f"(pass --{what}-tokenizer KIND:PATH for a real one)", stacklevel=3)
    return registry["standin"](None, layout, True)


def recorded_text_identity(model_dir: Path) -> tuple[dict | None, str]:
    """The text tokenizer identity recorded for a model dir, from the same place the build's manifest keeps it:
    the model note's own ``tokenizers.text`` (converted / future trained dirs), else the manifest of the data it
    was trained on (``data`` in the note: <data>/manifest.json ``tokenizers.text``). Returns (identity, where)."""
    note = model_note(model_dir)
    own = (note.get("tokenizers") or {}).get("text")
    if isinstance(own, dict):
        return own, f"{model_dir / MODEL_NOTE}"
    data = note.get("data")
    if data:
        manifest = Path(str(data)) / "manifest.json"
        try:
            return json.loads(manifest.read_text())["tokenizers"]["text"], str(manifest)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return None, ""


def load_text(model_dir: Path, explicit: str | None, layout: Layout):
    """The text tokenizer: ``explicit`` (a path the user named), else the model dir's copy, whose stand-in flag is
    the one recorded with it (the build's manifest says stand-in -> the reply says stand-in)."""
    from aromni.model.text import load_text_tokenizer
    tok = load_text_tokenizer(explicit or model_dir, layout)
    recorded, where = (None, "") if explicit else recorded_text_identity(model_dir)
    if recorded is not None and recorded.get("sha256") in (None, tok.sha256):
        tok.stand_in = bool(recorded.get("stand_in"))
        tok.recorded_in = where
    elif explicit is None and model_note(model_dir).get("stand_in") and recorded is None:
        # a stand-in model dir whose tokenizer has no record: do not claim it is the released one
        tok.stand_in = True
        tok.recorded_in = "model note (stand_in model, tokenizer not recorded)"
    return tok


def load_tokenizers(model_dir, text: str | None = None, image: str | None = None, speech: str | None = None,
                    layout: Layout = AR_OMNI_V0_1):
    from aromni.model import IMAGE_LOADERS, SPEECH_LOADERS, Tokenizers

    d = Path(model_dir)
    return Tokenizers(load_text(d, text, layout),
                      _media_tokenizer(IMAGE_LOADERS, image, d, "vqgan", "image", layout),
                      _media_tokenizer(SPEECH_LOADERS, speech, d, "wavtokenizer", "speech", layout))


def text_vocab(text_tokenizer) -> dict[str, int]:
    """name -> id of a text tokenizer (its ``<reservedNNNNN>`` names say which ids are placeholders)."""
    vocab = getattr(text_tokenizer, "vocab", None)
    if vocab is not None:
        return dict(vocab)
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(text_tokenizer.path)).get_vocab(with_added_tokens=True)


# ---------------------------------------------------------------------------------------------------------------
class Omni:
    """A loaded model with its tokenizers; every task returns a ``Reply``."""

    def __init__(self, lm, tokenizers, layout: Layout = AR_OMNI_V0_1, options: Options = Options(),
                 model_info: dict | None = None):
        self.lm, self.tok, self.layout, self.options = lm, tokenizers, layout, options
        self.model_info = model_info or {}
        self.specs = task_specs(layout)
        self._masks = None

    @classmethod
    def load(cls, model_dir, *, text_tokenizer: str | None = None, image_tokenizer: str | None = None,
             speech_tokenizer: str | None = None, dtype: str = "float32", device: str = "cpu",
             layout: Layout = AR_OMNI_V0_1, options: Options = Options()) -> "Omni":
        if not hasattr(torch, dtype):
            raise ValueError(f"unknown dtype {dtype!r} (float32, bfloat16, float16)")
        model_dir = resolve_model_dir(model_dir)   # a Meta-format checkpoint: its converted HF dir
        model = load_chameleon(model_dir, dtype=getattr(torch, dtype), device=device)
        toks = load_tokenizers(model_dir, text_tokenizer, image_tokenizer, speech_tokenizer, layout)
        return cls(ChameleonLM(model), toks, layout, options, {"path": str(model_dir), **model_note(model_dir)})

    # ---- plumbing ----------------------------------------------------------------------------------------
    def session(self) -> Session:
        if self._masks is None:  # masks are built once per Omni
            self._masks = VocabMasks(self.layout, self.lm.vocab_size, self.tok.text.vocab_size,
                                     device=getattr(self.lm, "device", "cpu"),
                                     unused=unused_reserved_ids(text_vocab(self.tok.text), self.layout))
        return Session(self.lm, self.layout, masks=self._masks)

    def task_options(self, task: str, options: Options | None, **overrides) -> Options:
        o = options or replace(self.options, max_new_tokens=self.specs[task].max_new_tokens)
        return replace(o, **{k: v for k, v in overrides.items() if v is not None})

    def encode_image(self, image) -> list[int]:
        from PIL import Image
        img = Image.open(image) if isinstance(image, (str, os.PathLike)) else image
        if self.tok.image is None:
            raise DecodeError("no image tokenizer loaded")
        return [int(c) for c in self.tok.image.encode([img])[0]]

    def encode_speech(self, audio) -> list[int]:
        import soundfile as sf
        wave, sr = sf.read(str(audio), dtype="float32", always_2d=False) if isinstance(audio, (str, os.PathLike)) \
            else audio
        if self.tok.speech is None:
            raise DecodeError("no speech tokenizer loaded")
        return [int(c) for c in self.tok.speech.encode([(wave, sr)])[0]]

    @property
    def provenance(self) -> dict:
        return {"model": self.model_info, "tokenizers": self.tok.identities,
                "text_tokenizer_recorded_in": getattr(self.tok.text, "recorded_in", None),
                "stand_in": bool(self.tok.any_stand_in or self.model_info.get("stand_in"))}

    def decode_reply(self, ids: list[int], metrics: dict | None = None, speech: list | None = None) -> Reply:
        """Split and decode a reply's ids. ``speech`` (already decoded waves, e.g. by a stream) skips re-decoding."""
        L = self.layout
        parts = split_reply(ids, L)
        r = Reply(ids=list(ids), parts=parts, metrics=metrics or {}, provenance=self.provenance,
                  sample_rate=L.speech_sample_rate)
        text_ids = [i for p in parts if p.kind == "text" for i in p.ids]
        if L.ins in text_ids and L.res in text_ids[text_ids.index(L.ins):]:   # <-Ins-> transcript <-Res-> reply
            a = text_ids.index(L.ins)
            b = text_ids.index(L.res, a)
            r.transcript = text_of(text_ids[a + 1:b], self.tok.text, L).strip()
            text_ids = text_ids[:a] + text_ids[b + 1:]
        r.text = text_of(text_ids, self.tok.text, L).strip()
        full = [p for p in parts if p.kind == "image" and p.complete]
        if full:
            codes = torch.tensor([L.image_codes(p.ids) for p in full])
            r.images = list(self.tok.image.decode(codes))
        if speech is not None:
            r.speech = list(speech)
        else:
            for p in parts:
                if p.kind == "speech" and p.ids:
                    wave, sr = self.tok.speech.decode(L.speech_codes(p.ids))
                    r.speech.append(np.asarray(wave, dtype=np.float32).reshape(-1))
                    r.sample_rate = int(sr)
        return r

    def _run(self, task: str, prompt: list[int], options: Options, t0: float) -> Reply:
        s = self.session()
        s.extend(prompt)
        ids = [st.token for st in s.generate(self.specs[task].constraints, options, t0=t0)]
        return self.finish(ids, s, t0, task=task)

    def finish(self, ids: list[int], session: Session, t0: float, **info) -> Reply:
        """Decode a generated reply and attach its timings (RTF counts generation and decoding)."""
        t_gen = time.perf_counter() - t0
        reply = self.decode_reply(ids)
        total = time.perf_counter() - t0
        t = session.timing
        m = {**info, "context_tokens": t.prompt_tokens, "prefilled_tokens": t.prefill_tokens, "new_tokens": len(ids),
             "first_token_s": t.first_token_s, "first_speech_token_s": t.first_speech_s, "generate_s": t_gen,
             "total_s": total,
             "tokens_per_s": len(ids) / t_gen if t_gen > 0 else None}
        audio_s = len(reply.audio) / reply.sample_rate
        if audio_s:
            m.update(audio_s=audio_s, rtf=total / audio_s)
        reply.metrics = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()}
        return reply

    # ---- tasks -------------------------------------------------------------------------------------------
    def _task(self, task: str, t0: float, options: Options | None, kw: dict, **fields) -> Reply:
        prompt = task_prompt(task, self.tok.text.encode, layout=self.layout, **fields)
        return self._run(task, prompt, self.task_options(task, options, **kw), t0)

    def tts(self, text: str, instruction: str | None = None, options: Options | None = None, **kw) -> Reply:
        return self._task("tts", time.perf_counter(), options, kw, text=text, instruction=instruction)

    def tts_stream(self, text: str, instruction: str | None = None, options: Options | None = None,
                   chunking: dict | None = None, **kw) -> "SpeechReplyStream":
        """Speech as it is generated: iterate for ``AudioChunk``s; afterwards ``.reply`` and ``.metrics``."""
        t0 = time.perf_counter()
        prompt = task_prompt("tts", self.tok.text.encode, text=text, instruction=instruction, layout=self.layout)
        s = self.session()
        s.extend(prompt)
        steps = s.generate(self.specs["tts"].constraints, self.task_options("tts", options, **kw), t0=t0)
        return SpeechReplyStream(self, SpeechStream(steps, self.tok.speech.decode, self.layout, t0, **(chunking or {})))

    def asr(self, audio, instruction: str | None = None, options: Options | None = None, **kw) -> Reply:
        """``audio``: a file path or (wave, sample_rate)."""
        t0 = time.perf_counter()
        return self._task("asr", t0, options, kw, speech_codes=self.encode_speech(audio), instruction=instruction)

    def caption(self, image, instruction: str | None = None, options: Options | None = None, **kw) -> Reply:
        """``image``: a file path or a PIL image."""
        t0 = time.perf_counter()
        return self._task("caption", t0, options, kw, image_codes=self.encode_image(image), instruction=instruction)

    def t2i(self, text: str, instruction: str | None = None, options: Options | None = None, **kw) -> Reply:
        return self._task("t2i", time.perf_counter(), options, kw, text=text, instruction=instruction)

    def batch(self, task: str, inputs: list, instruction: str | None = None, options: Options | None = None,
              **kw) -> list[Reply]:
        """Several prompts of one task in one batched decode (``aromni.infer.batch``): tts / t2i take texts, asr
        audio (paths or (wave, rate)), caption images. Replies in input order; their metrics carry the batch's
        wall time and size."""
        from aromni.infer.batch import generate_batch
        if task not in ("tts", "t2i", "asr", "caption"):
            raise ValueError(f"batched decoding is for tts, t2i, asr, caption; got {task!r}")
        t0 = time.perf_counter()
        field = {"tts": "text", "t2i": "text", "asr": "speech_codes", "caption": "image_codes"}[task]
        encode = {"asr": self.encode_speech, "caption": self.encode_image}.get(task, lambda x: x)
        prompts = [task_prompt(task, self.tok.text.encode, layout=self.layout, instruction=instruction,
                               **{field: encode(x)}) for x in inputs]
        opts = self.task_options(task, options, **kw)
        if self._masks is None:
            self.session()
        res = generate_batch(self.lm, prompts, self._masks, self.specs[task].constraints, opts, self.layout)
        out = []
        for ids in res.ids:
            r = self.decode_reply(ids)
            r.metrics = {"task": task, "batch_size": len(inputs), "batch_s": round(res.seconds, 5),
                         "new_tokens": len(ids), "prompts_per_s": round(len(inputs) / res.seconds, 5)}
            out.append(r)
        return out

    def chat(self, options: Options | None = None, **kw) -> "Chat":
        return Chat(self, self.task_options("chat", options, **kw))


class SpeechReplyStream:
    """Iterate for audio chunks; after the iteration, ``reply`` (text, speech, ids) and ``metrics`` are ready."""

    def __init__(self, omni: Omni, stream: SpeechStream):
        self.omni, self.stream = omni, stream
        self.reply: Reply | None = None

    def __iter__(self) -> Iterator[AudioChunk]:
        yield from self.stream
        self.reply = self.omni.decode_reply(self.stream.tokens, self.stream.metrics.as_dict(), self.stream.audio)

    @property
    def metrics(self):
        return self.stream.metrics


class Chat:
    """A multi-turn conversation; the KV cache is kept from turn to turn (only new ids are forwarded)."""

    def __init__(self, omni: Omni, options: Options):
        self.omni, self.options = omni, options
        self.session = omni.session()
        self.turns = 0

    def _codes(self, image=None, audio=None, image_codes=None, speech_codes=None):
        if image is not None:
            image_codes = self.omni.encode_image(image)
        if audio is not None:
            speech_codes = self.omni.encode_speech(audio)
        return image_codes, speech_codes

    def _close_last_reply(self) -> None:
        """Make the history end like a finished assistant turn: <eom> (upstream turns a final <eos> into <eom>)."""
        s, L = self.session, self.omni.layout
        if not s.tokens or self.turns == 0:
            return
        last = s.tokens[-1]
        if last == L.eos and s.cached < len(s.tokens):
            s.replace_last(L.eom)
        elif last != L.eom:
            # cut by max_new_tokens: close an open span so the next turn starts in text
            from aromni.infer.state import DecodeState
            state = DecodeState.after_prompt(s.tokens, s.masks)
            tail = {"image": [L.eoi], "speech": [L.eoa]}.get(state.mode, [])
            s.extend(tail + [L.eom])

    def add(self, msg: Message, image=None, audio=None) -> None:
        """Add a message without generating (history, or a given assistant answer)."""
        img, sp = self._codes(image, audio, msg.image_codes, msg.speech_codes)
        msg = Message(msg.role, msg.text, img, sp)
        enc = self.omni.tok.text.encode
        if msg.role == "user":
            self._close_last_reply()
            self.session.extend(chat_turn(msg, enc, first=not self.session.tokens, layout=self.omni.layout))
        elif msg.role == "assistant":
            self.session.extend(assistant_turn(msg, enc, self.omni.layout))
        else:
            raise ValueError(f"message role must be user or assistant, got {msg.role!r}")

    def send(self, msg: Message, image=None, audio=None, say: str | None = None, voice=None,
             padding: Padding = Padding()) -> Reply:
        """Add a user message and generate the reply (text, images, speech).

        ``say``: text that ``voice`` (an ``aromni.voice.Synthesizer`` or anything with ``speak(text)``) speaks as
        the user's speech, tokenized with the speech tokenizer (upstream's recommended chat input); ``msg.text`` is
        then the instruction after the speech (default: the chat template's append text)."""
        t0 = time.perf_counter()
        spoken = None
        if say is not None:
            if audio is not None or msg.speech_codes:
                raise ValueError("give the user's speech once: say= or audio= / speech_codes, not both")
            if voice is None:
                raise ValueError("say= needs a voice (aromni.voice.get_synthesizer('espeak', {}) or cosyvoice2)")
            codes, spoken = spoken_codes(say, voice, self.omni.tok.speech, padding, self.omni.layout.speech_sample_rate)
            msg = Message(msg.role, msg.text, msg.image_codes, codes)
        self.add(msg, image, audio)
        ids = [st.token for st in self.session.generate(self.omni.specs["chat"].constraints, self.options, t0=t0)]
        self.turns += 1
        reply = self.omni.finish(ids, self.session, t0, task="chat", turn=self.turns)
        if spoken is not None:
            reply.provenance = {**reply.provenance, "spoken_input": spoken,
                                "stand_in": bool(reply.provenance.get("stand_in") or spoken["speech_tokenizer_stand_in"]
                                                 or (isinstance(spoken["voice"], dict)
                                                     and bool(spoken["voice"].get("stand_in"))))}
        return reply
