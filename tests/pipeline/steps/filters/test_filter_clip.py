"""The clip_score step: LAION's similarity is used as it is, the checkpoint scores the rest (or everything on
recompute), low scores are rejected as low_clip_score. The step batches a unit's own pairs in read order; with
``actors`` the build scores them on a CLIP actor pool, giving the same shards as in-process scoring for any worker
count; a checkpoint that does not load fails the build before any unit, naming the path."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aromni.model.clip import ClipScorer, write_random_clip
from aromni.pipeline.readers.base import Example
from aromni.pipeline.steps import STEPS
from aromni.pipeline.steps.text import TextError


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_random_clip(tmp_path_factory.mktemp("clip"))


def ex(key, text, meta=None, task="image_caption"):
    e = Example(key=key, text=text, meta=dict(meta or {}))
    e.id, e.task = f"laion/{key}", task
    return e, {"image": Image.fromarray(np.random.default_rng(len(key)).integers(0, 255, (48, 48, 3), dtype=np.uint8))}


def test_metadata_similarity_is_used_without_a_model():
    step = STEPS["clip_score"]({"min_score": 0.3})
    e, m = ex("a", "a dog", {"similarity": 0.35})
    step.apply(e, m, None)
    assert e.meta["clip_score"] == {"score": 0.35, "from": "metadata"}
    e2, m2 = ex("b", "a dog", {"similarity": 0.1})
    with pytest.raises(TextError) as err:
        step.apply(e2, m2, None)
    assert err.value.reason == "low_clip_score"
    e3, m3 = ex("c", "a dog")                        # no similarity, no model: kept, counted
    step.apply(e3, m3, None)
    assert step.stats["skipped.no_score"] == 1 and step.stats["rejected.low_clip_score"] == 1


def test_model_scores_rows_without_metadata_and_on_recompute(clip_dir):
    scorer = ClipScorer(clip_dir, device="cpu")
    e, m = ex("d", "a red car", {"similarity": 0.9})
    want = float(scorer.score([m["image"]], ["a red car"])[0])
    step = STEPS["clip_score"]({"path": clip_dir, "recompute": True, "min_score": want - 0.01, "device": "cpu"})
    step.apply(e, m, None)
    assert e.meta["clip_score"]["from"] == "model" and e.meta["clip_score"]["score"] == pytest.approx(want, abs=1e-4)
    strict = STEPS["clip_score"]({"path": clip_dir, "min_score": want + 0.01, "device": "cpu"})
    e2, m2 = ex("d", "a red car")
    with pytest.raises(TextError, match="CLIP score"):
        strict.apply(e2, m2, None)
    # batched scoring gives the one-by-one scores
    pairs = [ex(k, t) for k, t in (("e", "a cat"), ("ff", "the beach"), ("ggg", "a photo of a dog"))]
    batch = strict.score_batch(pairs)
    single = [strict.score_batch([p])[0] for p in pairs]
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_other_tasks_are_skipped_and_bad_options():
    step = STEPS["clip_score"]({})
    e, m = ex("h", "text", task="text_to_text")
    step.apply(e, {}, None)
    assert step.stats["skipped.not_image_text"] == 1
    with pytest.raises(ValueError):
        STEPS["clip_score"].Options(recompute=True)


def test_path_problems_name_the_key(clip_dir, tmp_path):
    cls = STEPS["clip_score"]
    assert cls.path_problems(cls.Options(path=clip_dir), str, "steps[1].options") == []
    assert cls.path_problems(cls.Options(path=str(tmp_path)), str, "steps[1].options") == [
        f"steps[1].options.path: {tmp_path} is not a CLIP checkpoint folder (no config.json)"]


# ---- batching in run() -----------------------------------------------------------------------------------------------

def _stream(n_model=5):
    """A unit's items in read order: pairs the model must score, one with LAION's similarity, a text row, another
    source's pair, a caption without an image, and a reader reject in between."""
    from aromni.pipeline.readers import Rejected
    from aromni.pipeline.steps import Work
    captions = ["a cat", "the beach at dawn", "a photo of a dog running on grass", "x", "red car", "two birds",
                "sky over the hills", "hello"]
    items = []
    for i in range(n_model):
        e, m = ex("k" * (i + 1), captions[i % len(captions)])
        items.append(Work(e, len(items), m))
        if i == 1:
            e2, m2 = ex("meta", "a dog", {"similarity": 0.5})
            items.append(Work(e2, len(items), m2))
            items.append(Rejected("laion", "broken", "bad_image", "cannot decode"))
        if i == 2:
            e3, _ = ex("text", "just text", task="text_to_text")
            items.append(Work(e3, len(items), {}))
            e4, m4 = ex("other", "a cat", {})
            e4.id = "coco/other"
            items.append(Work(e4, len(items), m4))
            e5, _ = ex("noimg", "a cat")
            items.append(Work(e5, len(items), {}))
    return items


