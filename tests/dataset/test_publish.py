"""aromni publish, offline: a loopback stand-in for the Hub records the calls; refusals come before any upload."""
from __future__ import annotations

import json

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
