"""The decoding finite-state machine: which ids may come next, derived from the tokens so far (reference §5).

One ``DecodeState`` is advanced by every token (prompt and reply alike) and answers three questions per step:
which ids are allowed (a precomputed boolean mask, never a Python loop over the vocabulary), whether the step is
greedy or sampled, and which modality's sampling settings apply.

Modes and what each allows:
- TEXT: the stop ids (2, 12831), text ids (when the task allows text), ``<boa>`` (when a speech span may open),
  ``<boi>`` (when an image may open AND ``length < max_len - 1026``: upstream's
  ``DisallowTokensAtOrAfterIndexLogitsProcessor([boi], max_seq_len - 1026)``, i.e. room for ``[8197] 1024 codes
  [8196]`` and the stop id after it). Text ids exclude the tokenizer's ``<reservedNNNNN>`` ids that the layout
  uses for nothing (``unused`` below): upstream allows every ``<...>`` name, and an undertrained model then spends
  a large share of a reply on placeholders that decode to nothing.
- IMAGE (after 8197): only image codes 4..8195 until exactly 1024 of them, then 8196 is forced.
- SPEECH (after 12821): speech codes 8724..12819; once at least one code was emitted, ``<eoa>`` closes the span
  and a stop id (``<eos>`` / ``<eom>``) closes it AND ends the reply (upstream's text decoder stops on those ids
  wherever they come, and its splitter takes a speech run whose ``<eoa>`` is missing).
- DONE: after a stop id; nothing more is generated.
Speech codes are only allowed inside ``<boa> … <eoa>``, which is the grammar every training row follows
(``aromni validate``); upstream's text mode also allows bare speech codes, which its output splitter then has to guess.
Greedy vs sampling follows the last marker of the reply: 12840 ``<-Ins->`` or 12821 ``<boa>`` → greedy,
12841 ``<-Res->`` or 12820 ``<eoa>`` → sampling (upstream ``FiniteTransTokenSelector``). After an image the
switch starts again from the task's default, as upstream's new ``TextDecoder`` (a fresh selector) does.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from aromni.layout import Layout

TEXT, IMAGE, SPEECH, DONE = "text", "image", "speech", "done"


class DecodeError(ValueError):
    """A token or a request the decoding grammar does not allow (e.g. an image with no room left)."""


@dataclass(frozen=True)
class Sampling:
    """How one modality's next id is chosen (applied in this order: penalty, temperature, top-p)."""
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


# Reference §5 / upstream Options: text (and speech, which upstream decodes with the text settings) 1.2 / 0.96 / 1.2;
# images temperature 1.0, top-p 0.96, no repetition penalty.
TEXT_SAMPLING = Sampling(temperature=1.2, top_p=0.96, repetition_penalty=1.2)
IMAGE_SAMPLING = Sampling(temperature=1.0, top_p=0.96, repetition_penalty=1.0)


@dataclass(frozen=True)
class Constraints:
    """What a reply may contain. ``None`` = unlimited; ``start`` forces the reply's first id (t2i: 8197, tts: 12821)."""
    text: bool = True
    images: int | None = None
    speech: int | None = None
    start: int | None = None
    greedy: bool = False            # text/speech greedy until a marker switches it (reference §5)
    image_greedy: bool = False
    stop_ids: tuple[int, ...] | None = None   # default: the layout's (2, 12831); () = never stop (benchmarks)


RESERVED_NAME = re.compile(r"<reserved\d+>")


def unused_reserved_ids(vocab: Mapping[str, int], layout: Layout) -> list[int]:
    """The ids a text tokenizer names ``<reservedNNNNN>`` that the layout gives no job: neither a speech code
    nor a marker (reference §1). ``vocab``: name -> id, as ``tokenizers.Tokenizer.get_vocab()`` returns it."""
    used = set(layout.markers.values())
    return sorted(i for name, i in vocab.items()
                  if RESERVED_NAME.fullmatch(name) and not layout.is_speech_code(i) and i not in used)


