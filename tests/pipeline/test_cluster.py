"""A two-node Ray cluster on loopback (`ray start --head`, then a second `ray start --address` with its own CPUs),
the build submitted with `ray job submit`, output in a bucket of a loopback S3 server: the same shards as a local
build. Everything the test starts, it stops."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.io.s3server import S3Server, free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _ports() -> list[str]:
    """Every port a node listens on, free ones: Ray's defaults (52365, 10001, ...) may be taken by other Ray
    instances on the machine, and the agent that accepts jobs then never starts."""
    return [a for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                           "--runtime-env-agent-port")
            for a in (flag, str(free_port()))]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", *args, *_ports(), "--disable-usage-stats", "--block"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=40)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _raylet_up(node: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until the node's raylet runs (a node that joins before its head is up fails to start)."""
    import psutil
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert node.poll() is None, "ray start exited"
        for p in psutil.process_iter(["name"]):
            try:
                if p.info["name"] == "raylet" and os.getsid(p.pid) == node.pid:
                    time.sleep(3)
                    return
            except (psutil.Error, OSError):
                continue
        time.sleep(1)
    raise AssertionError("the node's raylet never started")


@pytest.mark.slow
def test_ray_job_submit_on_two_nodes_writes_the_local_shards_to_s3(demo_build, demo_corpus, tmp_path):
    local, rep = demo_build
    srv = S3Server()
    port, dash = free_port(), free_port()
    # the nodes (and so the job's driver and workers) get the S3 endpoint and credentials from their environment
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the suite's default) forbids a second node; --node-ip-address keeps loopback
    env = {**os.environ, **srv.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    nodes = []
    try:
        srv.bucket("cluster")
        nodes.append(_start(["--head", "--port", str(port), "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dash), "--ray-client-server-port", str(free_port())], env))
        _raylet_up(nodes[0])
        nodes.append(_start(["--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--node-ip-address",
                             "127.0.0.1"], env))
        _raylet_up(nodes[1])
        url = "s3://cluster/demo"
        cmd = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--runtime-env-json",
               json.dumps({"working_dir": str(ROOT), "excludes": [".venv", "demo_data", ".git", "*.pyc"]}),
               "--", sys.executable, "-m", "aromni.cli", "build", "recipes/demo.yaml", f"data_root={demo_corpus}",
               "--out", url, "--workers", "3", "--no-progress"]
        deadline = time.time() + 300
        while True:  # the head's job server and agent need a while (a loaded machine: minutes) to accept jobs
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            starting = "No available agent" in r.stderr or "Failed to connect" in r.stderr or "onnection" in r.stderr
            if r.returncode == 0 or not starting or time.time() > deadline:
                break
            time.sleep(5)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        status = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{port}"], env=env, capture_output=True,
                                text=True, timeout=120).stdout
        assert status.count("node_") >= 2 and "/3.0 CPU" in status, status   # both nodes were in the cluster
        fs = srv.fs()
        got = {k.rsplit("/", 1)[-1]: hashlib.sha256(fs.cat_file(k)).hexdigest() for k in fs.find("cluster/demo/data")}
        want = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((local / "data").glob("*.parquet"))}
        assert got == want and len(want) == len(rep.manifest["shards"])
    finally:
        for p in reversed(nodes):
            _stop(p)
        srv.stop()