def _outcome(out):
    from aromni.pipeline.steps import Drop, Work
    return [("work", o.example.id, o.example.meta.get("clip_score")) if isinstance(o, Work)
            else ("drop", o.work.example.id, o.reason) if isinstance(o, Drop) else ("rejected", o.key) for o in out]


def test_run_batches_the_units_pairs_in_read_order(clip_dir):
    """Every item comes out once, in its order; pairs go to the model batch_size at a time (never the metadata
    one, the text row, the other source's); decisions, recorded scores and stats equal the one-by-one path's.
    Batched float scores differ from one-by-one ones by float rounding (~6e-8: padding to the batch's longest
    caption and the batch shape change the BLAS reduction order), so what must match are the recorded 4-decimal
    scores and the decisions; a batch holds only the unit's own items, so this never depends on the worker count."""
    from aromni.pipeline.steps import Drop, Work
    opts = {"path": clip_dir, "device": "cpu", "batch_size": 2, "sources": ["laion"]}
    scorer = ClipScorer(clip_dir, device="cpu")
    items = _stream()
    model = [w for w in items if isinstance(w, Work) and w.media.get("image") is not None
             and "similarity" not in w.example.meta and w.example.id.startswith("laion/")]
    singles = [float(scorer.score([w.media["image"]], [w.example.text])[0]) for w in model]
    low = sorted(singles)
    opts["min_score"] = (low[1] + low[2]) / 2   # 2 rejected, 3 kept; no score within float rounding of it
    batched = STEPS["clip_score"](opts)
    out = list(batched.run(items))
    one = STEPS["clip_score"](opts)
    want = []
    for it in _stream():
        if not isinstance(it, Work):
            want.append(it)
            continue
        try:
            one.apply(it.example, it.media, None)
            want.append(it)
        except TextError as e:
            want.append(Drop(it, e.reason, e.message))
    assert _outcome(out) == _outcome(want)
    assert [o.key if not isinstance(o, (Work, Drop)) else (o.work if isinstance(o, Drop) else o).example.key
            for o in out] == [i.key if not isinstance(i, Work) else i.example.key for i in items]
    assert batched.stats == one.stats and batched.stats["rejected.low_clip_score"] == 2
    assert batched.stats["from.model"] == 5 and batched.stats["from.metadata"] == 1
    assert batched.stats["skipped.not_image_text"] == 2 and batched.stats["checked"] == 8   # coco's is not checked
    assert batched.batches == 3 and one.batches == 5     # ceil(5 / 2) model calls batched, one per pair one-by-one
    scores = [(o.work if isinstance(o, Drop) else o).example.meta.get("clip_score") for o in out
              if isinstance(o, (Work, Drop))]
    assert [s["score"] for s in scores if s and s["from"] == "model"] == [round(x, 4) for x in singles]


def test_run_holds_at_most_a_few_batches_of_items(clip_dir):
    """A long stretch of rows that need no model is not held back until a batch fills: the step lets items go
    after 4 * batch_size of them (the split depends only on the unit's items)."""
    from aromni.pipeline.steps import Work
    step = STEPS["clip_score"]({"path": clip_dir, "device": "cpu", "batch_size": 2, "min_score": -1})
    items = [Work(ex(f"t{i}", "text", task="text_to_text")[0], i, {}) for i in range(20)]
    seen = []
    def source():
        for it in items:
            seen.append(it.seq)
            yield it
    first = next(iter(step.run(source())))
    assert first.seq == 0 and len(seen) == 8


# ---- the CLIP actor pool (Ray) ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session():
    """A small local Ray for this module (or the session's, if one runs already); stopped if started here."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def test_pooled_scores_equal_in_process_and_the_unit_loads_no_clip(clip_dir, ray_session):
    """A step attached to a CLIP pool sends each of its batches to an actor: same outcome, scores and stats as
    scoring in-process, and the unit's process never loads the checkpoint."""
    from aromni.model.clip import load_clip
    from aromni.pipeline.clip_pool import ClipPool
    from aromni.pipeline.executor.pools import Pools
    opts = {"path": clip_dir, "device": "cpu", "batch_size": 2, "min_score": 0.0, "actors": 1, "num_cpus": 0.25}
    local = STEPS["clip_score"]({**opts, "actors": 0})
    want = list(local.run(_stream()))
    pool = ClipPool.start(ray_session, clip_dir, "cpu", 2, 1, 0.25, 0)
    try:
        assert pool.devices == ["cpu"]
        step = STEPS["clip_score"](opts)
        step.attach_pools(Pools(clip={pool.tag: pool}))
        load_clip.cache_clear()
        got = list(step.run(_stream()))
        assert load_clip.cache_info().misses == 0                       # no model in this process
        assert _outcome(got) == _outcome(want) and step.stats == local.stats and step.batches == 3
        assert ray_session.get(pool.handles[0].get_stats.remote()) == {"items": 6, "calls": 3}  # no sources: coco too
    finally:
        pool.stop()


