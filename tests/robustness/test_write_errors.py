"""Write failures (disk full, permission denied) and changed recipes on an existing --out.

A failed write gives a clear error, leaves no temp file, and never promotes a half-written file; the next run
resumes. A changed recipe is refused unless --force, and parts of the old recipe never reach the new shards."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from robust_corpus import build_cmd, run_build, sha256, snapshot, temp_leftovers, write_recipe

from aromni.io import atomic
from aromni.pipeline.mix import shards as shards_mod
from aromni.pipeline.parts import part_paths, read_done, write_part


def _failing_writes(monkeypatch, when, err=errno.ENOSPC):
    """Every atomic write whose final path ``when`` selects writes half its bytes, then fails like a full disk."""
    real = atomic.open_atomic

    class Half:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            raise OSError(err, os.strerror(err), "")

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def open_atomic(fs, path, durable=True):
        with real(fs, path, durable) as f:
            yield Half(f) if when(path) else f
    monkeypatch.setattr(atomic, "open_atomic", open_atomic)
    monkeypatch.setattr(shards_mod, "open_atomic", open_atomic)
    return real


class _Result:
    def __init__(self, rows=(), rejects=(), stats=None):
        self.rows, self.rejects, self.stats = list(rows), list(rejects), stats or {"unit": "u", "read": 0}


@pytest.mark.parametrize("failing", ["rows", "rejects", "done"])
def test_full_disk_while_writing_a_part_promotes_nothing_half_written(failing, tmp_path, monkeypatch):
    from aromni.recipe import parse_recipe
    from robust_corpus import load_demo_recipe_dict
    recipe = parse_recipe(load_demo_recipe_dict())
    stem = "laion/0123456789abcdef"
    ends = {"rows": "abcdef.parquet", "rejects": ".rejects.parquet", "done": ".done.json"}
    _failing_writes(monkeypatch, lambda p: p.endswith(ends[failing]))
    with pytest.raises(OSError, match="No space left"):
        write_part(tmp_path, stem, _Result(), recipe)
    assert temp_leftovers(tmp_path) == []
    assert read_done(tmp_path, stem) is None            # the unit is not done: a rerun redoes it
    for kind, p in part_paths(tmp_path, stem).items():  # whatever was promoted is whole
        if Path(p).exists() and kind != "done":
            pq.read_table(p)
    assert not Path(part_paths(tmp_path, stem)["done"]).exists()


def _parts_only_copy(reference, dst: Path) -> Path:
    """The reference build's finished parts, without shards or manifest (as after the units of a killed build)."""
    shutil.copytree(reference.out / "parts", dst / "parts")
    return dst


@pytest.mark.slow
def test_full_disk_while_mixing_is_a_clear_error_and_resumes(reference, tmp_path, monkeypatch):
    """Every unit done, the disk fills while shards are written: exit 1 with the reason, no traceback, no temp, no
    manifest; the rerun writes exactly the reference build. In-process: all units are done, so no Ray starts."""
    from aromni.cli import app
    import aromni.pipeline.build as b
    out = _parts_only_copy(reference, tmp_path / "out")
    monkeypatch.setattr(b, "_init_ray", lambda *a, **k: pytest.fail("no unit should need redoing"))
    # the mix in this process even if an earlier test left a Ray running here (its workers would not see the patch)
    monkeypatch.setattr(b, "_ray_if_running", lambda: None)
    real = _failing_writes(monkeypatch, lambda p: "train-00001" in p)
    args = ["build", str(reference.recipe), "--out", str(out), "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "No space left on device" in r.output and "rerun the same command" in r.output
    assert "Traceback" not in r.output
    assert temp_leftovers(out) == [] and not (out / "manifest.json").exists()
    monkeypatch.setattr(atomic, "open_atomic", real)
    monkeypatch.setattr(shards_mod, "open_atomic", real)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert snapshot(out) == reference.snap


def _can(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not _can(["unshare", "-m", "true"]),
                    reason="needs a private mount namespace (root) for a small tmpfs")
def test_real_full_disk_during_units_then_resume(reference, tmp_path, build_environ):
    """--out on a 48 KiB tmpfs: units fail with ENOSPC (clear error, exit 1, nothing half-written promoted); after
    the disk grows, the same command finishes the build byte-identical to the reference."""
    mnt, keep = tmp_path / "mnt", tmp_path / "keep"
    mnt.mkdir()
    keep.mkdir()
    q = lambda args: " ".join(f"'{a}'" for a in args)  # noqa: E731 - paths here have no quotes
    script = f"""set -u
mount -t tmpfs -o size=48k tmpfs '{mnt}' || exit 99
{q(build_cmd(reference.recipe, mnt / 'b'))} > '{keep}/log1' 2>&1; echo $? > '{keep}/rc1'
cp -a '{mnt}/b' '{keep}/after_fail' 2>/dev/null
mount -o remount,size=64m '{mnt}'
{q(build_cmd(reference.recipe, mnt / 'b'))} > '{keep}/log2' 2>&1; echo $? > '{keep}/rc2'
cp -a '{mnt}/b' '{keep}/final'
"""
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", script], env=build_environ,
                       capture_output=True, text=True, timeout=600)
    if r.returncode == 99:
        pytest.skip("tmpfs cannot be mounted here")
    log1 = (keep / "log1").read_text()
    assert (keep / "rc1").read_text().strip() == "1", log1
    assert "No space left on device" in log1 and "rerun the same command" in log1, log1
    assert "Traceback" not in log1
    failed = keep / "after_fail"
    assert temp_leftovers(failed) == []
    ref_files = reference.snap["files"]
    for p in (failed / "parts").rglob("*.parquet"):   # every promoted part is whole: the reference's bytes
        assert sha256(p) == ref_files[str(p.relative_to(failed))], p
    assert not (failed / "manifest.json").exists()
    assert (keep / "rc2").read_text().strip() == "0", (keep / "log2").read_text()
    assert temp_leftovers(keep / "final") == []
    assert snapshot(keep / "final") == reference.snap


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0 and not _can(["setpriv", "--bounding-set", "-dac_override", "true"]),
                    reason="root without setpriv: permissions cannot be enforced")
