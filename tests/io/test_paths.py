"""aromni/io/paths.py: local paths and bucket URLs through one seam (contracts §5, issue 13.2 input side).

The S3 half starts a real S3-API server (moto's server mode) on loopback, uploads the sources' published-layout
fixtures and checks that every reader yields the same items from the bucket as from disk, that a tar member is
fetched with range requests, and that a missing object / bucket / endpoint is one InputError naming the URL."""
from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest

from aromni.io import paths
from tests.pipeline.readers.published import add_member, fixture_tree, write_gigaspeech_hf

# ---- local ------------------------------------------------------------------------------------------------------


def test_resolve_join_and_names_keep_the_url_scheme():
    assert paths.resolve("laion", "s3://lab/raw") == "s3://lab/raw/laion"
    assert paths.resolve("a/../b", "/data") == "/data/b"
    assert paths.resolve("/abs/x", "s3://lab") == "/abs/x"
    assert paths.resolve("gs://other/y", "/data") == "gs://other/y"
    assert paths.name("s3://lab/raw/x.tar") == "x.tar" and paths.parent("s3://lab/raw/x.tar") == "s3://lab/raw"
    assert paths.is_url("hf://datasets/openbmb/Ultra-FineWeb") and not paths.is_url("/data/x")
    with pytest.raises(paths.BadURL):
        paths.resolve("s4://lab/raw")


def test_confine_refuses_everything_that_leaves_the_root(tmp_path):
    root = tmp_path / "src"
    (root / "clips").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", root / "clips" / "link.mp3")
    assert paths.confine(root, "clips/a.mp3") == str(root / "clips" / "a.mp3")
    assert paths.confine(root, str(root / "clips" / "a.mp3")) == str(root / "clips" / "a.mp3")
    for evil in ("../secret", "clips/../../secret", str(tmp_path / "secret"), "clips/link.mp3", "s3://b/x", ""):
        assert paths.confine(root, evil) is None, evil
    assert paths.confine("s3://lab/cv/en/clips", "a.mp3") == "s3://lab/cv/en/clips/a.mp3"
    for evil in ("../../x.mp3", "/etc/passwd", "s3://lab/other/x.mp3", "s3://lab/cv/en/clips2/x"):
        assert paths.confine("s3://lab/cv/en/clips", evil) is None, evil


def test_listing_is_sorted_and_stops_past_its_budget(tmp_path):
    for rel in ("b/x.tar", "b.tar", "a/c/y.tar", "a/z.txt", "c.tar"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = paths.list_files(tmp_path, ["*.tar"])
    assert got == sorted(str(tmp_path / r) for r in ("b/x.tar", "b.tar", "a/c/y.tar", "c.tar"))
    files = [p for p, is_dir in paths.walk_entries(tmp_path) if not is_dir]
    assert files == sorted(files) and len(files) == 5   # the walk's own order is sorted: a prefix of it is too
    with pytest.raises(paths.TooManyFiles, match="more than 3 entries"):
        paths.list_files(tmp_path, ["*.tar"], limit=3)
    from aromni.pipeline.readers import READERS
    with pytest.raises(paths.TooManyFiles):   # a reader's listing has the same budget (path: / never walks a disk)
        READERS["laion"]("laion", tmp_path, max_files=3).units()


# ---- S3 on loopback -----------------------------------------------------------------------------------------------
BUCKET = "aromni-inputs"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with the fixture tree uploaded; yields (local root, s3 root)."""
    pytest.importorskip("moto")
    s3fs = pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS")}
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"})
    s3fs.S3FileSystem.clear_instance_cache()
    root, _ = fixture_tree()
    local = tmp_path_factory.mktemp("s3src")
    import shutil
    shutil.copytree(root, local / "tree")
    write_gigaspeech_hf(local / "tree")
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    fs.put(str(local / "tree") + "/", f"{BUCKET}/raw/", recursive=True)
    try:
        yield local / "tree", f"s3://{BUCKET}/raw", port
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


SOURCES = [("ultrafineweb", "Ultra-FineWeb/data/ultrafineweb_en", {}), ("laion", "laion-aesthetics-v2-5plus", {}),
           ("journeydb", "JourneyDB/data/train", {}), ("gigaspeech", "GigaSpeech", {"audios_per_unit": 2}),
           ("gigaspeech", "gigaspeech-hf/data", {}), ("common_voice", "cv-corpus-20.0-2024-12-06/en", {"unit_bytes": 200}),
           ("mls", "mls_english_opus/train", {"unit_bytes": 64}),
           ("anyinstruct", "AnyInstruct", {"unit_bytes": 600, "dialogs_per_unit": 2}),
           ("voiceassistant", "VoiceAssistant-400K/data", {}), ("ultrachat", "ultrachat", {}),
           ("aromni_instruct", "AR-Omni-Instruct-v0.1", {})]


def _digest(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, (bytes, bytearray)):
        return hashlib.sha1(x).hexdigest()[:12]
    if isinstance(x, tuple):
        return hashlib.sha1(np.asarray(x[0]).tobytes()).hexdigest()[:12] + f"@{x[1]}"
    return repr(x)


def _items(reader: str, path: str, options: dict) -> list[tuple]:
    from aromni.pipeline.readers import READERS, Rejected
    r = READERS[reader]("s", path, options)
    units = r.units()
    out = [("units", len(units), tuple((u.size, u.part) for u in units))]
    for u in units:
        for x in r.read(u):
            if isinstance(x, Rejected):
                out.append(("reject", x.key, x.reason))
            else:
                turns = tuple((t.role, t.text, _digest(t.audio), _digest(t.image)) for t in (x.turns or []))
                out.append(("example", x.key, x.text, _digest(x.image), _digest(x.audio), turns, _digest(x.tokens)))
    return out


@pytest.mark.parametrize("reader,rel,options", SOURCES, ids=[f"{r}:{p.split('/')[0]}" for r, p, _ in SOURCES])
def test_each_reader_yields_the_same_items_from_a_bucket(s3, reader, rel, options):
    local, remote, _ = s3
    from_disk = _items(reader, str(local / rel), options)
    from_bucket = _items(reader, f"{remote}/{rel}", options)
    assert sum(1 for x in from_disk if x[0] == "example") > 0
    assert from_bucket == from_disk


def test_a_tar_member_is_read_with_range_requests(s3, monkeypatch):
    """AnyInstruct's 33 GB speech.tar is never downloaded: the index reads headers, a member read fetches its
    bytes (plus one read block), so the bytes fetched stay far below the tar's size."""
    import s3fs
    from aromni.pipeline.readers.files import TarIndex
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(4):
            add_member(tf, f"speech/chunk/{i}.bin", os.urandom(1024) + b"\0" * (8 << 20))   # 4 x 8 MiB
        add_member(tf, "speech/chunk/wanted.mp3", b"ID3-the-member-we-want")
    fs = s3fs.S3FileSystem()
    fs.pipe(f"{BUCKET}/big/speech.tar", buf.getvalue())
    fetched = []
    real = s3fs.core.S3File._fetch_range

    def counting(self, start, end):
        fetched.append(end - start)
        return real(self, start, end)
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting)
    idx = TarIndex(f"s3://{BUCKET}/big/speech.tar")
    assert idx.read("chunk/wanted.mp3") == b"ID3-the-member-we-want"   # through the short-name alias
    size = len(buf.getvalue())
    assert sum(fetched) < size / 4, (sum(fetched), size)
    assert len(fetched) >= 2   # separate ranged GETs, not one whole-object download


