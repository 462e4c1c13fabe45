"""``decontaminate``: reject training examples that contain evaluation data (AR-Omni is evaluated on LibriSpeech
test-clean, VCTK and MS-COCO 2014; its training data includes MLS English — LibriVox audiobooks, LibriSpeech's own
source — and LAION, which holds COCO's web images).

Evaluation sets are read in their published layouts (``kind``):
- ``librispeech``: ``<path>/<subset>/<spk>/<chapter>/<spk>-<chapter>.trans.txt`` (``path`` is the ``LibriSpeech``
  folder, or a subset folder itself); item = utterance id.
- ``vctk``: ``<path>/txt/p*/p*_*.txt`` (one sentence per file); item = file stem (``p225_001``).
- ``coco_captions``: ``<path>/annotations/captions_val2014.json`` (or the json itself);
  item = ``caption <id> (image <id>)``.
- ``coco_karpathy``: Karpathy's ``dataset_coco.json`` (``<path>`` or ``<path>/dataset_coco.json``), ``splits``
  (default test); item = ``<filename> sent <sentid>``.
- ``coco_images``: ``<path>/val2014/*.jpg`` (or the folder of jpgs itself); item = file name.
- ``txt``: a file (or a folder of ``*.txt``), one item per non-empty line; item = ``<file>:<line>``.
- ``jsonl``: a file (or a folder of ``*.jsonl``), the ``field`` of each record; item = its ``id`` or ``<file>:<line>``.

Text rule (GPT-3 / OLMo style): texts are normalised (NFKC, lower case, punctuation and extra spaces out) and split in
words; an evaluation item of >= ``ngram`` words contaminates a training text that shares one word ``ngram``-gram with
it; a shorter item (most captions, VCTK sentences) contaminates a training text that is the same text after
normalisation. Every text field is checked (text, transcript, caption, each dialog turn). Images: a training image
whose 64-bit perceptual hash is within ``max_hamming`` bits of an evaluation image's. The index is built once per
process (a broadcast set) and shared by every unit in it.
A hit rejects the example with reason ``eval_contamination`` naming the set and the item; the hit is also counted per
set in stats. A set that is missing or malformed raises ``EvalSetError`` (a ValueError) naming its key and path.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Literal

from pydantic import Field, model_validator

from aromni.pipeline.steps.base import register_step
from aromni.pipeline.steps.filters.base import FilterOptions, FilterStep, example_texts
from aromni.pipeline.steps.filters.fingerprints import hamming, image_chunk_keys, image_phash, normalise_text
from aromni.pipeline.steps.text import TextError
from aromni.registry import StrictOptions

REASON = "eval_contamination"
KINDS = ("librispeech", "vctk", "coco_captions", "coco_karpathy", "coco_images", "txt", "jsonl")


class EvalSetError(ValueError):
    """A configured evaluation set that cannot be read; the message names the recipe key and the path."""


class EvalSet(StrictOptions):
    kind: Literal["librispeech", "vctk", "coco_captions", "coco_karpathy", "coco_images", "txt", "jsonl"]
    path: str = Field(description="the set's folder (or file) in its published layout, relative to data_root")
    name: str | None = Field(None, description="what rejects call it; default: the kind")
    subsets: list[str] = Field(["test-clean"], description="librispeech: subset folders")
    splits: list[str] = Field(["test"], description="coco_karpathy: Karpathy splits")
    field: str = Field("text", description="jsonl: the record field holding the text")

    @property
    def label(self) -> str:
        return self.name or self.kind


class DecontaminateOptions(FilterOptions):
    sets: list[EvalSet] = Field(min_length=1, description="evaluation sets in their published layouts")
    ngram: int = Field(13, ge=1, description="word n-gram size (GPT-3, OLMo: 13)")
    normalise: list[Literal["nfkc", "lower", "punctuation", "digits", "whitespace"]] = Field(
        ["nfkc", "lower", "punctuation", "whitespace"])
    max_hamming: int = Field(4, ge=0, le=31, description="images: pHash bits within which an image matches")
    images: bool = Field(True, description="check images against image sets")
    cache_dir: str | None = Field(None, description="where image sets' hashes are kept between processes; default "
                                  "$AROMNI_CACHE/decontaminate or ~/.cache/aromni/decontaminate")
    cache: bool = Field(True, description="false: hash image sets afresh in every process")
    texts: bool = Field(True, description="check texts against text sets")

    @model_validator(mode="after")
    def _names(self):
        labels = [s.label for s in self.sets]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"evaluation sets need distinct names (give `name:`), repeated: {dup}")
        return self


# ---- loaders: (item id, text) or (item id, image path) per published layout ------------------------------------------
KEY = "decontaminate"  # what messages call the section; the step passes its own key (steps[k].options)


def _where(i: int, key: str | None = None) -> str:
    return f"{key or KEY}.sets[{i}].path"


def _need(paths: list[str], i: int, root: str, what: str) -> list[str]:
    if not paths:
        raise EvalSetError(f"{_where(i)}: no {what} under {root}")
    return sorted(paths)


def _read_json(path: str, i: int):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalSetError(f"{_where(i)}: cannot read {path}: {e}") from None


def _librispeech(s: EvalSet, root: str, i: int):
    bases = [os.path.join(root, sub) for sub in s.subsets if os.path.isdir(os.path.join(root, sub))] or [root]
    files = _need([f for b in bases for f in glob.glob(os.path.join(b, "*", "*", "*.trans.txt"))], i, root,
                  f"<subset>/<spk>/<chapter>/*.trans.txt (subsets {s.subsets})")
    for fn in files:
        with open(fn, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    utt, _, text = line.strip().partition(" ")
                    if not text:
                        raise EvalSetError(f"{_where(i)}: {fn}:{n}: expected '<utterance id> <TEXT>'")
                    yield utt, text


def _vctk(s: EvalSet, root: str, i: int):
    for fn in _need(glob.glob(os.path.join(root, "txt", "p*", "p*_*.txt")), i, root, "txt/p*/p*_*.txt"):
        with open(fn, encoding="utf-8", errors="replace") as f:
            yield os.path.splitext(os.path.basename(fn))[0], f.read().strip()


def _coco_captions(s: EvalSet, root: str, i: int):
    fn = root if os.path.isfile(root) else os.path.join(root, "annotations", "captions_val2014.json")
    if not os.path.isfile(fn):
        raise EvalSetError(f"{_where(i)}: {fn} not found (expected annotations/captions_val2014.json)")
    data = _read_json(fn, i)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise EvalSetError(f"{_where(i)}: {fn} has no 'annotations' list (not a COCO captions file)")
    for a in data["annotations"]:
        if not isinstance(a, dict) or not isinstance(a.get("caption"), str):
            raise EvalSetError(f"{_where(i)}: {fn}: an annotation without a 'caption' string: {str(a)[:80]}")
        yield f"caption {a.get('id')} (image {a.get('image_id')})", a["caption"]


def _coco_karpathy(s: EvalSet, root: str, i: int):
    fn = root if os.path.isfile(root) else os.path.join(root, "dataset_coco.json")
    if not os.path.isfile(fn):
        raise EvalSetError(f"{_where(i)}: {fn} not found (expected Karpathy's dataset_coco.json)")
    data = _read_json(fn, i)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise EvalSetError(f"{_where(i)}: {fn} has no 'images' list (not Karpathy's dataset_coco.json)")
    for im in data["images"]:
        try:
            if im["split"] not in s.splits:
                continue
            for sent in im["sentences"]:
                yield f"{im['filename']} sent {sent['sentid']}", sent.get("raw") or " ".join(sent["tokens"])
        except (KeyError, TypeError) as e:
            raise EvalSetError(f"{_where(i)}: {fn}: an image entry without {e} (split/filename/sentences)") from None


def _coco_images(s: EvalSet, root: str, i: int):
    base = os.path.join(root, "val2014") if os.path.isdir(os.path.join(root, "val2014")) else root
    for fn in _need(glob.glob(os.path.join(base, "*.jpg")), i, root, "val2014/*.jpg"):
        yield os.path.basename(fn), fn


def _lines(s: EvalSet, root: str, i: int, ext: str):
    files = [root] if os.path.isfile(root) else _need(glob.glob(os.path.join(root, f"*.{ext}")), i, root, f"*.{ext}")
    for fn in files:
        with open(fn, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield fn, n, line


def _txt(s: EvalSet, root: str, i: int):
    for fn, n, line in _lines(s, root, i, "txt"):
        yield f"{os.path.basename(fn)}:{n}", line.strip()


def _jsonl(s: EvalSet, root: str, i: int):
    for fn, n, line in _lines(s, root, i, "jsonl"):
        try:
            rec = json.loads(line)
            text = rec[s.field]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise EvalSetError(f"{_where(i)}: {fn}:{n}: not a JSON record with field {s.field!r} ({e})") from None
        yield str(rec.get("id", f"{os.path.basename(fn)}:{n}")), str(text)


LOADERS: dict[str, Callable] = {"librispeech": _librispeech, "vctk": _vctk, "coco_captions": _coco_captions,
                                "coco_karpathy": _coco_karpathy, "coco_images": _coco_images, "txt": _txt,
                                "jsonl": _jsonl}
IMAGE_KINDS = {"coco_images"}


# ---- the index (broadcast set) -------------------------------------------------------------------------------------
def _h(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def word_ngrams(words: list[str], n: int) -> list[int]:
    return [_h(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)]


@dataclass
class EvalIndex:
    ngram: int
    normalise: tuple[str, ...]
    max_hamming: int
    grams: dict[int, tuple[str, str]] = field(default_factory=dict)     # n-gram hash -> (set, item)
    full: dict[int, tuple[str, str]] = field(default_factory=dict)      # short item's text hash -> (set, item)
    image_keys: dict[int, list[tuple[int, str, str]]] = field(default_factory=dict)  # chunk key -> [(phash, set, item)]
    sizes: dict[str, int] = field(default_factory=dict)                 # set -> items

    def add_text(self, label: str, item: str, text: str) -> None:
        words = normalise_text(text, self.normalise).split()
        if not words:
            return
        if len(words) < self.ngram:
            self.full.setdefault(_h(" ".join(words)), (label, item))
        else:
            for g in word_ngrams(words, self.ngram):
                self.grams.setdefault(g, (label, item))

    def add_image(self, label: str, item: str, h: int) -> None:
        for k in image_chunk_keys(h, self.max_hamming):
            self.image_keys.setdefault(k, []).append((h, label, item))

    def match_text(self, text: str) -> tuple[str, str] | None:
        words = normalise_text(text, self.normalise).split()
        if not words:
            return None
        hit = self.full.get(_h(" ".join(words)))
        if hit:
            return hit
        for g in word_ngrams(words, self.ngram):
            if g in self.grams:
                return self.grams[g]
        return None

    def match_image(self, h: int) -> tuple[str, str, int] | None:
        best = None
        for k in image_chunk_keys(h, self.max_hamming):
            for eh, label, item in self.image_keys.get(k, ()):
                d = hamming(h, eh)
                if d <= self.max_hamming and (best is None or (d, label, item) < (best[2], best[0], best[1])):
                    best = (label, item, d)
        return best


def eval_set_problems(o: DecontaminateOptions, resolve: Callable[[str], object] = str, key: str = KEY) -> list[str]:
    """Cheap check for the recipe check (exit 2): every set's path exists. One message per missing set."""
    out = []
    for i, s in enumerate(o.sets):
        where = str(resolve(s.path))
        if "://" in where:
            out.append(f"{_where(i, key)}: {where}: evaluation sets are read from local paths; copy the set "
                       f"(they are small) and name the local folder (evaluation set {s.label!r}, kind {s.kind})")
        elif not os.path.exists(where):
            out.append(f"{_where(i, key)}: {where} does not exist (evaluation set {s.label!r}, kind {s.kind})")
    return out


