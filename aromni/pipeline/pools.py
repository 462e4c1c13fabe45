"""Ray actor pools for the model tokenizers (Chameleon VQGAN, WavTokenizer).

A build's unit tasks do not load the models. The driver starts, per modality, ``actors`` long-lived actors that each
load the checkpoint once (declaring the recipe's ``num_cpus``/``num_gpus``; CUDA is used when the actor sees a GPU),
and hands their handles to the unit tasks. A unit task keeps the same ``.encode`` API through a ``PoolProxy``: it
pre-processes its items itself (resize/crop, downmix/resample: cheap, parallel across workers), sends them to an
actor and waits for the codes.

Each actor gathers the items of every unit that calls it into batches of ``batch_size`` (waiting a few
milliseconds for other units' items when a batch is short), so inputs are batched across units. Batches always have
the same shape (short ones are padded, see ``VQGANTokenizer.encode_prepared``; speech is encoded clip by clip, see
``aromni.model.wavtokenizer``), so an item's codes depend only on the item: the shards are byte-identical whatever
the worker count, actor count or arrival order.

A checkpoint that fails to load (missing/extra/misshapen keys, unreadable file) fails the build before any unit runs,
with the loader's message.
"""
from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field

import numpy as np

from aromni.layout import AR_OMNI_V0_1
from aromni.model import IMAGE_LOADERS, SPEECH_LOADERS
from aromni.pipeline.pool_sizing import size_all

MODALITIES = ("image", "speech")
READY_TIMEOUT_S = 600


class PoolError(RuntimeError):
    """A tokenizer pool that cannot start; the message says why."""


def pooled(tok) -> bool:
    """Model tokenizers (those with ``preprocess`` + ``encode_prepared``) run in pools; stand-ins stay in-process."""
    return tok is not None and hasattr(tok, "encode_prepared") and hasattr(tok, "preprocess")


class TokenizerActor:
    """One loaded model serving ``encode`` calls from many unit tasks (an async Ray actor)."""

    def __init__(self, modality: str, kind: str, path: str, stand_in: bool, batch_size: int, num_cpus: float,
                 max_wait_s: float = 0.01, precision: str = "fp32"):
        import torch   # here and below, not at the top: text-only unit workers import this module and never need torch
        torch.set_num_threads(max(1, int(num_cpus)))
        # Reproducible numerics on GPU: no TF32, no autotuned algorithm choice.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        self.error = None
        self.tok = None
        self.batch_size, self.max_wait_s = batch_size, max_wait_s
        self.queue: list = []
        self.wake: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None
        self.stats = {"items": 0, "batches": 0, "seconds": 0.0}
        try:
            loaders = IMAGE_LOADERS if modality == "image" else SPEECH_LOADERS
            self.tok = loaders[kind](path, AR_OMNI_V0_1, stand_in)
            self.tok.batch_size = batch_size
            self.tok.precision = precision
            self.tok.load()
        except Exception as e:  # noqa: BLE001 - reported by ready(), so the driver fails the build with it
            self.error = f"{type(e).__name__}: {e}"

    def ready(self) -> dict:
        if self.error:
            return {"error": self.error}
        return {"device": str(self.tok.device), "pid": os.getpid()}

    def get_stats(self) -> dict:
        return dict(self.stats)

    async def encode(self, items: list) -> list:
        """Pre-processed items -> per item ``("ok", codes as int16 array)`` or ``("error", message)``."""
        if not getattr(self.tok, "batch_invariant", True):
            # Codes that may depend on the batch (batched WavTokenizer: ~1 code in 400 at float rounding): the call's
            # own items only, as the unit would encode them in-process, never grouped with other units' by timing.
            return await asyncio.to_thread(self._run, items)
        loop = asyncio.get_running_loop()
        if self.wake is None:
            self.wake = asyncio.Event()
            self.worker = asyncio.create_task(self._serve())
        futures = [loop.create_future() for _ in items]
        self.queue.extend(zip(items, futures))
        self.wake.set()
        return list(await asyncio.gather(*futures))

    async def _serve(self):
        import time
        while True:
            await self.wake.wait()
            if len(self.queue) < self.batch_size:
                await asyncio.sleep(self.max_wait_s)  # let other units' items join this batch
            batch, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size:]
            if not self.queue:
                self.wake.clear()
            t0 = time.perf_counter()
            results = await asyncio.to_thread(self._run, [item for item, _ in batch])
            self.stats["items"] += len(batch)
            self.stats["batches"] += 1
            self.stats["seconds"] += time.perf_counter() - t0
            for (_, fut), r in zip(batch, results):
                if not fut.done():
                    fut.set_result(r)

    def _run(self, items: list) -> list:
        try:
            return [("ok", _compact(c)) for c in self.tok.encode_prepared(items)]
        except Exception:  # noqa: BLE001 - isolate the item that breaks the batch
            out = []
            for it in items:
                try:
                    out.append(("ok", _compact(self.tok.encode_prepared([it])[0])))
                except Exception as e:  # noqa: BLE001
                    out.append(("error", f"{type(e).__name__}: {e}"))
            return out


def _compact(codes) -> np.ndarray:
    import torch
    return np.asarray(torch.as_tensor(codes).cpu(), dtype=np.int16)  # codes < 8192: half the bytes of int32