@dataclass
class VocabMasks:
    """Boolean masks over the model's vocabulary, built once per (layout, vocab size, device)."""
    layout: Layout
    vocab_size: int
    text_vocab_size: int | None = None   # ids the text tokenizer knows; ids beyond it decode to nothing
    device: str | torch.device = "cpu"
    stop_ids: tuple[int, ...] | None = None
    unused: Iterable[int] = ()           # ids never sampled in text mode (``unused_reserved_ids``)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        L, V = self.layout, self.vocab_size
        if V < L.eom + 1 or V < L.speech_code_end + 1:
            raise ValueError(f"vocabulary of {V} ids is too small for layout {L.name}")
        ids = torch.arange(V)
        self.image_codes = (ids >= L.image_code_start) & (ids <= L.image_code_end)
        self.speech_codes = (ids >= L.speech_code_start) & (ids <= L.speech_code_end)
        self.stop_set = frozenset(self.stop_ids or L.stop_ids)
        self.stops = self._one_hot(self.stop_set)
        not_text = self.image_codes | self.speech_codes | self.stops | self._one_hot(
            (L.boi, L.eoi, L.boa, L.eoa, L.bos, L.pad))
        text = ~not_text
        if self.text_vocab_size is not None:
            text &= ids < self.text_vocab_size
        unused = [i for i in self.unused if 0 <= int(i) < V]
        if unused:
            text[torch.tensor(unused, dtype=torch.long)] = False
        self.text = text
        self.boi = self._one_hot((L.boi,))
        self.boa = self._one_hot((L.boa,))
        self.eoi_only = self._one_hot((L.eoi,))
        self.speech_open = self.speech_codes | self._one_hot((L.eoa,)) | self.stops
        for name in ("image_codes", "speech_codes", "stops", "text", "boi", "boa", "eoi_only", "speech_open"):
            setattr(self, name, getattr(self, name).to(self.device))

    def _one_hot(self, ids) -> torch.Tensor:
        m = torch.zeros(self.vocab_size, dtype=torch.bool)
        m[list(ids)] = True
        return m

    def text_mode(self, text: bool, boi: bool, boa: bool) -> torch.Tensor:
        """The TEXT-mode mask for one combination of permissions (8 combinations, each built once)."""
        key = (text, boi, boa)
        m = self._cache.get(key)
        if m is None:
            m = self.stops.clone()
            if text:
                m |= self.text
            if boi:
                m |= self.boi
            if boa:
                m |= self.boa
            self._cache[key] = m
        return m

    def ids(self, mask: torch.Tensor) -> torch.Tensor:
        """The ids of one of these masks (computed once per mask)."""
        key = ("ids", id(mask))
        v = self._cache.get(key)
        if v is None or v[0] is not mask:
            v = self._cache[key] = (mask, mask.nonzero().reshape(-1))
        return v[1]

    def only(self, token: int) -> torch.Tensor:
        key = ("only", token)
        m = self._cache.get(key)
        if m is None:
            m = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            m[token] = True
            self._cache[key] = m
        return m


