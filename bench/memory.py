"""Is a build's memory flat in corpus size? Peak memory of `aromni build` on the demo corpus x1 and xN.

    .venv/bin/python bench/memory.py [--factor 10] [--workers 2]

The xN corpus repeats every demo unit N times with new keys (N times the units, N times the rows). Each build runs
as a real process in its own session; every 0.1 s the whole tree is sampled (the driver and its workers: the local
process pool ``auto`` picks for the demo recipe, or Ray's daemons and workers) and the peaks are kept:
- driver RSS: the process that plans, runs the mix stage (its tasks do the per-row work) and writes the manifest;
- worker RSS: the largest worker (one unit in memory at a time; a forked pool worker's RSS counts the pages it
  still shares with the driver);
- tree PSS: all processes together, shared pages counted once (what the machine needs).
Then it prints xN / x1 for each. Goal: <= 1.2 (flat). Timings and absolute sizes depend on the machine.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/tokenizers.py would shadow the `tokenizers` package: this script's folder is not an import root.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO / "tests" / "robustness"))

from robust_corpus import (build_cmd, build_env, demo_corpus, load_demo_recipe_dict, scaled_copy,  # noqa: E402
                           session_procs, write_recipe)

MiB = 1 << 20


class Sampler(threading.Thread):
    """Peak driver RSS, peak single-worker RSS and peak tree PSS of one build's session."""

    def __init__(self, proc: subprocess.Popen, every: float = 0.1):
        super().__init__(daemon=True)
        self.proc, self.every = proc, every
        self.driver = self.worker = self.tree = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil
        while not self.stop.is_set() and self.proc.poll() is None:
            total = 0
            for p in session_procs(self.proc.pid):
                try:
                    rss = p.memory_info().rss
                    total += p.memory_full_info().pss
                    if p.pid == self.proc.pid:
                        self.driver = max(self.driver, rss)
                    elif (p.name().startswith("ray::") and "Agent" not in p.name()) or p.ppid() == self.proc.pid:
                        # a Ray worker, or a worker of the local process pool (a child of the driver)
                        self.worker = max(self.worker, rss)
                except (psutil.Error, OSError):
                    continue
            self.tree = max(self.tree, total)
            time.sleep(self.every)


def measure(recipe: Path, out: Path, env: dict, workers: int) -> dict:
    cmd = build_cmd(recipe, out)
    cmd[cmd.index("--workers") + 1] = str(workers)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)
    s = Sampler(proc)
    s.start()
    stdout, stderr = proc.communicate()
    s.stop.set()
    s.join()
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}):\n{stderr[-3000:]}")
    import json
    m = json.loads((out / "manifest.json").read_text())
    read = sum(a["read"] for a in m["accounting"].values())
    return {"units": len(m["units"]), "read": read, "rows": m["rows"], "seconds": time.perf_counter() - t0,
            "driver": s.driver, "worker": s.worker, "tree": s.tree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factor", type=int, default=10, help="size of the large corpus, in demo corpora (default 10)")
    ap.add_argument("--workers", type=int, default=2, help="--workers for both builds (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the corpora and builds (printed path)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aromni-mem-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="arm-", dir="/tmp"))
    env = build_env(ray_tmp)
    try:
        src = demo_corpus(tmp / "demo")
        results = {}
        for factor in (1, args.factor):
            data = scaled_copy(src, tmp / f"x{factor}", factor)
            # The copies repeat the demo's content: with dedup on (or the near_dup step) they would be dropped as
            # duplicates at mix time and the xN shards would be x1's. Off, every copy reaches the shards (N times
            # the rows to mix).
            steps = [s for s in load_demo_recipe_dict()["steps"] if s["name"] != "near_dup"]
            recipe = write_recipe(tmp / f"x{factor}.yaml", data, {"filters.dedup": False, "steps": steps})
            results[factor] = measure(recipe, tmp / f"out{factor}", env, args.workers)
            r = results[factor]
            print(f"x{factor:<3} {r['units']:4d} units {r['read']:6d} items {r['rows']:6d} shard rows  "
                  f"driver RSS {r['driver'] / MiB:7.1f} MiB  worker RSS {r['worker'] / MiB:7.1f} MiB  "
                  f"tree PSS {r['tree'] / MiB:7.1f} MiB  {r['seconds']:6.1f} s", flush=True)
        a, b = results[1], results[args.factor]
        print(f"ratio x{args.factor}/x1: driver {b['driver'] / a['driver']:.2f}  worker {b['worker'] / a['worker']:.2f}  "
              f"tree {b['tree'] / a['tree']:.2f}   (goal <= 1.2; items x{b['read'] / a['read']:.1f})")
        print("the driver holds no per-row structure: the mix's index, dedup and order are tasks of their own "
              "(docs/pipeline.md \"Mixing at scale\"; bench/scale.py measures the driver at 1N, 4N and 16N rows)")
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
