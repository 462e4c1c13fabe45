"""One lifecycle for every actor pool a build's units share: the model tokenizers (VQGAN, WavTokenizer) and the voice
synthesizers. The driver checks and starts them all before any unit runs (a checkpoint or voice model that cannot
load fails the build there, with its message), hands their handles to the units, and stops them all when the units
are done or the build fails. Units never create or find actors themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from aromni.pipeline import pools as tokenizer_pools
from aromni.pipeline.steps.voice import VoiceStep
from aromni.recipe import Recipe
from aromni.voice import VoiceError
from aromni.voice.pool import VoicePool, voice_tag


class PoolError(RuntimeError):
    """An actor pool that cannot start; the message says why and what to do."""


@dataclass
class Pools:
    tokenizers: tokenizer_pools.Pools | None = None
    voice: dict[str, list] = field(default_factory=dict)     # voice tag -> actor handles

    def stop(self) -> None:
        if self.tokenizers is not None:
            self.tokenizers.stop()
        for pool in self.voice.values():
            pool.stop()
        self.voice = {}


def voice_steps(recipe: Recipe) -> list[VoiceStep]:
    return [VoiceStep(s.options, recipe) for s in recipe.steps if s.name == "voice"]


def check_voices(recipe: Recipe) -> list[dict]:
    """Every voice step's model, checked in the driver before any unit runs (its config must load with the installed
    package); returns their identities for the manifest. Raises PoolError with the backend's message."""
    out = []
    for i, s in enumerate(recipe.steps):
        if s.name != "voice":
            continue
        try:
            out.append(VoiceStep(s.options, recipe).model_identity())
        except VoiceError as e:
            raise PoolError(f"steps[{i}] (voice, backend {s.options.get('backend', 'espeak')}): {e}") from None
    return out


def cpu_demand(recipe: Recipe, tok_cfg, tok) -> float:
    """Logical CPUs the pools reserve (``actors * num_cpus`` per pooled tokenizer modality and voice step)."""
    return tokenizer_pools.cpu_demand(tok_cfg, tok) + sum(s.opts.actors * s.opts.num_cpus
                                                          for s in voice_steps(recipe) if s.opts.actors)


def start_pools(recipe: Recipe, tok_cfg, tok, ray) -> Pools:
    """Start every pool and wait until each actor has loaded its model; on any failure stop what started."""
    pools = Pools()
    try:
        pools.tokenizers = tokenizer_pools.start_pools(tok_cfg, tok, ray)
        for step in voice_steps(recipe):
            o = step.opts
            tag = voice_tag(o.backend, o.backend_options, step.root)
            if o.actors and tag not in pools.voice:
                pools.voice[tag] = VoicePool.start(ray, tag, o.backend, o.backend_options, step.root, o.actors,
                                                   o.num_cpus, o.num_gpus)
    except tokenizer_pools.PoolError as e:
        pools.stop()
        raise PoolError(str(e)) from None
    except VoiceError as e:
        pools.stop()
        raise PoolError(f"voice actors: {e}") from None
    return pools


class pools_stopped:
    """``with pools_stopped(pools):`` the units run; the pools stop whatever happens."""

    def __init__(self, pools: Pools):
        self.pools = pools

    def __enter__(self) -> Pools:
        return self.pools

    def __exit__(self, *exc):
        self.pools.stop()
