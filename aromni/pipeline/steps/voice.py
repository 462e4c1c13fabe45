"""``voice``: speak assistant replies in one fixed voice (AR-Omni stage 2: replies re-synthesised with CosyVoice2 in a
timbre taken from the pretraining speech, so the model learns to answer in one voice).

For each assistant turn of a dialog (``example.turns``) that should have speech — every assistant turn of a dialog that
has any speech (``which: speech_dialogs``, so text-only dialogs such as UltraChat stay text), or of every dialog
(``which: all_dialogs``); turns that already have audio are re-synthesised unless ``resynthesise: false`` — the step:
1. makes the reply speakable (``aromni.voice.text.speakable``: the documented rule; an unspeakable reply rejects the
   example with its reason, e.g. ``unspeakable_code``, or with ``unspeakable: text_only`` leaves that turn text-only),
2. asks the synthesizer (backend + content-addressed cache) for 24 kHz audio,
3. sets ``media["turns"][i]["speech"] = (wave, 24000)`` — the unit tokenizes it later (WavTokenizer), and
4. records ``{backend, voice, model_sha256, cache_key[, spoken_text, removed_chars, trimmed_from_chars, stand_in]}``
   as the turn's ``meta["voice"]`` (the row's ``meta["turns"][i]["voice"]``).
Counts (synthesised, cache_hits, unspeakable_*, trimmed, skipped) are in ``self.stats``. Cache hits are *not* written
to the row (the row must not depend on whether this is a rerun). With ``actors > 0`` the build's driver starts a pool
of Ray actors (``aromni.voice.pool``, one lifecycle with the tokenizer pools) that each load the backend once (GPU
when ``num_gpus`` > 0), and hands it to every unit; a unit run without pools (tests) synthesises in-process.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import Field, model_validator

from aromni.pipeline.pool_sizing import CPUS_PER_ACTOR, Actors
from aromni.pipeline.steps.base import Step, StepOptions, register_step
from aromni.pipeline.steps.text import TextError
from aromni.voice import BACKENDS, VoiceError, get_synthesizer
from aromni.voice.pool import PooledSynthesizer, voice_tag
from aromni.voice.text import Unspeakable, speakable


class VoiceOptions(StepOptions):
    backend: str = Field("espeak", description="espeak (offline fallback) or cosyvoice2 (the paper's)")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="the backend's options (see docs/speech.md)")
    cache_dir: str | None = Field(None, description="synthesis cache; default $AROMNI_CACHE/voice or ~/.cache/aromni/voice")
    which: Literal["speech_dialogs", "all_dialogs"] = "speech_dialogs"
    resynthesise: bool = Field(True, description="replace assistant audio the source already has (one voice for all)")
    unspeakable: Literal["reject", "text_only"] = "reject"
    max_chars: int = Field(600, ge=20, description="longest reply to speak (after normalisation), about 40 s")
    long_replies: Literal["trim", "reject"] = "trim"
    max_removed_fraction: float = Field(0.5, ge=0, le=1, description="more code/table/URL than this: unspeakable")
    actors: Actors = Field(0, description="Ray actors for synthesis (0: synthesise in the unit's process; auto: "
                                          "sized from the cluster, see docs/pipeline.md)")
    cpus_per_actor: float = Field(CPUS_PER_ACTOR, gt=0, description="actors: auto without GPUs: one per this many CPUs")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _backend(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown voice backend {self.backend!r}; allowed: {sorted(BACKENDS)}")
        BACKENDS[self.backend].Options(**self.backend_options)  # errors name the bad key
        return self


@register_step
class VoiceStep(Step):
    name = "voice"
    Options = VoiceOptions

    def __init__(self, options, recipe=None):
        super().__init__(options, recipe)
        o = self.opts
        self.root = recipe.resolve(".") if recipe is not None else None
        cache_dir = recipe.resolve(o.cache_dir) if (recipe is not None and o.cache_dir) else o.cache_dir
        self.synth = get_synthesizer(o.backend, o.backend_options, cache_dir, self.root)
        self.stats: Counter = Counter()

    def attach_pools(self, pools) -> None:
        """Send synthesis to the build's voice actors (started by the driver) when this step asked for some."""
        handles = pools.voice.get(voice_tag(self.opts.backend, self.opts.backend_options, self.root)) if pools else None
        if self.opts.actors and handles:
            self.synth = PooledSynthesizer(self.synth.backend, self.synth.cache, handles.handles)

    def model_identity(self) -> dict:
        """The voice model's identity for the manifest, after checking that it loads (``backend.check``). A model
        directory is ``stand_in: true`` with its marker, else ``"unverified"``: nothing proves it is the release."""
        backend = BACKENDS[self.opts.backend](self.opts.backend_options, self.root)  # fresh: files as they are now
        check = getattr(backend, "check", None)
        if check is not None:
            check()
        ident = backend.identity()
        if getattr(backend, "model_dir", None) is not None:
            ident["model_dir"] = str(backend.model_dir)
        ident.setdefault("stand_in", "unverified")
        return ident

    def wanted(self, example, media: dict) -> list[int]:
        turns, mt = example.turns, media.get("turns")
        if not turns or mt is None:
            return []
        if self.opts.which == "speech_dialogs" and not any(t.audio is not None or "speech" in m
                                                           for t, m in zip(turns, mt)):
            self.stats["skipped_text_dialogs"] += 1
            return []
        return [i for i, t in enumerate(turns)
                if t.role == "assistant" and (self.opts.resynthesise or "speech" not in mt[i])]

    def apply(self, example, media: dict, rng) -> None:
        o = self.opts
        for i in self.wanted(example, media):
            turn = example.turns[i]
            try:
                spoken = speakable(turn.text, max_chars=o.max_chars, long_replies=o.long_replies,
                                   max_removed_fraction=o.max_removed_fraction)
            except Unspeakable as e:
                self.stats[e.reason] += 1
                if o.unspeakable == "reject":
                    raise TextError(e.reason, f"assistant turn {i}: {e.message}") from None
                media["turns"][i].pop("speech", None)
                turn.meta["voice"] = {"skipped": e.reason}
                continue
            hits = self.synth.cache.hits
            try:
                wave, sr, rec = self.synth.speak(spoken.text)
            except VoiceError as e:
                self.stats["synthesis_failed"] += 1
                raise TextError("synthesis_failed", f"assistant turn {i}: {e}") from None
            hit = self.synth.cache.hits > hits
            self.stats["cache_hits" if hit else "synthesised"] += 1
            if not hit:
                self.stats["synthesised_seconds"] = round(self.stats["synthesised_seconds"] + len(wave) / sr, 3)
            if "trimmed_from_chars" in spoken.info:
                self.stats["trimmed"] += 1
            media["turns"][i]["speech"] = (wave, sr)
            turn.meta["voice"] = {**rec, **spoken.info}
