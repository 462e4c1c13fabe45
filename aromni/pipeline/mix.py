"""Mix: unit parts -> final shards that each hold the recipe's group ratio exactly.

Each group's rows are ordered by hash(seed, id) (so the order depends on nothing but the recipe and the data), cut
to ratio-proportional counts (``first_exhausted``: stop at the first exhausted group, the paper's rule;
``all_exhausted``: repeat smaller groups, repeated rows get an ``@repK`` id suffix and are counted), then laid out in
*blocks* of ``ratio[g]`` rows per group, interleaved. A shard is a run of whole blocks, so every shard holds the ratio
exactly, as MosaicML's MDS does per batch.

``run_mix`` is the stage as build() calls it (one call); it is a temporary wrapper of the sequence below, which the
distributed mix package replaces behind the same signature.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aromni.hashing import file_sha256, stable_hash
from aromni.pipeline.manifest import MANIFEST, totals, write_rejects
from aromni.pipeline.parts import part_paths, write_parquet_atomic
from aromni.recipe import Recipe
from aromni.sample import ROW_SCHEMA

DATA = "data"


class MixError(RuntimeError):
    pass


@dataclass(frozen=True)
class RowRef:
    order: int      # hash(seed, id)
    id: str
    part: int       # index into the part list
    row: int
    tokens: int
    rep: int = 0


def index_parts(out: Path, stems: list[str]) -> list[tuple[str, str, int, int]]:
    """(id, task, n_tokens, part index) for every row of every part, without loading ids' payloads."""
    refs = []
    for k, stem in enumerate(stems):
        t = pq.read_table(part_paths(out, stem)["rows"], columns=["id", "n_tokens"])
        for r, (i, n) in enumerate(zip(t.column("id").to_pylist(), t.column("n_tokens").to_pylist())):
            refs.append((i, k, r, n))
    return refs


def order_groups(recipe: Recipe, out: Path, stems: list[str], stem_group: dict[str, str],
                 skip: dict | None = None) -> dict[str, list[RowRef]]:
    """Each group's rows in hash(seed, id) order; rows in ``skip`` ((part, row) -> Duplicate) are left out."""
    groups: dict[str, list[RowRef]] = {g: [] for g in recipe.mixing.ratio}
    for i, k, r, n in index_parts(out, stems):
        if skip and (k, r) in skip:
            continue
        groups[stem_group[stems[k]]].append(RowRef(stable_hash(recipe.mixing.seed, i), i, k, r, n))
    for g in groups:
        groups[g].sort(key=lambda x: (x.order, x.id))
    return groups


@dataclass(frozen=True)
class Duplicate:
    part: int
    row: int
    id: str
    kept: str    # the id of the row with the same content (or id) that stays
    tokens: int
    reason: str = "duplicate"   # or duplicate_id: two rows of the build share an id (e.g. one key in two files)


@dataclass(frozen=True)
class PartRef:
    """One planned unit's part, in plan order."""
    stem: str       # "<source>/<unit id>" (parts/<stem>.parquet ...)
    source: str
    group: str
    unit: str       # the unit's label, for rejects


@dataclass
class MixResult:
    shards: list[dict]                     # manifest "shards": {path, rows, tokens, bytes, sha256}
    report: dict                           # manifest "mixing"
    totals: dict                           # manifest "totals"
    dropped: dict = field(default_factory=dict)   # part stem -> reason -> {"rows": n, "tokens": t}
    rejects: dict = field(default_factory=dict)   # source -> {"path": "rejects/<source>.parquet", "rows": n}