class PoolProxy:
    """Stands in a unit task for a pooled tokenizer: same ``encode``/``identity``; ``decode`` runs locally."""

    def __init__(self, tok, handles: list, modality: str):
        self.tok, self.handles, self.modality = tok, list(handles), modality
        self._next = itertools.count(os.getpid())  # spread processes over actors; any actor gives the same codes

    @property
    def identity(self) -> dict:
        return self.tok.identity

    @property
    def batch_size(self) -> int:
        return self.tok.batch_size

    def encode(self, items: list):
        import ray
        import torch
        prepared = [self.tok.preprocess(x) for x in items]
        if not prepared:
            return torch.zeros(0, self.tok.layout.image_tokens, dtype=torch.long) if self.modality == "image" else []
        handle = self.handles[next(self._next) % len(self.handles)]
        results = ray.get(handle.encode.remote(prepared))
        bad = [msg for status, msg in results if status != "ok"]
        if bad:
            raise RuntimeError(f"{self.modality} tokenizer actor: {bad[0]}")
        codes = [torch.from_numpy(c.astype(np.int64)) for _, c in results]
        return torch.stack(codes) if self.modality == "image" else codes

    def decode(self, codes):
        return self.tok.decode(codes)


@dataclass
class Pools:
    handles: dict[str, list]   # modality -> actor handles
    devices: dict[str, list] = field(default_factory=dict)   # modality -> each actor's device (cpu, cuda:0, ...)

    def __bool__(self) -> bool:
        return any(self.handles.values())

    def stats(self) -> dict:
        import ray
        return {m: ray.get([h.get_stats.remote() for h in hs]) for m, hs in self.handles.items()}

    def stop(self) -> None:
        import ray
        for hs in self.handles.values():
            for h in hs:
                ray.kill(h)
        self.handles = {}


def cpu_demand(cfg, tok) -> float:
    """Logical CPUs the pools of this recipe reserve (``actors * num_cpus`` per pooled modality; sized counts)."""
    return sum(c.actors * c.num_cpus for m in MODALITIES
               if (c := getattr(cfg, m)) is not None and pooled(getattr(tok, m)))


def sized(cfg, tok, resources: dict):
    """``cfg`` with every ``actors: auto`` of a pooled modality replaced by its count for ``resources``."""
    mods = [m for m in MODALITIES if getattr(cfg, m) is not None and pooled(getattr(tok, m))]
    cs = [getattr(cfg, m) for m in mods]
    counts = size_all([(c.actors, c.num_cpus, c.num_gpus, c.cpus_per_actor) for c in cs], resources)
    return cfg.model_copy(update={m: getattr(cfg, m).model_copy(update={"actors": n}) for m, n in zip(mods, counts)})


def start_pools(cfg, tok, ray, timeout_s: float = READY_TIMEOUT_S) -> Pools:
    """Start the actors of every pooled modality of ``cfg`` (a recipe's TokenizersConfig with resolved paths) and
    wait until each has loaded its checkpoint. Raises PoolError with the loader's message, or when the cluster
    cannot give the requested resources. ``actors: auto`` is sized here for the running cluster."""
    res = ray.cluster_resources()
    cfg = sized(cfg, tok, res)
    gpus_needed = sum(c.actors * c.num_gpus for m in MODALITIES
                      if (c := getattr(cfg, m)) is not None and pooled(getattr(tok, m)))
    if gpus_needed > res.get("GPU", 0):
        raise PoolError(f"tokenizers ask for {gpus_needed:g} GPU(s) (actors x num_gpus) but the Ray cluster has "
                        f"{res.get('GPU', 0):g}; set tokenizers.image/speech.num_gpus: 0 to run on CPU")
    if res.get("CPU", 0) - cpu_demand(cfg, tok) < 1:
        raise PoolError(f"the tokenizer pools reserve {cpu_demand(cfg, tok):g} CPU(s) (actors x num_cpus) of the "
                        f"cluster's {res.get('CPU', 0):g}, leaving no CPU for unit tasks; lower "
                        f"tokenizers.*.num_cpus/actors or give Ray more CPUs")
    handles: dict[str, list] = {}
    actor_cls = ray.remote(TokenizerActor)
    for m in MODALITIES:
        c = getattr(cfg, m)
        if c is None or not pooled(getattr(tok, m)):
            continue
        handles[m] = [actor_cls.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus, max_concurrency=1000,
                                        name=None).remote(m, c.kind, str(c.path), c.stand_in, c.batch_size, c.num_cpus,
                                                precision=c.precision)
                      for _ in range(c.actors)]
    pools = Pools(handles)
    try:
        for m, hs in handles.items():
            for info in ray.get([h.ready.remote() for h in hs], timeout=timeout_s):
                if "error" in info:
                    raise PoolError(f"{m} tokenizer ({getattr(cfg, m).kind}, {getattr(cfg, m).path}) failed to "
                                    f"load: {info['error']}")
                pools.devices.setdefault(m, []).append(info["device"])
    except ray.exceptions.GetTimeoutError:
        pools.stop()
        raise PoolError(f"tokenizer actors did not start within {timeout_s:g} s (is the cluster short of the "
                        f"CPUs/GPUs they ask for? see `ray status`)") from None
    except PoolError:
        pools.stop()
        raise
    return pools


def attach(tok, pools: Pools | None):
    """A copy of a Tokenizers bundle whose pooled modalities go through the pools' actors."""
    if not pools:
        return tok
    from dataclasses import replace
    return replace(tok, **{m: PoolProxy(getattr(tok, m), hs, m) for m, hs in pools.handles.items() if hs})
