"""The bad-input matrix: every kind of broken or odd input is rejected with its reason or repaired and recorded,
never a crash, never silent. Units are processed in-process (no Ray) through the same ``plan`` + ``process_unit``
a build runs; one slow test runs the whole CLI build on the same hostile corpus."""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import hostile
from robust_corpus import run_build, write_tar

from aromni.pipeline.build import tokenizers_for
from aromni.pipeline.plan import plan
from aromni.pipeline.unit import process_unit
from aromni.recipe import parse_recipe


def hostile_recipe(root: Path, **filters) -> dict:
    return {
        "name": "hostile", "data_root": str(root),
        "tokenizers": {"text": {"path": "tokenizer.json", "stand_in": True},
                       "image": {"kind": "standin", "batch_size": 4}, "speech": {"kind": "standin", "batch_size": 4}},
        "sources": [
            {"name": "laion", "reader": "laion", "path": "laion", "tasks": ["image_caption", "text_to_image"]},
            {"name": "gigaspeech", "reader": "gigaspeech", "path": "gigaspeech",
             "tasks": ["speech_to_text", "text_to_speech"]},
            {"name": "ultrafineweb", "reader": "ultrafineweb", "path": "ultrafineweb", "tasks": ["text_to_text"]},
            {"name": "ultrachat", "reader": "ultrachat", "path": "ultrachat", "tasks": ["chat"]},
        ],
        "filters": filters,
        "mixing": {"ratio": {"text": 1, "image_text": 1, "speech_text": 1, "dialog": 1}, "shard_rows": 8},
    }


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    from aromni.model.text import write_chameleon_style_bpe
    root = hostile.write_corpus(tmp_path_factory.mktemp("hostile"))
    texts = [hostile.GOOD_CAPTION, hostile.LONG_CAPTION, hostile.TRANSCRIPT.lower()] + list(hostile.UFW_DOCS.values())
    write_chameleon_style_bpe(texts, root / "tokenizer.json", vocab_size=300)
    return root


@pytest.fixture(scope="module")
def processed(hostile_root):
    """Every unit of the hostile corpus through plan + process_unit: (rows by id, rejects by id, stats, tokenizers)."""
    recipe = parse_recipe(hostile_recipe(hostile_root))
    tok = tokenizers_for(recipe)
    rows, rejects, stats = {}, {}, []
    for pu in plan(recipe, tok.identities):
        res = process_unit(recipe, recipe.sources[pu.source_index], pu.unit, tok, pu.uid)
        stats.append(res.stats.to_dict())
        for s in res.rows:
            rows.setdefault(s.id, []).append(s)
        for r in res.rejects:
            rejects.setdefault(r["id"], []).append(r)
    return rows, rejects, stats, tok


def _ids(source: str, key: str, table: dict) -> list[str]:
    return [i for i in table if i == f"{source}/{key}" or i.endswith("/" + key)]


def _text_of(row, tok) -> str:
    return "".join(tok.text.decode(row.input_ids[s.start:s.end]) for s in row.segments if s.modality == "text")


@pytest.mark.parametrize("kind", sorted(hostile.CASES))
def test_bad_input(kind, processed):
    rows, rejects, _, tok = processed
    source, key, (outcome, what) = hostile.CASES[kind]
    occurrence = 1
    if "@" in key:
        key, occurrence = key.split("@")[0], int(key.split("@")[1])
    if outcome == "reject":
        ids = _ids(source, key, rejects)
        assert ids, f"{kind}: no reject for {source}/{key}; rows: {_ids(source, key, rows)}"
        got = [r for i in ids for r in rejects[i]]
        assert what in {r["reason"] for r in got}, f"{kind}: rejected as {[(r['reason'], r['message']) for r in got]}"
        assert all(r["message"] for r in got), f"{kind}: a reject without a message"
        assert len(got) + sum(len(rows.get(i, [])) for i in ids) >= occurrence
        if occurrence > 1 and what == "duplicate_id":
            assert sum(len(rows.get(i, [])) for i in ids) == 1, f"{kind}: the first occurrence must be kept"
    else:
        ids = _ids(source, key, rows)
        assert ids, f"{kind}: expected a repaired row, got rejects {[rejects.get(i) for i in _ids(source, key, rejects)]}"
        (row,) = rows[ids[0]]
        assert what(row.meta, {"text": _text_of(row, tok)}), f"{kind}: repair not recorded: {row.meta}"