def run_mix(recipe: Recipe, out: str, parts: list[PartRef], ray=None) -> MixResult:
    """Parts -> shards, the rows dropped as duplicates (per part, for the accounting) and the rejects files. ``ray``
    is unused here (this mix runs in the driver)."""
    root = Path(out)
    stems = [p.stem for p in parts]
    dups = find_duplicates(recipe, root, stems, content=recipe.filters.dedup)
    dropped: dict = defaultdict(lambda: defaultdict(lambda: {"rows": 0, "tokens": 0}))
    reject_rows: dict[str, list[dict]] = {}
    for d in sorted(dups.values(), key=lambda d: (d.part, d.row)):
        p = parts[d.part]
        dropped[p.stem][d.reason]["rows"] += 1
        dropped[p.stem][d.reason]["tokens"] += d.tokens
        what = "the same id as a row of an earlier unit" if d.reason == "duplicate_id" else f"same content as {d.kept}"
        reject_rows.setdefault(p.source, []).append(
            {"id": d.id, "source": p.source, "unit": p.unit, "reason": d.reason,
             "message": f"{what}, which is kept (first in mixing order)"})
    groups = order_groups(recipe, root, stems, {p.stem: p.group for p in parts}, skip=dups)
    blocks, report = select(recipe, groups)
    # manifest.json means "finished, and it describes data/": none while the shards are being rewritten
    (root / MANIFEST).unlink(missing_ok=True)
    shards = write_shards(recipe, root, stems, shard_blocks(recipe, blocks))
    totals_ = totals((pq.read_table(root / s["path"], columns=["task", "source", "n_tokens"]) for s in shards), recipe)
    by_source: dict[str, list[str]] = {}
    for p in parts:
        by_source.setdefault(p.source, []).append(p.stem)
    paths = write_rejects(root, recipe, by_source, reject_rows)
    rejects = {path.removeprefix("rejects/").removesuffix(".parquet"):
               {"path": path, "rows": pq.read_metadata(root / path).num_rows} for path in paths}
    return MixResult(shards, report, totals_, {k: dict(v) for k, v in dropped.items()}, rejects)


def find_duplicates(recipe: Recipe, out: Path, stems: list[str], content: bool = True
                    ) -> dict[tuple[int, int], Duplicate]:
    """Rows whose id, or (with ``content``) whose content (the content_hash column: text + media bytes, or the ids of an
    imported row), an earlier row of the build already has. "Earlier" is the mixing order, (hash(seed, id), id), then
    the unit order, over the whole build, so which copy stays depends only on the recipe and the data, never on the
    number of workers or the units' order. Ids must be unique in a dataset, so they are checked even without dedup."""
    seen: list[tuple[int, str, str, int, int, int]] = []
    for k, stem in enumerate(stems):
        t = pq.read_table(part_paths(out, stem)["rows"], columns=["id", "n_tokens", "content_hash"])
        if t.num_rows == 0:
            continue
        h = t.column("content_hash").to_pylist()
        for r, (i, n, c) in enumerate(zip(t.column("id").to_pylist(), t.column("n_tokens").to_pylist(), h)):
            seen.append((stable_hash(recipe.mixing.seed, i), i, k, r, n, c if content else None))
    seen.sort(key=lambda x: x[:4])
    first: dict[str, str] = {}
    first_ids: set[str] = set()
    dups = {}
    for _, i, k, r, n, c in seen:
        if i in first_ids:
            dups[(k, r)] = Duplicate(k, r, i, i, n, "duplicate_id")
        elif c is not None and c in first:
            dups[(k, r)] = Duplicate(k, r, i, first[c], n)
        else:
            first_ids.add(i)
            if c is not None:
                first[c] = i
    return dups


