"""manifest.json: everything needed to trust, reproduce and consume a build."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa  # noqa: F401 - totals() type hint

from aromni import __version__
from aromni.layout import Layout
from aromni.io.atomic import join, out_fs, write_json
from aromni.pipeline.parts import MANIFEST, REJECTS  # noqa: F401 - the out folder's names, one place
from aromni.pipeline.stats import UnitStats
from aromni.recipe import Recipe

FORMAT_VERSION = 2   # 2: rows have a content_hash column (1: it was meta.content_hash)


def accounting(recipe: Recipe, stats: list[UnitStats]) -> dict:
    acc: dict = {}
    for s in recipe.sources:
        acc[s.name] = {"reader": s.reader, "group": s.group, "units": 0, "read": 0, "written": 0,
                       "rejected": Counter(), "dropped_turns": 0, "circuit_breakers": []}
    for st in stats:
        a = acc[st.source]
        a["units"] += 1
        a["read"] += st.read
        a["written"] += st.written
        a["rejected"].update(st.rejected)
        a["dropped_turns"] += st.dropped_turns  # chat rows: turns cut to fit max_chat_tokens, unpaired
        if st.circuit_breaker:
            a["circuit_breakers"].append(st.circuit_breaker)
        for step, counts in (st.steps or {}).items():  # each step's counts (filters: checked/kept/rejected.*/hist.*)
            c = a.setdefault("steps", {}).setdefault(step, Counter())
            # integer counts only: a float (seconds) may differ between runs and the manifest must not
            c.update({k: v for k, v in (counts or {}).items() if isinstance(v, int) and not isinstance(v, bool)})
    for a in acc.values():
        a["rejected"] = dict(sorted(a["rejected"].items()))
        a["steps"] = {step: dict(sorted(c.items())) for step, c in sorted(a.get("steps", {}).items())}
        a["reconciles"] = a["read"] == a["written"] + sum(a["rejected"].values())
    return acc


def totals(shards_tables: list[pa.Table], recipe: Recipe) -> dict:
    group_of = {s.name: s.group for s in recipe.sources}
    by = {"task": defaultdict(lambda: [0, 0]), "group": defaultdict(lambda: [0, 0]),
          "source": defaultdict(lambda: [0, 0])}
    for t in shards_tables:
        for task, src, n in zip(t.column("task").to_pylist(), t.column("source").to_pylist(),
                                t.column("n_tokens").to_pylist()):
            for k, v in (("task", task), ("group", group_of.get(src, "?")), ("source", src)):
                by[k][v][0] += 1
                by[k][v][1] += n
    return {k: {name: {"rows": r, "tokens": n} for name, (r, n) in sorted(d.items())} for k, d in by.items()}


def build_manifest(recipe: Recipe, layout: Layout, tokenizer_ids: dict, shards: list[dict], stats: list[UnitStats],
                   mixing: dict, totals_: dict, rejects: list[str], voices: list[dict] | None = None,
                   pools: list[dict] | None = None) -> dict:
    """``voices``: the identity of each voice step's model (backend, model_sha256, stand_in: true | false |
    "unverified"), in step order; beside the tokenizers, since assistant speech is made with them. ``pools``: what
    each actor pool of this run got (pool, kind, actors, requested, num_cpus, num_gpus, device[, sized_from]); it
    describes the run, not the data (a rerun with every unit done starts none: [])."""
    stand_in = any(t and t.get("stand_in") for t in tokenizer_ids.values())
    return {
        "format_version": FORMAT_VERSION,
        "aromni_version": __version__,
        "name": recipe.name,
        "stand_in_tokenizers": stand_in,
        "warning": ("STAND-IN tokenizers: these ids are NOT the released Chameleon/WavTokenizer codes; "
                    "do not train a real model on them") if stand_in else None,
        "layout": layout.to_dict(),
        "recipe": recipe.to_dict(),
        "recipe_sha256": recipe.sha256(),
        "tokenizers": tokenizer_ids,
        "voices": voices or [],
        "pools": pools or [],
        "shards": shards,
        "rows": sum(s["rows"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "totals": totals_,
        "accounting": accounting(recipe, stats),
        "mixing": mixing,
        "rejects": rejects,
        "units": [{"source": st.source, "unit": st.unit, "unit_id": st.unit_id, "read": st.read, "written": st.written,
                   "tokens": st.tokens} for st in stats],
    }


def write_manifest(out: str | Path, manifest: dict) -> None:
    """Written last, atomically (a whole object on object stores): its presence means the build is finished."""
    fs, root = out_fs(str(out))
    write_json(fs, join(root, MANIFEST), manifest)


def read_manifest(out: str | Path) -> dict:
    fs, root = out_fs(str(out))
    return json.loads(fs.cat_file(join(root, MANIFEST)))
