"""Inputs on any filesystem: local paths and URLs (s3://, gs://, hf://datasets/...) through fsspec.

Every reader opens, lists and sizes its inputs only through this module, so a source in a bucket reads like a folder:
files are opened seekable with small blocks (a tar member or a parquet row group is fetched with range requests,
never the whole object), listings are sorted and bounded, and an object that cannot be reached becomes one
``InputError`` naming the URL. Paths stay strings (``posixpath`` for joins: local paths on POSIX and URL paths
share its rules). Credentials come from the usual environment (AWS_*, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS,
HF_TOKEN) and are never written anywhere.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import posixpath
import shutil
import tempfile
from typing import IO, Iterable

import fsspec

# Schemes a recipe may name. Anything else is a typo or an unsupported store: refused before a build starts.
SCHEMES = ("file", "s3", "s3a", "gs", "gcs", "hf", "memory")
# Listing stops with an error past this many files, so a wrong `path: /` never walks a whole disk.
MAX_FILES = int(os.environ.get("AROMNI_MAX_FILES", "1000000"))
# Read block for object stores: small, because readers seek (tar members, parquet footers, line ranges).
BLOCK_SIZE = 1 << 20


class InputError(OSError):
    """An input that cannot be listed, opened or read (missing object, missing bucket, unreachable endpoint)."""


class TooLarge(InputError):
    """A file over the size cap its reader set: refused from its size, before reading."""


class BadURL(ValueError):
    """A URL whose scheme no filesystem here serves (a recipe error: exit 2)."""


def scheme(p: str) -> str:
    s = str(p)
    return s.split("://", 1)[0].lower() if "://" in s else ""


def is_url(p) -> bool:
    return scheme(str(p)) not in ("", "file")


def check_url(p) -> None:
    """Raise BadURL for a scheme that is not served (``s4://``, ``htps://``)."""
    sc = scheme(str(p))
    if sc and sc not in SCHEMES:
        raise BadURL(f"{p}: unsupported URL scheme {sc!r} (supported: {', '.join(SCHEMES)})")


def _split(p: str) -> tuple[str, str]:
    """'s3://b/x' -> ('s3://', 'b/x'); a local path -> ('', path)."""
    s = str(p)
    if "://" in s:
        sc, rest = s.split("://", 1)
        return f"{sc}://", rest
    return "", s


def normalise(p) -> str:
    """Collapse ``.``/``..``/double slashes, keeping the scheme (``posixpath.normpath`` alone eats ``s3://``)."""
    pre, rest = _split(str(p))
    if pre == "file://":
        pre = ""
    if not pre:
        return os.path.normpath(os.path.expanduser(rest)) if rest else rest
    return pre + posixpath.normpath(rest).lstrip("/")


def resolve(p, base=None) -> str:
    """``p`` joined onto ``base`` when relative (``base`` may be a URL); URLs and absolute paths as they are."""
    s = str(p)
    check_url(s)
    if is_url(s) or base is None:
        return normalise(s)
    s = os.path.expanduser(s)
    if os.path.isabs(s):
        return normalise(s)
    check_url(str(base))
    return normalise(join(str(base), s))


def join(base, *parts: str) -> str:
    pre, rest = _split(str(base))
    return pre + posixpath.join(rest, *[str(x) for x in parts])


def name(p) -> str:
    return posixpath.basename(_split(str(p))[1].rstrip("/"))


def parent(p) -> str:
    pre, rest = _split(str(p))
    return pre + posixpath.dirname(rest.rstrip("/"))


def stem(p) -> str:
    return posixpath.splitext(name(p))[0]


def suffix(p) -> str:
    return posixpath.splitext(name(p))[1]


def confine(root, rel) -> str | None:
    """``rel`` (a path a metadata column names) resolved against ``root``; None when the result leaves ``root``
    (``../``, an absolute path elsewhere, another bucket, or a local symlink that points out of the tree)."""
    r = str(rel)
    if not r or "\x00" in r:
        return None
    root_n = normalise(root)
    if is_url(r) or scheme(r):
        cand = normalise(r)
    elif is_url(root_n):
        cand = normalise(join(root_n, r.lstrip("/"))) if not r.startswith("/") else None
        if cand is None:
            return None
    else:
        cand = normalise(os.path.join(root_n, r))
    if is_url(root_n) != is_url(cand):
        return None
    if is_url(cand):
        inside = cand == root_n or cand.startswith(root_n.rstrip("/") + "/")
        return cand if inside else None
    real_root, real = os.path.realpath(root_n), os.path.realpath(cand)
    return cand if os.path.commonpath([real_root, real]) == real_root else None


def filesystem(p) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a path or URL."""
    s = str(p)
    check_url(s)
    try:
        return fsspec.core.url_to_fs(s)
    except (ImportError, ValueError) as e:
        raise InputError(f"{s}: no filesystem for this URL: {e}") from None


def _wrap(p, e: Exception) -> InputError:
    if isinstance(e, InputError):
        return e
    if isinstance(e, FileNotFoundError):
        return InputError(f"{p}: not found (missing file, object or bucket)")
    if isinstance(e, PermissionError):
        return InputError(f"{p}: access denied ({e})")
    return InputError(f"{p}: cannot be read: {type(e).__name__}: {e}")


def open_input(p, mode: str = "rb", block_size: int | None = None) -> IO:
    """A seekable binary file: local files as they are, objects with range reads of ``block_size`` bytes."""
    fs, path = filesystem(p)
    try:
        if is_url(p):
            f = fs.open(path, mode, block_size=block_size or BLOCK_SIZE, cache_type="readahead")
            # io's buffered reader on top: readline(limit), peek and the rest of the io API, same range reads below
            return io.BufferedReader(f, buffer_size=64 << 10) if mode == "rb" else f
        return open(path, mode)
    except Exception as e:  # noqa: BLE001 - every store raises its own types: one message naming the URL
        raise _wrap(p, e) from None


def read_bytes(p, limit: int | None = None) -> bytes:
    """The whole file (at most ``limit`` bytes: a larger one is an InputError saying so, nothing is read)."""
    if limit is not None:
        n = size(p)
        if n > limit:
            raise TooLarge(f"{p}: {n} bytes > max_file_bytes {limit}")
    with open_input(p) as f:
        try:
            return f.read()
        except Exception as e:  # noqa: BLE001
            raise _wrap(p, e) from None


def size(p) -> int:
    fs, path = filesystem(p)
    try:
        return int(fs.size(path))
    except Exception as e:  # noqa: BLE001
        raise _wrap(p, e) from None


def exists(p) -> bool:
    fs, path = filesystem(p)
    try:
        return bool(fs.exists(path))
    except Exception as e:  # noqa: BLE001 - an unreachable endpoint is not "does not exist"
        raise _wrap(p, e) from None


def isdir(p) -> bool:
    fs, path = filesystem(p)
    try:
        return bool(fs.isdir(path))
    except Exception as e:  # noqa: BLE001
        raise _wrap(p, e) from None


def isfile(p) -> bool:
    fs, path = filesystem(p)
    try:
        return bool(fs.isfile(path))
    except Exception as e:  # noqa: BLE001
        raise _wrap(p, e) from None


def _full(p_in_fs: str, like: str) -> str:
    """A path the filesystem returned, in the form the caller used (with the URL scheme again)."""
    pre, _ = _split(like)
    return pre + p_in_fs.lstrip("/") if pre and pre != "file://" else p_in_fs


class TooManyFiles(InputError):
    pass


def _matches(fname: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(fname, pat) for pat in patterns)


def walk_entries(root, limit: int | None = None) -> Iterable[tuple[str, bool]]:
    """(path, is_dir) of everything under ``root``, depth first; a directory's entries are ordered as ``name/`` so the
    files come in sorted full-path order (a prefix of the walk is a prefix of the sorted listing). Stops with
    TooManyFiles past ``limit`` entries instead of walking a whole disk."""
    fs, path = filesystem(root)
    limit = MAX_FILES if limit is None else limit
    seen = 0

    def entries(d: str):
        try:
            found = fs.ls(d, detail=True)
        except Exception as e:  # noqa: BLE001
            raise _wrap(_full(d, str(root)), e) from None
        items = [(e["name"].rstrip("/"), e.get("type") == "directory") for e in found
                 if e["name"].rstrip("/") != d.rstrip("/")]
        items.sort(key=lambda x: posixpath.basename(x[0]) + ("/" if x[1] else ""))
        return iter(items)

    stack = [entries(path)]
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            continue
        p, is_d = nxt
        seen += 1
        if seen > limit:
            raise TooManyFiles(f"{root}: more than {limit} entries; point path at the data's folder (or set "
                               f"max_units / AROMNI_MAX_FILES) instead of walking a whole tree")
        yield _full(p, str(root)), is_d
        if is_d:
            stack.append(entries(p))


def list_files(root, patterns: Iterable[str] = ("*",), limit: int | None = None) -> list[str]:
    """Files under folder ``root`` whose name matches one of ``patterns`` (fnmatch on the name), sorted."""
    pats = tuple(patterns)
    return sorted(p for p, is_d in walk_entries(root, limit) if not is_d and _matches(name(p), pats))


def list_dir(root) -> list[tuple[str, bool]]:
    """(path, is_dir) of ``root``'s own entries, sorted."""
    fs, path = filesystem(root)
    try:
        entries = fs.ls(path, detail=True)
    except Exception as e:  # noqa: BLE001
        raise _wrap(root, e) from None
    out = [(_full(e["name"].rstrip("/"), str(root)), e.get("type") == "directory") for e in entries
           if e["name"].rstrip("/") != path.rstrip("/")]
    return sorted(out)


def glob(pattern, limit: int | None = None) -> list[str]:
    """Files matching ``pattern`` (``**`` recursive), sorted; at most ``limit`` (else TooManyFiles)."""
    fs, path = filesystem(pattern)
    limit = MAX_FILES if limit is None else limit
    try:
        found = fs.glob(path, detail=True)
    except Exception as e:  # noqa: BLE001
        raise _wrap(pattern, e) from None
    files = sorted(_full(p, str(pattern)) for p, info in found.items() if info.get("type") != "directory")
    if len(files) > limit:
        raise TooManyFiles(f"{pattern}: matches more than {limit} files")
    return files


def has_magic(p) -> bool:
    return any(ch in str(p) for ch in "*?[")


__all__ = ["BLOCK_SIZE", "BadURL", "InputError", "MAX_FILES", "TooLarge", "TooManyFiles", "check_url", "confine", "exists",
           "filesystem", "glob", "has_magic", "is_url", "isdir", "isfile", "join", "list_dir", "list_files", "name",
           "normalise", "open_input", "parent", "read_bytes", "resolve", "size", "stem", "suffix", "walk_entries"]


def local_copy(p, cache_dir: str | None = None) -> str:
    """A local path for ``p``: itself when local; for a URL (a checkpoint file or folder in a bucket or on the Hub)
    a copy in aromni's cache, fetched once per machine. Model loaders (torch, tokenizers, yaml) read local files, and
    checkpoints are small next to the data, so they are copied whole rather than range-read.

    The cache key is the URL plus each file's size and (where the store gives one) its ETag/checksum, so a changed
    object is fetched again; the copy is made in a temp folder and renamed, so a killed fetch leaves nothing used."""
    s = str(p)
    if not is_url(s):
        return s
    fs, root = filesystem(s)
    try:
        files = sorted(fs.find(root, detail=True).items()) if fs.isdir(root) else [(root, fs.info(root))]
    except Exception as e:  # noqa: BLE001 - one message naming the URL whatever the store raised
        raise _wrap(s, e) from None
    if not files:
        raise InputError(f"{s}: not found (missing file, object or bucket)")
    sig = [(f, i.get("size"), str(i.get("ETag") or i.get("etag") or i.get("checksum") or i.get("mtime") or ""))
           for f, i in files]
    key = hashlib.sha256(json.dumps([s, sig], default=str).encode()).hexdigest()[:24]
    base = os.path.join(cache_dir or os.environ.get("AROMNI_CACHE") or os.path.expanduser("~/.cache/aromni"),
                        "inputs", key)
    target = os.path.join(base, name(s.rstrip("/")) or "object")
    if not os.path.exists(target):
        os.makedirs(base, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=base, prefix=".fetch-")
        try:
            for f, _ in files:
                rel = os.path.relpath(f, root) if len(files) > 1 or fs.isdir(root) else name(f)
                dst = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                fs.get_file(f, dst)
            src = tmp if fs.isdir(root) else os.path.join(tmp, name(root))
            try:
                os.rename(src, target)
            except OSError:
                if not os.path.exists(target):   # another process won the race: its copy is the same
                    raise
        except Exception as e:  # noqa: BLE001
            raise _wrap(s, e) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
