"""JourneyDB (Midjourney images with prompts and captions) as published on the HF Hub (JourneyDB/JourneyDB)."""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field

from aromni.pipeline.readers.base import Example, Reader, ReaderOptions, Rejected, Unit, register

ANNOTATIONS = ("train_anno_realease_repath.jsonl", "valid_anno_repath.jsonl")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
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
    patterns = ("*.tgz", "*.tar.gz", "*.tar")

    def files(self) -> list[Path]:
        return [f for f in super().files() if not _is_annotation_archive(f)]

    def _annotation_file(self) -> Path:
        if self.opts.annotations:
            p = Path(self.opts.annotations)
            return p if p.is_absolute() else (self.path if self.path.is_dir() else self.path.parent) / p
        roots = [self.path] if self.path.is_dir() else []
        roots += [self.path.parent, self.path.parent.parent]
        for root in roots:
            for name in ANNOTATIONS:
                for cand in (root / name, root / f"{name}.tgz"):
                    if cand.exists():
                        return cand
        raise FileNotFoundError(f"no {ANNOTATIONS[0]} (or .tgz) under {self.path}; set options.annotations")

    def _lines(self, anno: Path) -> Iterator[bytes]:
        if anno.suffix in (".tgz", ".gz", ".tar"):
            with tarfile.open(anno, mode="r|*") as tf:
                for m in tf:
                    if m.isfile() and m.name.endswith(".jsonl"):
                        yield from tf.extractfile(m)
                        return
            raise FileNotFoundError(f"{anno}: no .jsonl member")
        with open(anno, "rb") as f:
            yield from f

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        folder = Path(unit.path).name.split(".")[0]  # imgs/000.tgz -> "000"
        try:
            anno_path = self._annotation_file()
            annotations = self._annotations_for(anno_path, folder)
        except (FileNotFoundError, OSError, tarfile.TarError) as e:
            yield Rejected(Path(unit.path).name, "missing_annotation", str(e))
            return
        seen: set[str] = set()
        try:
            with tarfile.open(unit.path, mode="r|*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    name = m.name.removeprefix("./")
                    if Path(name).suffix.lower() not in IMAGE_EXTS:
                        continue
                    if m.name.startswith("/") or ".." in Path(m.name).parts:
                        yield Rejected(name, "bad_tar_member", f"{m.name}: absolute or parent-relative path")
                        continue
                    seen.add(name)
                    rec = annotations.get(name)
                    if rec is None:
                        yield Rejected(name, "missing_annotation", f"{unit.path}:{name} has no line in {anno_path.name}")
                        continue
                    yield from self._example(name, rec, tf.extractfile(m).read(), unit)
        except (tarfile.TarError, OSError, EOFError) as e:
            yield Rejected(Path(unit.path).name, "truncated_tar", f"{unit.path}: {e}")
        for name in sorted(set(annotations) - seen):
            yield Rejected(name, "missing_file", f"{name} is annotated but not in {unit.path}")

    def _annotations_for(self, anno: Path, folder: str) -> dict[str, dict]:
        """Only this archive's lines are parsed: a cheap byte test skips the other ~99.5% of the file."""
        needle = f"/{folder}/".encode()
        out = {}
        for line in self._lines(anno):
            if needle not in line:
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a broken line cannot be attributed to an image; images without a line are rejected
            name = str(rec.get("img_path", "")).removeprefix("./")
            if name.split("/", 1)[0] == folder:
                out[name] = rec
        return out

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
        else:
            yield Rejected(name, "empty_text", f"no {'Task2.Caption' if mode == 'caption' else 'caption or prompt'}")
            return
        meta = {"caption": text, "text_field": used, "prompt": rec.get("prompt"), "path": f"{unit.path}:{name}"}
        style = (rec.get("Task1") or {}).get("Style")
        if style:
            meta["style"] = style
        yield Example(key=name, text=text, image=img, meta=meta)


def _is_annotation_archive(p: Path) -> bool:
    return "anno" in p.name
