"""Streaming plumbing the readers share: byte-range units over line files, JSON arrays read item by item, random
access into uncompressed tars.

Why byte ranges: a 2 GB ``validated.tsv`` or ``train_0.jsonl`` must become many units without reading it at plan time.
Unit ``k`` of a file owns the lines that *start* in ``[k*B, (k+1)*B)`` (the Hadoop text-split rule), so every line
belongs to exactly one unit whatever B is, and planning needs only the file size.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from pydantic import Field

from aromni.pipeline.readers.base import Reader, ReaderOptions, Rejected, Unit

MiB = 1 << 20


# ---------------------------------------------------------------------------------------------------------------
# Line files split into byte ranges
# ---------------------------------------------------------------------------------------------------------------
def line_units(source: str, path: Path, unit_bytes: int) -> list[Unit]:
    """One unit per ``unit_bytes`` of the file (at least one, even for an empty file)."""
    size = os.path.getsize(path)
    n = max(1, -(-size // unit_bytes))
    return [Unit(source, str(path), size, part=k) for k in range(n)]


def iter_lines(path: str | Path, part: int, unit_bytes: int, skip_header: bool = False) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line without the newline) for the lines that start in range ``part``.

    A line starts in the range when the byte before it (a newline, or the start of the file) lies before the range's
    end; the line itself may run past the end.
    """
    start, end = part * unit_bytes, (part + 1) * unit_bytes
    with open(path, "rb") as f:
        if start == 0:
            pos = 0
            if skip_header:
                pos += len(f.readline())
        else:
            f.seek(start - 1)
            pos = start - 1 + len(f.readline())  # finish the line that began before the range (or at start-1)
        while pos < end:
            line = f.readline()
            if not line:
                return
            yield pos, line.rstrip(b"\r\n")
            pos += len(line)


def read_header(path: str | Path) -> bytes:
    with open(path, "rb") as f:
        return f.readline().rstrip(b"\r\n")


class LineOptions(ReaderOptions):
    unit_bytes: int = Field(4 * MiB, ge=1, description="bytes of the line file per unit (work per Ray task)")


class LineFileReader(Reader):
    """A reader whose units are byte ranges of one or more line files (jsonl, tsv, txt)."""
    Options = LineOptions

    def units(self) -> list[Unit]:
        return [u for f in self.files() for u in line_units(self.source, f, self.opts.unit_bytes)]


