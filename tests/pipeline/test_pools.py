"""Builds whose recipe names real-format checkpoints: the VQGAN and WavTokenizer run in Ray actor pools, the output
validates, the manifest records each checkpoint's sha256, and the shards are byte-identical whatever the worker and
actor counts (and equal to tokenizing in-process)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aromni.model.checkpoint import sha256_file
from aromni.model.random_checkpoints import (copy_with_edited_state, tiny_vqgan_config, write_meta_vqgan,
                                             write_wavtokenizer)
from aromni.model.vqgan import META_CKPT
from aromni.model.wavtokenizer import CKPT_40HZ
from aromni.pipeline.build import BuildError, build
from aromni.pipeline.validate import validate
from aromni.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("realformat")
    # 64x64 input keeps the test cheap; the 512x512 model of the demo takes the same code path
    return write_meta_vqgan(d / "vqgan", tiny_vqgan_config(64), seed=0), write_wavtokenizer(d / "wavtokenizer", seed=0)


def _recipe(demo_corpus, ckpts, *extra):
    vq_dir, wt_dir = ckpts
    return load_recipe(ROOT / "recipes" / "demo_realformat.yaml", [
        f"data_root={demo_corpus}", f"tokenizers.image.path={vq_dir}", f"tokenizers.speech.path={wt_dir}",
        # fractions of a CPU: the test session's Ray may already exist with 2 CPUs
        "tokenizers.image.num_cpus=0.25", "tokenizers.speech.num_cpus=0.25", *extra])


@pytest.fixture(scope="module")
def pooled_build(demo_corpus, ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("rf_build")
    rep = build(_recipe(demo_corpus, ckpts), out, workers=2, progress=False)
    return out, rep


@pytest.mark.slow
def test_realformat_build_validates_and_records_sha256(pooled_build, ckpts):
    out, rep = pooled_build
    assert validate(out).ok
    m = json.loads((out / "manifest.json").read_text())
    vq_dir, wt_dir = ckpts
    tok = m["tokenizers"]
    assert tok["image"]["kind"] == "chameleon-vqgan" and tok["image"]["sha256"] == sha256_file(vq_dir / META_CKPT)
    assert tok["speech"]["kind"] == "wavtokenizer" and tok["speech"]["sha256"] == sha256_file(wt_dir / CKPT_40HZ)
    assert tok["image"]["stand_in"] and tok["speech"]["stand_in"] and m["stand_in_tokenizers"]
    rows = pq.read_table(out / "data").to_pylist() if (out / "data").is_dir() else []
    tasks = {r["task"] for r in rows}
    assert tasks & {"image_caption", "text_to_image"} and tasks & {"speech_to_text", "text_to_speech"}
    img_rows = [r for r in rows if r["task"] in ("image_caption", "text_to_image")]
    assert img_rows and all(sum(4 <= i <= 8195 for i in r["input_ids"]) == 1024 for r in img_rows)


@pytest.mark.slow
def test_same_shards_for_any_worker_and_actor_count(pooled_build, demo_corpus, ckpts, tmp_path):
    out, rep = pooled_build
    other = build(_recipe(demo_corpus, ckpts, "tokenizers.image.actors=2", "tokenizers.speech.actors=2"),
                  tmp_path / "b", workers=1, progress=False)
    shards = lambda m: [(s["path"], s["sha256"]) for s in m["shards"]]  # noqa: E731
    assert shards(other.manifest) == shards(rep.manifest) and shards(rep.manifest)


@pytest.mark.slow
def test_pooled_codes_equal_in_process_codes(pooled_build, demo_corpus, ckpts):
    """The laion unit tokenized in this process (no Ray, no pool) gives the rows the pooled build wrote."""
    from aromni.pipeline.executor.unit_task import tokenizers_cfg as _tokenizers_cfg
    from aromni.pipeline.parts import PARTS
    from aromni.pipeline.plan import plan
    from aromni.pipeline.unit import process_unit
    from aromni.model import load_tokenizers

    out, _ = pooled_build
    recipe = _recipe(demo_corpus.resolve(), ckpts)   # the build plans with data_root resolved (symlinks too)
    tok = load_tokenizers(_tokenizers_cfg(recipe))
    pu = next(u for u in plan(recipe, tok.identities) if u.unit.source == "laion")
    res = process_unit(recipe, recipe.sources[pu.source_index], pu.unit, tok, pu.uid)
    written = {r["id"]: r["input_ids"] for r in pq.read_table(out / PARTS / f"{pu.part_stem}.parquet").to_pylist()}
    assert res.rows and {r.id: list(r.input_ids) for r in res.rows} == written


@pytest.mark.slow
def test_broken_checkpoint_fails_the_build_before_any_unit(demo_corpus, ckpts, tmp_path):
    vq_dir, wt_dir = ckpts
    bad = copy_with_edited_state(wt_dir, tmp_path / "bad_wt", CKPT_40HZ, lambda sd: sd.pop("head.out.bias"))
    recipe = _recipe(demo_corpus, (vq_dir, bad))
    with pytest.raises(BuildError, match="speech tokenizer.*missing key.*head.out.bias"):
        build(recipe, tmp_path / "out", workers=2, progress=False)
    assert not list((tmp_path / "out").glob("parts/*.parquet"))


@pytest.mark.slow
def test_voice_model_the_installed_package_cannot_load_fails_before_any_unit(tmp_path):
    """A newer cosyvoice2.yaml naming a function the installed package lacks: a message naming the file, the package
    version and what to do, exit 1 (BuildError) before any unit runs — not an ImportError inside a unit."""
    pytest.importorskip("cosyvoice")
    import soundfile as sf

    from aromni.voice.espeak import espeak_speak
    from aromni.voice.tiny_cosyvoice2 import write_tiny_cosyvoice2
    from tests.pipeline.readers.published import STANDIN_TOKENIZERS, fixture_tree
    root, _ = fixture_tree()
    model = write_tiny_cosyvoice2(tmp_path / "CosyVoice2-new")
    with open(model / "cosyvoice2.yaml", "a") as f:
        f.write("\nwhisper_fbank: !name:cosyvoice.dataset.processor.compute_whisper_fbank\n")
    x, sr = espeak_speak("Ask her to bring these things.", rate=260)
    sf.write(tmp_path / "ref.wav", x, sr)
    recipe = load_recipe(ROOT / "recipes" / "instruct.yaml", [
        f"data_root={root}", *STANDIN_TOKENIZERS,
        f"steps=[{{name: voice, options: {{backend: cosyvoice2, cache_dir: {tmp_path / 'cache'}, backend_options: "
        f"{{model_dir: {model}, reference_audio: {tmp_path / 'ref.wav'}}}}}}}]"])
    with pytest.raises(BuildError) as e:
        build(recipe, tmp_path / "out", workers=1, progress=False)
    msg = str(e.value)
    assert "steps[0]" in msg and "cosyvoice2.yaml" in msg and "compute_whisper_fbank" in msg
    assert "installed cosyvoice package (" in msg and "Use the cosyvoice2.yaml" in msg
    assert not list((tmp_path / "out").glob("parts/*/*.parquet"))


def test_voice_identity_of_a_model_dir_without_marker_is_not_stand_in_false(tmp_path):
    """Nothing proves an unmarked directory is the released model: the manifest says "unverified", never false; a
    marked one (STAND_IN.txt) is stand_in: true."""
    from aromni.pipeline.executor.pools import check_voices
    from aromni.voice.espeak import espeak_speak
    pytest.importorskip("cosyvoice")
    import soundfile as sf

    from aromni.voice.tiny_cosyvoice2 import write_tiny_cosyvoice2
    from tests.pipeline.readers.published import STANDIN_TOKENIZERS, fixture_tree
    root, _ = fixture_tree()
    model = write_tiny_cosyvoice2(tmp_path / "m")
    x, sr = espeak_speak("Ask her.", rate=260)
    sf.write(tmp_path / "ref.wav", x, sr)
    over = [f"data_root={root}", *STANDIN_TOKENIZERS,
            f"steps=[{{name: voice, options: {{backend: cosyvoice2, cache_dir: {tmp_path / 'c'}, backend_options: "
            f"{{model_dir: {model}, reference_audio: {tmp_path / 'ref.wav'}}}}}}}]"]
    marked, = check_voices(load_recipe(ROOT / "recipes" / "instruct.yaml", over))
    assert marked["stand_in"] is True and len(marked["model_sha256"]) == 64 and marked["model_dir"] == str(model)
    (model / "STAND_IN.txt").unlink()
    unmarked, = check_voices(load_recipe(ROOT / "recipes" / "instruct.yaml", over))
    assert unmarked["stand_in"] == "unverified" and unmarked["model_sha256"] == marked["model_sha256"]  # same weights


# ---- actors: auto (issue 13 item 3): pure sizing over fake cluster resources -----------------------------------------

@pytest.mark.parametrize("actors,num_cpus,num_gpus,per_actor,res,want", [
    (3, 1, 0, 8, {"CPU": 2}, 3),                          # a number is a number (the resource check says if it fits)
    ("auto", 1, 1, 8, {"CPU": 64, "GPU": 8}, 8),           # one per GPU
    ("auto", 1, 0.5, 8, {"CPU": 64, "GPU": 3}, 6),         # fractional GPUs share: floor(3 / 0.5)
    ("auto", 1, 0.3, 8, {"CPU": 64, "GPU": 1}, 3),         # floor(1 / 0.3)
    ("auto", 4, 1, 8, {"CPU": 9, "GPU": 8}, 2),            # GPUs, but CPUs for only 2 actors and a unit task
    ("auto", 1, 0, 8, {"CPU": 64}, 8),                     # one per cpus_per_actor CPUs
    ("auto", 1, 0, 4, {"CPU": 10}, 2),                     # floor(10 / 4)
    ("auto", 1, 0, 8, {"CPU": 2}, 1),                      # at least one
    ("auto", 1, 0, 1, {"CPU": 4}, 3),                      # never the last CPU: units need one
    ("auto", 2, 0, 1, {"CPU": 7}, 3),                      # floor((7 - 1) / 2)
    ("auto", 0, 0, 2, {"CPU": 4}, 2),                      # actors that reserve no CPU leave all to units
    ("auto", 1, 1, 8, {"CPU": 16}, 1),                     # asks for GPUs, cluster has none: 1 (then refused)
])
def test_size_actors(actors, num_cpus, num_gpus, per_actor, res, want):
    from aromni.pipeline.pool_sizing import size_actors
    assert size_actors(actors, num_cpus, num_gpus, per_actor, res) == want


def test_auto_pools_share_the_cluster_and_leave_a_cpu_for_units():
    """Fixed pools reserve first, then each auto pool is sized from what is left, in recipe order."""
    from aromni.pipeline.pool_sizing import size_all
    res = {"CPU": 16, "GPU": 0}
    # 16 CPUs - 6 fixed = 10: the first auto pool gets floor(10 / 4) = 2; then 8 are left: floor(8 / 4) = 2
    assert size_all([("auto", 1, 0, 4), (3, 2, 0, 8), ("auto", 1, 0, 4)], res) == [2, 3, 2]
    assert size_all([("auto", 1, 0, 4), ("auto", 1, 0, 4)], res) == [4, 3]          # 16 / 4, then 12 / 4
    assert size_all([("auto", 1, 0, 1), ("auto", 1, 0, 1)], {"CPU": 4}) == [3, 1]   # at least 1 each
    # a GPU pool and a CPU pool: GPUs size the first, its CPUs are taken before the second is sized
    assert size_all([("auto", 2, 1, 8), ("auto", 1, 0, 8)], {"CPU": 32, "GPU": 4}) == [4, 3]


def _plan(recipe_over, resources, tmp_path):
    """plan_pools for the demo_realformat recipe (pooled VQGAN + WavTokenizer) with overrides."""
    from aromni.model import load_tokenizers
    from aromni.pipeline.executor.pools import plan_pools
    from aromni.pipeline.executor.unit_task import tokenizers_cfg
    from aromni.model.random_checkpoints import write_demo_checkpoints
    root = tmp_path / "root"
    if not (root / "tokenizer").exists():
        write_demo_checkpoints(root / "tokenizer")
    r = load_recipe(ROOT / "recipes" / "demo_realformat.yaml", [f"data_root={ROOT / 'demo_data'}",
                    f"tokenizers.image.path={root / 'tokenizer' / 'vqgan'}",
                    f"tokenizers.speech.path={root / 'tokenizer' / 'wavtokenizer'}", *recipe_over])
    cfg = tokenizers_cfg(r)
    return plan_pools(r, cfg, load_tokenizers(cfg), resources)


def test_plan_pools_sizes_tokenizer_pools_and_reports_them(tmp_path):
    from aromni.pipeline.executor.pools import PoolError, check_resources, pool_line
    specs = _plan(["tokenizers.image.actors=auto", "tokenizers.image.num_gpus=1",
                   "tokenizers.speech.actors=auto", "tokenizers.speech.cpus_per_actor=4"],
                  {"CPU": 17, "GPU": 2}, tmp_path)
    assert [(p.name, p.actors) for p in specs] == [("tokenizers.image", 2), ("tokenizers.speech", 3)]  # 2 GPUs; 15/4
    check_resources(specs, {"CPU": 17, "GPU": 2})
    d = specs[0].describe({"CPU": 17, "GPU": 2}, ["cuda:0", "cuda:0"])
    assert d == {"pool": "tokenizers.image", "kind": "tokenizer", "actors": 2, "requested": "auto", "num_cpus": 1.0,
                 "num_gpus": 1.0, "device": "cuda", "sized_from": "2 GPU(s) / 1 per actor"}
    assert pool_line(d) == ("pool tokenizers.image: 2 actor(s) x 1 CPU, 1 GPU on cuda "
                            "(actors: auto, from 2 GPU(s) / 1 per actor)")
    # a GPU pool on a cluster without GPUs gets one actor, then a message naming the pool and what to do
    specs = _plan(["tokenizers.image.actors=auto", "tokenizers.image.num_gpus=1"], {"CPU": 8, "GPU": 0}, tmp_path)
    with pytest.raises(PoolError, match=r"1 GPU\(s\) \(tokenizers.image 1 x 1\).*has 0; set their num_gpus: 0"):
        check_resources(specs, {"CPU": 8, "GPU": 0})
    specs = _plan(["tokenizers.image.actors=4"], {"CPU": 4}, tmp_path)
    with pytest.raises(PoolError, match=r"reserve 5 CPU\(s\).*leaving no CPU for unit tasks"):
        check_resources(specs, {"CPU": 4})


@pytest.mark.parametrize("over,key", [
    ("tokenizers.image.actors=many", "tokenizers.image.actors"),
    ("tokenizers.image.actors=0", "tokenizers.image.actors"),            # a pooled tokenizer needs an actor
    ("tokenizers.speech.cpus_per_actor=0", "tokenizers.speech.cpus_per_actor"),
    ("steps=[{name: clip_score, options: {path: x, actors: -1}}]", "steps[0].options.actors"),
    ("steps=[{name: clip_score, options: {path: x, actors: lots}}]", "steps[0].options.actors"),
    ("steps=[{name: clip_score, options: {actors: 1}}]", "steps[0].options"),      # actors without a checkpoint
    ("steps=[{name: voice, options: {actors: half}}]", "steps[0].options.actors"),
])
def test_bad_pool_sizes_are_recipe_errors_naming_the_key(over, key):
    from aromni.recipe import RecipeError
    with pytest.raises(RecipeError) as e:
        load_recipe(ROOT / "recipes" / "demo_realformat.yaml", [f"data_root={ROOT / 'demo_data'}", over])
    assert key in str(e.value), str(e.value)
