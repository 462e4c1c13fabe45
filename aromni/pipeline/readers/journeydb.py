"""JourneyDB (Midjourney images with prompts and captions) as published on the HF Hub (JourneyDB/JourneyDB)."""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
from typing import Iterator, Literal

from pydantic import Field

from aromni.io import paths
from aromni.pipeline.readers.base import Example, Reader, ReaderOptions, Rejected, Unit, register
from aromni.pipeline.readers.files import MemberTooLarge, member_problem, read_member, unsafe_name

ANNOTATIONS = ("train_anno_realease_repath.jsonl", "valid_anno_repath.jsonl")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
MAX_LINE = 1 << 20  # an annotation line is ~2 KB: a longer one is broken, not something to hold in memory
_FOLDER = re.compile(rb'"img_path"\s*:\s*"(?:\./)?([^"/]+)/')
# Midjourney parameters at the end of a prompt ("--ar 16:9 --v 5 --q 2"): not a description of the picture.
_PARAMS = re.compile(r"\s+--?[a-z]+(?:\s+(?!--)[^\s]+)?", re.IGNORECASE)


def strip_params(prompt: str) -> str:
    i = prompt.find(" --")
    return prompt if i < 0 else prompt[:i] + _PARAMS.sub("", prompt[i:]).rstrip()


class JourneyDBOptions(ReaderOptions):
    text: Literal["caption_or_prompt", "caption", "prompt"] = Field(
        "caption_or_prompt", description="Task2.Caption, else the prompt; or only one of them (missing: rejected)")
    strip_prompt_params: bool = Field(True, description="remove Midjourney flags (--ar 16:9 --v 5) from prompts")
    annotations: str | None = Field(None, description="annotation file (default: the train/valid jsonl, or its .tgz, "
                                                      "found under path)")


