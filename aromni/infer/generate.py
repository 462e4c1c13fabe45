"""The decode loop: one ``Session`` holds the ids and the KV cache of a conversation; ``generate`` extends it.

Each step: the ``DecodeState`` (derived from the ids so far) gives the allowed mask, whether the step is greedy and
which modality's sampling applies; an image step mixes the three guided rows (``cfg.GuidedRows``); the chosen id is
appended and forwarded through the cache. The cache is kept across segments (text -> image -> text) and across turns
(``Session.extend`` then ``generate`` again): the prompt of turn N+1 is only the new ids.

A stop id ends the reply and is NOT forwarded yet (a chat replaces a final <eos> with <eom> before the next turn;
the next ``extend`` forwards whatever is pending).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from aromni.infer.cfg import Guidance, GuidedRows
from aromni.infer.sampler import choose
from aromni.infer.state import (IMAGE, IMAGE_SAMPLING, SPEECH, TEXT, TEXT_SAMPLING, Constraints, DecodeError, DecodeState,
                                Sampling, VocabMasks)
from aromni.layout import AR_OMNI_V0_1, Layout


@dataclass(frozen=True)
class Options:
    """Decoding settings for one reply (reference §5 defaults)."""
    max_new_tokens: int = 1500
    text: Sampling = TEXT_SAMPLING
    speech: Sampling = TEXT_SAMPLING      # upstream decodes speech with the text settings
    image: Sampling = IMAGE_SAMPLING
    guidance: Guidance = field(default_factory=Guidance)
    seed: int = 0


@dataclass
class Step:
    """One generated id, with the mode it was generated in and when (seconds since the reply was asked for)."""
    token: int
    mode: str
    t: float


@dataclass
class Timing:
    """Wall-clock of one reply. ``first_token_s``: request -> first generated id (prefill included)."""
    prompt_tokens: int = 0          # the whole context before the reply
    prefill_tokens: int = 0         # of which forwarded now (the rest was already in the KV cache)
    new_tokens: int = 0
    prefill_s: float = 0.0
    first_token_s: float | None = None
    first_speech_s: float | None = None   # request -> first speech code
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0


class Session:
    """The ids and KV cache of one conversation on one model."""

    def __init__(self, lm, layout: Layout = AR_OMNI_V0_1, text_vocab_size: int | None = None,
                 masks: VocabMasks | None = None):
        self.lm, self.layout = lm, layout
        self.masks = masks or VocabMasks(layout, lm.vocab_size, text_vocab_size, device=getattr(lm, "device", "cpu"))
        self.tokens: list[int] = []
        self.cache = lm.new_cache()
        self.cached = 0                 # how many of self.tokens the cache holds
        self.logits: torch.Tensor | None = None   # next-token logits after the last cached id
        # ids already in the sequence, each once (for the repetition penalty): a set to test, a buffer to index
        self._seen: set[int] = set()
        self._seen_buf = torch.empty(lm.vocab_size, dtype=torch.long, device=self.masks.device)
        self.timing = Timing()

    # ---- ids in ------------------------------------------------------------------------------------------
    def extend(self, ids) -> None:
        """Append ids (a prompt, a user turn). They are forwarded lazily, by the next ``generate``."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.lm.vocab_size]
        if bad:
            raise DecodeError(f"ids outside the model's vocabulary of {self.lm.vocab_size}: {bad[:5]}")
        self.tokens.extend(ids)
        self._mark(ids)

    def _mark(self, ids) -> None:
        new = [i for i in dict.fromkeys(ids) if i not in self._seen]
        if new:
            n = len(self._seen)
            self._seen.update(new)
            self._seen_buf[n:n + len(new)] = torch.tensor(new, dtype=torch.long)

    @property
    def seen(self) -> torch.Tensor:
        """The distinct ids of the sequence so far."""
        return self._seen_buf[:len(self._seen)]

    def replace_last(self, token: int) -> None:
        """Swap the last id if it is not cached yet (a final <eos> becomes <eom> between chat turns)."""
        if self.cached >= len(self.tokens):
            raise DecodeError("the last id is already in the KV cache")
        self.tokens[-1] = int(token)
        self._mark([int(token)])

    def _sync(self) -> None:
        if self.cached < len(self.tokens):
            ids = torch.tensor([self.tokens[self.cached:]], dtype=torch.long)
            self.logits = self.lm.forward(ids, self.cache).reshape(-1)
            self.cached = len(self.tokens)
        if self.logits is None:
            raise DecodeError("nothing to continue from: extend the session with a prompt first")

    # ---- ids out -----------------------------------------------------------------------------------------
    def generate(self, constraints: Constraints = Constraints(), options: Options = Options(),
                 t0: float | None = None) -> Iterator[Step]:
        """Yield the reply's ids one by one (a generator: stop early by not asking for more)."""
        t0 = time.perf_counter() if t0 is None else t0
        prompt_len, fresh = len(self.tokens), len(self.tokens) - self.cached
        self._sync()
        timing = self.timing = Timing(prompt_tokens=prompt_len, prefill_tokens=fresh,
                                      prefill_s=time.perf_counter() - t0)
        max_len = min(prompt_len + options.max_new_tokens, self.lm.max_len)
        if max_len <= prompt_len:
            raise DecodeError(f"the prompt ({prompt_len} ids) leaves no room: the model allows {self.lm.max_len}")
        state = DecodeState.after_prompt(self.tokens, self.masks, constraints, max_len)
        if constraints.start is not None:
            self._check_start(state, constraints, options, prompt_len)
        gen = torch.Generator(device=self.masks.device).manual_seed(options.seed)
        rows: GuidedRows | None = None
        if state.mode == IMAGE and state.span < self.layout.image_tokens and options.guidance.active:
            # the prompt itself opened the image (e.g. ends with <boi>): guide from the first code on
            rows = GuidedRows(self.lm, self.cache, self.logits, self.tokens, options.guidance, self.layout)
        try:
            while state.length < max_len and not state.done:
                mode = state.mode
                if state.forced is not None:
                    tok = state.forced
                elif rows is not None:
                    allowed = state.allowed()
                    tok = choose(rows.guided(self.lm.vocab_size), allowed, options.image, state.step_greedy, None, gen,
                                 self.masks.ids(allowed))
                else:
                    s = {IMAGE: options.image, SPEECH: options.speech}.get(mode, options.text)
                    allowed = state.allowed()
                    tok = choose(self.logits, allowed, s, state.step_greedy, self.seen, gen,
                                 None if mode == TEXT else self.masks.ids(allowed))
                state.advance(tok)
                self.tokens.append(tok)
                if tok not in self._seen:
                    self._mark([tok])
                now = time.perf_counter() - t0
                if timing.first_token_s is None:
                    timing.first_token_s = now
                if mode == SPEECH and timing.first_speech_s is None:
                    timing.first_speech_s = now
                timing.new_tokens += 1
                timing.total_s = now
                yield Step(tok, mode, now)
                if state.done or state.length >= max_len:
                    break
                # forward the new id: through the three guided rows while the image needs more codes
                if rows is not None and state.mode == IMAGE and state.span < self.layout.image_tokens:
                    rows.push(tok)
                    self.cached = len(self.tokens)
                    continue
                if rows is not None:  # the last code: only row 0 goes on
                    rows = self._close(rows)
                self._sync()
                if state.mode == IMAGE and state.span == 0 and options.guidance.active:
                    rows = GuidedRows(self.lm, self.cache, self.logits, self.tokens, options.guidance, self.layout)
        finally:
            if rows is not None:  # stopped inside an image
                self._close(rows)
            timing.total_s = time.perf_counter() - t0

    def _check_start(self, state: DecodeState, c: Constraints, options: Options, prompt_len: int) -> None:
        L = self.layout
        if c.start == L.boi and not state._image_may_open():
            raise DecodeError(f"no room for an image: it needs {L.image_tokens + 2} new ids, "
                              f"max_new_tokens={options.max_new_tokens} and the model allows {self.lm.max_len} "
                              f"positions ({prompt_len} used by the prompt)")
        free = self.masks.text_mode(c.text, state._image_may_open(), state._speech_may_open())
        if state.mode != TEXT or not bool(free[c.start]):
            raise DecodeError(f"the constraints contradict themselves: the reply must start with id {c.start}, "
                              f"which they do not allow here ({c})")

    def _close(self, rows: GuidedRows) -> None:
        """Back to one row. The guided rows computed image-code logits only, so the full next-token logits are
        recomputed: the last id is taken out of the cache (if it is in) and forwarded again by the next _sync."""
        self.cache = rows.close()
        if self.cached == len(self.tokens):
            self.lm.crop(self.cache, 1)
            self.cached -= 1
        self.logits = None
        return None