def _corpus(root):
    from tests.pipeline.readers.published import text_tokenizer, write_laion
    if not (root / "laion-aesthetics-v2-5plus").exists():
        write_laion(root)          # 3 units (tar, folder, parquet), 9 pairs, a failed download, a duplicate
        text_tokenizer(root)
    return root


def _recipe(root, clip_path, **clip):
    from aromni.recipe import parse_recipe
    return parse_recipe({
        "name": "clip", "data_root": str(root),
        "steps": [{"name": "clip_score", "options": {"path": str(clip_path), "recompute": True, "batch_size": 2,
                                                     "device": "cpu", "num_cpus": 0.25, **clip}}],
        "tokenizers": {"text": {"path": "tokenizer/tokenizer.json", "stand_in": True}, "image": {"kind": "standin"},
                       "speech": {"kind": "standin"}},
        "sources": [{"name": "laion", "reader": "laion", "path": "laion-aesthetics-v2-5plus",
                     "tasks": ["image_caption", "text_to_image"]}],
        "mixing": {"ratio": {"image_text": 1}, "shard_rows": 3}})


def _outputs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.parquet"))
            if p.parts[len(out.parts)] in ("data", "rejects")}


@pytest.mark.slow
def test_pooled_build_equals_in_process_build_for_any_worker_count(clip_dir, ray_session, tmp_path_factory):
    """recompute: true with the tiny CLIP: actors 1 (workers 1), actors auto (workers 2) and in-process scoring
    (actors 0) give the same shard and reject bytes; some pairs are rejected as low_clip_score, the rest kept; the manifest says what the pool
    got."""
    import json

    import pyarrow.parquet as pq

    from aromni.pipeline.build import build
    tmp = tmp_path_factory.mktemp("clipbuild")
    root = _corpus(tmp / "data")
    probe = build(_recipe(root, clip_dir, min_score=-1.0), tmp / "probe", progress=False, executor="local")
    scores = sorted(json.loads(m)["clip_score"]["score"]
                    for m in pq.read_table(tmp / "probe" / "data").column("meta").to_pylist())
    assert len(scores) == probe.manifest["rows"] >= 6
    cut = (scores[2] + scores[3]) / 2        # between two recorded scores: nothing within float rounding of it
    inproc = build(_recipe(root, clip_dir, min_score=cut, actors=0), tmp / "a0w2", workers=2, progress=False)
    acc = inproc.manifest["accounting"]["laion"]
    # 3 rows under the cut (4 rejects if the cross-unit duplicate is one: each unit scores its copy)
    assert inproc.manifest["rows"] == len(scores) - 3 and acc["rejected"]["low_clip_score"] in (3, 4)
    assert acc["reconciles"] and acc["steps"]["clip_score"]["from.model"] == acc["steps"]["clip_score"]["checked"]
    assert inproc.pools == [] and "pools" not in inproc.manifest   # the run's pools: in the report, not the data's manifest
    from aromni.pipeline.pool_sizing import size_actors
    res = ray_session.cluster_resources()
    for workers, actors in ((1, 1), (2, "auto")):    # auto: CPUs / cpus_per_actor (8) of this Ray, at least 1
        rep = build(_recipe(root, clip_dir, min_score=cut, actors=actors), tmp / f"a1w{workers}", workers=workers,
                    progress=False)
        assert _outputs(tmp / f"a1w{workers}") == _outputs(tmp / "a0w2") and _outputs(tmp / "a0w2")
        assert rep.manifest["accounting"] == inproc.manifest["accounting"]
        got = {"pool": "steps[0] (clip_score)", "kind": "clip", "actors": 1, "requested": 1, "num_cpus": 0.25,
               "num_gpus": 0.0, "device": "cpu"}
        if actors == "auto":
            got.update(actors=size_actors("auto", 0.25, 0, 8, res), requested="auto",
                       sized_from=f"{res['CPU']:g} CPU(s) / 8 per actor")
        assert rep.pools == [got]


@pytest.mark.slow
def test_broken_checkpoint_fails_the_build_before_any_unit_naming_the_path(clip_dir, ray_session, tmp_path):
    """A folder with a config.json (so the recipe check passes) whose weights do not load: exit 1 with a message
    naming the step and the folder, before any unit ran."""
    import shutil

    from typer.testing import CliRunner

    import yaml

    from aromni.cli import app
    bad = tmp_path / "bad_clip"
    shutil.copytree(clip_dir, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    root = _corpus(tmp_path / "data")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(root, bad, actors=1).to_dict()))
    res = CliRunner().invoke(app, ["build", str(recipe), "--out", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "steps[0] (clip_score)" in res.output and str(bad) in res.output and "Traceback" not in res.output
    assert not list((tmp_path / "out").glob("parts/*.parquet"))
