"""Crash safety: SIGKILL the whole build tree at random moments, restart on the same --out, and get byte-identical
shards and accounting; a Ray worker killed mid-unit is retried by Ray."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest

from robust_corpus import kill_tree, run_build, session_procs, snapshot, start_build, temp_leftovers

KILLS = 10


def _files(out):
    return sum(1 for _ in out.rglob("*")) if out.exists() else 0


def _done(out):
    return sum(1 for _ in (out / "parts").glob("*/*.done.json")) if (out / "parts").exists() else 0


def _kill_once(proc, out, rng: random.Random, mode: str) -> dict:
    """Kill ``proc``'s tree either after a random delay (start-up, planning) or right after the build wrote its next
    file (mid-units, mixing, manifest). Returns what happened, for the failure message."""
    t0 = time.monotonic()
    before = _files(out)
    if mode == "timer":
        delay = rng.uniform(0.5, 6.0)
        while time.monotonic() - t0 < delay and proc.poll() is None:
            time.sleep(0.02)
    else:  # "progress": wait for the output folder to change, then a short random jitter
        while _files(out) == before and proc.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
    finished = proc.poll() is not None
    kill_tree(proc)
    return {"mode": mode, "at_s": round(time.monotonic() - t0, 2), "killed": not finished, "done_units": _done(out),
            "shards": len(list((out / "data").glob("*.parquet"))) if (out / "data").exists() else 0}


@pytest.mark.slow
def test_kill9_ten_times_then_resume_is_byte_identical(reference, tmp_path, build_environ):
    seed = int(os.environ.get("AROMNI_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    out = tmp_path / "out"
    history = []
    attempts = 0
    while sum(h["killed"] for h in history) < KILLS and attempts < 3 * KILLS:
        attempts += 1
        proc = start_build(reference.recipe, out, build_environ)
        history.append(_kill_once(proc, out, rng, "timer" if attempts % 2 else "progress"))
    why = f"seed={seed} kills={history}"
    print(why)  # shown with -rA / on failure: which phases the kills hit
    assert sum(h["killed"] for h in history) == KILLS, why

    final = run_build(reference.recipe, out, build_environ)
    assert final.returncode == 0, f"{why}\n{final.stderr[-3000:]}"
    assert temp_leftovers(out) == [], why
    got = snapshot(out)
    assert got["files"] == reference.snap["files"], why          # shards, parts, rejects: byte-identical
    assert got["manifest"] == reference.snap["manifest"], why    # accounting, mixing, totals, shard sha256s
    acc = got["manifest"]["accounting"]
    assert all(a["reconciles"] for a in acc.values()), acc


def _running_a_unit(p, build_pid: int, executor: str) -> bool:
    """Ray names its worker by the task it runs; a worker of the local process pool is a child of the build."""
    if executor == "ray":
        return p.name().startswith("ray::run_unit") or " ".join(p.cmdline()).startswith("ray::run_unit")
    return p.ppid() == build_pid


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "processes"])
def test_worker_killed_mid_unit_is_retried(reference, tmp_path, build_environ, executor):
    """SIGKILL the worker while it runs a unit: Ray retries the task elsewhere, the process pool runs the calls it
    had in flight again on a fresh pool; the build is unchanged either way."""
    out = tmp_path / "out"
    proc = start_build(reference.recipe, out, build_environ, "--executor", executor)
    victim = None
    try:
        deadline = time.monotonic() + 120
        while victim is None and proc.poll() is None and time.monotonic() < deadline:
            for p in session_procs(proc.pid):
                try:
                    if _running_a_unit(p, proc.pid, executor) and (executor == "ray" or list(out.glob("parts/*/*"))):
                        victim = p
                        break
                except Exception:  # noqa: BLE001 - gone meanwhile
                    continue
            time.sleep(0.005)
        assert victim is not None, "never saw a worker running a unit"
        os.kill(victim.pid, signal.SIGKILL)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert rc == 0
    assert temp_leftovers(out) == []
    got = snapshot(out)
    assert got["files"] == reference.snap["files"]
    assert got["manifest"] == reference.snap["manifest"]


def _bucket_snapshot(fs, root: str) -> dict:
    import hashlib
    import json
    files = {k[len(root) + 1:]: hashlib.sha256(fs.cat_file(k)).hexdigest() for k in sorted(fs.find(root))
             if k.endswith(".parquet") and k[len(root) + 1:].split("/")[0] in ("data", "rejects", "parts")}
    return {"files": files, "manifest": json.loads(fs.cat_file(f"{root}/manifest.json"))}


@pytest.mark.slow
def test_kill9_on_s3_then_resume_is_byte_identical(reference, build_environ, tmp_path):
    """--out in a bucket of a loopback S3 server: SIGKILL the build tree three times (start-up, mid-units, as
    objects appear), rerun, and get the reference's bytes; no temp or scratch object is left."""
    import subprocess
    import sys
    from tests.io.s3server import S3Server
    srv = S3Server()
    try:
        fs = srv.fs()
        url, root = f"s3://{srv.bucket('killed')}/out", "killed/out"
        env = dict(build_environ, **srv.env)
        cmd = [sys.executable, "-m", "aromni.cli", "build", str(reference.recipe), "--out", url, "--workers", "1",
               "--no-progress"]
        rng = random.Random(int(os.environ.get("AROMNI_KILL_SEED", random.randrange(1 << 30))))
        kills = 0
        for attempt in range(9):
            if kills == 3:
                break
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            t0, before = time.monotonic(), len(fs.find(root)) if fs.exists(root) else 0
            if attempt % 2 == 0:
                time.sleep(rng.uniform(1.0, 8.0))
            else:
                while proc.poll() is None and time.monotonic() - t0 < 120:
                    fs.invalidate_cache()
                    if (len(fs.find(root)) if fs.exists(root) else 0) > before:
                        break
                    time.sleep(0.05)
            kills += proc.poll() is None
            kill_tree(proc)
        assert kills == 3
        final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr[-3000:]
        fs.invalidate_cache()
        got = _bucket_snapshot(fs, root)
        assert got["files"] == reference.snap["files"]
        assert got["manifest"] == reference.snap["manifest"]
        assert not [k for k in fs.find(root) if ".tmp-" in k or "/.mix/" in k]
    finally:
        srv.stop()
