"""Writing build outputs so that no reader ever sees a half-written file or object, and the lock on ``--out``.

``--out`` is a local path or a URL (s3://, gs://, ...), resolved once through fsspec. Local files go to a temp name in
the same folder, are fsynced, renamed into place and the folder fsynced (a power cut leaves the old file or the new
one, never a torn one). Object stores have no rename, but an object becomes visible only when its upload completes:
each object is uploaded under its final key in one go, and an upload that fails is discarded, never completed.
Credentials come from the usual environment (AWS_*, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...) through the
filesystem libraries and are never written anywhere.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid

import fsspec
import fsspec.core
from fsspec.implementations.local import LocalFileSystem

TEMP_MARK = ".tmp-"


class OutputError(RuntimeError):
    """An output location that cannot be written; the message names the URL."""


class LockedError(OutputError):
    """Another build holds the lock on this output."""


_SQUASHED = re.compile(r"^([a-z][a-z0-9+.-]*):/(?!/)")


def normalize(out) -> str:
    """The URL as a string. A URL that went through pathlib (typer's Path options do that) lost a slash:
    ``s3:/bucket/x`` is ``s3://bucket/x`` again."""
    return _SQUASHED.sub(r"\1://", str(out))


def out_fs(out: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path in it) for a local path or URL."""
    fs, root = fsspec.core.url_to_fs(normalize(out))
    return fs, root.rstrip("/") or root


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p != "")


def temp_name(path: str) -> str:
    """The temp file a local write goes through: ``.{name}.tmp-{pid}-{random}`` next to the final file."""
    d, _, name = path.rpartition("/")
    return f"{d}/.{name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in ``path`` durable (where the OS allows opening a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_atomic(fs, path: str, durable: bool = True):
    """A binary file that appears at ``path`` complete and durable when the block exits, or not at all.
    ``durable=False`` (scratch a rerun recomputes anyway): still complete or absent, but not fsynced."""
    if is_local(fs):
        d = path.rpartition("/")[0]
        os.makedirs(d, exist_ok=True)
        tmp = temp_name(path)
        try:
            with open(tmp, "wb") as f:
                yield f
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if durable:
                fsync_dir(d)
        finally:  # a full disk or an error must not leave a temp file behind
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        discard = getattr(f, "discard", None)  # abort the multipart upload: the key never appears
        if discard:
            discard()
        else:
            with contextlib.suppress(Exception):
                f.close()
                fs.rm(path)
        raise
    f.close()


def write_bytes(fs, path: str, data: bytes, durable: bool = True) -> None:
    with open_atomic(fs, path, durable) as f:
        f.write(data)


def write_json(fs, path: str, obj, durable: bool = True) -> None:
    write_bytes(fs, path, json.dumps(obj, indent=1, sort_keys=True).encode(), durable)


def sha256_of(fs, path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def check_writable(out: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Fail at once, with the URL, when ``out`` cannot be written (unreachable endpoint, missing bucket, denied)."""
    try:
        fs, root = out_fs(out)
    except (ValueError, ImportError) as e:
        raise OutputError(f"--out {out}: not a usable path or URL ({e})") from None
    probe = join(root, f".aromni-write-probe-{uuid.uuid4().hex[:8]}")
    try:
        if is_local(fs):
            os.makedirs(root, exist_ok=True)
        write_bytes(fs, probe, b"")
        fs.rm(probe)
    except Exception as e:  # noqa: BLE001 - botocore, aiohttp, PermissionError...: one message for all
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise OutputError(f"cannot write to --out {out}: {type(e).__name__}: {last[:300]}. Check the URL, that the "
                          f"bucket exists, the endpoint (AWS_ENDPOINT_URL) and the credentials.") from None
    return fs, root


# ---------------------------------------------------------------------------------------------------------------
# The lock on --out
# ---------------------------------------------------------------------------------------------------------------
LOCK = ".aromni.lock"
LEASE_SECONDS = 60.0


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime()),
            "token": uuid.uuid4().hex}


def _alive(info: dict) -> bool:
    """False only when the holder certainly died: it ran on this host and its pid is gone (a killed build's lease
    is then taken over at once instead of after its expiry)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True
    return True


def _describe(info: dict | None) -> str:
    if not info:
        return "another build (no owner recorded)"
    return f"the build of pid {info.get('pid')} on {info.get('host')} started {info.get('started')}"


class build_lock:
    """Exclusive right to write ``out`` for one build.

    Local: an advisory file lock (``filelock``) on ``{out}/.aromni.lock``; the kernel drops it when the holder dies,
    so a killed build's lock is taken over at once. The owner (host, pid, start time) is written next to it so the
    refusal names the running build. Object stores: a lease object ``{out}/.aromni.lock`` (owner, expiry) renewed by
    a thread every ``lease/3`` seconds; an expired lease (a killed build elsewhere), or one whose holder ran on this
    host and is gone, is taken over.
    """

    def __init__(self, out: str, lease: float = LEASE_SECONDS):
        self.out, self.lease = str(out), lease
        self.fs, self.root = out_fs(self.out)
        self.path = join(self.root, LOCK)
        self.info = _owner()
        self._stop = threading.Event()
        self._thread = None
        self._flock = None

    def __enter__(self):
        if is_local(self.fs):
            self._enter_local()
        else:
            self._enter_lease()
        return self

    # local -------------------------------------------------------------------------------------------------------
    def _enter_local(self):
        import filelock
        os.makedirs(self.root, exist_ok=True)
        self._flock = filelock.FileLock(self.path + ".flock", timeout=0)
        try:
            self._flock.acquire()
        except filelock.Timeout:
            raise LockedError(f"{self.out} is in use by {_describe(self._read())}: wait for it to finish, or use "
                              f"another --out") from None
        write_json(self.fs, self.path, self.info)

    # object store --------------------------------------------------------------------------------------------------
    def _enter_lease(self):
        now = time.time()
        held = self._read()
        if held and held.get("token") != self.info["token"] and held.get("expires", 0) > now and _alive(held):
            raise LockedError(f"{self.out} is in use by {_describe(held)} (lease until "
                              f"{time.strftime('%H:%M:%SZ', time.gmtime(held['expires']))}): wait for it to finish, "
                              f"or use another --out")
        self._write_lease()
        time.sleep(min(1.0, self.lease / 20))  # two takers at once: the last writer wins, the other sees it and stops
        mine = self._read()
        if not mine or mine.get("token") != self.info["token"]:
            raise LockedError(f"{self.out} is in use by {_describe(mine)}: use another --out")
        self._thread = threading.Thread(target=self._renew, daemon=True)
        self._thread.start()

    def _write_lease(self):
        write_json(self.fs, self.path, dict(self.info, expires=time.time() + self.lease))

    def _renew(self):
        while not self._stop.wait(self.lease / 3):
            with contextlib.suppress(Exception):
                self._write_lease()

    def _read(self) -> dict | None:
        try:
            if not self.fs.exists(self.path):
                return None
            return json.loads(self.fs.cat_file(self.path))
        except Exception:  # noqa: BLE001 - a torn or unreadable owner file only loses the name in the message
            return None

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            mine = self._read()
            if mine and mine.get("token") == self.info["token"]:
                self.fs.rm(self.path)
        if self._flock is not None:
            self._flock.release()
        return False
