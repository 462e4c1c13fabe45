"""LAION image-text pairs as img2dataset writes them: webdataset tars, the ``files`` folders, or ``parquet`` output.

LAION metadata filters (aesthetic score, NSFW, CLIP similarity, size, aspect) apply to the columns img2dataset keeps
in each sample's ``.json`` (``--save_additional_columns``); names are matched case-insensitively and under the aliases
the LAION releases use (``aesthetic`` / ``AESTHETIC_SCORE``, ``original_width`` / ``WIDTH``, ...).
"""
from __future__ import annotations

import json
import tarfile
from typing import Iterator

import pyarrow.parquet as pq
from pydantic import Field

from aromni.io import paths
from aromni.pipeline.readers.base import Example, Reader, ReaderOptions, Rejected, Unit, register
from aromni.pipeline.readers.files import MemberTooLarge, member_problem, read_member
from aromni.pipeline.readers.parquet import open_parquet

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
    carries = frozenset({"text", "image"})
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
        self.require()
        p = self.path
        is_dir = not paths.has_magic(p) and paths.isdir(p)
        if is_dir and _is_files_folder(p):  # one files-format folder
            return [Unit(self.source, p, _size(p))]
        if not is_dir:
            units = [Unit(self.source, f, _size(f)) for f in self.files() if _is_shard(f)]
            if not units:
                _refuse_metadata([f for f in self.files() if paths.suffix(f) == ".parquet"], p)
            return units
        found: dict[str, str] = {}
        parquets = []
        for f, f_is_dir in paths.walk_entries(p, self.max_files):
            if not f_is_dir and paths.suffix(f) == ".tar":
                found.setdefault(f[: -len(".tar")], f)
            elif f_is_dir and paths.name(f).isdigit() and _is_files_folder(f):
                found.setdefault(f, f)
            elif not f_is_dir and paths.suffix(f) == ".parquet":
                parquets.append(f)
        for f in sorted(parquets):  # parquet output: only shards that are not a tar's / folder's sidecar
            if f[: -len(".parquet")] not in found and _has_images(f):
                found[f[: -len(".parquet")]] = f
        if not found:
            _refuse_metadata(parquets, p)
        return [Unit(self.source, f, _size(f)) for f in sorted(found.values())]

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        p = unit.path
        seen: set[str] = set()
        if paths.suffix(p) == ".parquet":
            yield from self._read_parquet(p, unit)
            return  # the parquet is its own status record
        if paths.suffix(p) != ".tar" and paths.isdir(p):
            yield from self._read_files(p, unit, seen)
            sidecar = f"{p}.parquet"
        else:
            yield from self._read_tar(p, unit, seen)
            sidecar = f"{p[: -len('.tar')] if p.endswith('.tar') else p}.parquet"
        yield from self._failed_downloads(sidecar, seen)

    # ---- the three layouts ------------------------------------------------------------------------------------
    def _read_tar(self, path: str, unit: Unit, seen: set) -> Iterator[Example | Rejected]:
        """Stream the shard's members (a gzip-compressed file named .tar too). A member is read only when it is a
        plain file within ``max_file_bytes`` (decided from its header; a compressed stream is read at most that far).
        A refused member is its sample's one reject: the sample is not also counted missing_file."""
        cap = self.opts.max_file_bytes
        raw = None
        try:
            raw = paths.open_input(path)
            tf = tarfile.open(fileobj=raw, mode="r|*")
        except (tarfile.TarError, OSError) as e:
            if raw is not None:
                raw.close()
            yield Rejected(paths.name(path), "unreadable_file", f"{path}: {e}")
            return
        group: dict[str, bytes] = {}
        refused: tuple[str, str] | None = None
        current = None
        try:
            with raw, tf:
                for m in tf:
                    key, _, ext = m.name.rpartition(".")
                    if key != current and current is not None:
                        yield from self._finish(current, group, refused, unit, seen)
                        group, refused = {}, None
                    current = key
                    problem = member_problem(m, cap)
                    if problem is None:
                        try:
                            group["." + ext.lower()] = read_member(tf, m, cap)
                        except MemberTooLarge as e:
                            problem = ("too_large", str(e))
                    if problem is not None and refused is None:
                        refused = problem
        except (tarfile.TarError, OSError, EOFError) as e:
            if current is not None:
                seen.add(paths.name(current))
                yield Rejected(paths.name(current), "truncated_tar", f"{path}: {e}")
            current = None
        if current is not None:
            yield from self._finish(current, group, refused, unit, seen)

    def _finish(self, key: str, group: dict, refused, unit: Unit, seen: set) -> Iterator[Example | Rejected]:
        if refused is not None:
            seen.add(paths.name(key))
            yield Rejected(paths.name(key), *refused)
            return
        yield from self._emit(key, group, unit, seen)

    def _read_files(self, folder: str, unit: Unit, seen: set) -> Iterator[Example | Rejected]:
        stems: dict[str, dict[str, str]] = {}
        for f, is_dir in paths.list_dir(folder):
            if not is_dir:
                stems.setdefault(paths.stem(f), {})[paths.suffix(f).lower()] = f
        for key, files in stems.items():
            try:
                data = {ext: paths.read_bytes(f, self.opts.max_file_bytes) for ext, f in files.items()}
            except paths.TooLarge as e:
                seen.add(key)
                yield Rejected(key, "too_large", str(e))
                continue
            except OSError as e:
                seen.add(key)
                yield Rejected(key, "unreadable_file", f"{paths.join(folder, key)}: {e}")
                continue
            yield from self._emit(paths.join(folder, key), data, unit, seen)

    def _read_parquet(self, path: str, unit: Unit) -> Iterator[Example | Rejected]:
        try:
            pf = open_parquet(path)
        except Exception as e:  # noqa: BLE001 - an unreadable shard is reported
            yield Rejected(paths.name(path), "unreadable_file", f"{path}: {type(e).__name__}: {e}")
            return
        col = next((c for c in ("jpg", "png", "webp") if c in pf.schema_arrow.names), None)
        if col is None:
            yield Rejected(paths.name(path), "missing_columns", f"{path}: no jpg/png/webp image column")
            return
        cap = self.opts.max_file_bytes
        try:
            for batch in pf.iter_batches(batch_size=64):
                for r in batch.to_pylist():
                    key = str(r.get("key") or "")
                    img = r.pop(col, None)
                    if img is not None and len(img) > cap:
                        yield Rejected(key, "too_large", f"{path}:{key}: image of {len(img)} bytes > "
                                                         f"max_file_bytes {cap}")
                        continue
                    yield from self._emit_meta(key, r, img, r.get("caption"), unit, f"{path}:{key}")
        except OSError as e:
            yield Rejected(paths.name(path), "unreadable_file", f"{path}: {e}")

    # ---- one sample ------------------------------------------------------------------------------------------
    def _emit(self, key: str, files: dict, unit: Unit, seen: set) -> Iterator[Example | Rejected]:
        name = paths.name(key)
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
            return _status_reason(meta.get("status")), str(meta.get("error_message") or meta.get("status"))
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

    def _failed_downloads(self, pq_path: str, seen: set) -> Iterator[Rejected]:
        """img2dataset writes failed URLs only to the shard's parquet: count them so nothing vanishes."""
        try:
            if not paths.isfile(pq_path):
                return
            t = pq.read_table(paths.open_input(pq_path), columns=["key", "status", "error_message"])
        except Exception as e:  # noqa: BLE001 - any unreadable sidecar is reported, not fatal
            yield Rejected(paths.name(pq_path), "bad_metadata", f"{pq_path}: {e}")
            return
        for key, status, err in zip(*(t.column(c).to_pylist() for c in ("key", "status", "error_message"))):
            if key in seen:
                continue
            if status != "success":
                yield Rejected(str(key), _status_reason(status), str(err or status))
            else:  # listed as downloaded, but the shard has no files for it
                yield Rejected(str(key), "missing_file", f"{paths.name(pq_path)} lists {key} as downloaded; the "
                                                         f"shard lacks it")