def decode_line(raw: bytes, key: str) -> tuple[str | None, Rejected | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, Rejected(key, "bad_text", f"line is not UTF-8: {e}")


def text_lines(path: str | Path, part: int, unit_bytes: int, skip_header: bool = False
               ) -> Iterator[tuple[int, str] | Rejected]:
    """(offset, line) for the non-blank lines of range ``part``; a line that is not UTF-8 is a Rejected."""
    name = Path(path).name
    for off, raw in iter_lines(path, part, unit_bytes, skip_header):
        if not raw.strip():
            continue
        line, bad = decode_line(raw, f"{name}@{off}")
        yield bad if bad else (off, line)


def json_lines(path: str | Path, part: int, unit_bytes: int, key_prefix: str = ""
               ) -> Iterator[tuple[int, str, dict] | Rejected]:
    """(offset, key, record) for the JSON lines of range ``part``. ``key`` is ``key_prefix`` + a hash of the line: stable
    whatever the unit size (line numbers are not known inside a byte range). Broken lines are Rejected."""
    for off, raw in iter_lines(path, part, unit_bytes):
        if not raw.strip():
            continue
        key = key_prefix + hashlib.sha1(raw).hexdigest()[:16]
        line, bad = decode_line(raw, key)
        if bad:
            yield bad
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield Rejected(key, "bad_metadata", f"{path}@{off}: {e}")
            continue
        yield (off, key, rec) if isinstance(rec, dict) else Rejected(key, "bad_metadata", f"{path}@{off}: not an object")


# ---------------------------------------------------------------------------------------------------------------
# JSON arrays, item by item
# ---------------------------------------------------------------------------------------------------------------
def array_start(path: str | Path, key: str | None = None, probe: int = 1 << 24) -> int:
    """Byte offset just after the ``[`` of the array: the top-level value, or the value of ``key`` (searched for in the
    first ``probe`` bytes, e.g. GigaSpeech.json's ``"audios"``)."""
    with open(path, "rb") as f:
        head = f.read(probe)
    stripped = head.lstrip()
    if key is None or stripped[:1] == b"[":
        if stripped[:1] != b"[":
            raise ValueError(f"{path}: top-level JSON value is not an array")
        return len(head) - len(stripped) + 1
    i = head.find(f'"{key}"'.encode())
    if i < 0:
        raise ValueError(f"{path}: no {key!r} key in its first {probe} bytes")
    j = i + len(key) + 2
    while j < len(head) and head[j:j + 1] in b" \t\r\n:":
        j += 1
    if head[j:j + 1] != b"[":
        raise ValueError(f"{path}: {key!r} is not an array")
    return j + 1


def iter_array(path: str | Path, start: int, limit: int | None = None, *, offsets: bool = False,
               chunk: int = 1 << 20, max_item: int = 256 << 20) -> Iterator:
    """Items of a JSON array from byte ``start`` (just after ``[`` or a previous item), at most ``limit`` of them.

    Only one item (plus a read chunk) is in memory at a time. With ``offsets=True`` yields ``(byte offset, None)``
    per item without decoding strings as UTF-8 (latin-1 keeps positions equal to byte offsets): what the planner uses
    to cut units.
    """
    enc = "latin-1" if offsets else "utf-8"
    dec = codecs.getincrementaldecoder(enc)()
    scanner = json.JSONDecoder()
    buf, pos, base, n, eof = "", 0, start, 0, False
    with open(path, "rb") as f:
        f.seek(start)
        while limit is None or n < limit:
            while True:  # skip separators
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    pos += 1
                if pos < len(buf) or eof:
                    break
                data = f.read(chunk)
                eof = not data
                buf, base, pos = buf[pos:] + dec.decode(data, final=eof), base + pos, 0
            if pos >= len(buf):
                raise ValueError(f"{path}: the JSON array is not closed (file truncated?)")
            if buf[pos] == "]":
                return
            try:
                item, end = scanner.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if eof:
                    raise
                if len(buf) - pos > max_item:
                    raise ValueError(f"{path}: an array item at byte ~{base + pos} is malformed or over "
                                     f"{max_item >> 20} MiB")
                data = f.read(max(chunk, len(buf)))  # the item runs past the buffer: read more, retry
                eof = not data
                buf, base, pos = buf[pos:] + dec.decode(data, final=eof), base + pos, 0
                continue
            yield (base + pos, None) if offsets else item
            n += 1
            pos = end


def array_units(source: str, path: Path, key: str | None, items_per_unit: int) -> list[Unit]:
    """Cut a JSON array into units of ``items_per_unit`` items; a unit's ``part`` is the byte offset of its first item.

    This reads the file once (at plan time, in the driver); workers then seek straight to their items.
    """
    start = array_start(path, key)
    size = os.path.getsize(path)
    units = []
    for i, (off, _) in enumerate(iter_array(path, start, offsets=True)):
        if i % items_per_unit == 0:
            units.append(Unit(source, str(path), size, part=off))
    return units or [Unit(source, str(path), size, part=start)]


# ---------------------------------------------------------------------------------------------------------------
# Random access into an uncompressed tar (AnyInstruct's speech.tar, 33 GB)
# ---------------------------------------------------------------------------------------------------------------
class TarIndex:
    """Member name -> (data offset, size), built once per process from the tar's headers (no data is read)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.members: dict[str, tuple[int, int]] = {}
        with tarfile.open(self.path, mode="r:") as tf:
            for m in tf:
                if m.isfile():
                    name = m.name.removeprefix("./")
                    self.members[name] = (m.offset_data, m.size)
                    # also without the top folder: metadata says "chunk_00000/0001.mp3", the tar may hold
                    # "speech/chunk_00000/0001.mp3"
                    short = name.split("/", 1)[-1]
                    self.members.setdefault(short, (m.offset_data, m.size))

    def read(self, name: str) -> bytes | None:
        hit = self.members.get(name.removeprefix("./"))
        if hit is None:
            return None
        with open(self.path, "rb") as f:
            f.seek(hit[0])
            return f.read(hit[1])


@lru_cache(maxsize=8)
def _tar_index(path: str, size: int, mtime: float) -> TarIndex:
    return TarIndex(path)


def tar_index(path: str | Path) -> TarIndex:
    """A cached TarIndex (per worker process; a changed file is re-indexed)."""
    st = os.stat(path)
    return _tar_index(str(path), st.st_size, st.st_mtime)


__all__ = ["LineFileReader", "LineOptions", "TarIndex", "array_start", "array_units", "decode_line", "iter_array",
           "iter_lines", "json_lines", "line_units", "read_header", "tar_index", "text_lines", "MiB"]