def test_nothing_vanishes(processed, hostile_root):
    """Every item read ends in exactly one place, per unit; the hostile sources still yield their good rows."""
    rows, rejects, stats, _ = processed
    for st in stats:
        assert st["read"] == st["written"] + sum(st["rejected"].values()), st
        if st["unit"].endswith("00003.tar"):   # broken wholesale: stopped after the default 100 failures
            assert "100 consecutive failures" in st["circuit_breaker"] and st["rejected"] == {"bad_image": 100}, st
        else:
            assert st["circuit_breaker"] is None, st
    n_rows = sum(len(v) for v in rows.values())
    n_rej = sum(len(v) for v in rejects.values())
    assert n_rows == sum(s["written"] for s in stats) and n_rej == sum(sum(s["rejected"].values()) for s in stats)
    assert {"laion/ok_plain", "laion/ok_second", "gigaspeech/ok_speech", "ultrachat/ok_chat"} <= set(rows)
    # the readers never extract: nothing of the tar's escape attempts reached the disk
    assert not Path("/tmp/aromni_escape_absolute.jpg").exists()
    assert not (hostile_root / "escape_parent.jpg").exists() and not (hostile_root.parent / "escape_parent.jpg").exists()


def test_symlink_member_is_never_followed(processed):
    """A tar symlink to /etc/passwd is rejected before anything is read through it."""
    rows, rejects, _, _ = processed
    passwd = Path("/etc/passwd").read_text()[:40]
    assert not any(passwd in json.dumps(s.meta) for v in rows.values() for s in v)
    assert [r["reason"] for r in rejects["laion/symlink_passwd"]] == ["bad_tar_member"]


def test_each_sample_counted_once(processed):
    """A refused tar member (link, ../, absolute path) is its sample's one reject: the unit reads exactly as many
    items as the tar holds samples (+ the sidecar's keys the tar lacks), never an extra bad member + missing_file."""
    _, rejects, stats, _ = processed
    names = [m.name if isinstance(m, tarfile.TarInfo) else m[0] for m in hostile.laion_members()]
    samples = [k for i, k in enumerate(n.rpartition(".")[0] for n in names)
               if i == 0 or k != names[i - 1].rpartition(".")[0]]
    (st,) = [s for s in stats if s["unit"].endswith("00000.tar")]
    assert st["read"] == len(samples) + 2  # + listed_not_in_tar, download_failed from the sidecar
    for key in ("escape_parent", "aromni_escape_absolute", "symlink_passwd", "hardlink_ok", "link_with_caption"):
        assert len(rejects[f"laion/{key}"]) == 1, rejects[f"laion/{key}"]


def test_circuit_breaker_stops_the_unit_not_the_build(tmp_path, hostile_root):
    """N consecutive broken items stop their unit, with the reason recorded; other units go on."""
    root = tmp_path / "cb"
    members = [m for i in range(12) for m in ((f"bad{i:04d}.jpg", b""), (f"bad{i:04d}.txt", b"caption %d" % i))]
    members += [("good.jpg", hostile.jpeg()), ("good.txt", b"a good picture after the broken ones")]
    write_tar(root / "laion" / "00000.tar", members)
    write_tar(root / "laion" / "00001.tar", [("fine.jpg", hostile.jpeg()), ("fine.txt", b"a picture in another tar")])
    (root / "tokenizer.json").write_bytes((hostile_root / "tokenizer.json").read_bytes())
    data = hostile_recipe(root, max_consecutive_failures=5)
    data["sources"] = data["sources"][:1]
    data["mixing"] = {"ratio": {"image_text": 1}}
    recipe = parse_recipe(data)
    tok = tokenizers_for(recipe)
    units = plan(recipe, tok.identities)
    first, second = (process_unit(recipe, recipe.sources[0], pu.unit, tok, pu.uid) for pu in units)
    assert first.stats.circuit_breaker and "5 consecutive failures" in first.stats.circuit_breaker
    assert first.stats.rejected == {"bad_image": 5} and first.stats.written == 0
    assert first.stats.read == 5          # the unit stopped: the rest of the tar is not read
    assert second.stats.written == 1 and second.stats.circuit_breaker is None
    assert parse_recipe(hostile_recipe(root)).filters.max_consecutive_failures == 100   # the default


@pytest.mark.slow
def test_hostile_corpus_builds_end_to_end(hostile_root, tmp_path, build_environ):
    """The whole CLI build on the hostile corpus: exit 0, every reject reason in rejects/<source>.parquet,
    accounting reconciles, the shards validate."""
    from aromni.pipeline.validate import validate
    recipe = tmp_path / "hostile.yaml"
    recipe.write_text(json.dumps(hostile_recipe(hostile_root)))   # JSON is YAML
    out = tmp_path / "out"
    r = run_build(recipe, out, build_environ)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    for src, acc in m["accounting"].items():
        assert acc["reconciles"], (src, acc)
        got = Counter(pq.read_table(out / "rejects" / f"{src}.parquet").column("reason").to_pylist())
        assert dict(sorted(got.items())) == acc["rejected"], src
        want = {what for s, _, (o, what) in hostile.CASES.values() if s == src and o == "reject"}
        assert want <= set(got), (src, want - set(got))
    (breaker,) = m["accounting"]["laion"]["circuit_breakers"]       # reported in the manifest ...
    assert "00003.tar" in breaker and f"circuit breaker laion: {breaker}"[:60] in r.stdout  # ... and on the console
    assert validate(out).ok