def select(recipe: Recipe, groups: dict[str, list[RowRef]]) -> tuple[list[list[RowRef]], dict]:
    """Cut groups to ratio-proportional counts; returns the blocks and the mixing report."""
    ratio = recipe.mixing.ratio
    avail = {g: len(groups[g]) for g in ratio}
    if recipe.mixing.stop == "first_exhausted":
        n_blocks = min(avail[g] // ratio[g] for g in ratio)
    else:
        empty = [g for g in ratio if avail[g] == 0]
        if empty:
            raise MixError(f"mixing.stop=all_exhausted cannot repeat empty group(s) {empty}: no rows were written "
                           f"for them (see rejects)")
        n_blocks = max(math.ceil(avail[g] / ratio[g]) for g in ratio)
    taken: dict[str, list[RowRef]] = {}
    for g in ratio:
        need = n_blocks * ratio[g]
        rows = groups[g]
        taken[g] = [rows[j] if j < len(rows) else _rep(rows[j % len(rows)], j // len(rows)) for j in range(need)]
    blocks = []
    for b in range(n_blocks):
        block = []
        per_group = [taken[g][b * ratio[g]:(b + 1) * ratio[g]] for g in ratio]
        for j in range(max(ratio.values())):  # interleave: g1 g2 g3 g1 g2 g3 ...
            block += [rows[j] for rows in per_group if j < len(rows)]
        blocks.append(block)
    report = {g: {"ratio": ratio[g], "available": avail[g], "used": n_blocks * ratio[g],
                  "unique_used": min(avail[g], n_blocks * ratio[g]),
                  "repeated": max(0, n_blocks * ratio[g] - avail[g])} for g in ratio}
    return blocks, {"stop": recipe.mixing.stop, "seed": recipe.mixing.seed, "blocks": n_blocks, "groups": report}


def _rep(ref: RowRef, k: int) -> RowRef:
    return RowRef(ref.order, ref.id, ref.part, ref.row, ref.tokens, k)


def shard_blocks(recipe: Recipe, blocks: list[list[RowRef]]) -> list[list[RowRef]]:
    m = recipe.mixing
    shards, cur, cur_tokens = [], [], 0
    per = max(1, (m.shard_rows or 0) // max(1, sum(m.ratio.values())))
    for b in blocks:
        cur += b
        cur_tokens += sum(r.tokens for r in b)
        full = (cur_tokens >= m.shard_tokens) if m.shard_tokens else (len(cur) >= per * len(b))
        if full:
            shards.append(cur)
            cur, cur_tokens = [], 0
    if cur:
        shards.append(cur)
    return shards


def write_shards(recipe: Recipe, out: Path, stems: list[str], shards: list[list[RowRef]]) -> list[dict]:
    data = Path(out) / DATA
    data.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    names = [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    for old in data.glob("*.parquet"):
        if old.name not in names:
            old.unlink()
    o = recipe.output
    comp = None if o.compression == "none" else o.compression
    level = o.compression_level if o.compression in ("zstd", "gzip") else None
    result = []
    for name, refs in zip(names, shards):
        table = gather(out, stems, refs)
        path = data / name
        write_parquet_atomic(table, path, compression=comp, compression_level=level,
                             row_group_size=o.row_group_rows, write_statistics=True)
        result.append({"path": f"{DATA}/{name}", "rows": table.num_rows,
                       "tokens": int(pc.sum(table.column("n_tokens")).as_py() or 0),
                       "bytes": os.path.getsize(path), "sha256": _sha256(path)})
    return result


def gather(out: Path, stems: list[str], refs: list[RowRef]) -> pa.Table:
    """The shard's rows, in ``refs`` order, reading each part it touches once."""
    by_part: dict[int, list[int]] = {}
    for pos, r in enumerate(refs):
        by_part.setdefault(r.part, []).append(pos)
    pieces, positions = [], []
    for k in sorted(by_part):
        t = pq.read_table(part_paths(out, stems[k])["rows"], schema=ROW_SCHEMA)
        poss = by_part[k]
        piece = t.take([refs[p].row for p in poss])
        reps = [refs[p].rep for p in poss]
        if any(reps):
            ids = [i if k_ == 0 else f"{i}@rep{k_}" for i, k_ in zip(piece.column("id").to_pylist(), reps)]
            piece = piece.set_column(0, "id", pa.array(ids, pa.string()))
        pieces.append(piece)
        positions += poss
    table = pa.concat_tables(pieces) if pieces else ROW_SCHEMA.empty_table()
    inverse = sorted(range(len(positions)), key=positions.__getitem__)
    return table.take(inverse).combine_chunks()


def _sha256(path: Path) -> str:
    return file_sha256(path)
