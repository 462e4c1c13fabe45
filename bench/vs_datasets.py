"""aromni build against what a user would write instead: HF datasets' load_dataset + map + shuffle + to_parquet.

    .venv/bin/python bench/vs_datasets.py [--rows 320000] [--rows-per-file 500] [--workers 2] [--mixed]
                                          [--executor auto|ray|processes]

Writes a text-only corpus in the Ultra-FineWeb published layout (data/ultrafineweb_en/*.parquet, columns content /
score / source, one row group per file like the fixtures in tests/pipeline/readers/published.py), then in one run:
- ``aromni build`` (the Python API the CLI calls, ``--workers N``; the executor ``auto`` picks for this recipe, the
  local process pool, or ``--executor ray``: a fresh local Ray, its start-up and shutdown in the wall);
- the baseline: ``datasets.load_dataset("parquet")`` + ``map(batched=True, num_proc=N)`` encoding with the same
  tokenizer.json (``tokenizers.Tokenizer.encode_batch``, BOS/EOS added) + ``shuffle(seed)`` + ``to_parquet``;
and prints both walls, aromni's phases (Ray start-up, units, mix) and the ratio aromni speed / baseline speed.
Goal (issue 17 item 1): >= 1.0x on the text-only corpus. aromni does more than the baseline (accounting, rejects,
dedup, grammar/length checks, a deterministic mix, a manifest); the goal is to pay for that and still not be slower.

``--mixed`` also builds the demo corpus (demo_data: real photos, speech, text; stand-in image/speech tokenizers) scaled
x``--mixed-scale`` and prints its wall and rows/s; there is no datasets baseline for it (a user would have to write
the image/speech decoding and the 1:1:1 mix themselves), so it is reported, not compared.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/ itself must not be on sys.path: bench/tokenizers.py would shadow the tokenizers package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

GOAL = 1.0
TOKENIZER = REPO / "demo_data" / "tokenizer" / "tokenizer.json"


def write_corpus(root: Path, rows: int, per_file: int, seed: int = 0) -> Path:
    """Ultra-FineWeb layout; every document unique (the build dedups within a unit and across units)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    demo = REPO / "demo_data" / "ultrafineweb" / "data" / "ultrafineweb_en"
    texts = pq.read_table(sorted(demo.glob("*.parquet"))).column("content").to_pylist()
    sentences = sorted({s.strip() for t in texts for s in t.replace("\n", " ").split(". ") if len(s.strip()) > 20})
    rng = random.Random(seed)
    d = root / "data" / "ultrafineweb_en"
    d.mkdir(parents=True, exist_ok=True)
    n_files = -(-rows // per_file)
    for f in range(n_files):
        n = min(per_file, rows - f * per_file)
        docs = [". ".join(rng.sample(sentences, rng.randint(2, 6))) + f". Document {f * per_file + i}."
                for i in range(n)]
        table = pa.table({"content": docs, "score": [round(rng.uniform(0.5, 1.0), 3) for _ in range(n)],
                          "source": ["bench"] * n})
        pq.write_table(table, d / f"ultrafineweb-en-part-{f:04d}-of-{n_files:04d}.parquet", row_group_size=per_file)
    return d


def text_recipe(corpus: Path, tmp: Path):
    from aromni.recipe import load_recipe
    path = tmp / "text_only.yaml"
    path.write_text(f"""name: vs-datasets-text
seed: 0
data_root: {corpus}
tokenizers:
  text: {{kind: bpe, path: {TOKENIZER}, stand_in: true}}
sources:
  - name: ultrafineweb
    reader: ultrafineweb
    path: data/ultrafineweb_en
    tasks: [text_to_text]
filters:
  max_tokens: 1300
mixing:
  ratio: {{text: 1}}
  stop: first_exhausted
  seed: 0
""")
    return load_recipe(path)


class PhaseClock:
    """Times build()'s units phase and mix by wrapping the two functions it calls (the bench only observes)."""

    def __init__(self):
        import aromni.pipeline.build as b
        self.b, self.seconds = b, {}
        self.names = {"units": "run_units", "mix": "run_mix", "startup": "_init_ray"}
        self.orig = {name: getattr(b, attr) for name, attr in self.names.items()}

    def __enter__(self):
        for name, fn in self.orig.items():
            setattr(self.b, self.names[name], self._timed(name, fn))
        return self

    def _timed(self, name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                res = fn(*a, **k)
                if name == "units":   # process_unit's own clocks: the compute inside the units
                    self.seconds["in_unit"] = sum(st.seconds for st in res.stats.values())
                if name == "mix":
                    self.seconds["mix_stages"] = dict(res.seconds)
                return res
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    def __exit__(self, *exc):
        for name, fn in self.orig.items():
            setattr(self.b, self.names[name], fn)


def run_aromni(recipe, out: Path, workers: int, executor: str = "auto") -> dict:
    from aromni.pipeline.build import build
    t0 = time.perf_counter()
    try:   # build() starts its own Ray (when it runs on Ray), as `aromni build` does
        with PhaseClock() as clock:
            rep = build(recipe, out, workers=workers, progress=False, executor=executor)
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()   # what the CLI's exit does; part of the wall
    wall = time.perf_counter() - t0
    acc = rep.manifest["accounting"]
    startup = clock.seconds.get("startup", 0.0)
    return {"wall": wall, "startup": startup, "executor": rep.executor, "units": clock.seconds.get("units", 0.0) - startup,
            "mix": clock.seconds.get("mix", 0.0), "in_unit": clock.seconds.get("in_unit", 0.0),
            "mix_stages": clock.seconds.get("mix_stages", {}), "written": sum(a["written"] for a in acc.values()),
            "read": sum(a["read"] for a in acc.values()), "tokens": rep.manifest.get("totals", {}).get("tokens")}


_TOK = None


def _encode(batch):
    """The baseline's map function: what a user writes with tokenizers (loaded once per worker process)."""
    global _TOK
    if _TOK is None:
        from tokenizers import Tokenizer
        _TOK = Tokenizer.from_file(str(TOKENIZER))
    bos, eos = _TOK.token_to_id("<s>"), _TOK.token_to_id("</s>")
    ids = [[bos, *e.ids, eos] for e in _TOK.encode_batch(batch["content"], add_special_tokens=False)]
    return {"input_ids": ids, "n_tokens": [len(x) for x in ids]}


def run_baseline(corpus: Path, out: Path, workers: int, cache: Path) -> dict:
    import datasets
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in corpus.glob("*.parquet")),
                               split="train", cache_dir=str(cache))
    ds = ds.map(_encode, batched=True, num_proc=workers, remove_columns=["content", "score", "source"])
    ds = ds.shuffle(seed=0)
    ds.to_parquet(str(out / "train.parquet"))
    return {"wall": time.perf_counter() - t0, "written": len(ds)}


