"""aromni validate trusts nothing: each damage a hostile or careless hand can do to a build folder is a finding
(exit 1), never a traceback and never a pass."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aromni.pipeline.validate import validate


@pytest.fixture
def build(demo_build, tmp_path) -> Path:
    """A private copy of the session's demo build (without parts/) that a test may damage."""
    return Path(shutil.copytree(demo_build[0], tmp_path / "build", ignore=shutil.ignore_patterns("parts")))


def manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def edit(b: Path, fn) -> None:
    m = manifest(b)
    fn(m)
    (b / "manifest.json").write_text(json.dumps(m))


def relist(b: Path, rel: str) -> None:
    """Make the manifest's size and sha256 of shard ``rel`` match its (rewritten) bytes."""
    data = (b / rel).read_bytes()

    def fix(m):
        s = next(s for s in m["shards"] if s["path"] == rel)
        s.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    edit(b, fix)


def findings(b) -> list[str]:
    f = validate(b)
    assert not f.ok
    return f.problems


def has(problems: list[str], *words: str) -> bool:
    return any(all(w in p for w in words) for p in problems)


def test_the_demo_build_validates(build):
    f = validate(build)
    assert f.ok, f.problems
    assert f.rows == manifest(build)["rows"] > 0 and f.shards == len(manifest(build)["shards"])


def test_a_flipped_byte_is_a_finding_not_a_traceback(build):
    rel = manifest(build)["shards"][0]["path"]
    p = build / rel
    data = bytearray(p.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):  # inside the first column chunk's compressed pages
        data[i] ^= 0xFF
    p.write_bytes(bytes(data))
    assert has(findings(build), rel, "sha256")
    relist(build, rel)  # even with a matching checksum, the bytes must parse: ZSTD/Arrow errors are findings
    assert has(findings(build), rel)


def test_a_truncated_shard_with_a_matching_checksum_is_unreadable(build):
    rel = manifest(build)["shards"][0]["path"]
    p = build / rel
    p.write_bytes(p.read_bytes()[:-200])
    relist(build, rel)
    assert has(findings(build), rel, "not a readable parquet shard")


def test_an_unlisted_shard_in_data_is_a_finding(build):
    first = manifest(build)["shards"][0]["path"]
    shutil.copy(build / first, build / "data" / "extra-00099.parquet")
    assert has(findings(build), "data/extra-00099.parquet", "not in the manifest")


@pytest.mark.parametrize("field,change,words", [
    ("tokens", lambda m: m.update(tokens=m["tokens"] + 1), ["tokens"]),
    ("shard tokens", lambda m: m["shards"][0].update(tokens=m["shards"][0]["tokens"] - 1), ["tokens, manifest says"]),
    ("shard bytes", lambda m: m["shards"][0].update(bytes=m["shards"][0]["bytes"] + 1), ["bytes, manifest says"]),
    ("shard rows", lambda m: m["shards"][0].update(rows=m["shards"][0]["rows"] + 3), ["rows, manifest says"]),
    ("totals", lambda m: next(iter(m["totals"]["task"].values())).update(rows=999), ["totals.task"]),
    ("mixing used", lambda m: next(iter(m["mixing"]["groups"].values())).update(used=1), ["mixing.groups", "used"]),
    ("mixing available", lambda m: next(iter(m["mixing"]["groups"].values())).update(available=10 ** 6),
     ["available"]),
    ("mixing seed", lambda m: m["mixing"].update(seed=99), ["mixing.seed"]),
    ("recipe", lambda m: m["recipe"].update(seed=12345), ["recipe_sha256"]),
    ("recipe sha", lambda m: m.update(recipe_sha256="0" * 64), ["recipe_sha256"]),
    ("stand-in flag", lambda m: m.update(stand_in_tokenizers=False, warning=None), ["stand_in_tokenizers"]),
    ("identity", lambda m: m["tokenizers"]["image"].update(stand_in=False), ["tokenizers.image"]),
    ("accounting read", lambda m: next(iter(m["accounting"].values())).update(read=10 ** 6), ["reconcile"]),
    ("accounting both", lambda m: next(iter(m["accounting"].values())).update(read=10 ** 6, written=10 ** 6 - sum(
        next(iter(m["accounting"].values()))["rejected"].values())), ["units list says"]),
    ("reconciles flag", lambda m: next(iter(m["accounting"].values())).update(reconciles=False), ["reconciles is"]),
    ("format", lambda m: m.update(format_version=99), ["format_version 99"]),
])
def test_every_recomputable_field_is_checked(build, field, change, words):
    m = manifest(build)
    assert m["stand_in_tokenizers"] and m["tokenizers"]["image"]["stand_in"]  # the demo uses stand-ins
    edit(build, change)
    assert has(findings(build), *words)