@dataclass
class DecodeState:
    """Where decoding stands. ``advance`` it with every id; ``allowed()`` / ``forced`` / ``greedy`` drive the step.

    ``max_len`` is the total sequence length (prompt + reply) decoding may reach; it decides whether an image fits.
    """
    masks: VocabMasks
    constraints: Constraints = field(default_factory=Constraints)
    max_len: int = 4096
    length: int = 0                 # ids so far (prompt + reply)
    reply: int = 0                  # ids of the reply so far
    mode: str = TEXT
    span: int = 0                   # codes in the open image / speech span
    images: int = 0                 # images opened in this reply
    speeches: int = 0               # speech spans opened in this reply
    greedy: bool = False

    def __post_init__(self):
        self.greedy = self.constraints.greedy
        stops = self.constraints.stop_ids
        self._stop = set(self.masks.layout.stop_ids if stops is None else stops)

    @property
    def layout(self) -> Layout:
        return self.masks.layout

    # ---- building ---------------------------------------------------------------------------------------
    @classmethod
    def after_prompt(cls, prompt, masks: VocabMasks, constraints: Constraints = Constraints(),
                     max_len: int = 4096) -> "DecodeState":
        """The state at the start of a reply: the prompt is replayed unchecked (it may even end inside a span)."""
        s = cls(masks, constraints, max_len)
        for t in prompt:
            s.advance(int(t), check=False)
        s.reply = s.images = s.speeches = 0
        s.greedy = constraints.greedy
        if s.mode == DONE:
            s.mode = TEXT
        return s

    def replay(self, reply) -> "DecodeState":
        """A copy advanced (checked) by ``reply``: the state is a function of the tokens."""
        s = copy.copy(self)
        for t in reply:
            s.advance(int(t))
        return s

    # ---- questions --------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.mode == DONE

    @property
    def room(self) -> int:
        return self.max_len - self.length

    @property
    def image_room(self) -> int:
        """Ids a new image needs before ``max_len``: ``<boi>``, the codes, ``<eoi>`` and one more (the stop id);
        the same rule as upstream's ``length < max_seq_len - 1026``."""
        return self.layout.image_tokens + 3

    def _image_may_open(self) -> bool:
        c = self.constraints
        return (c.images is None or self.images < c.images) and self.room >= self.image_room

    def _speech_may_open(self) -> bool:
        c = self.constraints
        return c.speech is None or self.speeches < c.speech

    def allowed(self) -> torch.Tensor:
        """The boolean mask of ids allowed next (a precomputed tensor)."""
        m = self.masks
        if self.mode == TEXT:
            if self.reply == 0 and self.constraints.start is not None:
                return m.only(self.constraints.start)
            return m.text_mode(self.constraints.text, self._image_may_open(), self._speech_may_open())
        if self.mode == IMAGE:
            return m.image_codes if self.span < self.layout.image_tokens else m.eoi_only
        if self.mode == SPEECH:
            return m.speech_codes if self.span == 0 else m.speech_open
        raise DecodeError("decoding is done (a stop id was emitted)")

    @property
    def forced(self) -> int | None:
        """The one id allowed next, when there is only one (no need to look at logits)."""
        if self.mode == TEXT and self.reply == 0 and self.constraints.start is not None:
            return self.constraints.start
        if self.mode == IMAGE and self.span == self.layout.image_tokens:
            return self.layout.eoi
        return None

    @property
    def step_greedy(self) -> bool:
        return self.constraints.image_greedy if self.mode == IMAGE else self.greedy

    # ---- transition -------------------------------------------------------------------------------------
    def advance(self, t: int, check: bool = True) -> None:
        L = self.layout
        if check:
            if self.mode == DONE:
                raise DecodeError(f"id {t} after a stop id")
            if not (0 <= t < self.masks.vocab_size) or not bool(self.allowed()[t]):
                raise DecodeError(f"id {t} is not allowed in mode {self.mode} (span {self.span}, "
                                  f"{self.room} ids of room)")
            if t == L.boi and self.room < self.image_room:
                raise DecodeError(f"an image needs room for {self.image_room} ids, {self.room} left")
        self.length += 1
        self.reply += 1
        if self.mode == IMAGE:
            if t == L.eoi:
                self.mode, self.span = TEXT, 0
                self.greedy = self.constraints.greedy   # upstream: a new TextDecoder, a fresh greedy switch
            else:
                self.span += 1
        elif self.mode == SPEECH:
            if t == L.eoa:
                self.mode, self.span = TEXT, 0
            elif L.is_speech_code(t):
                self.span += 1
            elif t in self.masks.stop_set:  # a stop closes the span; the TEXT branch below ends the reply
                self.mode, self.span = TEXT, 0
            elif check:  # unreachable through allowed(); kept for unchecked replays
                raise DecodeError(f"id {t} inside a speech span")
            else:
                self.mode, self.span = TEXT, 0
        if self.mode == TEXT:
            if t == L.boi:
                self.mode, self.span, self.images = IMAGE, 0, self.images + 1
            elif t == L.boa:
                self.mode, self.span, self.speeches = SPEECH, 0, self.speeches + 1
            elif t in self._stop and check:
                self.mode = DONE
        # greedy / sampling switch on the marker just emitted (reference §5)
        if t in (L.ins, L.boa):
            self.greedy = True
        elif t in (L.res, L.eoa):
            self.greedy = False
