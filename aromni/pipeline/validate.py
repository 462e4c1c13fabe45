"""``aromni validate``: trust nothing in a build folder; check every byte and every field that can be recomputed.

What is checked, each failure being a *finding* (never an exception: a flipped byte, a truncated file, a hand-edited
manifest or a hostile path all end up in the list, and the CLI exits 1):

- the manifest: readable JSON, a known ``format_version``, a valid layout, the fields it needs of the right types;
- paths: every shard path and rejects path is relative, free of ``..``, under ``data/`` (``rejects/``) and, once
  symlinks are followed, inside the build folder: ``/etc/passwd`` or ``../x`` is a finding, nothing outside is read;
- the set of files in ``data/`` equals the manifest's shard list (an extra shard would be shipped by a glob);
- each shard's bytes: size and sha256 against the manifest *before* parsing, then the parquet parsed from those same
  bytes (ZSTD, Thrift and Arrow errors are findings), its columns by name (format 1, or format 2 with the
  ``content_hash`` column), every row against the sample grammar, ``n_tokens``, unique ids across shards;
- every recomputable field: per-shard rows/tokens, ``rows``/``tokens``, ``totals`` by task/group/source, ``mixing``
  (ratio/stop/seed as the recipe says, used = blocks x ratio = rows of the group in the shards, unique_used, repeated,
  available = the group's written rows), ``accounting`` (read = written + rejected, ``reconciles``, sums of ``units``),
  ``stand_in_tokenizers`` / ``warning`` against the tokenizer identities and the recipe, ``recipe_sha256``;
- ``rejects/``: each listed file readable with the reject schema, its rows per source and reason equal to the
  accounting, no unlisted file;
- a build with no rows is a finding (a green build that holds nothing is a wrong recipe).

The build folder may be a local path or a URL (s3://, gs://, ...): everything is read through fsspec.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from aromni.layout import Layout
from aromni.pipeline.manifest import MANIFEST, REJECTS
from aromni.sample import REJECT_SCHEMA, ROW_SCHEMA, check_row

DATA = "data"
KNOWN_FORMATS = (1, 2)
HASH_COLUMN = "content_hash"  # format 2's last column (contracts §1); format 1 has none
READ_CHUNK = 1 << 22


@dataclass
class Findings:
    rows: int = 0
    shards: int = 0
    problems: list[str] = field(default_factory=list)
    more: int = 0  # problems beyond the first ``limit``

    def add(self, msg: str, limit: int = 200):
        if len(self.problems) < limit:
            self.problems.append(msg)
        else:
            self.more += 1

    @property
    def ok(self) -> bool:
        return not self.problems and not self.more


# -------------------------------------------------------------------------------------------------------------
# The folder, local or remote
# -------------------------------------------------------------------------------------------------------------
class Folder:
    """A build folder read through fsspec; ``rel`` paths are checked for confinement before any read."""

    def __init__(self, out: str | Path):
        self.url = str(out)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.root = self.root.rstrip("/") or "/"

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def confined(self, rel, under: str) -> str | None:
        """Why ``rel`` may not be read as a file of ``under/`` (None when it may)."""
        if not isinstance(rel, str) or not rel:
            return "not a path string"
        if "\\" in rel or "\x00" in rel or "://" in rel or rel.startswith("/") or rel.startswith("~"):
            return "not a relative path inside the build folder"
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            return "has an empty, '.' or '..' component"
        if parts[0] != under or len(parts) != 2:
            return f"not a file directly under {under}/"
        if self.local:  # a symlink in data/ that leads elsewhere is as bad as a path that does
            real, base = Path(self.path(rel)).resolve(), Path(self.root).resolve()
            if real != base and base not in real.parents:
                return f"resolves outside the build folder (to {real})"
        return None

    def listdir(self, sub: str) -> list[str]:
        """Names of the entries of ``sub/`` (files and folders); [] when it does not exist."""
        p = self.path(sub)
        try:
            if not self.fs.isdir(p):
                return []
            return sorted(posixpath.basename(e.rstrip("/")) for e in self.fs.ls(p, detail=False))
        except (OSError, ValueError):
            return []

    def read(self, rel: str) -> bytes:
        with self.fs.open(self.path(rel), "rb") as f:
            return f.read()

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.isfile(self.path(rel))
        except (OSError, ValueError):
            return False


# -------------------------------------------------------------------------------------------------------------
# Manifest fields
# -------------------------------------------------------------------------------------------------------------
def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _expected_schema(fmt: int) -> pa.Schema:
    """The row columns a shard of format ``fmt`` holds, by name (whatever ROW_SCHEMA this code has)."""
    fields = [f for f in ROW_SCHEMA if f.name != HASH_COLUMN]
    if fmt >= 2:
        fields.append(pa.field(HASH_COLUMN, pa.string()))
    return pa.schema(fields)


def _schema_problem(got: pa.Schema, want: pa.Schema) -> str | None:
    names = [f.name for f in got]
    missing = [f.name for f in want if f.name not in names]
    extra = [n for n in names if n not in want.names]
    wrong = [f"{f.name}: {got.field(f.name).type} (expected {f.type})" for f in want
             if f.name in names and not got.field(f.name).type.equals(f.type)]
    if not (missing or extra or wrong):
        return None
    return "; ".join(x for x in (missing and f"missing column(s) {missing}", extra and f"unknown column(s) {extra}",
                                 wrong and "wrong type(s) " + ", ".join(wrong)) if x)


def _stand_in_expected(m: dict) -> tuple[bool, list[str]]:
    """(whether the build used a stand-in tokenizer, per-tokenizer inconsistencies) from identities + recipe."""
    problems = []
    idents = m.get("tokenizers") or {}
    conf = (m.get("recipe") or {}).get("tokenizers") or {}
    any_stand_in = False
    for mod, ident in idents.items():
        if ident is None:
            continue
        if not isinstance(ident, dict):
            problems.append(f"tokenizers.{mod}: not an identity mapping")
            continue
        c = conf.get(mod) or {}
        declared = bool(c.get("stand_in")) or c.get("kind") == "standin"
        if declared and not ident.get("stand_in"):
            problems.append(f"tokenizers.{mod}: the recipe declares a stand-in ({c.get('kind')}, stand_in="
                            f"{c.get('stand_in')}) but the identity says stand_in: {ident.get('stand_in')}")
        any_stand_in |= bool(ident.get("stand_in")) or declared
    return any_stand_in, problems


def _voice_problems(m: dict, recipe: dict) -> list[str]:
    """One identity per voice step of the recipe, each naming its backend and model hash, stand_in true, false or
    "unverified" (a model folder without aromni's marker is never reported as real)."""
    voices = m.get("voices", [])
    if not isinstance(voices, list):
        return ["voices: not a list of identities"]
    steps = [s for s in (recipe or {}).get("steps") or [] if isinstance(s, dict) and s.get("name") == "voice"]
    out = [] if len(voices) == len(steps) else [f"voices: {len(voices)} identities for {len(steps)} voice step(s)"]
    for i, v in enumerate(voices):
        if not isinstance(v, dict) or not v.get("backend") or not v.get("model_sha256"):
            out.append(f"voices[{i}]: not an identity (backend and model_sha256)")
        elif v.get("stand_in") not in (True, False, "unverified"):
            out.append(f"voices[{i}]: stand_in is {v.get('stand_in')!r} (true, false or \"unverified\")")
    return out


def _recipe_sha256(recipe: dict) -> str:
    # the same bytes as Recipe.sha256(): the manifest stores Recipe.to_dict()
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


# -------------------------------------------------------------------------------------------------------------
# validate
# -------------------------------------------------------------------------------------------------------------
def validate(out: str | Path) -> Findings:
    f = Findings()
    try:
        folder = Folder(out)
    except (ValueError, ImportError, OSError) as e:
        f.add(f"{out}: cannot open ({e})")
        return f
    try:
        if not folder.exists(MANIFEST):
            f.add(f"{out}: no {MANIFEST} (is this an aromni build folder?)")
            return f
        m = json.loads(folder.read(MANIFEST).decode("utf-8"))
        if not isinstance(m, dict):
            raise ValueError("not a JSON object")
        layout = Layout.from_dict(m["layout"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        f.add(f"{MANIFEST}: unreadable or without a valid layout: {type(e).__name__}: {str(e)[:300]}")
        return f
    try:  # a lone surrogate ("\ud800" in JSON) reads fine, then crashes card/publish when written as UTF-8
        json.dumps(m, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        f.add(f"{MANIFEST}: holds a string that cannot be written as UTF-8 ({e.object[e.start:e.end]!r}); the card "
              f"and publish would fail on it")
    fmt = m.get("format_version")
    if fmt not in KNOWN_FORMATS:
        f.add(f"{MANIFEST}: format_version {fmt!r} is not one this aromni reads ({list(KNOWN_FORMATS)}); "
              f"use the aromni version that wrote it ({m.get('aromni_version', '?')})")
        return f
    recipe = m.get("recipe") if isinstance(m.get("recipe"), dict) else {}
    if not recipe:
        f.add(f"{MANIFEST}: no recipe")
    group_of = {s.get("name"): s.get("group") or "?" for s in recipe.get("sources", []) if isinstance(s, dict)}

    got_totals = _check_shards(folder, m, fmt, layout, group_of, f)
    _check_totals(m, got_totals, f)
    _check_mixing(m, recipe, got_totals, f)
    _check_accounting(m, f)
    _check_rejects(folder, m, f)
    _check_identity(m, recipe, f)
    return f


def _check_shards(folder: Folder, m: dict, fmt: int, layout: Layout, group_of: dict, f: Findings) -> dict:
    """Every listed shard byte by byte and row by row; returns rows/tokens by task, group and source."""
    by = {k: defaultdict(lambda: [0, 0]) for k in ("task", "group", "source")}
    shards = m.get("shards")
    if not isinstance(shards, list):
        f.add(f"{MANIFEST}: shards is not a list")
        shards = []
    want_schema = _expected_schema(fmt)
    seen_ids: set[str] = set()
    listed: set[str] = set()
    total_rows = total_tokens = 0
    for i, s in enumerate(shards):
        f.shards += 1
        if not isinstance(s, dict):
            f.add(f"shards[{i}]: not a {{path, rows, tokens, bytes, sha256}} entry")
            continue
        rel = s.get("path")
        why = folder.confined(rel, DATA)
        if why:
            f.add(f"shards[{i}].path {rel!r}: {why}; not read")
            continue
        if rel in listed:
            f.add(f"shards[{i}].path {rel!r}: listed twice")
            continue
        listed.add(rel)
        bad = [k for k in ("rows", "tokens", "bytes") if not _int(s.get(k))]
        if bad or not isinstance(s.get("sha256"), str):
            f.add(f"{rel}: manifest entry has missing or non-integer {bad or ['sha256']}")
        if not folder.exists(rel):
            f.add(f"{rel}: listed in the manifest but missing")
            continue
        try:
            data = folder.read(rel)
        except OSError as e:
            f.add(f"{rel}: cannot be read ({e})")
            continue
        if len(data) != s.get("bytes"):
            f.add(f"{rel}: {len(data)} bytes, manifest says {s.get('bytes')}")
        h = hashlib.sha256(data).hexdigest()
        if h != s.get("sha256"):
            f.add(f"{rel}: sha256 {h[:12]}... does not match the manifest's {str(s.get('sha256'))[:12]}...")
        n_rows = n_tokens = 0
        try:
            pf = pq.ParquetFile(pa.BufferReader(data))
            problem = _schema_problem(pf.schema_arrow, want_schema)
            if problem:
                f.add(f"{rel}: columns differ from the format {fmt} row schema: {problem}")
                continue
            for batch in pf.iter_batches(batch_size=512, columns=want_schema.names):
                for r in batch.to_pylist():
                    n_rows += 1
                    ids = r["input_ids"] or []
                    n_tokens += len(ids)
                    where = f"{rel} row {n_rows - 1} ({r['id']})"
                    if r["n_tokens"] != len(ids):
                        f.add(f"{where}: n_tokens {r['n_tokens']} != {len(ids)}")
                    if r["id"] in seen_ids:
                        f.add(f"{where}: duplicate id")
                    seen_ids.add(r["id"])
                    if r["source"] not in group_of:
                        f.add(f"{where}: source {r['source']!r} is not a source of the recipe")
                    for problem in check_row(ids, r["segments"] or [], layout):
                        f.add(f"{where}: {problem}")
                    for k, v in (("task", r["task"]), ("group", group_of.get(r["source"], "?")),
                                 ("source", r["source"])):
                        by[k][v][0] += 1
                        by[k][v][1] += len(ids)
        except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes (ZSTD, Thrift, Arrow) is a finding
            f.add(f"{rel}: not a readable parquet shard: {type(e).__name__}: {str(e)[:300]}")
            continue
        if n_rows != s.get("rows"):
            f.add(f"{rel}: {n_rows} rows, manifest says {s.get('rows')}")
        if n_tokens != s.get("tokens"):
            f.add(f"{rel}: {n_tokens} tokens, manifest says {s.get('tokens')}")
        total_rows += n_rows
        total_tokens += n_tokens
    f.rows = total_rows
    for name in folder.listdir(DATA):
        if f"{DATA}/{name}" not in listed:
            kind = "a temp file of an interrupted or running build" if name.startswith(".") else "not in the manifest"
            f.add(f"{DATA}/{name}: in {DATA}/ but {kind} (a glob of {DATA}/ would ship it)")
    if total_rows == 0:
        f.add("the build holds no rows: every source was empty or rejected (see the manifest's accounting)")
    if m.get("rows") != total_rows:
        f.add(f"{MANIFEST}: rows {m.get('rows')} but the shards hold {total_rows}")
    if m.get("tokens") != total_tokens:
        f.add(f"{MANIFEST}: tokens {m.get('tokens')} but the shards hold {total_tokens}")
    return {k: {name: {"rows": r, "tokens": n} for name, (r, n) in sorted(d.items())} for k, d in by.items()}


def _check_totals(m: dict, got: dict, f: Findings) -> None:
    want = m.get("totals")
    if not isinstance(want, dict):
        f.add(f"{MANIFEST}: totals missing")
        return
    for key in ("task", "group", "source"):
        if want.get(key) != got[key]:
            f.add(f"{MANIFEST}: totals.{key} {_short(want.get(key))} but the shards hold {_short(got[key])}")


def _check_mixing(m: dict, recipe: dict, got: dict, f: Findings) -> None:
    mix = m.get("mixing")
    if not isinstance(mix, dict) or not isinstance(mix.get("groups"), dict):
        f.add(f"{MANIFEST}: mixing report missing")
        return
    conf = recipe.get("mixing") or {}
    for k in ("stop", "seed"):
        if k in conf and mix.get(k) != conf[k]:
            f.add(f"{MANIFEST}: mixing.{k} {mix.get(k)!r} but the recipe says {conf[k]!r}")
    ratio = conf.get("ratio") or {}
    if set(mix["groups"]) != set(ratio):
        f.add(f"{MANIFEST}: mixing.groups {sorted(mix['groups'])} but the recipe's ratio names {sorted(ratio)}")
    blocks = mix.get("blocks")
    written = Counter()
    for a in (m.get("accounting") or {}).values():
        if isinstance(a, dict) and _int(a.get("written")):
            written[a.get("group")] += a["written"]
    for g, v in mix["groups"].items():
        if not isinstance(v, dict):
            f.add(f"{MANIFEST}: mixing.groups.{g} is not a mapping")
            continue
        used, avail = v.get("used"), v.get("available")
        in_shards = got["group"].get(g, {}).get("rows", 0)
        expect = {"ratio": ratio.get(g), "used": in_shards, "available": written[g]}
        if _int(blocks) and ratio.get(g) is not None:
            expect["used"] = blocks * ratio[g]
            if in_shards != blocks * ratio[g]:
                f.add(f"{MANIFEST}: group {g}: {in_shards} rows in the shards, {blocks} blocks x ratio {ratio[g]} = "
                      f"{blocks * ratio[g]}")
        if _int(used) and _int(avail):
            expect |= {"unique_used": min(avail, used), "repeated": max(0, used - avail)}
        for k, want in expect.items():
            if k in v and v[k] != want:
                f.add(f"{MANIFEST}: mixing.groups.{g}.{k} is {v[k]!r}, recomputed {want!r}")


def _check_accounting(m: dict, f: Findings) -> None:
    acc = m.get("accounting")
    if not isinstance(acc, dict):
        f.add(f"{MANIFEST}: accounting missing")
        return
    units = m.get("units") if isinstance(m.get("units"), list) else []
    per_unit = defaultdict(Counter)
    for u in units:
        if isinstance(u, dict):
            for k in ("read", "written"):
                if _int(u.get(k)):
                    per_unit[u.get("source")][k] += u[k]
            per_unit[u.get("source")]["units"] += 1
    for src, a in acc.items():
        if not isinstance(a, dict) or not isinstance(a.get("rejected"), dict) or \
                not all(_int(a.get(k)) for k in ("read", "written")) or not all(map(_int, a["rejected"].values())):
            f.add(f"accounting for {src}: read/written/rejected missing or not counts")
            continue
        rej = sum(a["rejected"].values())
        ok = a["read"] == a["written"] + rej
        if not ok:
            f.add(f"accounting for {src} does not reconcile: read {a['read']} != written {a['written']} + "
                  f"rejected {rej}")
        if a.get("reconciles") is not None and a.get("reconciles") != ok:
            f.add(f"accounting for {src}: reconciles is {a.get('reconciles')} but the counts say {ok}")
        if units:
            # units record what each unit wrote before mix-time dedup moved rows to rejected: read must agree
            u = per_unit.get(src, Counter())
            if u["read"] != a["read"] or (_int(a.get("units")) and u["units"] != a["units"]):
                f.add(f"accounting for {src}: read {a['read']} in {a.get('units')} unit(s), the units list says "
                      f"{u['read']} in {u['units']}")


def _check_rejects(folder: Folder, m: dict, f: Findings) -> None:
    listed = m.get("rejects") if isinstance(m.get("rejects"), list) else None
    if listed is None:
        f.add(f"{MANIFEST}: rejects list missing")
        return
    acc = m.get("accounting") if isinstance(m.get("accounting"), dict) else {}
    got: dict[str, Counter] = defaultdict(Counter)
    ok_paths = set()
    for i, rel in enumerate(listed):
        why = folder.confined(rel, REJECTS)
        if why:
            f.add(f"rejects[{i}] {rel!r}: {why}; not read")
            continue
        ok_paths.add(rel)
        if not folder.exists(rel):
            f.add(f"{rel}: listed in the manifest but missing")
            continue
        try:
            t = pq.read_table(pa.BufferReader(folder.read(rel)))
            problem = _schema_problem(t.schema, REJECT_SCHEMA)
            if problem:
                f.add(f"{rel}: columns differ from the reject schema: {problem}")
                continue
            for src, reason in zip(t.column("source").to_pylist(), t.column("reason").to_pylist()):
                got[src][reason] += 1
        except Exception as e:  # noqa: BLE001 - untrusted bytes: any parse error is a finding
            f.add(f"{rel}: not a readable rejects parquet: {type(e).__name__}: {str(e)[:300]}")
    for name in folder.listdir(REJECTS):
        if f"{REJECTS}/{name}" not in ok_paths:
            f.add(f"{REJECTS}/{name}: in {REJECTS}/ but not in the manifest")
    for src, a in acc.items():
        if not isinstance(a, dict) or not isinstance(a.get("rejected"), dict):
            continue
        want = {k: v for k, v in a["rejected"].items() if v}
        if dict(got.get(src, {})) != want:
            f.add(f"rejects for {src}: {_short(dict(sorted(got.get(src, {}).items())))} in {REJECTS}/, accounting "
                  f"says {_short(dict(sorted(want.items())))}")
    for src in sorted(set(got) - set(acc)):
        f.add(f"rejects: {sum(got[src].values())} reject(s) of source {src!r}, which the accounting does not know")


def _check_identity(m: dict, recipe: dict, f: Findings) -> None:
    stand_in, problems = _stand_in_expected(m)
    for p in problems:
        f.add(f"{MANIFEST}: {p}")
    if bool(m.get("stand_in_tokenizers")) != stand_in:
        f.add(f"{MANIFEST}: stand_in_tokenizers is {m.get('stand_in_tokenizers')!r} but the tokenizer identities "
              f"and the recipe say {stand_in}")
    if stand_in and not m.get("warning"):
        f.add(f"{MANIFEST}: a stand-in build without its warning")
    for p in _voice_problems(m, recipe):
        f.add(f"{MANIFEST}: {p}")
    if recipe and m.get("recipe_sha256") != _recipe_sha256(recipe):
        f.add(f"{MANIFEST}: recipe_sha256 {str(m.get('recipe_sha256'))[:12]}... is not the sha256 of the recipe it "
              f"holds ({_recipe_sha256(recipe)[:12]}...)")


def _short(v, n: int = 200) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= n else s[:n] + "..."
