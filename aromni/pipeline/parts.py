"""Per-unit part files and the state of an out folder (local path or URL).

A unit writes ``parts/<stem>.parquet`` (rows), ``parts/<stem>.rejects.parquet``, with a ``near_dup`` step also
``parts/<stem>.near_dup.parquet`` (the rows' fingerprints, for the mix), and, last, ``parts/<stem>.done.json``: the
unit's stats plus the size and sha256 of each file. Only a marker whose files match is "done"; anything else
(a missing file, a zero-length part after a power cut, a torn write) makes the unit redo, never a crash.

Part files are renamed into place (never seen half-written) but not fsynced: the marker's sizes and sha256s are what
make a part trustworthy, so a power cut that loses the last seconds of writes redoes those units and never keeps a
wrong one. Six fsyncs a unit (file and folder, three files) were ~5 % of a text unit's time.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from aromni.io.atomic import TEMP_MARK, OutputError, is_local, join, out_fs, sha256_of, write_bytes, write_json
from aromni.sample import DICTIONARY_COLUMNS, REJECT_SCHEMA, rows_to_table

PARTS = "parts"
DATA = "data"
REJECTS = "rejects"
MANIFEST = "manifest.json"
FILES = "part_files"   # the marker's record of its files: {"rows": {"size", "sha256"}, "rejects": {...}, ...}


class OutError(OutputError):
    """The out folder holds something this build must not overwrite silently."""


def part_paths(out: str, stem: str) -> dict[str, str]:
    """Paths inside the out filesystem (no scheme) of a unit's files."""
    _, root = out_fs(out)
    base = join(root, PARTS, stem)
    return {"rows": base + ".parquet", "rejects": base + ".rejects.parquet", "near_dup": base + ".near_dup.parquet",
            "done": base + ".done.json"}


def parquet_bytes(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def write_part(out: str, stem: str, result, recipe) -> None:
    """Rows and rejects (and fingerprints) first, the done marker last: a unit without a marker whose files match is
    redone (``read_done``)."""
    fs, _ = out_fs(out)
    p = part_paths(out, stem)
    o = recipe.output
    files = {}
    tables = [("rows", rows_to_table(result.rows)),
              ("rejects", pa.Table.from_pylist(result.rejects, schema=REJECT_SCHEMA) if result.rejects else None)]
    if getattr(result, "signatures", None) is not None:
        from aromni.pipeline.steps.filters.near_dup import sidecar_table
        tables.append(("near_dup", sidecar_table(result.signatures)))
    for kind, table in tables:
        data = _no_rejects() if table is None else parquet_bytes(
            table, compression="zstd", row_group_size=o.row_group_rows if kind == "rows" else None,
            use_dictionary=DICTIONARY_COLUMNS if kind == "rows" else True)
        write_bytes(fs, p[kind], data, durable=False)
        files[kind] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    stats = result.stats.to_dict() if hasattr(result.stats, "to_dict") else dict(result.stats)
    write_json(fs, p["done"], dict(stats, **{FILES: files}), durable=False)


@functools.lru_cache(maxsize=1)
def _no_rejects() -> bytes:
    """The rejects file of a unit that rejected nothing (most units): the same bytes every time, made once."""
    return parquet_bytes(REJECT_SCHEMA.empty_table(), compression="zstd")


def read_done(out: str, stem: str) -> dict | None:
    """The unit's stats when its marker and all its files are present and match the marker, else None (redo it)."""
    fs, _ = out_fs(out)
    p = part_paths(out, stem)
    try:
        marker = json.loads(fs.cat_file(p["done"]))
        files = marker.pop(FILES)
        if not {"rows", "rejects"} <= set(files):
            return None
        for kind, want in files.items():
            if fs.size(p[kind]) != want["size"] or sha256_of(fs, p[kind]) != want["sha256"]:
                return None
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return marker


def existing_stems(out: str) -> set[str]:
    fs, root = out_fs(out)
    base = join(root, PARTS)
    try:
        found = fs.glob(join(base, "*", "*.done.json"))
    except (FileNotFoundError, OSError):
        return set()
    return {f[len(base) + 1:].removesuffix(".done.json") for f in found}


def read_manifest(out: str) -> dict:
    fs, root = out_fs(out)
    return json.loads(fs.cat_file(join(root, MANIFEST)))


def remove_manifest(out: str) -> None:
    """manifest.json means "finished, and it describes data/": none while the shards are being rewritten."""
    fs, root = out_fs(out)
    path = join(root, MANIFEST)
    if fs.exists(path):
        fs.rm(path)


def check_existing(out: str, recipe, planned_stems, force: bool) -> None:
    """Never mix parts of another recipe or of changed inputs into this build; with ``force`` discard them."""
    fs, root = out_fs(out)
    if not fs.exists(root):
        return
    planned = set(planned_stems)
    stale = sorted(existing_stems(out) - planned)
    changed = False
    if fs.exists(join(root, MANIFEST)):
        try:
            changed = read_manifest(out).get("recipe_sha256") != recipe.sha256()
        except (OSError, ValueError):
            changed = True
    if (stale or changed) and not force:
        why = []
        if changed:
            why.append("its manifest was built from a different recipe")
        if stale:
            why.append(f"it holds {len(stale)} unit part(s) that this recipe and these inputs do not produce "
                       f"(e.g. {stale[0]})")
        raise OutError(f"{out} already holds another build: {'; '.join(why)}. Use a new --out, or --force to "
                       f"discard what does not belong to this recipe.")
    for stem in stale:
        for path in part_paths(out, stem).values():
            if fs.exists(path):
                fs.rm(path)
    clean_temp(out)


def clean_temp(out: str) -> None:
    """Remove temp files a killed run left (never promoted). Call it holding the build lock: then no other build is
    writing here, so every temp file belongs to this build's own earlier, dead run. Object stores have none (an
    upload is visible only once complete)."""
    fs, root = out_fs(out)
    if not is_local(fs) or not fs.exists(root):
        return
    for sub in ("", PARTS + "/*", DATA, REJECTS):
        for p in fs.glob(join(root, sub, f".*{TEMP_MARK}*") if sub else join(root, f".*{TEMP_MARK}*")):
            fs.rm(p)


def remove_build(out: str) -> None:
    """--force on a folder that holds another build's outputs: remove them (parts, shards, rejects, manifest)."""
    fs, root = out_fs(out)
    for sub in (PARTS, DATA, REJECTS, ".mix"):
        path = join(root, sub)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    remove_manifest(out)
