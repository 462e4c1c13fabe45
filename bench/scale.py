"""Does the build scale? Wall time and peak memory per phase at N, 4N and 16N rows, against a bare pyarrow baseline.

    .venv/bin/python bench/scale.py [--n 50000] [--workers 2] [--sizes 1,4,16]

The corpus: synthetic Ultra-FineWeb-format text (parquet files of --rows-per-file rows, deterministic words) at
N, 4N, 16N rows, plus a small fixed image and speech slice (the demo corpus's LAION tar and GigaSpeech parquet, with
the demo's STAND-IN tokenizers). The recipe (recipes/demo.yaml) mixes text:image:speech 8:1:1 with ``all_exhausted``,
so every text row reaches a shard; its quality steps are off (``steps=[]``: they are measured by bench/dedup.py and
their own tests) unless ``--with-steps`` (then near_dup adds its two mix waves and every row its fingerprint).
Each size is built by a fresh process (so peaks do not carry over) that times the phases
(plan, units, dedup = the mix's index + dedup stages, mix = the whole mix stage, manifest) and samples, every 0.1 s,
the driver's RSS and the largest Ray worker's RSS per phase. In the same process, after the build, the baseline
reads every part once and writes the rows the shards hold once (the small image and speech groups cycled to the
counts ``all_exhausted`` repeats them to, as the shards hold them), in files of the same size with the shards'
parquet options (compression, row groups, page index, content-defined chunking: the output format, which any writer
of these shards pays), without shuffling, dedup or ratio blocks: the ratio measures what the mix adds.

Goals (issue 13): mix(16N)/mix(N) <= 18; driver peak RSS(16N)/RSS(N) <= 1.2; mix wall <= 3 x the bare baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
MiB = 1 << 20
WORDS = ("the of and to in is was for on that with as by at from his her an this which are be or had not but "
         "data model image speech token river mountain city music light paper build shard train layer north "
         "window garden system market letter winter summer morning energy signal number voice story").split()


def make_corpus(root: Path, rows: int, per_file: int, demo: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    text = root / "ultrafineweb" / "data" / "ultrafineweb_en"
    text.mkdir(parents=True)
    rng = random.Random(0)
    for f in range(0, rows, per_file):
        n = min(per_file, rows - f)
        content = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) + f" {f + i}." for i in range(n)]
        pq.write_table(pa.table({"content": content, "score": [0.9] * n, "source": ["bench"] * n}),
                       text / f"part-{f // per_file:05d}.parquet")
    for sub in ("laion", "gigaspeech", "tokenizer"):
        shutil.copytree(demo / sub, root / sub)


class Sampler(threading.Thread):
    """Peak RSS of this process (the driver) and of the largest worker (a Ray worker, or a process of the local
    pool: a child of this process), per phase."""

    def __init__(self):
        super().__init__(daemon=True)
        self.phase, self.peaks, self.stop = "start", {}, threading.Event()

    def run(self):
        import psutil
        me = psutil.Process()
        while not self.stop.is_set():
            drv, wrk = me.memory_info().rss, 0
            for p in me.children():
                try:
                    wrk = max(wrk, p.memory_info().rss)
                except psutil.Error:
                    continue
            for p in psutil.process_iter(["name", "cmdline"]):
                try:
                    if p.info["name"].startswith("ray::") or " ".join(p.info["cmdline"] or [])[:5] == "ray::":
                        wrk = max(wrk, p.memory_info().rss)
                except (psutil.Error, TypeError):
                    continue
            d, w = self.peaks.get(self.phase, (0, 0))
            self.peaks[self.phase] = (max(d, drv), max(w, wrk))
            time.sleep(0.1)


def child(args) -> None:
    """One build of one size; prints a JSON line with timings and peaks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import aromni.pipeline.build as b
    from aromni.pipeline.mix.shards import shard_parquet_options
    from aromni.recipe import load_recipe
    sampler = Sampler()
    sampler.start()
    times = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            sampler.phase = name
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[name] = times.get(name, 0) + time.perf_counter() - t
                sampler.phase = "units" if name == "plan" else "after"
        return wrapper
    mix_seconds = {}
    real_mix = b.run_mix

    def run_mix(*a, **k):
        res = real_mix(*a, **k)
        mix_seconds.update(res.seconds)
        return res
    b.plan = timed("plan", b.plan)
    b.run_mix = timed("mix", run_mix)
    b.write_manifest = timed("manifest", b.write_manifest)
    recipe = load_recipe(REPO / "recipes" / "demo.yaml", ([] if args.with_steps else ["steps=[]"]) + [
        f"data_root={args.corpus}", "mixing.stop=all_exhausted", "mixing.ratio={text: 8, image_text: 1, speech_text: 1}",
        f"mixing.shard_rows={args.shard_rows}"])
    t0 = time.perf_counter()
    rep = b.build(recipe, args.out, workers=args.workers, progress=False)
    total = time.perf_counter() - t0
    if "ray" in sys.modules:   # the build ran on Ray (``auto`` picks the process pool for these recipes)
        sys.modules["ray"].shutdown()
    # the bare baseline: every part read once, the rows the shards hold written once with the same parquet options:
    # per group its parts' rows, the small groups cycled to the count the shards hold (all_exhausted repeats them:
    # at 16N the repeated image rows are over half of the shards' tokens), in files of --shard-rows, no shuffle
    sampler.phase = "baseline"
    t = time.perf_counter()
    import numpy as np
    o = recipe.output
    group_of = {s.name: s.group for s in recipe.sources}
    parts = sorted(p for p in Path(args.out, "parts").glob("*/*.parquet") if p.name.count(".") == 1)  # rows only
    by_group: dict = {}
    for p in parts:
        by_group.setdefault(group_of[p.parent.name], []).append(pq.read_table(p))
    base_dir = Path(args.out) / "baseline"
    base_dir.mkdir()
    n_out = k = 0
    for g, tables in sorted(by_group.items()):
        tb = pa.concat_tables(tables).combine_chunks()
        used = rep.manifest["totals"]["group"].get(g, {}).get("rows", 0)
        for a in range(0, used, args.shard_rows):
            idx = np.arange(a, min(used, a + args.shard_rows)) % tb.num_rows
            chunk = tb.slice(int(idx[0]), len(idx)) if idx[-1] - idx[0] == len(idx) - 1 else tb.take(pa.array(idx))
            pq.write_table(chunk, base_dir / f"{k:05d}.parquet", **shard_parquet_options(o))
            n_out += chunk.num_rows
            k += 1
    baseline = time.perf_counter() - t
    assert n_out == rep.manifest["rows"], (n_out, rep.manifest["rows"])   # the same rows as the shards
    sampler.stop.set()
    units = total - sum(times.values())
    peaks = sampler.peaks
    print(json.dumps({
        "rows": rep.manifest["rows"], "units": rep.units_total, "baseline_rows": n_out,
        "plan": times.get("plan", 0), "units_s": units, "dedup": mix_seconds.get("index", 0) + mix_seconds.get("dedup", 0),
        "mix": times.get("mix", 0), "mix_stages": mix_seconds, "manifest": times.get("manifest", 0),
        "baseline": baseline, "total": total,
        "driver_rss": max(d for ph, (d, _) in peaks.items() if ph != "baseline") / MiB,   # the build only
        "driver_rss_mix": peaks.get("mix", (0, 0))[0] / MiB,
        "worker_rss": max(w for ph, (_, w) in peaks.items() if ph != "baseline") / MiB,
        "worker_rss_mix": peaks.get("mix", (0, 0))[1] / MiB}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="N: text rows of the smallest size")
    ap.add_argument("--sizes", default="1,4,16", help="multiples of N")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows-per-file", type=int, default=5000)
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--with-steps", action="store_true", help="keep the demo recipe's quality steps (near_dup, ...)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    sys.path.insert(0, str(REPO))
    from aromni.demo import make_demo_corpus
    tmp = Path(tempfile.mkdtemp(prefix="aro-scale-", dir="/tmp"))
    results = {}
    try:
        demo = tmp / "demo"
        make_demo_corpus(demo)
        for m in [int(x) for x in args.sizes.split(",")]:
            rows = m * args.n
            corpus = tmp / f"corpus{m}"
            make_corpus(corpus, rows, args.rows_per_file, demo)
            env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                       RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                       RAY_TMPDIR=str(tmp), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
            env.pop("RAY_ADDRESS", None)
            r = subprocess.run([sys.executable, __file__, "--child", "--corpus", str(corpus), "--out",
                                str(tmp / f"out{m}"), "--workers", str(args.workers),
                                "--shard-rows", str(args.shard_rows)] + (["--with-steps"] if args.with_steps else []),
                               env=env, capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"build of {rows} rows failed:\n{r.stderr[-3000:]}")
            results[m] = json.loads(r.stdout.strip().splitlines()[-1])
            shutil.rmtree(corpus, ignore_errors=True)
            shutil.rmtree(tmp / f"out{m}", ignore_errors=True)
            print(f"{m}N done: {json.dumps(results[m])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, args)


def report(res: dict, args) -> None:
    cols = ["plan", "units_s", "dedup", "mix", "manifest", "baseline", "driver_rss", "worker_rss"]
    head = ["size", "text rows", "shard rows", "plan s", "units s", "dedup s", "mix s", "manifest s",
            "baseline s", "driver MiB", "largest task MiB"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for m, r in res.items():
        print(f"| {m}N | {m * args.n} | {r['rows']} | " + " | ".join(
            f"{r[c]:.0f}" if c.endswith("rss") else f"{r[c]:.2f}" for c in cols) + " |")
    lo, hi = min(res), max(res)
    a, b = res[lo], res[hi]
    mix_ratio = b["mix"] / a["mix"]
    rss_ratio = b["driver_rss"] / a["driver_rss"]
    vs_base = max(r["mix"] / r["baseline"] for r in res.values())
    print(f"\nmix stages at {hi}N (s): {b['mix_stages']}")
    print(f"ratios {hi}N/{lo}N ({hi // lo}x rows): mix {mix_ratio:.2f}, units {b['units_s'] / a['units_s']:.2f}, "
          f"driver RSS {rss_ratio:.2f}, largest task RSS {b['worker_rss'] / a['worker_rss']:.2f}")
    scale = hi / lo
    goals = [(f"mix({hi}N)/mix({lo}N) <= {18 * scale / 16:.1f}", mix_ratio <= 18 * scale / 16),
             (f"driver peak RSS({hi}N)/RSS({lo}N) <= 1.2", rss_ratio <= 1.2),
             ("mix wall <= 3 x bare baseline (worst size)", vs_base <= 3)]
    print("mix / baseline per size: " + ", ".join(f"{m}N {r['mix'] / r['baseline']:.2f}" for m, r in res.items()))
    for text, ok in goals:
        print(f"goal {text}: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
