"""LAION image-text pairs as img2dataset writes them: webdataset tars, the ``files`` folders, or ``parquet`` output.

LAION metadata filters (aesthetic score, NSFW, CLIP similarity, size, aspect) apply to the columns img2dataset keeps
in each sample's ``.json`` (``--save_additional_columns``); names are matched case-insensitively and under the aliases
the LAION releases use (``aesthetic`` / ``AESTHETIC_SCORE``, ``original_width`` / ``WIDTH``, ...).
"""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
from pydantic import Field

from aromni.pipeline.readers.base import Example, Reader, ReaderOptions, Rejected, Unit, register

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
ALIASES = {  # what the filters read -> the column names LAION releases and img2dataset use for it
    "aesthetic": ("aesthetic", "aesthetic_score"),
    "punsafe": ("punsafe",),
    "pwatermark": ("pwatermark",),
    "nsfw": ("nsfw",),
    "similarity": ("similarity",),
    "width": ("original_width", "width"),
    "height": ("original_height", "height"),
}


def field(meta: dict, name: str):
    """A LAION metadata value under any of its aliases, case-insensitively; None when absent."""
    low = {k.lower(): v for k, v in meta.items()}
    for alias in ALIASES.get(name, (name,)):
        if low.get(alias) is not None:
            return low[alias]
    return None


class LaionOptions(ReaderOptions):
    min_aesthetic: float | None = Field(None, description="keep aesthetic score >= this (paper: 5.0, LAION-Aesthetics "
                                                           "V2); rows without a score are dropped when set")
    max_punsafe: float | None = Field(None, description="drop NSFW: punsafe above this")
    max_pwatermark: float | None = Field(None, description="drop likely watermarked images: pwatermark above this")
    drop_nsfw: bool = Field(True, description="drop rows whose NSFW column says NSFW")
    drop_unsure: bool = Field(False, description="also drop rows whose NSFW column says UNSURE")
    min_similarity: float | None = Field(None, description="CLIP image-text similarity lower bound")
    min_side: int | None = Field(None, description="original width/height lower bound (pixels)")
    max_aspect: float | None = Field(None, description="max(w,h)/min(w,h) upper bound")


