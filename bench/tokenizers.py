"""Throughput of the real-format tokenizers at full size, and the build's overhead over bare tokenizer compute.

    .venv/bin/python bench/tokenizers.py                    # CPU (or the GPU when there is one)
    .venv/bin/python bench/tokenizers.py --image-batches 1 8 --images 8   # quicker on a small CPU
                                                            # (full-size VQGAN encode takes seconds per image on CPU)
    .venv/bin/python bench/tokenizers.py --skip-build       # throughput only

Checkpoints: full-size architectures with RANDOM weights (aromni.model.random_checkpoints.write_full_size):
Chameleon VQGAN 512x512 (ch 128, mult [1,1,2,2,4], 2 res blocks, 8192x256 codebook) and WavTokenizer 40 Hz
(SEANet 32/512 + 2-layer LSTM, 4096 codes, Vocos backbone 768 x 12, ISTFT 2400/600). Random weights cost the same
compute as the released ones.

Printed:
- images/s of VQGAN encode at each batch size (one warm-up batch first), pre-processing excluded;
- images/s for each --precisions (fp32, tf32, bf16) and the share of codes equal to fp32's at that batch;
- audio-seconds/s of WavTokenizer encode at each batch size over the same --clips mixed-length clips (sorted by
  length and batched; the share of codes equal to batch 1's is printed: 100 % on CPU, where batched codes are bit for
  bit the alone codes), best of 2 interleaved runs, for each --threads (torch threads; a build's actor runs
  `num_cpus` of them, default 1); goal batch 16 >= 3x batch 1 on CPU;
- overhead: wall time of `aromni build` over the demo corpus's LAION (first --images photos) + GigaSpeech sources
  with these checkpoints
  (Ray start, actor start and checkpoint load, reading, decoding, pre-processing, templates, parquet, mixing) divided
  by the bare encode time of the same items in one process (same batch size). Goal <= 1.15; the fixed start-up part
  (Ray + loading the checkpoints in the actors) is printed separately because it does not grow with the data.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# this file is named like the `tokenizers` package: keep bench/ off the import path, put the repo on it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))


def _photos(n: int):
    import skimage.data as sd
    from PIL import Image
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "horse"]
    imgs = [Image.fromarray(getattr(sd, k)()) for k in names]
    return [imgs[i % len(imgs)] for i in range(n)]


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_vqgan(path: Path, batches: list[int], precisions=("fp32",), device=None) -> dict:
    """{(precision, batch): (images/s, share of codes equal to fp32 at that batch)}."""
    from aromni.model.vqgan import load_image_tokenizer
    precisions = ["fp32"] + [p for p in precisions if p != "fp32"]   # the reference first
    out = {}
    for bs in batches:
        ref = None
        for prec in precisions:
            tok = load_image_tokenizer(path, batch_size=bs, precision=prec, device=device)
            prepared = [tok.preprocess(im) for im in _photos(bs)]
            tok.encode_prepared(prepared[:1])              # warm-up (allocations, kernels)
            _sync(tok.device)
            t0 = time.perf_counter()
            codes = tok.encode_prepared(prepared)
            _sync(tok.device)
            ref = codes if prec == "fp32" else ref
            same = float((codes == ref).float().mean()) if ref is not None else float("nan")
            out[(prec, bs)] = (bs / (time.perf_counter() - t0), same)
            print(f"  vqgan   {prec:>4} batch {bs:>3}: {out[(prec, bs)][0]:8.3f} images/s, codes equal to fp32 "
                  f"{same:7.2%}   ({tok.device})", flush=True)
    return out


def speech_clips(n: int, seed: int = 0, lo: float = 0.5, hi: float = 4.0) -> list[np.ndarray]:
    """n speech-like clips of mixed lengths (uniform in [lo, hi] s) at 24 kHz: what a corpus of utterances gives."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.arange(int(rng.uniform(lo, hi) * 24000)) / 24000
        f0 = rng.uniform(90, 220)
        out.append((0.3 * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
                    + 0.03 * rng.standard_normal(len(t))).astype(np.float32))
    return out