def run_mixed(tmp: Path, scale: int, workers: int, executor: str = "auto") -> dict:
    from aromni.recipe import load_recipe
    from tests.robustness.robust_corpus import demo_corpus, scaled_copy
    corpus = scaled_copy(demo_corpus(tmp / "demo"), tmp / f"demo-x{scale}", scale)
    recipe = load_recipe(REPO / "recipes" / "demo.yaml", [f"data_root={corpus}"])
    return run_aromni(recipe, tmp / "out-mixed", workers, executor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=320_000, help="text documents (default 320k, as issue 17)")
    ap.add_argument("--rows-per-file", type=int, default=500, help="rows per parquet file = per unit (default 500)")
    ap.add_argument("--workers", type=int, default=2, help="aromni --workers and datasets num_proc (default 2)")
    ap.add_argument("--mixed", action="store_true", help="also build the demo corpus (stand-in image/speech tokenizers)")
    ap.add_argument("--mixed-scale", type=int, default=4, help="copies of the demo corpus for --mixed (default 4)")
    ap.add_argument("--executor", default="auto", choices=["auto", "ray", "processes"],
                    help="aromni's executor (default auto: the local process pool for this recipe)")
    ap.add_argument("--keep", action="store_true", help="keep the corpus and outputs (printed path)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aromni-vsds-"))
    try:
        t0 = time.perf_counter()
        corpus = write_corpus(tmp / "ultrafineweb", args.rows, args.rows_per_file)
        print(f"corpus: {args.rows} Ultra-FineWeb-format rows in {-(-args.rows // args.rows_per_file)} files "
              f"({time.perf_counter() - t0:.1f} s to write); workers/num_proc {args.workers}; {os.cpu_count()} CPUs")
        a = run_aromni(text_recipe(corpus.parents[1], tmp), tmp / "out-aromni", args.workers, args.executor)
        (tmp / "out-hf").mkdir()
        b = run_baseline(corpus, tmp / "out-hf", args.workers, tmp / "hf-cache")
        ratio = b["wall"] / a["wall"]          # aromni speed / baseline speed
        print(f"aromni build --workers {args.workers}: {a['wall']:8.2f} s  {a['written'] / a['wall']:9.0f} rows/s  "
              f"(executor {a['executor']}; read {a['read']}, written {a['written']}; Ray start-up {a['startup']:.2f} s,"
              f" units {a['units']:.2f} s, mix {a['mix']:.2f} s, rest {a['wall'] - a['startup'] - a['units'] - a['mix']:.2f}"
              f" s)")
        print(f"  units phase: in-unit compute {a['in_unit']:.2f} s summed over units (/ {args.workers} workers = "
              f"{a['in_unit'] / args.workers:.2f} s); outside process_unit (worker start-up and imports, task "
              f"dispatch, part writes) {a['units'] - a['in_unit'] / args.workers:.2f} s")
        print("  mix stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in a["mix_stages"].items()))
        print(f"datasets map baseline:    {b['wall']:8.2f} s  {b['written'] / b['wall']:9.0f} rows/s  "
              f"(written {b['written']})")
        print(f"ratio aromni speed / baseline speed: {ratio:.2f}x   (units phase alone: {b['wall'] / a['units']:.2f}x;"
              f" without Ray start-up: {b['wall'] / (a['wall'] - a['startup']):.2f}x)")
        print(f"goal: aromni >= {GOAL:.1f}x the baseline's speed on the text-only corpus: "
              f"{'met' if ratio >= GOAL else 'NOT met'}")
        if args.mixed:
            m = run_mixed(tmp, args.mixed_scale, args.workers, args.executor)
            print(f"mixed demo x{args.mixed_scale} (stand-in image/speech tokenizers, executor {m['executor']}), "
                  f"--workers {args.workers}: "
                  f"{m['wall']:.2f} s, {m['written']} rows, {m['written'] / m['wall']:.1f} rows/s (Ray start-up "
                  f"{m['startup']:.2f} s, units {m['units']:.2f} s, mix {m['mix']:.2f} s); no datasets baseline")
    finally:
        if args.keep:
            print(f"outputs under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
