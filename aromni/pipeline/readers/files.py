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
import tarfile
from functools import lru_cache
from typing import Iterator

from pydantic import Field

from aromni.io import paths
from aromni.pipeline.readers.base import Reader, ReaderOptions, Rejected, Unit

MiB = 1 << 20


# ---------------------------------------------------------------------------------------------------------------
# Line files split into byte ranges
# ---------------------------------------------------------------------------------------------------------------
def line_units(source: str, path: str, unit_bytes: int) -> list[Unit]:
    """One unit per ``unit_bytes`` of the file (at least one, even for an empty file)."""
    size = paths.size(path)
    n = max(1, -(-size // unit_bytes))
    return [Unit(source, str(path), size, part=k) for k in range(n)]


def iter_lines(path: str, part: int, unit_bytes: int, skip_header: bool = False) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line without the newline) for the lines that start in range ``part``.

    A line starts in the range when the byte before it (a newline, or the start of the file) lies before the range's
    end; the line itself may run past the end.
    """
    start, end = part * unit_bytes, (part + 1) * unit_bytes
    with paths.open_input(path) as f:
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


def read_header(path: str) -> bytes:
    with paths.open_input(path) as f:
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


def text_lines(path: str, part: int, unit_bytes: int, skip_header: bool = False
               ) -> Iterator[tuple[int, str] | Rejected]:
    """(offset, line) for the non-blank lines of range ``part``; a line that is not UTF-8 is a Rejected."""
    name = paths.name(path)
    for off, raw in iter_lines(path, part, unit_bytes, skip_header):
        if not raw.strip():
            continue
        line, bad = decode_line(raw, f"{name}@{off}")
        yield bad if bad else (off, line)


def json_lines(path: str, part: int, unit_bytes: int, key_prefix: str = ""
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
def array_start(path: str, key: str | None = None, probe: int = 1 << 24) -> int:
    """Byte offset just after the ``[`` of the array: the top-level value, or the value of ``key`` (searched for in the
    first ``probe`` bytes, e.g. GigaSpeech.json's ``"audios"``)."""
    with paths.open_input(path) as f:
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


def iter_array(path: str, start: int, limit: int | None = None, *, offsets: bool = False,
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
    with paths.open_input(path) as f:
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


def array_units(source: str, path: str, key: str | None, items_per_unit: int) -> list[Unit]:
    """Cut a JSON array into units of ``items_per_unit`` items; a unit's ``part`` is the byte offset of its first item.

    This reads the file once (at plan time, in the driver); workers then seek straight to their items.
    """
    start = array_start(path, key)
    size = paths.size(path)
    units = []
    for i, (off, _) in enumerate(iter_array(path, start, offsets=True)):
        if i % items_per_unit == 0:
            units.append(Unit(source, str(path), size, part=off))
    return units or [Unit(source, str(path), size, part=start)]


# ---------------------------------------------------------------------------------------------------------------
# Tar members: what may be read, with a cap on the bytes
# ---------------------------------------------------------------------------------------------------------------
def member_problem(m: tarfile.TarInfo, max_bytes: int | None) -> tuple[str, str] | None:
    """Why a tar member must not be read, or None. Only plain regular files with a relative path that stays inside
    the archive are read: links, devices, GNU sparse members (``tarfile`` would hand them out as regular files and
    expand the holes in memory), ``../`` and absolute names are refused; a member over ``max_bytes`` is too_large,
    decided from its header before a byte of it is read."""
    if m.issparse():
        return "bad_tar_member", f"{m.name}: GNU sparse member (claims {m.size} bytes): refused"
    if not m.isreg() or m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        return "bad_tar_member", f"{m.name}: not a regular file (link, device or special member)"
    if unsafe_name(m.name):
        return "bad_path", f"{m.name}: absolute or parent-relative path"
    if max_bytes is not None and m.size > max_bytes:
        return "too_large", f"{m.name}: {m.size} bytes > max_member_bytes {max_bytes}"
    return None


def unsafe_name(name: str) -> bool:
    """A member or metadata path that is absolute or climbs out with ``..`` (after normalisation)."""
    if not name or name.startswith(("/", "\\")) or "\x00" in name or "://" in name:
        return True
    return ".." in name.replace("\\", "/").split("/")


def read_member(tf: tarfile.TarFile, m: tarfile.TarInfo, max_bytes: int | None) -> bytes:
    """The member's bytes, never more than ``max_bytes`` (+1 to notice a lie) even when the stream is compressed."""
    f = tf.extractfile(m)
    cap = m.size if max_bytes is None else min(m.size, max_bytes)
    data = f.read(cap + 1) if f is not None else b""
    if max_bytes is not None and len(data) > max_bytes:
        raise MemberTooLarge(f"{m.name}: more than {max_bytes} bytes")
    return data


class MemberTooLarge(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Random access into an uncompressed tar (AnyInstruct's speech.tar, 33 GB), local or in a bucket
# ---------------------------------------------------------------------------------------------------------------
class TarIndex:
    """Member name -> (data offset, size), built once per process from the tar's headers (no data is read; on an
    object store each header is a small range request). Members that must not be read (see ``member_problem``) are
    kept apart in ``refused`` with their reason, under both their name and the short alias, so a metadata line that
    names one gets that reason instead of the bytes."""

    def __init__(self, path: str):
        self.path = str(path)
        self.members: dict[str, tuple[int, int]] = {}
        self.refused: dict[str, tuple[str, str]] = {}
        with paths.open_input(self.path) as raw, tarfile.open(fileobj=raw, mode="r:") as tf:
            for m in tf:
                name = m.name.removeprefix("./")
                problem = member_problem(m, None)
                # also without the top folder: metadata says "chunk_00000/0001.mp3", the tar may hold
                # "speech/chunk_00000/0001.mp3"
                short = name.split("/", 1)[-1]
                if problem is not None:
                    for n in (name, short, m.name):
                        self.refused.setdefault(n, problem)
                    continue
                self.members[name] = (m.offset_data, m.size)
                self.members.setdefault(short, (m.offset_data, m.size))

    def lookup(self, name: str) -> tuple[int, int] | tuple[str, str] | None:
        key = name.removeprefix("./")
        if unsafe_name(key):
            return "bad_path", f"{name}: absolute or parent-relative path"
        if key in self.refused:
            return self.refused[key]
        return self.members.get(key)

    def read(self, name: str, max_bytes: int | None = None) -> bytes | None:
        """The member's bytes; None when absent. Raises MemberRefused for a refused or oversized member."""
        hit = self.lookup(name)
        if hit is None:
            return None
        if isinstance(hit[0], str):
            raise MemberRefused(*hit)
        offset, size = hit
        if max_bytes is not None and size > max_bytes:
            raise MemberRefused("too_large", f"{name}: {size} bytes > max_member_bytes {max_bytes}")
        with paths.open_input(self.path) as f:
            f.seek(offset)
            return f.read(size)


class MemberRefused(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@lru_cache(maxsize=8)
def _tar_index(path: str, size: int) -> TarIndex:
    return TarIndex(path)


def tar_index(path: str) -> TarIndex:
    """A cached TarIndex (per worker process; a changed file is re-indexed)."""
    return _tar_index(str(path), paths.size(path))


__all__ = ["LineFileReader", "LineOptions", "TarIndex", "array_start", "array_units", "decode_line", "iter_array",
           "iter_lines", "json_lines", "member_problem", "read_member", "unsafe_name", "MemberRefused",
           "MemberTooLarge", "line_units", "read_header", "tar_index", "text_lines", "MiB"]
