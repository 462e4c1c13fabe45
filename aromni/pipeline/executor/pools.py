"""One lifecycle for every actor pool a build's units share: the model tokenizers (VQGAN, WavTokenizer), the voice
synthesizers and the CLIP scorers. The driver sizes them (``actors: auto`` from the cluster's resources,
``aromni.pipeline.pool_sizing``), checks and starts them all before any unit runs (a checkpoint or voice model that
cannot load fails the build there, with its message), hands their handles to the units, and stops them all when the
units are done or the build fails. Units never create or find actors themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from aromni.pipeline import pools as tokenizer_pools
from aromni.pipeline.clip_pool import ClipPool, ClipPoolError
from aromni.pipeline.pool_sizing import CPUS_PER_ACTOR, size_all
from aromni.pipeline.steps.filters.clip_score import ClipScoreStep
from aromni.pipeline.steps.voice import VoiceStep
from aromni.recipe import Recipe
from aromni.voice import VoiceError
from aromni.voice.pool import VoicePool, voice_tag


class PoolError(RuntimeError):
    """An actor pool that cannot start; the message says why and what to do."""


@dataclass
class PoolSpec:
    """One pool the build starts: where the recipe asks for it, what it asked and what it got."""
    name: str                  # the recipe key: tokenizers.image, steps[2] (voice), steps[4] (clip_score)
    kind: str                  # tokenizer | voice | clip
    key: str                   # modality, voice tag or CLIP tag (units find their pool by it)
    requested: int | str       # the recipe's actors: N or auto
    actors: int
    num_cpus: float
    num_gpus: float
    cpus_per_actor: float = CPUS_PER_ACTOR
    step: object = None        # the voice / clip_score step it serves

    def describe(self, resources: dict, devices: list[str] | None = None) -> dict:
        d = {"pool": self.name, "kind": self.kind, "actors": self.actors, "requested": self.requested,
             "num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "device": _device(devices)}
        if self.requested == "auto":
            d["sized_from"] = (f"{resources.get('GPU', 0):g} GPU(s) / {self.num_gpus:g} per actor" if self.num_gpus
                               else f"{resources.get('CPU', 0):g} CPU(s) / {self.cpus_per_actor:g} per actor")
        return d


def _device(devices: list[str] | None) -> str | None:
    """``cpu``, ``cuda`` (every actor on some GPU), or a mix; None when the pool does not report it (voice)."""
    if not devices:
        return None
    kinds = sorted({d.split(":")[0] for d in devices})
    return kinds[0] if len(kinds) == 1 else "+".join(kinds)


@dataclass
class Pools:
    tokenizers: tokenizer_pools.Pools | None = None
    voice: dict[str, VoicePool] = field(default_factory=dict)   # voice tag -> pool
    clip: dict[str, ClipPool] = field(default_factory=dict)     # CLIP tag -> pool
    report: list[dict] = field(default_factory=list)            # what each pool got (console line, manifest)

    def stop(self) -> None:
        if self.tokenizers is not None:
            self.tokenizers.stop()
        for pool in [*self.voice.values(), *self.clip.values()]:
            pool.stop()
        self.voice, self.clip = {}, {}


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


def plan_pools(recipe: Recipe, tok_cfg, tok, resources) -> list[PoolSpec]:
    """Every pool this recipe asks for, sized for ``resources`` (``{"CPU": n, "GPU": m}``, or a function giving
    them, called only when there is a pool to size: counting this machine's GPUs imports torch, seconds that a
    text-only build need not spend)."""
    specs = requested_pools(recipe, tok_cfg, tok)
    if not specs:
        return specs
    if callable(resources):
        resources = resources()
    sizes = size_all([(p.requested, p.num_cpus, p.num_gpus, p.cpus_per_actor) for p in specs], resources)
    for p, n in zip(specs, sizes):
        p.actors = n
    return specs


def requested_pools(recipe: Recipe, tok_cfg, tok) -> list[PoolSpec]:
    """The pools this recipe asks for, not sized yet (``actors`` 0): model tokenizers that run in actors, voice
    steps with ``actors``, CLIP scorers. Steps that share a model (same voice backend options, same CLIP
    checkpoint) share one pool, sized by the first of them."""
    specs: list[PoolSpec] = []
    for m in tokenizer_pools.MODALITIES:
        c = getattr(tok_cfg, m)
        if c is not None and tokenizer_pools.pooled(getattr(tok, m)):
            specs.append(PoolSpec(f"tokenizers.{m}", "tokenizer", m, c.actors, 0, c.num_cpus, c.num_gpus,
                                  c.cpus_per_actor))
    seen: set[str] = set()
    for i, s in enumerate(recipe.steps):
        if s.name == "voice":
            step = VoiceStep(s.options, recipe)
            o, kind = step.opts, "voice"
            key = voice_tag(o.backend, o.backend_options, step.root) if o.actors else None
        elif s.name == "clip_score":
            step = ClipScoreStep(s.options, recipe)
            o, kind, key = step.opts, "clip", step.pool_tag
        else:
            continue
        if key is None or key in seen:
            continue
        seen.add(key)
        specs.append(PoolSpec(f"steps[{i}] ({s.name})", kind, key, o.actors, 0, o.num_cpus, o.num_gpus,
                              o.cpus_per_actor, step))
    return specs


def cpu_demand(specs: list[PoolSpec]) -> float:
    """Logical CPUs the pools reserve (``actors * num_cpus`` summed)."""
    return sum(p.actors * p.num_cpus for p in specs)


def check_resources(specs: list[PoolSpec], resources: dict) -> None:
    """The pools must fit the cluster and leave a CPU for the unit tasks; else PoolError naming the pools."""
    gpus = sum(p.actors * p.num_gpus for p in specs)
    if gpus > resources.get("GPU", 0) + 1e-9:
        asks = ", ".join(f"{p.name} {p.actors} x {p.num_gpus:g}" for p in specs if p.num_gpus)
        raise PoolError(f"the actor pools ask for {gpus:g} GPU(s) ({asks}) but the Ray cluster has "
                        f"{resources.get('GPU', 0):g}; set their num_gpus: 0 to run on CPU")
    cpus = cpu_demand(specs)
    if specs and resources.get("CPU", 0) - cpus < 1:
        asks = ", ".join(f"{p.name} {p.actors} x {p.num_cpus:g}" for p in specs if p.num_cpus)
        raise PoolError(f"the actor pools reserve {cpus:g} CPU(s) ({asks}) of the cluster's "
                        f"{resources.get('CPU', 0):g}, leaving no CPU for unit tasks; lower their num_cpus/actors "
                        f"or give Ray more CPUs")


def start_pools(recipe: Recipe, tok_cfg, tok, ray, specs: list[PoolSpec] | None = None) -> Pools:
    """Start every pool (``specs`` from ``plan_pools``; default: planned for the running cluster) and wait until
    each actor has loaded its model; on any failure stop what started."""
    resources = ray.cluster_resources()
    if specs is None:
        specs = plan_pools(recipe, tok_cfg, tok, resources)
    check_resources(specs, resources)
    pools = Pools()
    try:
        sized = {p.key: p.actors for p in specs if p.kind == "tokenizer"}
        cfg = tok_cfg.model_copy(update={m: getattr(tok_cfg, m).model_copy(update={"actors": n})
                                         for m, n in sized.items()})
        pools.tokenizers = tokenizer_pools.start_pools(cfg, tok, ray)
        for p in specs:
            if p.kind == "tokenizer":
                devices = pools.tokenizers.devices.get(p.key)
            elif p.kind == "voice":
                o = p.step.opts
                pools.voice[p.key] = VoicePool.start(ray, p.key, o.backend, o.backend_options, p.step.root, p.actors,
                                                     p.num_cpus, p.num_gpus)
                devices = None
            else:
                o = p.step.opts
                try:
                    pool = pools.clip[p.key] = ClipPool.start(ray, p.step.checkpoint, o.device, o.batch_size,
                                                              p.actors, p.num_cpus, p.num_gpus)
                except ClipPoolError as e:
                    raise PoolError(f"{p.name}: {e}") from None
                devices = pool.devices
            pools.report.append(p.describe(resources, devices))
    except tokenizer_pools.PoolError as e:
        pools.stop()
        raise PoolError(str(e)) from None
    except VoiceError as e:
        pools.stop()
        raise PoolError(f"voice actors: {e}") from None
    except PoolError:
        pools.stop()
        raise
    return pools


def pool_line(d: dict) -> str:
    """One console line per pool: what it asked and what it got."""
    asked = f" (actors: auto, from {d['sized_from']})" if d["requested"] == "auto" else ""
    dev = f" on {d['device']}" if d.get("device") else ""
    return (f"pool {d['pool']}: {d['actors']} actor(s) x {d['num_cpus']:g} CPU, {d['num_gpus']:g} GPU"
            f"{dev}{asked}")


class pools_stopped:
    """``with pools_stopped(pools):`` the units run; the pools stop whatever happens."""

    def __init__(self, pools: Pools):
        self.pools = pools

    def __enter__(self) -> Pools:
        return self.pools

    def __exit__(self, *exc):
        self.pools.stop()