# img2dataset's statuses kept as the reason ("failed_to_resize" is not a failed download); anything else it may
# write is a failed download.
STATUSES = {"failed_to_download": "download_failed", "failed_to_resize": "failed_to_resize"}


def _status_reason(status) -> str:
    return STATUSES.get(str(status), "download_failed")


def _is_files_folder(p: str) -> bool:
    return paths.name(p).isdigit() and any(paths.suffix(f) == ".json" for f, d in paths.list_dir(p) if not d)


def _size(p: str) -> int:
    if paths.suffix(p) not in (".tar", ".parquet") and paths.isdir(p):
        return sum(paths.size(f) for f, d in paths.list_dir(p) if not d)
    return paths.size(p)


def _has_images(p: str) -> bool:
    try:
        return any(c in open_parquet(p).schema_arrow.names for c in ("jpg", "png", "webp"))
    except Exception:  # noqa: BLE001 - not a parquet we can read: not a shard
        return False


def _is_shard(p: str) -> bool:
    return paths.suffix(p) == ".tar" or (paths.suffix(p) == ".parquet" and _has_images(p))


def _is_metadata(p: str) -> bool:
    """A LAION metadata parquet (URL, TEXT, ...: img2dataset's input), not an img2dataset output shard."""
    try:
        names = {c.lower() for c in open_parquet(p).schema_arrow.names}
    except Exception:  # noqa: BLE001
        return False
    return "url" in names and ("text" in names or "caption" in names) and not names & {"jpg", "png", "webp"}


IMG2DATASET = ("img2dataset --url_list {src} --input_format parquet --url_col URL --caption_col TEXT "
               "--output_format webdataset --output_folder laion-out --image_size 256 --resize_mode center_crop "
               "--save_additional_columns '[\"similarity\",\"punsafe\",\"pwatermark\",\"AESTHETIC_SCORE\"]'")


def _refuse_metadata(parquets: list[str], path: str) -> None:
    """No shards, but LAION metadata: say what it is and how to get the images, instead of 'no input files'."""
    meta = [f for f in parquets[:50] if _is_metadata(f)]
    if meta:
        src = path if len(meta) > 1 else meta[0]
        raise paths.InputError(
            f"{path}: this is LAION metadata (URL/TEXT columns, no images) - the input of img2dataset, not its "
            f"output. Download the images first, then point the source at the output folder:\n  "
            + IMG2DATASET.format(src=src))