def test_rejects_are_checked_against_the_accounting(build):
    m = manifest(build)
    rel = next(r for r in m["rejects"] if pq.read_metadata(build / r).num_rows > 0)
    (build / rel).write_bytes(b"PAR1 this is not parquet PAR1")
    assert has(findings(build), rel, "not a readable rejects parquet")
    (build / rel).unlink()
    assert has(findings(build), rel, "missing")
    pq.write_table(pq.read_table(build / next(r for r in m["rejects"] if r != rel)), build / "rejects" / "x.parquet")
    assert has(findings(build), "rejects/x.parquet", "not in the manifest")


def test_a_dropped_reject_row_is_a_finding(build):
    m = manifest(build)
    rel = next(r for r in m["rejects"] if pq.read_metadata(build / r).num_rows > 0)
    t = pq.read_table(build / rel)
    pq.write_table(t.slice(1), build / rel)
    assert has(findings(build), f"rejects for {Path(rel).stem}")


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.parquet", "data/../../x.parquet", "data/sub/x.parquet",
                                  "manifest.json", "s3://bucket/x.parquet", "~/x.parquet", 7, None])
def test_shard_paths_are_confined_to_the_build_folder(build, path):
    edit(build, lambda m: m["shards"][0].update(path=path))
    assert has(findings(build), f"shards[0].path {path!r}", "not read")


def test_a_symlink_out_of_the_folder_is_not_followed(build, tmp_path):
    outside = tmp_path / "outside.parquet"
    rel = manifest(build)["shards"][0]["path"]
    shutil.move(build / rel, outside)
    os.symlink(outside, build / rel)
    assert has(findings(build), rel, "resolves outside the build folder")


def test_rejects_paths_are_confined_too(build):
    edit(build, lambda m: m["rejects"].append("/etc/passwd"))
    assert has(findings(build), "'/etc/passwd'", "not read")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"layout": 3}', "\xff\xfe"])
def test_an_unreadable_manifest_is_one_finding(build, text):
    (build / "manifest.json").write_bytes(text.encode("latin-1"))
    assert has(findings(build), "manifest.json")


def test_an_unencodable_string_in_the_manifest_is_a_finding(build):
    text = (build / "manifest.json").read_text()
    (build / "manifest.json").write_text(text.replace('"name": "', '"name": "\\ud800', 1))
    assert has(findings(build), "cannot be written as UTF-8")


def test_a_build_with_no_rows_fails(build):
    for s in manifest(build)["shards"]:
        (build / s["path"]).unlink()
    edit(build, lambda m: m.update(shards=[], rows=0, tokens=0))
    assert has(findings(build), "holds no rows")


def _with_content_hash(b: Path) -> None:
    """Rewrite every shard as format 2 (contracts §1: content_hash as the last column) and the manifest to match."""
    for s in manifest(b)["shards"]:
        p = b / s["path"]
        t = pq.read_table(p)
        if "content_hash" not in t.column_names:
            t = t.append_column("content_hash", pa.array([f"h{i}" for i in range(t.num_rows)], pa.string()))
        pq.write_table(t, p, compression="zstd")
        relist(b, s["path"])
    edit(b, lambda m: m.update(format_version=2))


def test_format_1_and_format_2_shards_both_validate(build):
    m = manifest(build)
    assert validate(build).ok
    _with_content_hash(build)
    assert validate(build).ok, validate(build).problems
    edit(build, lambda m2: m2.update(format_version=1))  # a format 2 shard under a format 1 manifest is wrong
    assert has(findings(build), "unknown column(s) ['content_hash']")
    assert m["format_version"] in (1, 2)


def test_the_cli_exits_1_with_findings_and_no_traceback(build):
    from typer.testing import CliRunner

    from aromni.cli import app

    edit(build, lambda m: m["shards"][0].update(path="/etc/passwd"))
    r = CliRunner().invoke(app, ["validate", str(build)])
    assert r.exit_code == 1, r.output
    assert "/etc/passwd" in r.output and "Traceback" not in r.output and r.exception is None or \
        isinstance(r.exception, SystemExit)
