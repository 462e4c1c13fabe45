"""aromni publish, offline: a loopback stand-in for the Hub records the calls; refusals come before any upload."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from aromni.dataset.publish import PublishError, publish
from tests.dataset.conftest import edit_manifest, uploaded
from tests.dataset.fake_hub import FakeHub

TOKEN = "hf_aromniTestToken0123456789"


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The Hub client allowed to talk (to loopback only), with an empty HF home: no stored token to pick up."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return home


def test_dry_run_lists_exactly_what_would_go_up(build_dir):
    (build_dir / "parts").mkdir(exist_ok=True)
    (build_dir / "parts" / "junk.parquet").write_bytes(b"x")  # intermediates never go up
    res = publish(build_dir, "org/demo", dry_run=True)
    assert res.dry_run and [p for p, _ in res.files] == uploaded(build_dir)
    assert res.total_bytes == sum((build_dir / p).stat().st_size for p in uploaded(build_dir))
    assert any("--allow-stand-in" in n for n in res.notes)


def test_upload_through_a_recording_endpoint(build_dir, online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(lifetime=60) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        res = publish(build_dir, "org/demo", private=True, revision="v1", allow_stand_in=True)
    assert res.commit_url and res.commit_url.startswith(hub.endpoint)
    paths = [(c["method"], c["path"]) for c in hub.calls]
    assert paths == [("POST", "/api/repos/create"), ("POST", "/api/datasets/org/demo/branch/v1"),
                     ("POST", "/api/validate-yaml"), ("POST", "/api/datasets/org/demo/preupload/v1"),
                     ("POST", "/api/datasets/org/demo/commit/v1")]
    assert all(c["authorization"] == f"Bearer {TOKEN}" for c in hub.calls)
    assert hub.repos["org/demo"]["type"] == "dataset" and hub.repos["org/demo"]["visibility"] == "private"
    assert sorted(hub.files) == sorted(uploaded(build_dir))
    assert all(hub.files[p] == (build_dir / p).read_bytes() for p in uploaded(build_dir))
    assert "configs:" in hub.validated_cards[0]
    # the token went to the endpoint and nowhere else
    for f in [*build_dir.rglob("*"), *online.rglob("*")]:
        assert not f.is_file() or TOKEN.encode() not in f.read_bytes(), f


def test_refuses_an_invalid_build_before_touching_the_network(fresh_build, online):
    edit_manifest(fresh_build, lambda m: m["shards"][0].update(sha256="0" * 64))
    with FakeHub(lifetime=30) as hub:
        with pytest.raises(PublishError, match="aromni validate` found 1 problem"):
            publish(fresh_build, "org/demo", allow_stand_in=True, token=TOKEN, endpoint=hub.endpoint)
    assert hub.calls == []


def test_a_stray_shard_is_never_shipped(fresh_build):
    """data/*.parquet globbing would ship a file the manifest does not list: validate refuses it, and the upload list
    and the card's data_files are the manifest's shards only."""
    import shutil

    from aromni.dataset.folder import BuildFolder
    from aromni.dataset.publish import upload_files

    first = json.loads((fresh_build / "manifest.json").read_text())["shards"][0]["path"]
    shutil.copy(fresh_build / first, fresh_build / "data" / "stray.parquet")
    with pytest.raises(PublishError, match="stray.parquet"):
        publish(fresh_build, "org/demo", dry_run=True)
    assert "data/stray.parquet" not in [p for p, _ in upload_files(BuildFolder(fresh_build))]


def test_refuses_without_token_offline_stand_in_or_bad_repo(build_dir, online, monkeypatch):
    with pytest.raises(PublishError, match="no Hugging Face token"):
        publish(build_dir, "org/demo", allow_stand_in=True, endpoint="http://127.0.0.1:9")
    with pytest.raises(PublishError, match="STAND-IN"):
        publish(build_dir, "org/demo", token=TOKEN)
    with pytest.raises(PublishError, match="ORG/NAME"):
        publish(build_dir, "just-a-name", dry_run=True)
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE"):
        publish(build_dir, "org/demo", allow_stand_in=True, token=TOKEN)


def test_a_failing_hub_says_how_to_resume(build_dir, online):
    with FakeHub(lifetime=30, commit_status=403) as hub:
        with pytest.raises(PublishError, match="Rerun the same command to resume") as e:
            publish(build_dir, "org/demo", allow_stand_in=True, token=TOKEN, endpoint=hub.endpoint)
    assert TOKEN not in str(e.value)
    assert json.loads((build_dir / "manifest.json").read_text())["rows"] > 0  # the build is untouched


# ---- scale (issue 13 item 4): Hub limits, large builds, builds on object storage ---------------------------------
def test_the_plan_respects_the_hubs_limits(build_dir, monkeypatch):
    from aromni.dataset import publish as pub
    from aromni.dataset.folder import BuildFolder

    files = pub.upload_files(BuildFolder(build_dir))
    plan = pub.plan_upload(files, large_bytes=10**12)
    assert not plan.large and plan.total_bytes == sum(n for _, n in files)
    assert pub.plan_upload(files, large_bytes=1).large
    n_shards = sum(p.startswith("data/") for p, _ in files)
    monkeypatch.setattr(pub, "HUB_MAX_FILES_PER_FOLDER", n_shards - 1)
    with pytest.raises(PublishError, match=f"data/ would hold {n_shards} files.*mixing.shard_rows"):
        pub.plan_upload(files)
    monkeypatch.setattr(pub, "HUB_MAX_FILES_PER_FOLDER", 10_000)
    biggest = max(files, key=lambda f: f[1])
    monkeypatch.setattr(pub, "HUB_MAX_FILE_BYTES", biggest[1] - 1)
    with pytest.raises(PublishError, match=f"{biggest[0]} is {biggest[1]:,} bytes, over the Hub's limit"):
        publish(build_dir, "org/demo", dry_run=True)


def test_a_large_build_needs_the_streamed_upload(build_dir, monkeypatch):
    from aromni.dataset import publish as pub

    monkeypatch.setattr(pub, "_xet_available", lambda: False)
    assert publish(build_dir, "org/demo", dry_run=True).dry_run  # small: the one-commit path is fine
    with pytest.raises(PublishError, match="pip install hf_xet"):
        publish(build_dir, "org/demo", dry_run=True, large_bytes=1)
    monkeypatch.setattr(pub, "_xet_available", lambda: True)
    res = publish(build_dir, "org/demo", dry_run=True, large_bytes=1)
    assert any("multi-commit" in n for n in res.notes)


def _to_memory(build: Path, url: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for p in build.rglob("*"):
        if p.is_file() and "parts" not in p.parts:
            fs.pipe_file(f"{root}/{p.relative_to(build).as_posix()}", p.read_bytes())


def test_a_build_on_object_storage_is_staged_through_fsspec_and_uploaded(build_dir, tmp_path, online, monkeypatch):
    """memory:// stands for s3:// / gs:// here (same fsspec calls); the upload goes to the loopback fake Hub."""
    import fsspec

    url = "memory://bucket/builds/demo"
    _to_memory(build_dir, url)
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/data/stray.parquet", b"junk")  # not listed: never staged, never shipped
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(lifetime=60) as hub:
        res = publish(url, "org/demo", allow_stand_in=True, endpoint=hub.endpoint, staging=tmp_path / "stage")
    staged = tmp_path / "stage"
    assert any(f"staged {url}" in n for n in res.notes)
    assert sorted(hub.files) == sorted(uploaded(staged)) and "data/stray.parquet" not in hub.files
    m = json.loads((build_dir / "manifest.json").read_text())
    assert all(hub.files[s["path"]] == (build_dir / s["path"]).read_bytes() for s in m["shards"])
    card = hub.files["README.md"].decode()
    assert all(s["path"] in card for s in m["shards"]) and "data/*.parquet" not in card.split("---")[1]
    # a rerun re-copies nothing (sizes match) and still validates the staged bytes
    before = {p: p.stat().st_mtime_ns for p in staged.rglob("*.parquet")}
    publish(url, "org/demo", dry_run=True, staging=staged)
    assert {p: p.stat().st_mtime_ns for p in staged.rglob("*.parquet")} == before


def test_a_hostile_remote_manifest_is_refused_before_staging(build_dir, tmp_path):
    import fsspec

    url = "memory://bucket/builds/hostile"
    _to_memory(build_dir, url)
    fs, root = fsspec.core.url_to_fs(url)
    m = json.loads((build_dir / "manifest.json").read_text())
    m["shards"][0]["path"] = "../../etc/passwd"
    fs.pipe_file(f"{root}/manifest.json", json.dumps(m).encode())
    with pytest.raises(PublishError, match="not staged"):
        publish(url, "org/demo", dry_run=True, staging=tmp_path / "stage")
    assert not (tmp_path / "stage").exists()