@register
class LaionReader(Reader):
    name = "laion"
    layout_doc = """img2dataset output of LAION-2B-en / LAION-Aesthetics, any of its three output formats:
    webdataset  {shard:05d}.tar: members {key}.jpg, {key}.txt (caption), {key}.json (url, caption, key, status,
                error_message, width, height, original_width, original_height, exif, sha256, plus the LAION columns
                kept with --save_additional_columns: NSFW, similarity, punsafe, pwatermark, AESTHETIC_SCORE, ...)
    files       {shard:05d}/ folders holding the same {key}.jpg/.txt/.json files
    parquet     {shard:05d}.parquet with the image bytes in a jpg (png/webp) column
    beside each shard: {shard:05d}.parquet (one row per attempted URL, with status: failed downloads are counted
    from it as download_failed) and {shard:05d}_stats.json. One unit per shard.
    path: the output folder, a glob such as laion/*.tar, or one shard."""
    Options = LaionOptions
    patterns = ("*.tar",)

    # ---- units: tars, files folders, parquet shards holding images ------------------------------------------
    def units(self) -> list[Unit]:
        p = self.path
        if p.is_dir() and p.name.isdigit() and any(p.glob("*.json")):  # one files-format folder
            return [Unit(self.source, str(p), _size(p))]
        if not p.is_dir():
            return [Unit(self.source, str(f), _size(f)) for f in self.files() if _is_shard(f)]
        found: dict[str, Path] = {}
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.suffix == ".tar":
                found.setdefault(str(f.with_suffix("")), f)
            elif f.is_dir() and f.name.isdigit() and any(f.glob("*.json")):
                found.setdefault(str(f), f)
        for f in sorted(p.rglob("*.parquet")):  # parquet output: only shards that are not a tar's / folder's sidecar
            if str(f.with_suffix("")) not in found and _has_images(f):
                found[str(f.with_suffix(""))] = f
        return [Unit(self.source, str(f), _size(f)) for f in sorted(found.values(), key=str)]

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        p = Path(unit.path)
        seen: set[str] = set()
        if p.is_dir():
            yield from self._read_files(p, unit, seen)
        elif p.suffix == ".parquet":
            yield from self._read_parquet(p, unit)
            return  # the parquet is its own status record
        else:
            yield from self._read_tar(p, unit, seen)
        yield from self._failed_downloads(p.with_suffix(".parquet"), seen)

    # ---- the three layouts ------------------------------------------------------------------------------------
    def _read_tar(self, path: Path, unit: Unit, seen: set) -> Iterator[Example | Rejected]:
        try:
            tf = tarfile.open(path, mode="r|*")
        except (tarfile.TarError, OSError) as e:
            yield Rejected(path.name, "unreadable_file", f"{path}: {e}")
            return
        group: dict[str, bytes] = {}
        current = None
        try:
            with tf:
                for m in tf:
                    key, _, ext = m.name.rpartition(".")
                    if not m.isfile():
                        yield Rejected(m.name, "bad_tar_member", f"{m.name}: not a regular file (link or device)")
                        continue
                    if m.name.startswith("/") or ".." in Path(m.name).parts:
                        yield Rejected(m.name, "bad_tar_member", f"{m.name}: absolute or parent-relative path")
                        continue
                    if key != current and current is not None:
                        yield from self._emit(current, group, unit, seen)
                        group = {}
                    current = key
                    group["." + ext.lower()] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            if current is not None:
                seen.add(Path(current).name)
                yield Rejected(Path(current).name, "truncated_tar", f"{path}: {e}")
            current = None
        if current is not None:
            yield from self._emit(current, group, unit, seen)

    def _read_files(self, folder: Path, unit: Unit, seen: set) -> Iterator[Example | Rejected]:
        stems: dict[str, dict[str, Path]] = {}
        for f in sorted(folder.iterdir()):
            if f.is_file():
                stems.setdefault(f.stem, {})[f.suffix.lower()] = f
        for key, files in stems.items():
            try:
                data = {ext: f.read_bytes() for ext, f in files.items()}
            except OSError as e:
                yield Rejected(key, "unreadable_file", f"{folder / key}: {e}")
                continue
            yield from self._emit(str(folder / key), data, unit, seen)

    def _read_parquet(self, path: Path, unit: Unit) -> Iterator[Example | Rejected]:
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - an unreadable shard is reported
            yield Rejected(path.name, "unreadable_file", f"{path}: {type(e).__name__}: {e}")
            return
        col = next((c for c in ("jpg", "png", "webp") if c in pf.schema_arrow.names), None)
        if col is None:
            yield Rejected(path.name, "missing_columns", f"{path}: no jpg/png/webp image column")
            return
        try:
            for batch in pf.iter_batches(batch_size=256):
                for r in batch.to_pylist():
                    key = str(r.get("key") or "")
                    img = r.pop(col, None)
                    yield from self._emit_meta(key, r, img, r.get("caption"), unit, f"{path}:{key}")
        except OSError as e:
            yield Rejected(path.name, "unreadable_file", f"{path}: {e}")

    # ---- one sample ------------------------------------------------------------------------------------------
    def _emit(self, key: str, files: dict, unit: Unit, seen: set) -> Iterator[Example | Rejected]:
        name = Path(key).name
        seen.add(name)
        meta = {}
        if ".json" in files:
            try:
                meta = json.loads(files[".json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield Rejected(name, "bad_metadata", f"{key}.json: {e}")
                return
        img = next((files[e] for e in IMAGE_EXTS if e in files), None)
        caption = meta.get("caption")
        if ".txt" in files:
            try:  # img2dataset writes UTF-8: anything else is a corrupt caption, not one to guess at
                caption = files[".txt"].decode("utf-8")
            except UnicodeDecodeError as e:
                yield Rejected(name, "bad_text", f"{key}.txt is not UTF-8: {e}")
                return
        yield from self._emit_meta(name, meta, img, caption, unit, f"{unit.path}:{key}")

    def _emit_meta(self, name: str, meta: dict, img: bytes | None, caption, unit: Unit,
                   where: str) -> Iterator[Example | Rejected]:
        bad = self._metadata_reject(meta)
        if bad:
            yield Rejected(name, *bad)
            return
        if img is None:  # an empty image file is not missing: decoding rejects it as bad_image
            yield Rejected(name, "missing_file", f"{where}: no image ({', '.join(IMAGE_EXTS)})")
            return
        keep = {k: meta.get(k) for k in ("url", "key", "width", "height", "original_width", "original_height",
                                         "sha256", "LICENSE") if meta.get(k) is not None}
        for k in ("aesthetic", "similarity", "punsafe"):
            if field(meta, k) is not None:
                keep[k] = field(meta, k)
        yield Example(key=name, text=caption, image=img, meta={"caption": caption, "path": where, **keep})

    def _metadata_reject(self, meta: dict) -> tuple[str, str] | None:
        o = self.opts
        if meta.get("status", "success") != "success":
            return "download_failed", str(meta.get("error_message") or meta.get("status"))
        tag = str(field(meta, "nsfw") or "").upper()
        if (o.drop_nsfw and tag == "NSFW") or (o.drop_unsure and tag == "UNSURE"):
            return "nsfw", f"NSFW column says {tag}"
        punsafe = field(meta, "punsafe")
        if o.max_punsafe is not None and punsafe is not None and punsafe > o.max_punsafe:
            return "nsfw", f"punsafe {punsafe:.3f} > {o.max_punsafe}"
        pw = field(meta, "pwatermark")
        if o.max_pwatermark is not None and pw is not None and pw > o.max_pwatermark:
            return "watermark", f"pwatermark {pw:.3f} > {o.max_pwatermark}"
        if o.min_aesthetic is not None:
            a = field(meta, "aesthetic")
            if a is None or a < o.min_aesthetic:
                return "low_aesthetic", f"aesthetic score {a} < {o.min_aesthetic}"
        sim = field(meta, "similarity")
        if o.min_similarity is not None and (sim is None or sim < o.min_similarity):
            return "low_similarity", f"similarity {sim} < {o.min_similarity}"
        w, h = field(meta, "width"), field(meta, "height")
        if o.min_side is not None and w and h and min(w, h) < o.min_side:
            return "image_too_small", f"{w}x{h} < {o.min_side} px"
        if o.max_aspect is not None and w and h and max(w, h) / max(1, min(w, h)) > o.max_aspect:
            return "bad_aspect", f"{w}x{h} aspect > {o.max_aspect}"
        return None

    def _failed_downloads(self, pq_path: Path, seen: set) -> Iterator[Rejected]:
        """img2dataset writes failed URLs only to the shard's parquet: count them so nothing vanishes."""
        if not pq_path.exists():
            return
        try:
            t = pq.read_table(pq_path, columns=["key", "status", "error_message"])
        except Exception as e:  # noqa: BLE001 - any unreadable sidecar is reported, not fatal
            yield Rejected(pq_path.name, "bad_metadata", f"{pq_path}: {e}")
            return
        for key, status, err in zip(*(t.column(c).to_pylist() for c in ("key", "status", "error_message"))):
            if key in seen:
                continue
            if status != "success":
                yield Rejected(str(key), "download_failed", str(err or status))
            else:  # listed as downloaded, but the shard has no files for it
                yield Rejected(str(key), "missing_file", f"{pq_path.name} lists {key} as downloaded; the shard lacks it")


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    return os.path.getsize(p)


def _has_images(p: Path) -> bool:
    try:
        return any(c in pq.ParquetFile(p).schema_arrow.names for c in ("jpg", "png", "webp"))
    except Exception:  # noqa: BLE001 - not a parquet we can read: not a shard
        return False


def _is_shard(p: Path) -> bool:
    return p.suffix == ".tar" or (p.suffix == ".parquet" and _has_images(p))
