"""Atomic writes, durable parts and the lock on --out, on a local folder and on a loopback S3 server."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aromni.io.atomic import LockedError, OutputError, build_lock, check_writable, open_atomic, out_fs
from aromni.pipeline.parts import part_paths, read_done, write_part
from tests.io.s3server import S3Server, s3  # noqa: F401 - fixture

HOLD = """
import sys, time
from aromni.io.atomic import build_lock
with build_lock(sys.argv[1], lease=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(out: str, lease: float = 60.0) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, out, str(lease)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("where", ["local", "s3"])
def test_second_build_is_refused_naming_the_first_and_a_killed_one_is_taken_over(where, tmp_path, request):
    if where == "s3":
        srv = request.getfixturevalue("s3")
        out, lease = f"s3://{srv.bucket('lock')}/build", 3.0
    else:
        out, lease = str(tmp_path / "out"), 60.0
    p = _holder(out, lease)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockedError, match=rf"in use by the build of pid {p.pid} on .* started 20"):
            with build_lock(out):
                pass
        assert time.monotonic() - t0 < 5  # at once, not after a wait
    finally:
        p.kill()   # kill -9: no cleanup runs, the lock (or lease object) stays behind
        p.wait()
    if where == "s3":
        time.sleep(lease + 0.5)   # the dead holder's lease expires; the local flock died with the process
    with build_lock(out) as lk:
        fs, root = out_fs(out)
        assert json.loads(fs.cat_file(lk.path))["token"] == lk.info["token"]
    assert not fs.exists(lk.path)  # released on exit


class _Result:
    rows, rejects = [], []
    stats = {"unit": "u", "source": "laion", "read": 0, "written": 0, "rejected": {}}


def _recipe():
    from aromni.recipe import parse_recipe
    import yaml
    return parse_recipe(yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml").read_text()))


@pytest.mark.parametrize("damage", ["zero_length", "flipped_byte", "missing_rejects"])
def test_a_part_that_does_not_match_its_marker_is_redone(damage, tmp_path):
    """A power cut can leave a zero-length part with its marker: the unit is not done (redo), never a crash."""
    out, stem = str(tmp_path), "laion/0123456789abcdef"
    write_part(out, stem, _Result(), _recipe())
    assert read_done(out, stem) == _Result.stats
    p = part_paths(out, stem)
    rows = Path(p["rows"])
    if damage == "zero_length":
        rows.write_bytes(b"")
    elif damage == "flipped_byte":
        b = bytearray(rows.read_bytes())
        b[len(b) // 2] ^= 1
        rows.write_bytes(bytes(b))
    else:
        Path(p["rejects"]).unlink()
    assert read_done(out, stem) is None


def test_durable_write_fsyncs_file_and_folder(tmp_path, monkeypatch):
    import os
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    fs, root = out_fs(str(tmp_path))
    with open_atomic(fs, f"{root}/a/b.bin") as f:
        f.write(b"x")
    assert any(".b.bin.tmp-" in s for s in synced) and synced[-1] == str(tmp_path / "a")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"x" and os.listdir(tmp_path / "a") == ["b.bin"]


def test_a_failed_upload_leaves_no_object(s3):
    fs, root = out_fs(f"s3://{s3.bucket('uploads')}/x")
    with pytest.raises(RuntimeError):
        with open_atomic(fs, f"{root}/half.parquet") as f:
            f.write(b"a" * 1000)
            raise RuntimeError("killed mid-write")
    assert not fs.exists(f"{root}/half.parquet")


def test_bad_output_urls_give_one_clear_message(s3, tmp_path):
    with pytest.raises(OutputError, match=r"cannot write to --out s3://no-such-bucket/x: .*bucket does not exist"):
        check_writable("s3://no-such-bucket/x")
    fs = s3.fs()
    assert not fs.exists("no-such-bucket")
    import os
    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"   # nothing listens there
    os.environ["AWS_MAX_ATTEMPTS"] = "1"
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    t0 = time.monotonic()
    with pytest.raises(OutputError, match=r"cannot write to --out s3://any/x: .*(onnect|endpoint)"):
        check_writable("s3://any/x")
    assert time.monotonic() - t0 < 60
    os.environ.pop("AWS_MAX_ATTEMPTS")


def test_a_denied_write_is_one_clear_message_and_writes_nothing(monkeypatch):
    """A bucket the credentials may read but not write (a real IAM policy, enforced by the S3 server)."""
    srv = S3Server(enforce_iam_after=4)
    try:
        env = srv.read_only_user("read-only-out")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        import s3fs
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(OutputError, match=r"cannot write to --out s3://read-only-out/run: .*Access Denied"):
            check_writable("s3://read-only-out/run")
        assert s3fs.S3FileSystem(endpoint_url=srv.url).ls("read-only-out") == []    # reading is allowed; nothing there
    finally:
        srv.stop()
        import s3fs
        s3fs.S3FileSystem.clear_instance_cache()