def test_missing_objects_buckets_and_endpoints_are_one_clear_error(s3, monkeypatch):
    from aromni.pipeline.readers import READERS
    _, remote, port = s3
    for url in (f"{remote}/no-such-folder", "s3://no-such-bucket-aromni/raw/laion"):
        with pytest.raises(paths.InputError, match=url.replace("/", ".")):
            READERS["laion"]("laion", url).units()
    with pytest.raises(paths.InputError, match="not found"):
        paths.read_bytes(f"{remote}/laion-aesthetics-v2-5plus/nope.tar")
    import s3fs
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")   # nothing listens there
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(paths.InputError, match=f"{remote}/ultrachat"):
            READERS["ultrachat"]("u", f"{remote}/ultrachat").units()
    finally:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        s3fs.S3FileSystem.clear_instance_cache()


def test_a_bucket_source_cannot_name_files_outside_its_tree(s3):
    """Issue 15.1 on object storage: a Common Voice path of ../ or another bucket's URL is bad_path there too."""
    import s3fs
    from aromni.pipeline.readers import READERS, Rejected
    local, remote, _ = s3
    lang = local / "cv-corpus-20.0-2024-12-06" / "en"
    lines = (lang / "validated.tsv").read_text().splitlines()
    cols = lines[0].split("\t")
    evil = []
    for p in ("../../../laion-aesthetics-v2-5plus/00000.tar", f"s3://{BUCKET}/raw/ultrachat/train_0.jsonl"):
        cells = lines[1].split("\t")
        cells[cols.index("path")] = p
        evil.append("\t".join(cells))
    fs = s3fs.S3FileSystem()
    fs.pipe(f"{BUCKET}/evil-cv/en/validated.tsv", ("\n".join([lines[0], *evil]) + "\n").encode())
    r = READERS["common_voice"]("cv", f"s3://{BUCKET}/evil-cv/en")
    assert [x.reason for u in r.units() for x in r.read(u) if isinstance(x, Rejected)] == ["bad_path", "bad_path"]


def test_recipe_with_an_unknown_url_scheme_is_a_recipe_error():
    """A bad URL in a recipe is a recipe error (exit 2), found before any Ray start-up."""
    from aromni.recipe import RecipeError, check_paths, parse_recipe
    base = {"name": "t", "tokenizers": {"text": {"path": "tok.json", "stand_in": True}, "image": {"kind": "standin"},
                                        "speech": {"kind": "standin"}},
            "sources": [{"name": "u", "reader": "ultrachat", "path": "x", "tasks": ["chat"]}],
            "mixing": {"ratio": {"dialog": 1}}}
    with pytest.raises(RecipeError, match="data_root: s4://lab"):
        check_paths(parse_recipe({**base, "data_root": "s4://lab"}, []))
    bad = {**base, "sources": [{**base["sources"][0], "path": "htps://lab/x"}]}
    with pytest.raises(RecipeError, match=r"sources\[0\].path: htps://lab/x: unsupported URL scheme"):
        check_paths(parse_recipe(bad, []))
    check_paths(parse_recipe({**base, "data_root": "s3://lab/raw"}, []))   # URLs are checked when listed