def bench_wavtokenizer(path: Path, batches: list[int], clips: int, lo: float, hi: float, repeats: int = 2,
                       device=None, precision: str = "fp32", threads: int | None = None) -> dict:
    """{batch: audio-s/s} over the same mixed-length clips at each batch size (interleaved, best of ``repeats``:
    a shared machine's load moves between runs), plus "equal": share of codes equal to batch 1's. ``threads``: torch
    threads for all batch sizes alike (as a build's actor sets them from its num_cpus)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        return _bench_wavtokenizer(path, batches, clips, lo, hi, repeats, device, precision)
    finally:
        torch.set_num_threads(saved)


def _bench_wavtokenizer(path, batches, clips, lo, hi, repeats, device, precision) -> dict:
    from aromni.model.wavtokenizer import load_speech_tokenizer
    waves = speech_clips(clips, 0, lo, hi)
    seconds = sum(len(w) for w in waves) / 24000
    toks = {bs: load_speech_tokenizer(path, batch_size=bs, device=device, precision=precision) for bs in batches}
    for t in toks.values():
        t.encode_prepared(waves[:2])                        # warm-up
    best, codes = {}, {}
    for _ in range(repeats):
        for bs, tok in toks.items():
            _sync(tok.device)
            t0 = time.perf_counter()
            codes[bs] = tok.encode_prepared(waves)
            _sync(tok.device)
            best[bs] = max(best.get(bs, 0.0), seconds / (time.perf_counter() - t0))
    base = codes[batches[0]]
    n = sum(len(c) for c in base)
    equal = {bs: sum(int((a == b).sum()) for a, b in zip(base, codes[bs])) / n for bs in batches}
    for bs in batches:
        print(f"  wavtok  {torch.get_num_threads()} thread(s) batch {bs:>3}: {best[bs]:8.1f} audio-s/s  "
              f"(x{best[bs] / best[batches[0]]:.2f} vs batch {batches[0]}; codes equal to batch {batches[0]}: "
              f"{equal[bs]:.2%})   ({toks[bs].device})", flush=True)
    return {"speed": best, "equal": equal, "seconds": seconds}


class _Timed:
    """Wraps a tokenizer and sums the time of its bare encode (pre-processing excluded)."""

    def __init__(self, tok):
        self.tok, self.seconds, self.items = tok, 0.0, 0

    def __getattr__(self, k):
        return getattr(self.tok, k)

    def encode(self, items):
        prepared = [self.tok.preprocess(x) for x in items]
        _sync(self.tok.device)
        t0 = time.perf_counter()
        out = self.tok.encode_prepared(prepared)
        _sync(self.tok.device)
        self.seconds += time.perf_counter() - t0
        self.items += len(items)
        return out


def bench_overhead(ckpts: dict[str, Path], corpus: Path, out_dir: Path, workers: int, num_cpus: float) -> dict:
    import yaml

    from aromni.model import load_tokenizers
    from aromni.pipeline.build import build
    from aromni.pipeline.executor.unit_task import tokenizers_cfg as _tokenizers_cfg
    from aromni.pipeline.plan import plan
    from aromni.pipeline.unit import process_unit
    from aromni.recipe import parse_recipe

    data = yaml.safe_load((ROOT / "recipes" / "demo_realformat.yaml").read_text())
    data["data_root"] = str(corpus)
    data["sources"] = [s for s in data["sources"] if s["name"] in ("laion", "gigaspeech")]
    data["mixing"]["ratio"] = {"image_text": 1, "speech_text": 1}
    data["tokenizers"]["image"].update(path=str(ckpts["vqgan"]), num_cpus=num_cpus)
    data["tokenizers"]["speech"].update(path=str(ckpts["wavtokenizer"]), num_cpus=num_cpus)
    recipe = parse_recipe(data)

    # bare: the same units tokenized in this process, timing only the encode calls
    torch.set_num_threads(max(1, int(num_cpus)))
    tok = load_tokenizers(_tokenizers_cfg(recipe))
    tok.image.load(), tok.speech.load()
    tok.image, tok.speech = _Timed(tok.image), _Timed(tok.speech)
    for pu in plan(recipe, {"bench": True}):
        process_unit(recipe, recipe.sources[pu.source_index], pu.unit, tok, pu.uid)
    bare = tok.image.seconds + tok.speech.seconds
    print(f"  bare encode: {tok.image.items} images {tok.image.seconds:.1f} s + {tok.speech.items} clips "
          f"{tok.speech.seconds:.1f} s = {bare:.1f} s", flush=True)

    import ray
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=workers + 2 * int(np.ceil(num_cpus)), include_dashboard=False,
             log_to_driver=False,
             configure_logging=False)
    t_ray = time.perf_counter() - t0
    from aromni.pipeline.pools import start_pools
    t1 = time.perf_counter()
    start_pools(_tokenizers_cfg(recipe), load_tokenizers(_tokenizers_cfg(recipe)), ray).stop()
    t_load = time.perf_counter() - t1
    t2 = time.perf_counter()
    rep = build(recipe, out_dir, workers=workers, progress=False, force=True)
    t_build = time.perf_counter() - t2
    ray.shutdown()
    total = t_ray + t_build
    print(f"  build: {total:.1f} s wall (Ray start {t_ray:.1f} s, actor start + checkpoint load ~{t_load:.1f} s), "
          f"{sum(s['rows'] for s in rep.manifest['shards'])} rows written",
          flush=True)
    return {"bare": bare, "build": total, "startup": t_ray + t_load}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--audio-batches", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"])
    ap.add_argument("--clips", type=int, default=32, help="speech clips of mixed length (--clip-min..--clip-max s)")
    ap.add_argument("--clip-min", type=float, default=0.5)
    ap.add_argument("--clip-max", type=float, default=4.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="torch threads for the speech throughput, each compared across batch sizes in one run "
                         "(default 1: what a build's actor with the recipe default num_cpus: 1 runs)")
    ap.add_argument("--skip-images", action="store_true", help="no VQGAN throughput (the speech part alone)")
    ap.add_argument("--images", type=int, default=24, help="photos in the overhead build's LAION tar (max 24)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "aromni-bench-tokenizers"))
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 1),
                    help="CPUs per tokenizer actor (and torch threads of the bare run)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from aromni.model.random_checkpoints import write_full_size

    work = Path(args.workdir)
    ck = work / "ckpt"
    if not (ck / "vqgan" / "vqgan.ckpt").exists() or not (ck / "wavtokenizer").is_dir():
        print(f"writing full-size random checkpoints to {ck} ...", flush=True)
        write_full_size(ck)
    ckpts = {"vqgan": ck / "vqgan", "wavtokenizer": ck / "wavtokenizer"}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {dev}, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}", flush=True)
    img = {} if args.skip_throughput or args.skip_images else bench_vqgan(ckpts["vqgan"], args.image_batches,
                                                                          args.precisions)
    aud = {} if args.skip_throughput else {
        t: bench_wavtokenizer(ckpts["wavtokenizer"], args.audio_batches, args.clips, args.clip_min, args.clip_max,
                              threads=t) for t in args.threads}
    res = None
    if not args.skip_build:
        corpus = work / f"corpus{args.images}"
        if not (corpus / "laion" / "00000.tar").exists():
            from aromni import demo
            demo.PHOTOS = demo.PHOTOS[: args.images]  # a smaller LAION tar, same format
            demo.write_laion(corpus)
            demo.write_gigaspeech(corpus)
            demo.write_text_tokenizer(corpus)
        out = work / "build"
        shutil.rmtree(out, ignore_errors=True)
        res = bench_overhead(ckpts, corpus, out, args.workers, args.num_cpus)
    print("\nsummary")
    for (prec, bs), (ips, same) in img.items():
        first = img.get((prec, args.image_batches[0]), (ips,))[0]
        print(f"  vqgan  {prec:>4} batch {bs:>3}: {ips:.3f} images/s (x{ips / first:.2f} vs batch "
              f"{args.image_batches[0]}; x{ips / img[('fp32', bs)][0]:.2f} vs fp32), codes equal to fp32 {same:.2%}"
              if ("fp32", bs) in img else f"  vqgan  {prec} batch {bs}: {ips:.3f} images/s")
    if img and "tf32" in args.precisions and dev == "cpu":
        print("  (tf32 on CPU is fp32: there is no TF32 outside CUDA)")
    for t, a in aud.items():
        sp, first = a["speed"], args.audio_batches[0]
        for bs in sp:
            print(f"  wavtok {t} thread(s) batch {bs:>3}: {sp[bs]:.1f} audio-s/s (x{sp[bs] / sp[first]:.2f} vs batch "
                  f"{first}), codes equal to batch {first}: {a['equal'][bs]:.2%}")
        if 16 in sp and 1 in sp:
            r = sp[16] / sp[1]
            print(f"  goal: wavtok batch 16 >= 3x batch 1 on CPU, {t} thread(s): x{r:.2f} -> "
                  f"{'MET' if r >= 3 else 'NOT MET'}" + ("" if dev == "cpu" else f" (measured on {dev})"))
    if res:
        print(f"  overhead ratio build/bare: {res['build'] / res['bare']:.3f} "
              f"(without fixed start-up {(res['build'] - res['startup']) / res['bare']:.3f}; goal <= 1.15)")


if __name__ == "__main__":
    main()