@register
class JourneyDBReader(Reader):
    name = "journeydb"
    layout_doc = """JourneyDB (HF JourneyDB/JourneyDB), data/train (or data/valid):
    train_anno_realease_repath.jsonl  one JSON per line: img_path ("./000/xxx.jpg"), prompt,
                                      Task1{Style, Content, Atmosphere, Others}, Task2{Caption} (may be missing),
                                      Task3{...}; the .jsonl.tgz as downloaded works too (extracting it is faster)
    imgs/000.tgz ... imgs/199.tgz     image archives holding 000/xxx.jpg ...
    One unit per image archive; its annotations are the jsonl lines under the same folder. The caption is Task2.Caption,
    else the prompt (option text); meta.text_field records which. Images without a line are rejected as
    missing_annotation, lines without an image as missing_file.
    path: the data/train folder (or the imgs folder, or one archive, with options.annotations)."""
    Options = JourneyDBOptions
    carries = frozenset({"text", "image"})
    patterns = ("*.tgz", "*.tar.gz", "*.tar")

    def files(self) -> list[str]:
        return [f for f in super().files() if not _is_annotation_archive(f)]

    def _annotation_file(self) -> str:
        base = self.path if paths.isdir(self.path) else paths.parent(self.path)
        if self.opts.annotations:
            return paths.resolve(self.opts.annotations, base)
        roots = [self.path] if paths.isdir(self.path) else []
        roots += [paths.parent(self.path), paths.parent(paths.parent(self.path))]
        for root in roots:
            for name in ANNOTATIONS:
                for cand in (paths.join(root, name), paths.join(root, f"{name}.tgz")):
                    if paths.exists(cand):
                        return cand
        raise FileNotFoundError(f"no {ANNOTATIONS[0]} (or .tgz) under {self.path}; set options.annotations")

    def _lines(self, anno: str) -> Iterator[bytes]:
        """The annotation file's lines (each at most MAX_LINE bytes: longer ones come back cut, flagged by length)."""
        with paths.open_input(anno) as raw:
            if paths.suffix(anno) in (".tgz", ".gz", ".tar"):
                with tarfile.open(fileobj=raw, mode="r|*") as tf:
                    for m in tf:
                        if m.isreg() and not m.issparse() and m.name.endswith(".jsonl"):
                            yield from _bounded_lines(tf.extractfile(m))
                            return
                raise FileNotFoundError(f"{anno}: no .jsonl member")
            yield from _bounded_lines(raw)

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        folder = paths.name(unit.path).split(".")[0]  # imgs/000.tgz -> "000"
        try:
            anno_path = self._annotation_file()
            annotations, broken = self._annotations_for(anno_path, folder, self._is_first(unit))
        except (FileNotFoundError, OSError, tarfile.TarError) as e:
            yield Rejected(paths.name(unit.path), "missing_annotation", str(e))
            return
        yield from broken
        seen: set[str] = set()
        cap = self.opts.max_file_bytes
        try:
            with paths.open_input(unit.path) as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
                for m in tf:
                    name = m.name.removeprefix("./")
                    if paths.suffix(name).lower() not in IMAGE_EXTS:
                        continue
                    problem = member_problem(m, cap)
                    if problem is not None:
                        seen.add(name)  # the image's one reject: not also missing_file for its annotation
                        yield Rejected(name, *problem)
                        continue
                    seen.add(name)
                    rec = annotations.get(name)
                    if rec is None:
                        yield Rejected(name, "missing_annotation", f"{unit.path}:{name} has no line in "
                                                                   f"{paths.name(anno_path)}")
                        continue
                    try:
                        data = read_member(tf, m, cap)
                    except MemberTooLarge as e:  # a compressed stream that inflates past its header's size
                        yield Rejected(name, "too_large", str(e))
                        continue
                    yield from self._example(name, rec, data, unit)
        except (tarfile.TarError, OSError, EOFError) as e:
            yield Rejected(paths.name(unit.path), "truncated_tar", f"{unit.path}: {e}")
        for name in sorted(set(annotations) - seen):
            yield Rejected(name, "missing_file", f"{name} is annotated but not in {unit.path}")

    def _is_first(self, unit: Unit) -> bool:
        """Lines that name no archive are counted once, by the first archive's unit."""
        try:
            first = self.files()[:1]
        except OSError:
            return False
        return bool(first) and first[0] == unit.path

    def _annotations_for(self, anno: str, folder: str, first: bool) -> tuple[dict[str, dict], list[Rejected]]:
        """Only this archive's lines are parsed: a cheap byte test skips the other ~99.5% of the file. Lines that are
        not JSON (or name a path outside the archive) are this unit's bad_metadata / bad_path when they mention its
        folder, the first unit's when they name none."""
        needle = f"/{folder}/".encode()
        out: dict[str, dict] = {}
        bad: list[Rejected] = []
        for line in self._lines(anno):
            if not line.strip():
                continue
            mine = needle in line
            named = _FOLDER.search(line)
            if not mine and not (first and named is None):
                continue
            key = "annotation:" + hashlib.sha1(line).hexdigest()[:16]
            if len(line) > MAX_LINE:
                bad.append(Rejected(key, "bad_metadata", f"{paths.name(anno)}: a line over {MAX_LINE} bytes"))
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                if mine or named is None:
                    bad.append(Rejected(key, "bad_metadata", f"{paths.name(anno)}: line is not JSON: {e}"))
                continue
            raw_name = str(rec.get("img_path", ""))
            name = raw_name.removeprefix("./")
            if not mine:
                if not raw_name:
                    bad.append(Rejected(key, "bad_metadata", f"{paths.name(anno)}: line has no img_path"))
                continue
            if unsafe_name(name):
                bad.append(Rejected(name, "bad_path", f"img_path {raw_name!r} leaves the archive"))
                continue
            if name.split("/", 1)[0] == folder:
                out[name] = rec
        return out, bad

    def _example(self, name: str, rec: dict, img: bytes, unit: Unit) -> Iterator[Example | Rejected]:
        caption = ((rec.get("Task2") or {}).get("Caption") or "").strip()
        prompt = str(rec.get("prompt") or "").strip()
        if self.opts.strip_prompt_params:
            prompt = strip_params(prompt)
        mode = self.opts.text
        if caption and mode != "prompt":
            text, used = caption, "Task2.Caption"
        elif prompt and mode != "caption":
            text, used = prompt, "prompt"
        elif mode == "caption":
            yield Rejected(name, "missing_caption", "no Task2.Caption (options.text: caption)")
            return
        else:
            yield Rejected(name, "empty_text", f"no {'prompt' if mode == 'prompt' else 'caption or prompt'}")
            return
        meta = {"caption": text, "text_field": used, "prompt": rec.get("prompt"), "path": f"{unit.path}:{name}"}
        style = (rec.get("Task1") or {}).get("Style")
        if style:
            meta["style"] = style
        yield Example(key=name, text=text, image=img, meta=meta)


def _is_annotation_archive(p: str) -> bool:
    return "anno" in paths.name(p)


def _bounded_lines(f) -> Iterator[bytes]:
    """Lines of a binary stream, none held longer than MAX_LINE + 1 bytes (the rest of an over-long line is
    skipped), so a 10 GB file without a newline cannot fill a worker's memory."""
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while True:  # drop the rest of the over-long line
                rest = f.readline(MAX_LINE)
                if not rest or rest.endswith(b"\n"):
                    break
        yield line