def test_permission_denied_on_a_parts_folder_then_resume(reference, tmp_path, build_environ):
    """The LAION parts folder is read-only: its units fail with a clear error (exit 1), the others finish; after
    the permission is fixed the rerun completes the reference build."""
    out = tmp_path / "out"
    ro = out / "parts" / "laion"
    ro.mkdir(parents=True)
    ro.chmod(0o555)
    cmd = build_cmd(reference.recipe, out)
    if os.geteuid() == 0:  # root ignores file modes unless it gives up CAP_DAC_OVERRIDE
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, env=build_environ, capture_output=True, text=True, timeout=600)
    ro.chmod(0o755)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Permission denied" in r.stderr and "laion" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(ro.iterdir()) == []                    # nothing of the failed units, not even a temp
    assert len(list((out / "parts").glob("*/*.done.json"))) > 0   # the other units are kept
    assert not (out / "manifest.json").exists()
    r = run_build(reference.recipe, out, build_environ)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 already done" not in r.stdout
    assert snapshot(out) == reference.snap


@pytest.mark.slow
def test_changed_recipe_is_refused_unless_forced_and_old_parts_never_mixed(reference, tmp_path, build_environ):
    out = tmp_path / "out"
    shutil.copytree(reference.out, out)
    changed = write_recipe(tmp_path / "changed.yaml", json.loads((out / "manifest.json").read_text())["recipe"]
                           ["data_root"], {"sources.1.options": {"case": "lower"}})
    before = snapshot(out)
    r = run_build(changed, out, build_environ)
    assert r.returncode == 1 and "different recipe" in r.stderr and "--force" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(out) == before                      # refused before touching anything
    r = run_build(changed, out, build_environ, "--force")
    assert r.returncode == 0, r.stderr[-3000:]
    fresh = tmp_path / "fresh"
    r = run_build(changed, fresh, build_environ)
    assert r.returncode == 0, r.stderr[-3000:]
    assert snapshot(out) == snapshot(fresh)              # same bytes as a build that never saw the old recipe
    old_giga = {p for p in reference.snap["files"] if p.startswith("parts/gigaspeech/")}
    assert old_giga and not old_giga & set(snapshot(out)["files"])


@pytest.mark.slow
def test_parts_of_an_interrupted_other_recipe_are_refused(reference, tmp_path):
    """No manifest yet (the old build was killed during its units), but its parts are there: refused, not mixed."""
    from aromni.pipeline.build import BuildError, build
    from aromni.recipe import load_recipe
    out = _parts_only_copy(reference, tmp_path / "out")
    changed = load_recipe(reference.recipe, ["filters.max_tokens=1000"])
    with pytest.raises(BuildError, match="--force"):
        build(changed, out, progress=False)
    assert snapshot_parts(out) == snapshot_parts(reference.out)


def snapshot_parts(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in (out / "parts").rglob("*")}
