"""The demo build end to end: grammar, 1:1:1 per shard, accounting, determinism, resume, clusters."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aromni.tasks import task_groups
from aromni.pipeline.build import BuildError, build
from aromni.pipeline.validate import validate

ROOT = Path(__file__).resolve().parents[2]
AROMNI = [sys.executable, "-m", "aromni.cli"]


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))}


def test_demo_build_is_valid_mixed_and_accounted(demo_build):
    out, rep = demo_build
    m = rep.manifest
    f = validate(out)
    assert f.ok, f.problems[:5]
    assert f.rows == m["rows"] > 0 and len(m["shards"]) >= 2
    for s in m["shards"]:
        t = pq.read_table(out / s["path"])
        assert t.num_rows == s["rows"]
        groups = Counter(task_groups()[task] for task in t.column("task").to_pylist())
        assert groups["text"] == groups["image_text"] == groups["speech_text"], groups
    for src, a in m["accounting"].items():
        assert a["read"] == a["written"] + sum(a["rejected"].values()) and a["read"] > 0, src
    # the demo's known bad items are rejected with their reasons, not dropped
    # (eval_contamination: the items demo-corpus copied into its stand-in LibriSpeech/COCO sets; language: the ALSA
    # clip's two-word transcript "Front Center" scores below 0.2 English)
    assert m["accounting"]["laion"]["rejected"] == {"download_failed": 2, "eval_contamination": 2}
    assert m["accounting"]["gigaspeech"]["rejected"] == {"eval_contamination": 1, "garbage_only": 2, "language": 1}
    # near_duplicate: the demo's reposted copy of one Ultra-FineWeb document (the first in mixing order is kept)
    assert m["accounting"]["ultrafineweb"]["rejected"] == {"empty_text": 1, "near_duplicate": 1}
    rejects = pq.read_table(out / "rejects" / "gigaspeech.parquet").to_pylist()
    assert {r["id"] for r in rejects} == {"gigaspeech/GARB0000_S0000", "gigaspeech/GARB0001_S0000",
                                          "gigaspeech/ESPK0000_S0000", "gigaspeech/ALSA0000_S0000"}
    assert m["stand_in_tokenizers"] and m["tokenizers"]["image"]["stand_in"]
    assert m["layout"]["boi"] == 8197 and len(m["recipe_sha256"]) == 64
    used = {g: v["used"] for g, v in m["mixing"]["groups"].items()}
    assert len(set(used.values())) == 1 and m["rows"] == sum(used.values())


def test_rows_carry_identity_and_meta(demo_build):
    out, _ = demo_build
    rows = pq.read_table(out / "data").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    by_task = {r["task"]: r for r in rows}
    assert set(by_task) == {"image_caption", "text_to_image", "speech_to_text", "text_to_speech", "text_to_text"}
    cap = json.loads(by_task["image_caption"]["meta"])
    assert cap["caption"] and cap["path"].endswith(".tar:" + by_task["image_caption"]["id"].split("/")[1])
    asr = json.loads(by_task["speech_to_text"]["meta"])
    assert asr["transcript"] and asr["audio"]["sample_rate"] == 16000


def test_datasets_loads_every_row(demo_build):
    import datasets
    out, rep = demo_build
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert len(ds) == rep.manifest["rows"]
    assert ds.features["input_ids"].feature.dtype == "int32"


def test_rerun_skips_done_units_and_redoes_missing_ones(demo_build, demo_recipe, tmp_path):
    out, rep = demo_build
    before = shard_hashes(out)
    again = build(demo_recipe, out, progress=False)
    assert again.units_skipped == again.units_total == rep.units_total
    assert shard_hashes(out) == before
    # lose one unit's done marker (as after a crash): only that unit is redone, output identical
    marker = next((out / "parts").glob("*/*.done.json"))
    marker.unlink()
    again = build(demo_recipe, out, progress=False)
    assert again.units_skipped == rep.units_total - 1
    assert shard_hashes(out) == before


def test_changed_recipe_refused_unless_forced(demo_recipe, tmp_path):
    from aromni.recipe import parse_recipe
    out = tmp_path / "o"
    build(demo_recipe, out, progress=False)
    changed = parse_recipe(demo_recipe.to_dict(), ["filters.max_tokens=1200"])
    with pytest.raises(BuildError, match="different recipe"):
        build(changed, out, progress=False)
    rep = build(changed, out, force=True, progress=False)
    stems = {p.name for p in (out / "parts").glob("*/*.done.json")}
    assert len(stems) == rep.units_total  # the old recipe's parts were removed, not mixed
    assert validate(out).ok


@pytest.mark.slow
def test_workers_1_and_2_give_identical_shards(demo_build, demo_corpus, tmp_path):
    """Through the CLI in a fresh process, as a user runs it (its own Ray with 1 CPU)."""
    out1 = tmp_path / "w1"
    env = {**os.environ, "RAY_ADDRESS": ""}
    r = subprocess.run([*AROMNI, "build", str(ROOT / "recipes" / "demo.yaml"), f"data_root={demo_corpus}",
                        "--out", str(out1), "--workers", "1", "--no-progress"], env=env, capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "STAND-IN" in r.stdout
    assert shard_hashes(out1) == shard_hashes(demo_build[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_build_through_a_ray_cluster_on_loopback(demo_build, demo_corpus, tmp_path):
    """`ray start --head` on loopback, then `aromni build --ray-address`, as a user with a cluster would."""
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray_bin, "start", "--head", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out = tmp_path / "cluster"
        cmd = [*AROMNI, "build", str(ROOT / "recipes" / "demo.yaml"), f"data_root={demo_corpus}", "--out", str(out),
               "--ray-address", f"127.0.0.1:{port}", "--no-progress"]
        deadline = time.time() + 90
        while True:  # the head needs a few seconds before it accepts drivers
            r = subprocess.run(cmd, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
                               cwd=tmp_path)
            if r.returncode == 0 or time.time() > deadline:
                break
            time.sleep(3)
        assert r.returncode == 0, r.stderr[-2000:]
        assert shard_hashes(out) == shard_hashes(demo_build[0])
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_unreachable_cluster_is_a_clear_error(demo_recipe, tmp_path):
    r = subprocess.run([*AROMNI, "build", str(ROOT / "recipes" / "demo.yaml"),
                        f"data_root={demo_recipe.data_root}", "--out", str(tmp_path / "o"),
                        "--ray-address", f"127.0.0.1:{_free_port()}", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "cannot join the Ray cluster" in r.stderr and "Traceback" not in r.stderr


def test_same_id_in_two_units_is_rejected_once(demo_corpus, tmp_path):
    """Ids are unique in a build even without content dedup: a key that two files share is kept once (first unit)
    and the other copy is a duplicate_id reject, so validate passes and nothing is lost silently."""
    import shutil
    from aromni.recipe import load_recipe
    root = tmp_path / "corpus"
    for sub in ("laion", "gigaspeech", "ultrafineweb"):
        shutil.copytree(demo_corpus / sub, root / sub)
    (root / "tokenizer").mkdir()
    shutil.copy(demo_corpus / "tokenizer" / "tokenizer.json", root / "tokenizer" / "tokenizer.json")
    shutil.copy(root / "laion" / "00000.tar", root / "laion" / "00001.tar")   # same keys in a second shard
    r = load_recipe(ROOT / "recipes" / "demo.yaml", [f"data_root={root}", "filters.dedup=false",
                                                          "steps=[]"])  # ids only: no quality filters
    rep = build(r, tmp_path / "out", progress=False)
    a = rep.manifest["accounting"]["laion"]
    assert a["rejected"]["duplicate_id"] == 24 and a["written"] == 24
    assert a["read"] == a["written"] + sum(a["rejected"].values())
    assert validate(tmp_path / "out").ok
    rej = [x for x in pq.read_table(tmp_path / "out" / "rejects" / "laion.parquet").to_pylist()
           if x["reason"] == "duplicate_id"]
    assert len(rej) == 24 and all(x["unit"].endswith("00001.tar") for x in rej)


def test_a_source_that_yields_no_rows_fails_the_build_naming_it(demo_corpus, tmp_path):
    """Every row too long for max_tokens=5: each source is named with its top reject reason and the build fails
    (exit 1); allow_empty: true on a source leaves it out of the error. In-process executor: no Ray start."""
    from aromni.recipe import load_recipe
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml", [f"data_root={demo_corpus}", "filters.max_tokens=5",
                                                          "sources[0].allow_empty=true", "steps=[]"])
    with pytest.raises(BuildError) as e:
        build(recipe, tmp_path / "out", progress=False, executor="local")
    msg = str(e.value)
    assert "sources[1] gigaspeech" in msg and "sources[2] ultrafineweb" in msg and "laion" not in msg
    assert "wrote 0" in msg and "too_long 28" in msg and "allow_empty: true" in msg
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_local_executor_gives_the_process_pool_build_s_shards(demo_build, demo_recipe, tmp_path):
    """The demo build ran on the process pool (what auto picks: its tokenizers are stand-ins, no actor pool); the
    in-process executor runs the same units: identical shards and accounting. (Ray against both: the two-node
    cluster test in test_cluster.py and tests/pipeline/test_executors.py.)"""
    out, rep = demo_build
    assert rep.executor == "processes"
    local = build(demo_recipe, tmp_path / "local", progress=False, executor="local")
    assert shard_hashes(tmp_path / "local") == shard_hashes(out)
    assert local.manifest["accounting"] == rep.manifest["accounting"]
    assert local.dropped_turns == rep.dropped_turns == 0 and local.voice == rep.voice == {}


def test_rows_have_a_content_hash_column_and_format_2(demo_build):
    out, rep = demo_build
    t = pq.read_table(out / "data")
    assert t.schema.names[-1] == "content_hash" and rep.manifest["format_version"] == 2
    hashes = t.column("content_hash").to_pylist()
    assert all(len(h) == 32 for h in hashes) and len(set(hashes)) == len(hashes)   # dedup: no two rows share one
    assert not any("content_hash" in m for m in t.column("meta").to_pylist())
