"""Which executor a build runs on, and that every one of them gives the same bytes: the local process pool (what
``auto`` picks without a cluster or actor pools), Ray, and in-process. A worker process that dies is retried; a
unit that kills its worker every time fails alone, and the build says which."""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aromni.pipeline.build import BuildError, build, choose_executor
from aromni.pipeline.executor.unit_task import tokenizers_for
from aromni.pipeline.steps.base import STEPS, Step, StepOptions
from aromni.recipe import load_recipe

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def write_text_corpus(root: Path, files: int, rows: int) -> Path:
    """Ultra-FineWeb's published layout, one row group a file (= one unit), every document different."""
    d = root / "data" / "ultrafineweb_en"
    d.mkdir(parents=True)
    for f in range(files):
        docs = [" ".join(WORDS[(f * 7 + r * 3 + k) % len(WORDS)] for k in range(12)) + f" document {f}-{r}."
                for r in range(rows)]
        pq.write_table(pa.table({"content": docs, "score": [0.9] * rows, "source": ["test"] * rows}),
                       d / f"ultrafineweb-en-part-{f:04d}-of-{files:04d}.parquet")
    return root


def text_recipe(tmp: Path, corpus: Path, tokenizer: Path, steps: str = "[]"):
    path = tmp / "text.yaml"
    path.write_text(f"""name: executors
seed: 0
data_root: {corpus}
tokenizers:
  text: {{kind: bpe, path: {tokenizer}, stand_in: true}}
sources:
  - {{name: web, reader: ultrafineweb, path: data/ultrafineweb_en, tasks: [text_to_text]}}
steps: {steps}
mixing: {{ratio: {{text: 1}}, stop: first_exhausted, seed: 0, shard_rows: 100}}
""")
    return load_recipe(path)


@pytest.fixture(scope="module")
def text_build(tmp_path_factory, demo_corpus):
    """A text-only corpus of 24 units and its build on the process pool (what auto picks for it). A Ray that an
    earlier test of this process left running is stopped first: auto would join it (as it should)."""
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()
    tmp = tmp_path_factory.mktemp("executors")
    corpus = write_text_corpus(tmp / "corpus", files=24, rows=40)
    recipe = text_recipe(tmp, corpus, demo_corpus / "tokenizer" / "tokenizer.json")
    rep = build(recipe, tmp / "out", workers=2, progress=False)
    return tmp, recipe, rep


def files_of(out: Path) -> dict[str, str]:
    """sha256 of every shard, reject and part file: what must not depend on the executor."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.parquet"))}


def test_auto_picks_processes_unless_a_cluster_or_an_actor_pool_needs_ray(text_build, demo_recipe):
    tmp, recipe, rep = text_build
    tok = tokenizers_for(recipe)
    assert rep.executor == "processes" == choose_executor("auto", recipe, tok)
    assert choose_executor("auto", demo_recipe, tokenizers_for(demo_recipe)) == "processes"   # stand-ins: in-unit
    assert choose_executor("auto", recipe, tok, ray_address="127.0.0.1:6379") == "ray"
    # a model tokenizer served by an actor pool (what `pooled` recognises: preprocess + encode_prepared)
    model = SimpleNamespace(preprocess=None, encode_prepared=None)
    assert choose_executor("auto", demo_recipe, SimpleNamespace(text=tok.text, image=model, speech=None)) == "ray"
    for forced in ("ray", "processes", "local"):
        assert choose_executor(forced, recipe, tok) == forced
    with pytest.raises(BuildError, match="unknown executor 'threads'"):
        build(recipe, tmp / "never", executor="threads")


def test_every_executor_and_worker_count_gives_the_same_bytes(text_build):
    """Shards, rejects, parts and the manifest's accounting: the same on 2 processes, 1 process, in-process and
    on Ray."""
    import ray
    tmp, recipe, rep = text_build
    want = files_of(tmp / "out")
    assert any(k.startswith("data/") for k in want) and any(k.startswith("parts/") for k in want)
    for executor, workers in (("processes", 1), ("local", None), ("ray", 2)):
        out = tmp / f"out-{executor}-{workers}"
        try:
            other = build(recipe, out, workers=workers, progress=False, executor=executor)
        finally:
            ray.shutdown()
        assert other.executor == executor
        assert files_of(out) == want, executor
        assert other.manifest["accounting"] == rep.manifest["accounting"]
        assert other.manifest["shards"] == rep.manifest["shards"]


def test_a_worker_killed_mid_build_is_retried_and_the_bytes_are_unchanged(text_build):
    tmp, recipe, rep = text_build
    out = tmp / "out-killed"
    result: dict = {}

    def run():
        try:
            result["report"] = build(recipe, out, workers=2, progress=False, executor="processes")
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            result["error"] = e

    others = {p.pid for p in psutil.Process().children()}   # children this test process had already (servers)
    t = threading.Thread(target=run)
    t.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and t.is_alive() and time.monotonic() < deadline:
        workers = [p for p in psutil.Process().children() if p.pid not in others]   # the pool's
        if workers and list((out / "parts").glob("*/*.done.json")):   # units are running: kill one worker
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.002)
    t.join(120)
    assert killed is not None, "the build ended before a worker could be killed"
    assert "error" not in result, result.get("error")
    assert files_of(out) == files_of(tmp / "out")
    assert result["report"].manifest["accounting"] == rep.manifest["accounting"]


class _DieOptions(StepOptions):
    key: str


class _DieOn(Step):
    """Test only: the worker process running this example exits at once (a segfault, an OOM kill)."""
    name = "test_die_on"
    Options = _DieOptions
    uses_rng = False

    def process(self, work, rng):
        if work.example.key == self.opts.key:
            os._exit(9)


def test_a_unit_that_kills_its_worker_every_time_fails_alone(text_build, demo_corpus):
    """The other units finish (their parts are kept for the rerun); the error names the one unit and why."""
    STEPS.register(_DieOn)   # the pool's workers are forked after this: they know the step
    tmp, _, _ = text_build
    recipe = text_recipe(tmp, tmp / "corpus", demo_corpus / "tokenizer" / "tokenizer.json",
                         steps='[{name: test_die_on, options: {key: "ultrafineweb-en-part-0005-of-0024:3"}}]')
    out = tmp / "out-dies"
    try:
        with pytest.raises(BuildError) as e:
            build(recipe, out, workers=2, progress=False, executor="processes")
    finally:
        STEPS.pop("test_die_on")
    msg = str(e.value)
    assert msg.startswith("1 unit(s) failed"), msg
    assert "ultrafineweb-en-part-0005-of-0024.parquet" in msg and "WorkerDied" in msg and "4 times" in msg
    assert len(list((out / "parts").glob("*/*.done.json"))) == 23
