"""manifest.json: everything needed to trust, reproduce and consume a build."""
from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from aromni import __version__
from aromni.layout import Layout
from aromni.pipeline.stats import UnitStats
from aromni.pipeline.parts import part_paths, write_json_atomic, write_parquet_stream_atomic
from aromni.recipe import Recipe
from aromni.sample import REJECT_SCHEMA

FORMAT_VERSION = 2   # 2: rows have a content_hash column (1: it was meta.content_hash)
MANIFEST = "manifest.json"
REJECTS = "rejects"


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


def write_rejects(out: Path, recipe: Recipe, stems_by_source: dict[str, list[str]],
                  extra: dict[str, list[dict]] | None = None) -> list[str]:
    """rejects/{source}.parquet: the units' rejects, then ``extra`` ones decided at mix time (duplicate)."""
    d = Path(out) / REJECTS
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for s in recipe.sources:
        tables = (pq.read_table(part_paths(out, stem)["rejects"], schema=REJECT_SCHEMA)
                  for stem in stems_by_source.get(s.name, []))
        more = [pa.Table.from_pylist(extra[s.name], schema=REJECT_SCHEMA)] if extra and extra.get(s.name) else []
        path = d / f"{s.name}.parquet"
        # streamed part by part: a source with millions of rejects (LAION's failed downloads) is never all in memory
        write_parquet_stream_atomic(itertools.chain(tables, more), REJECT_SCHEMA, path, compression="zstd")
        written.append(f"{REJECTS}/{path.name}")
    for old in d.glob("*.parquet"):
        if f"{REJECTS}/{old.name}" not in written:
            old.unlink()
    return written


def build_manifest(recipe: Recipe, layout: Layout, tokenizer_ids: dict, shards: list[dict], stats: list[UnitStats],
                   mixing: dict, totals_: dict, rejects: list[str]) -> dict:
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


def write_manifest(out: Path, manifest: dict) -> None:
    write_json_atomic(manifest, Path(out) / MANIFEST)


def read_manifest(out: Path) -> dict:
    return json.loads((Path(out) / MANIFEST).read_text())
