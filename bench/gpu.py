"""One GPU run of everything issue 19 asks to measure, as one table (bench/gpu.sh calls this).

    .venv/bin/python bench/gpu.py             # on a CUDA machine (H100/H200 class): full sizes, < 8 minutes
    .venv/bin/python bench/gpu.py --smoke     # any machine, CPU, tiny sizes, seconds: every code path once
                                              # (tests/bench/test_gpu_smoke.py runs this in `make test`)

Sections (each prints its rows as it goes; the table is printed again at the end):
1. VQGAN encode images/s at batch 1, 16, 64 for fp32, tf32, bf16 (full-size Chameleon VQGAN, random weights in
   Meta's format), with the share of codes equal to fp32 at the same batch. Goal: bf16 >= 900 images/s.
2. WavTokenizer encode audio-seconds/s at batch 1, 16, 64 (full-size 40 Hz release architecture, random weights),
   mixed-length clips, with the share of codes equal to batch 1 (batched encoding pads per clip: expected 100 %).
3. `aromni build` of the demo corpus x100 (2400 images; recipes/demo_realformat.yaml) with the full-size checkpoints, the
   tokenizer actors on the GPU (num_gpus 0.5 each): images/s end to end vs the bare encode images/s of section 1
   at the same batch and precision (goal >= 80 %), and the GPU's busy share sampled with nvidia-smi every 200 ms
   during the build.
4. TTS through `aromni infer --task tts --stream` (a subprocess, as a user runs it) with a 7B-shaped random
   Chameleon in bf16: first-token latency and real-time factor from the output's sidecar JSON. Goals: FTL <= 50 ms,
   RTF <= 0.3.
Everything is written under --workdir (default: a temp dir; about 15 GB for the 7B model dir on a GPU run).
Random weights cost the same compute as the released ones; no number here is about output quality.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/tokenizers.py would shadow the `tokenizers` package: keep bench/ off sys.path, put the repo on it
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROWS: list[tuple[str, str, str]] = []   # (what, measured, goal / note)


def row(what: str, measured: str, goal: str = "") -> None:
    ROWS.append((what, measured, goal))
    print(f"  {what:<52} {measured:<34} {goal}", flush=True)


def _bench_tokenizers():
    """bench/tokenizers.py as a module (its VQGAN/WavTokenizer throughput functions are reused, not copied)."""
    spec = importlib.util.spec_from_file_location("aromni_bench_tokenizers", REPO / "bench" / "tokenizers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sizes(smoke: bool) -> dict:
    if smoke:
        return dict(image_batches=[1, 2], audio_batches=[1, 2], clips=3, clip_max=0.6, scale=1, tts_new=12,
                    shape="tiny")
    return dict(image_batches=[1, 16, 64], audio_batches=[1, 16, 64], clips=64, clip_max=6.0, scale=100, tts_new=200,
                shape="7b")


def checkpoints(work: Path, smoke: bool) -> dict[str, Path]:
    from aromni.model.random_checkpoints import tiny_vqgan_config, write_full_size, write_meta_vqgan, write_wavtokenizer
    ck = work / "ckpt"
    if smoke:
        return {"vqgan": write_meta_vqgan(ck / "vqgan", tiny_vqgan_config(64), seed=0),   # 1024 codes, cheap
                "wavtokenizer": write_wavtokenizer(ck / "wavtokenizer", seed=0)}
    if not (ck / "vqgan" / "vqgan.ckpt").exists():
        write_full_size(ck)
    return {"vqgan": ck / "vqgan", "wavtokenizer": ck / "wavtokenizer"}


# ---------------------------------------------------------------------------------------------------------------
def section_vqgan(bt, ck, sz, device) -> dict:
    print("1. VQGAN encode", flush=True)
    res = bt.bench_vqgan(ck["vqgan"], sz["image_batches"], ("fp32", "tf32", "bf16"), device=device)
    for (prec, bs), (ips, same) in res.items():
        goal = "goal >= 900 img/s: " + ("MET" if ips >= 900 else "NOT MET") if prec == "bf16" and bs == max(
            sz["image_batches"]) else ""
        row(f"vqgan {prec} batch {bs}", f"{ips:9.1f} img/s, codes = fp32 {same:6.1%}", goal)
    return res


def section_wavtokenizer(bt, ck, sz, device) -> dict:
    print("2. WavTokenizer encode", flush=True)
    res = bt.bench_wavtokenizer(ck["wavtokenizer"], sz["audio_batches"], sz["clips"], 0.3, sz["clip_max"],
                                repeats=1, device=device)
    for bs, v in res["speed"].items():
        row(f"wavtokenizer fp32 batch {bs}", f"{v:9.1f} audio-s/s, codes = batch 1 {res['equal'][bs]:6.1%}",
            f"x{v / res['speed'][sz['audio_batches'][0]]:.2f} vs batch {sz['audio_batches'][0]}")
    return res


class GpuSampler:
    """The GPU's busy share (nvidia-smi utilization.gpu, every 200 ms) while a block runs; None without a GPU."""

    def __init__(self):
        self.samples: list[float] = []
        self.proc = None
        self.exe = shutil.which("nvidia-smi")

    def __enter__(self):
        if self.exe:
            self.proc = subprocess.Popen([self.exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200", "-i", "0"], stdout=subprocess.PIPE, text=True)
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def busy(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def section_build(ck, sz, work: Path, cuda: bool, bare_ips: float | None, precision: str, batch: int) -> dict:
    print("3. aromni build of the demo corpus", flush=True)
    import ray

    from aromni.pipeline.build import build
    from aromni.recipe import load_recipe
    from tests.robustness.robust_corpus import demo_corpus, scaled_copy

    corpus = scaled_copy(demo_corpus(work / "demo"), work / f"demo_x{sz['scale']}", sz["scale"])
    gpus = "0.5" if cuda else "0"
    recipe = load_recipe(REPO / "recipes" / "demo_realformat.yaml", [
        f"data_root={corpus}", f"tokenizers.image.path={ck['vqgan']}", f"tokenizers.speech.path={ck['wavtokenizer']}",
        f"tokenizers.image.num_gpus={gpus}", f"tokenizers.speech.num_gpus={gpus}",
        f"tokenizers.image.precision={precision}", f"tokenizers.image.batch_size={batch}",
        "tokenizers.image.num_cpus=1", "tokenizers.speech.num_cpus=1"])
    cpus = max(4, (os.cpu_count() or 4))
    ray.init(address="local", num_cpus=cpus, num_gpus=1 if cuda else 0, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        with GpuSampler() as gpu:
            t0 = time.perf_counter()
            rep = build(recipe, work / "build", workers=max(1, cpus - 3), progress=False, force=True)
            wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    m = rep.manifest
    import pyarrow.parquet as pq
    data = work / "build" / "data"
    tasks = pq.read_table(data, columns=["task"]).column("task").to_pylist() if data.is_dir() else []
    images = sum(t in ("image_caption", "text_to_image") for t in tasks)
    ips = images / wall if wall else 0.0
    ident = m["tokenizers"]["image"]
    row(f"build demo x{sz['scale']}: {len(tasks)} rows, {images} images", f"{wall:7.1f} s, {ips:8.2f} img/s",
        f"precision {ident.get('precision')}")
    if bare_ips:
        share = ips / bare_ips
        row("  end to end vs bare encode", f"{share:6.1%} of {bare_ips:.1f} img/s",
            "goal >= 80%: " + ("MET" if share >= 0.8 else "NOT MET") + " (Ray + actor start-up included)")
    row("  GPU busy during the build", "n/a (no nvidia-smi)" if gpu.busy is None else f"{gpu.busy:6.1%}")
    return {"wall": wall, "images": images, "busy": gpu.busy}


def section_tts(sz, work: Path, cuda: bool) -> dict:
    print("4. TTS through `aromni infer --stream`", flush=True)
    import torch
    from transformers import ChameleonForConditionalGeneration

    from aromni.model.chameleon import MODEL_NOTE, tiny_chameleon_config
    from aromni.model.text import write_chameleon_style_bpe

    model_dir = work / f"chameleon_{sz['shape']}"
    if not (model_dir / "config.json").exists():
        shape = {"tiny": dict(hidden=64, layers=2, heads=4), "7b": dict(hidden=4096, layers=32, heads=32)}
        cfg = tiny_chameleon_config(**shape[sz["shape"]])
        if sz["shape"] == "7b":
            cfg.intermediate_size = 11008
        torch.manual_seed(0)
        dtype = torch.bfloat16 if cuda else torch.float32
        with torch.device("cuda" if cuda else "cpu"):
            model = ChameleonForConditionalGeneration(cfg).to(dtype)
        model.save_pretrained(str(model_dir))
        del model
        (model_dir / MODEL_NOTE).write_text(json.dumps({"stand_in": True, "note": f"RANDOM {sz['shape']}-shaped "
                                                        "Chameleon written by bench/gpu.py; not a trained model"}))
        write_chameleon_style_bpe(["Convert this text into speech. USER: GPT: the quick brown fox jumps over the "
                                   "lazy dog"] * 4, model_dir / "tokenizer.json", vocab_size=300)
        if cuda:
            torch.cuda.empty_cache()
    out = work / "tts.wav"
    cmd = [sys.executable, "-c", "from aromni.cli import app; app()", "infer", "--task", "tts", "--model",
           str(model_dir), "--text", "the quick brown fox jumps over the lazy dog", "--out", str(out), "--stream",
           "--max-new-tokens", str(sz["tts_new"]), "--device", "cuda" if cuda else "cpu",
           "--dtype", "bfloat16" if cuda else "float32"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"aromni infer failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    metrics = json.loads(out.with_name(out.name + ".json").read_text())["metrics"]
    ftl, rtf = metrics["first_token_s"] * 1000, metrics["rtf"]
    what = f"tts {sz['shape']} {'bf16 cuda' if cuda else 'fp32 cpu'}, {metrics.get('audio_s', 0):.1f} s audio"
    row(what, f"FTL {ftl:7.1f} ms, RTF {rtf:.3f}",
        f"goals FTL <= 50 ms: {'MET' if ftl <= 50 else 'NOT MET'}, RTF <= 0.3: {'MET' if rtf <= 0.3 else 'NOT MET'}"
        f" (process wall {time.perf_counter() - t0:.0f} s incl. load)")
    return {"ftl_ms": ftl, "rtf": rtf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: every code path in seconds")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["vqgan", "wavtokenizer", "build", "tts"])
    ap.add_argument("--build-precision", default=None, help="image precision of the build (default bf16 on CUDA)")
    args = ap.parse_args()

    import torch
    cuda = torch.cuda.is_available() and not args.smoke
    device = "cuda" if cuda else "cpu"
    sz = sizes(args.smoke)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="aromni-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{'SMOKE (tiny sizes, numbers mean nothing)' if args.smoke else 'full sizes'}; workdir {work}", flush=True)
    if not cuda and not args.smoke:
        print("  no CUDA device: running the full sizes on CPU will take far longer than 8 minutes", flush=True)
    t_start = time.perf_counter()
    bt = _bench_tokenizers()
    ck = checkpoints(work, args.smoke)
    img = section_vqgan(bt, ck, sz, device) if "vqgan" not in args.skip else {}
    if "wavtokenizer" not in args.skip:
        section_wavtokenizer(bt, ck, sz, device)
    if "build" not in args.skip:
        prec = args.build_precision or ("bf16" if cuda else "fp32")
        batch = max(sz["image_batches"])
        bare = img.get((prec, batch), (None,))[0]
        section_build(ck, sz, work, cuda, bare, prec, batch)
    if "tts" not in args.skip:
        section_tts(sz, work, cuda)
    print(f"\n| what ({name}) | measured | goal |\n|---|---|---|")
    for what, measured, goal in ROWS:
        print(f"| {what.strip()} | {measured.strip()} | {goal} |")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
