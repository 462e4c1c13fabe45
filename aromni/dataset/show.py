"""``aromni show``: one row as its segments, with every image written as PNG and every speech span as WAV; or an
HTML page (text, pictures, audio players) for a sample of rows that covers every task.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from aromni.dataset.decode import RowDecoder, SegmentView
from aromni.dataset.folder import BuildFolder


@dataclass
class RowView:
    index: int
    row: dict
    segments: list[SegmentView]
    files: list[Path] = field(default_factory=list)

    @property
    def meta(self) -> dict:
        m = self.row.get("meta") or "{}"
        try:
            return json.loads(m) if isinstance(m, str) else dict(m)
        except ValueError:
            return {"unparsed": m}


def safe_name(row_id: str) -> str:
    """A row id as a file name: 'laion/000000012' -> 'laion_000000012'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", row_id).strip("._") or "row"


def render_row(folder: BuildFolder, decoder: RowDecoder, out_dir: Path, *, index: int | None = None,
               row_id: str | None = None) -> RowView:
    """Decode one row (by index or id) and write its media under ``out_dir/<row id>/``."""
    if (index is None) == (row_id is None):
        raise ValueError("give exactly one of index or row_id")
    if row_id is not None:
        index, row = folder.find(row_id)
    else:
        row = folder.row(index)
    view = RowView(index, row, decoder.segments(row))
    write_media(view, Path(out_dir) / safe_name(row["id"]))
    return view


def write_media(view: RowView, where: Path) -> None:
    import soundfile as sf

    for s in view.segments:
        if s.media is None:
            continue
        where.mkdir(parents=True, exist_ok=True)
        stem = where / f"{s.index:02d}_{s.role}_{s.modality}"
        if s.modality == "image":
            s.file = stem.with_suffix(".png")
            s.media.save(s.file)
        else:
            wave, rate = s.media
            s.file = stem.with_suffix(".wav")
            sf.write(s.file, wave, rate, subtype="PCM_16")
        view.files.append(s.file)


def describe(view: RowView, decoder: RowDecoder) -> list[str]:
    """The row as plain lines: header, one line per segment, meta."""
    r = view.row
    lines = [f"row {view.index}  id={r['id']}  task={r['task']}  source={r['source']}  {r['n_tokens']} tokens"]
    for s in view.segments:
        head = f"  [{s.start}:{s.end}] {s.role}/{s.modality}"
        if s.modality == "text":
            lines.append(f"{head}  {s.text!r}")
        elif s.file is not None:
            extra = (f"{len(s.media[0]) / s.media[1]:.2f} s" if s.modality == "speech" else "x".join(map(str, s.media.size)))
            lines.append(f"{head}  {s.end - s.start - 2} codes -> {s.file} ({extra})")
        else:
            lines.append(f"{head}  {s.end - s.start} ids, not decoded: {s.problem}")
    lines.append(f"  meta: {json.dumps(view.meta, ensure_ascii=False)[:400]}")
    return lines


def sample_indices(folder: BuildFolder, n: int) -> list[int]:
    """``n`` row indices, round-robin over tasks (sorted), first rows first: every task shows when n >= tasks."""
    by_task: dict[str, list[int]] = {}
    offset = 0
    for t in folder.tables(columns=["task"]):
        for i, task in enumerate(t.column("task").to_pylist()):
            by_task.setdefault(task, []).append(offset + i)
        offset += t.num_rows
    queues = [by_task[k] for k in sorted(by_task)]
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        out += [q[depth] for q in queues if depth < len(q)]
        depth += 1
    return sorted(out[:n])


def write_html(folder: BuildFolder, decoder: RowDecoder, out_dir: Path, indices: list[int]) -> Path:
    """One self-contained page (media beside it, linked relatively) for the given rows."""
    out_dir = Path(out_dir)
    views = [render_row(folder, decoder, out_dir, index=i) for i in indices]
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(folder.name)}: aromni show</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             ".row{border:1px solid #ccc;border-radius:6px;padding:.6em;margin:1em 0}"
             ".seg{margin:.3em 0}.tag{display:inline-block;min-width:13em;color:#555;font-family:monospace}"
             ".assistant{background:#eef6ff}.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em}"
             "pre{white-space:pre-wrap;margin:0;display:inline}img{max-width:256px;image-rendering:pixelated}"
             ".problem{color:#a00}</style></head><body>",
             f"<h1>{e(folder.name)}</h1><p>{folder.rows} rows in {len(folder.shards)} shard(s); showing "
             f"{len(views)} rows, one task after another.</p>"]
    notes = [folder.warning] if folder.warning else []
    notes += [decoder.notes[k] for k in sorted(decoder.notes)] + [decoder.problems[k] for k in sorted(decoder.problems)]
    parts += [f"<p class='warn'>{e(n)}</p>" for n in notes]
    for v in views:
        r = v.row
        parts.append(f"<div class='row'><h3>row {v.index}: {e(r['id'])} <small>({e(r['task'])}, {e(r['source'])}, "
                     f"{r['n_tokens']} tokens)</small></h3>")
        for s in v.segments:
            tag = f"<span class='tag'>[{s.start}:{s.end}] {e(s.role)}/{e(s.modality)}</span>"
            if s.text is not None:
                body = f"<pre>{e(s.text)}</pre>"
            elif s.file is not None and s.modality == "image":
                body = f"<img src='{e(s.file.relative_to(out_dir).as_posix())}' alt='image span'>"
            elif s.file is not None:
                body = f"<audio controls preload='none' src='{e(s.file.relative_to(out_dir).as_posix())}'></audio>"
            else:
                body = f"<span class='problem'>not decoded: {e(s.problem or '')}</span>"
            parts.append(f"<div class='seg {e(s.role)}'>{tag}{body}</div>")
        parts.append(f"<details><summary>meta</summary><pre>{e(json.dumps(v.meta, indent=1, ensure_ascii=False))}"
                     f"</pre></details></div>")
    parts.append("</body></html>")
    page = out_dir / "index.html"
    out_dir.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
