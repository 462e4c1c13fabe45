"""LAION image-text pairs as img2dataset writes them (webdataset output)."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
from pydantic import Field

from aromni.pipeline.readers.base import Example, Reader, ReaderOptions, Rejected, Unit, register

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


class LaionOptions(ReaderOptions):
    min_aesthetic: float | None = Field(None, description="keep aesthetic >= this (paper: 5.0 for LAION-Aesthetics)")
    max_punsafe: float | None = Field(None, description="drop NSFW: punsafe above this")
    drop_nsfw: bool = Field(True, description="drop rows whose NSFW column says NSFW/UNLIKELY is kept")
    min_similarity: float | None = Field(None, description="CLIP similarity lower bound")
    min_side: int | None = Field(None, description="original_width/height lower bound")
    max_aspect: float | None = Field(None, description="max(w,h)/min(w,h) upper bound")


@register
class LaionReader(Reader):
    name = "laion"
    layout_doc = """img2dataset webdataset output, one unit per tar:
    {shard:05d}.tar        members {key}.jpg, {key}.txt (caption), {key}.json (url, caption, key, status,
                           error_message, width, height, original_width, original_height, sha256, and any LAION
                           metadata columns kept with --save_additional_columns: NSFW, similarity, punsafe, aesthetic)
    {shard:05d}.parquet    (optional) one row per attempted URL with status; failed downloads there are counted
    {shard:05d}_stats.json (optional) img2dataset's shard statistics
    path: the folder, a glob such as laion/*.tar, or one tar."""
    Options = LaionOptions
    patterns = ("*.tar",)

    def _metadata_reject(self, meta: dict) -> tuple[str, str] | None:
        o = self.opts
        if meta.get("status", "success") != "success":
            return "download_failed", str(meta.get("error_message") or meta.get("status"))
        if o.drop_nsfw and str(meta.get("NSFW", "")).upper() == "NSFW":
            return "nsfw", "NSFW column says NSFW"
        if o.max_punsafe is not None and meta.get("punsafe") is not None and meta["punsafe"] > o.max_punsafe:
            return "nsfw", f"punsafe {meta['punsafe']:.3f} > {o.max_punsafe}"
        if o.min_aesthetic is not None:
            a = meta.get("aesthetic")
            if a is None or a < o.min_aesthetic:
                return "low_aesthetic", f"aesthetic {a} < {o.min_aesthetic}"
        if o.min_similarity is not None and (meta.get("similarity") or 0.0) < o.min_similarity:
            return "low_similarity", f"similarity {meta.get('similarity')} < {o.min_similarity}"
        w, h = meta.get("original_width") or meta.get("width"), meta.get("original_height") or meta.get("height")
        if o.min_side is not None and w and h and min(w, h) < o.min_side:
            return "image_too_small", f"{w}x{h} < {o.min_side}"
        if o.max_aspect is not None and w and h and max(w, h) / max(1, min(w, h)) > o.max_aspect:
            return "bad_aspect", f"{w}x{h} aspect > {o.max_aspect}"
        return None

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        seen: set[str] = set()
        try:
            tf = tarfile.open(unit.path, mode="r|*")
        except (tarfile.TarError, OSError) as e:
            yield Rejected(Path(unit.path).name, "unreadable_file", f"{unit.path}: {e}")
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
                yield Rejected(current, "truncated_tar", f"{unit.path}: {e}")
            current = None
        if current is not None:
            yield from self._emit(current, group, unit, seen)
        yield from self._failed_downloads(unit, seen)

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
        bad = self._metadata_reject(meta)
        if bad:
            yield Rejected(name, *bad)
            return
        img = next((files[e] for e in IMAGE_EXTS if e in files), None)
        if img is None:
            yield Rejected(name, "missing_file", f"{key}: no image member ({', '.join(IMAGE_EXTS)})")
            return
        caption = files[".txt"].decode("utf-8", errors="replace") if ".txt" in files else meta.get("caption")
        keep = {k: meta.get(k) for k in ("url", "key", "width", "height", "original_width", "original_height",
                                         "sha256", "aesthetic", "similarity", "LICENSE") if meta.get(k) is not None}
        yield Example(key=name, text=caption, image=img,
                      meta={"caption": caption, "path": f"{unit.path}:{key}", **keep})

    def _failed_downloads(self, unit: Unit, seen: set) -> Iterator[Rejected]:
        """img2dataset writes failed URLs only to the shard's parquet: count them so nothing vanishes."""
        pq_path = Path(unit.path).with_suffix(".parquet")
        if not pq_path.exists():
            return
        try:
            t = pq.read_table(pq_path, columns=["key", "status", "error_message"])
        except Exception as e:  # noqa: BLE001 - any unreadable sidecar is reported, not fatal
            yield Rejected(pq_path.name, "bad_metadata", f"{pq_path}: {e}")
            return
        for key, status, err in zip(*(t.column(c).to_pylist() for c in ("key", "status", "error_message"))):
            if status != "success" and key not in seen:
                yield Rejected(str(key), "download_failed", str(err or status))