def check_eval_sets(o: DecontaminateOptions, resolve: Callable[[str], object] = str) -> None:
    """Raises EvalSetError naming the key and path of the first missing set."""
    problems = eval_set_problems(o, resolve)
    if problems:
        raise EvalSetError(problems[0])


def default_cache_dir() -> str:
    base = os.environ.get("AROMNI_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "aromni")
    return os.path.join(os.path.expanduser(base), "decontaminate")


def image_hashes(files: list[tuple[str, str]], i: int, cache_dir: str | None) -> list[tuple[str, int]]:
    """(item, pHash) of each (item, file). Hashing val2014 takes minutes, so the result is kept in ``cache_dir`` under
    a key of the files' names, sizes and mtimes (any change: hashed afresh); written atomically."""
    path = None
    if cache_dir:
        listing = [(item, os.path.getsize(f), os.stat(f).st_mtime_ns, os.path.abspath(f)) for item, f in files]
        key = hashlib.sha256(json.dumps(["phash-v1", listing]).encode()).hexdigest()[:32]
        path = os.path.join(os.path.expanduser(cache_dir), f"images-{key}.json")
        try:
            with open(path, encoding="utf-8") as fh:
                cached = json.load(fh)
            return [(item, int(h, 16)) for item, h in cached]
        except (OSError, ValueError, TypeError):
            pass
    out = []
    for item, f in files:
        try:
            with open(f, "rb") as fh:
                out.append((item, image_phash(fh.read())))
        except Exception as e:  # noqa: BLE001 - PIL raises many types
            raise EvalSetError(f"{_where(i)}: cannot read image {f}: {type(e).__name__}: {e}") from None
    if path:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump([(item, f"{h:016x}") for item, h in out], fh)
            os.replace(tmp, path)
        except OSError:  # a read-only cache costs time, not correctness
            pass
    return out


def build_index(o: DecontaminateOptions, resolve: Callable[[str], object] = str) -> EvalIndex:
    """Read every set (raising EvalSetError on a missing or malformed one) into one index."""
    check_eval_sets(o, resolve)
    idx = EvalIndex(o.ngram, tuple(o.normalise), o.max_hamming)
    cache_dir = (str(resolve(o.cache_dir)) if o.cache_dir else default_cache_dir()) if o.cache else None
    for i, s in enumerate(o.sets):
        root = str(resolve(s.path))
        n = 0
        if s.kind in IMAGE_KINDS:
            for item, h in image_hashes(list(LOADERS[s.kind](s, root, i)), i, cache_dir):
                idx.add_image(s.label, item, h)
                n += 1
        for item, value in (() if s.kind in IMAGE_KINDS else LOADERS[s.kind](s, root, i)):
            idx.add_text(s.label, item, value)
            n += 1
        if n == 0:
            raise EvalSetError(f"{_where(i)}: {root} holds no items (evaluation set {s.label!r}, kind {s.kind})")
        idx.sizes[s.label] = n
    return idx


_INDEXES: dict[str, EvalIndex] = {}


def shared_index(o: DecontaminateOptions, resolve: Callable[[str], object] = str) -> EvalIndex:
    """One index per process and configuration (every unit a worker runs shares it)."""
    key = json.dumps([o.model_dump(mode="json", exclude={"sources"}), [str(resolve(s.path)) for s in o.sets]],
                     sort_keys=True)
    if key not in _INDEXES:
        _INDEXES[key] = build_index(o, resolve)
    return _INDEXES[key]


@register_step
class DecontaminateStep(FilterStep):
    name = "decontaminate"
    Options = DecontaminateOptions

    def __init__(self, options, recipe=None):
        super().__init__(options, recipe)
        self.index = shared_index(self.opts, recipe.resolve if recipe is not None else str)

    @classmethod
    def path_problems(cls, opts, resolve, key: str) -> list[str]:
        missing = eval_set_problems(opts, resolve, key)
        if missing:
            return missing
        out = []  # each set read once (image sets listed, not hashed) so a malformed one stops the build before Ray
        for i, s in enumerate(opts.sets):
            try:
                if not any(True for _ in LOADERS[s.kind](s, str(resolve(s.path)), i)):
                    out.append(f"{_where(i, key)}: {resolve(s.path)} holds no items (evaluation set {s.label!r}, "
                               f"kind {s.kind})")
            except EvalSetError as e:
                out.append(str(e).replace(_where(i), _where(i, key), 1))
        return out

    def images(self, example, media: dict):
        if media.get("image") is not None:
            yield "image", media["image"]
        for i, m in enumerate(media.get("turns") or []):
            if m.get("image") is not None:
                yield f"turns[{i}].image", m["image"]

    def check(self, example, media: dict) -> None:
        o = self.opts
        if o.texts:
            for where, text in example_texts(example):
                hit = self.index.match_text(text)
                if hit:
                    self._reject(example, hit[0], f"{where} overlaps {hit[0]} item {hit[1]!r}")
        if o.images and self.index.image_keys:
            for where, im in self.images(example, media):
                h = image_phash(im)
                hit = self.index.match_image(h)
                if hit:
                    self._reject(example, hit[0], f"{where} matches {hit[0]} image {hit[1]!r} ({hit[2]} bits apart)")

    def _reject(self, example, label: str, message: str):
        self.stats.reject(REASON)
        self.stats[f"hits.{label}"] += 1
        example.meta["eval_contamination"] = message
        raise TextError(REASON, message)
