"""Published shards -> per-rank micro-batches, with the whole position held in one number.

The data is one endless stream of samples: sample ``g`` is row ``order(g)`` of the shard set (epoch ``g // N``). A
*window* is one optimizer step: it takes the next samples of the stream, starting at ``consumed`` (samples used so
far), and lays them into ``train_batch_size`` rows of at most ``max_len`` tokens. How a window is laid out depends
only on (``consumed``, ``train_batch_size``, ``max_len``, packing, the data), never on the number of processes, so

* resuming is exact: a checkpoint stores ``consumed`` and the next window is the one an uninterrupted run would see;
* a different world size sees the same samples per step: row ``j`` of a window goes to micro step
  ``j // (world * micro)`` of rank ``(j // micro) % world``, and gradient accumulation absorbs the difference.

Packing is first-fit over the window's rows and takes a *prefix* of the stream: the first sample that fits in no row
ends the window (it opens the next one). Samples are never cut inside an image or speech span: a sample longer than
``max_len`` is dropped (AR-Omni's rule) or, with ``long_samples: split``, cut at points outside those spans. Each
piece gets its own position ids from 0, so attention stays inside it (transformers builds a block-diagonal mask from
restarting position ids), and its first token carries no label. Labels, weights and perceptual positions are derived
for a whole row group at once (``aromni.train.labels``, equal to the spine's ``labels_and_weights`` row by row), as
one byte of flags per token; a micro-batch (``Batch``) is the ids as stored and those flags, widened to the model's
tensors where it is used (``Batch.to(device)``).
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from aromni.hashing import stable_hash
from aromni.layout import AR_OMNI_V0_1, Layout
from aromni.sample import IGNORE_INDEX, LossPolicy, Segment
from aromni.train import kernels
from aromni.train.labels import PERCEPT, PIECE_START, WEIGHT_CLASS, Derived, FlatRows, derive_flags, \
    weight_table

MEDIA = ("image", "speech")


class DataError(ValueError):
    """Shards that cannot be trained on; the message says which and why."""


# ---------------------------------------------------------------------------------------------------------------
# The shard set: every row, readable by index; only the lengths are read up front
# ---------------------------------------------------------------------------------------------------------------
def discover(path: str):
    """(filesystem, sorted parquet paths, manifest or None) for a build folder, a folder, a glob, one file or an
    fsspec URL such as hf://datasets/ORG/NAME (huggingface_hub's filesystem: streamed range reads)."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(str(path))
    root = root.rstrip("/")
    if any(ch in root for ch in "*?["):
        return fs, sorted(fs.glob(root)), None
    if fs.isfile(root):
        return fs, [root], None
    if not fs.isdir(root):
        offline = str(path).startswith("hf://") and os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        raise DataError(f"data.path {path}: not found" + (" (HF_HUB_OFFLINE is set)" if offline else ""))
    manifest = None
    if fs.isfile(f"{root}/manifest.json"):
        with fs.open(f"{root}/manifest.json", "rb") as f:
            manifest = json.load(f)
        files = [f"{root}/{s['path']}" for s in manifest.get("shards", [])]
    elif fs.isdir(f"{root}/data"):
        files = sorted(fs.glob(f"{root}/data/*.parquet"))
    else:
        files = sorted(fs.glob(f"{root}/**/*.parquet"))
    if not files:
        raise DataError(f"data.path {path}: no parquet shards")
    return fs, files, manifest


def _one_array(col):
    """The column as one array; a one-chunk column (a row group's) without the copy combine_chunks makes."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _flat(col: pa.ChunkedArray):
    a = _one_array(col)
    off = a.offsets.to_numpy()
    return a.values.to_numpy(zero_copy_only=False)[off[0]:off[-1]], off - off[0]


def _codes(col: pa.Array) -> tuple[np.ndarray, list]:
    """(per-row codes, the names they index) of a string column; a null is the name None."""
    d = col if pa.types.is_dictionary(col.type) else col.dictionary_encode()
    names = d.dictionary.to_pylist()
    codes = d.indices
    if codes.null_count:
        codes = pc.fill_null(codes, len(names))
        names.append(None)
    return codes.to_numpy().astype(np.int64), names


def _equals(col: pa.Array, *values: str) -> list[np.ndarray]:
    """Bool per element for each value: ``col == value`` (a null is not equal), from the dictionary codes when the
    column is read as a dictionary (a compare per distinct name instead of a string compare per element)."""
    codes, names = _codes(col)
    return [np.array([n == v for n in names], dtype=bool)[codes] for v in values]


def _shut(pf: pq.ParquetFile, handle) -> None:
    """Close a file ``ShardSet._open`` opened: the reader, and the object-store handle it reads (if any)."""
    pf.close()
    if handle is not None:
        handle.close()


class ShardSet:
    """All rows of a dataset in one global order. Two row layouts are understood: aromni's (``input_ids`` +
    ``segments`` + ``task``: labels derive from segments) and AR-Omni-Instruct's (``input_ids`` + ``labels``)."""

    # files kept open (each holds a descriptor or an object-store file, and its footer); the others are opened
    # again when read. A dataset at the paper's scale has thousands of shards: keeping all of them open ran out of
    # descriptors (a common limit is 1,024) and, from a bucket, of memory
    open_files = 8
    # object stores: how many files' footers and lengths are read at once while the index is built (each file is a
    # few requests of latency; one after another, tens of thousands of shards would take an hour before a step)
    index_threads = 16

    def __init__(self, path: str, cache_row_groups: int = 2):
        self.fs, self.files, self.manifest = discover(path)
        self.path = str(path)
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self._pf: OrderedDict[int, tuple] = OrderedDict()          # file -> (ParquetFile, the handle it reads)
        self._read_lock = threading.RLock()      # one reader at a time: a file it reads is never closed under it
        self._dictionary, self._footer0 = None, None
        schema = self._file(0).schema_arrow
        names = set(schema.names)
        if "input_ids" not in names:
            raise DataError(f"{self.files[0]}: no input_ids column (columns: {sorted(names)})")
        if "segments" in names:
            self.kind = "segments"
            self.columns = ["input_ids", "segments", "task"]
            # the string columns the loader only compares come as Arrow dictionaries (codes, as parquet stores
            # them), so a row group's tests are one per distinct name; file 0 is opened again for that, with the
            # footer it has read
            self._dictionary = [c for c in ("task", "segments.list.element.role", "segments.list.element.modality")
                                if c.split(".")[0] in names]
            self._footer0 = self._file(0).metadata
            self._close(0)
        elif "labels" in names:
            self.kind = "labels"
            self.columns = ["input_ids", "labels"]
        else:
            raise DataError(f"{self.files[0]}: needs a segments column (aromni shards) or a labels column "
                            f"(AR-Omni-Instruct); has {sorted(names)}")
        lay = (self.manifest or {}).get("layout")
        self.layout = Layout.from_dict(json.loads(lay) if isinstance(lay, str) else lay) if lay else AR_OMNI_V0_1
        self.stand_in = bool(self.manifest and self.manifest.get("stand_in_tokenizers"))
        if self._local:                            # (the last files indexed stay open for the first reads)
            index = [self._index(self._file(fi)) for fi in range(len(self.files))]
        else:
            with ThreadPoolExecutor(min(self.index_threads, len(self.files))) as pool:
                index = list(pool.map(self._index_file, range(len(self.files))))
        file_rows = [int(sum(rows)) for rows, _ in index]
        self.rg_file = np.concatenate([np.full(len(rows), fi) for fi, (rows, _) in enumerate(index)])
        self.rg_index = np.concatenate([np.arange(len(rows)) for rows, _ in index])
        self.rg_rows = np.concatenate([np.asarray(rows, np.int64) for rows, _ in index])
        self.rg_start = np.concatenate([[0], np.cumsum(self.rg_rows)])
        # every row's length and, with shuffle, each epoch's row order: 4 bytes a row each (row numbers int64 past
        # 2^31 rows)
        self.lengths = np.concatenate([lens for _, lens in index]).astype(np.int32)
        self._rows_dtype = np.int32 if len(self.lengths) < 2**31 else np.int64
        if len(self.lengths) == 0:
            raise DataError(f"data.path {path}: the shards hold no rows")
        if self.manifest:
            want = {f"{self.path.rstrip('/')}/{s['path']}": s.get("rows") for s in self.manifest.get("shards", [])}
            for f, got in zip(self.files, file_rows):
                if want.get(f) is not None and want[f] != got:
                    raise DataError(f"{f}: {got} rows, the manifest says {want[f]} (rebuilt or truncated shard?)")
        self.fingerprint = hashlib.sha256(json.dumps(
            [[f.rsplit("/", 1)[-1], rows] for f, rows in zip(self.files, file_rows)]).encode()).hexdigest()[:16]
        self._in_order = np.zeros(0, self._rows_dtype)     # (epoch_map without shuffle)
        self._cache: OrderedDict[int, FlatRows] = OrderedDict()
        self._cache_size = cache_row_groups
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.lengths)

    def _open(self, fi: int) -> tuple:
        """(ParquetFile, the handle to close). Local files by path: pyarrow's native reader instead of Python file
        calls through fsspec, and no pre-buffering (it coalesces a row group's column reads, which saves requests to
        an object store, but hands every read to an I/O thread: on a local disk that doubled the cost of reading the
        lengths and added ~5% to a row group's decode). Object-store files without fsspec's read-ahead cache:
        Arrow asks for exactly the byte ranges it needs (a cache of a 50 MB block a file fetched whole shards just
        to read their lengths, and kept them)."""
        handle = None if self._local else self.fs.open(self.files[fi], "rb", cache_type="none")
        pf = pq.ParquetFile(self.files[fi] if self._local else handle, metadata=self._footer0 if fi == 0 else None,
                            read_dictionary=self._dictionary, pre_buffer=not self._local)
        return pf, handle

    def _file(self, fi: int) -> pq.ParquetFile:
        """File ``fi``, open (the ``open_files`` used last stay open)."""
        with self._read_lock:
            if fi in self._pf:
                self._pf.move_to_end(fi)
            else:
                self._pf[fi] = self._open(fi)
                while len(self._pf) > self.open_files:
                    self._close(next(iter(self._pf)))
            return self._pf[fi][0]

    def _close(self, fi: int) -> None:
        _shut(*self._pf.pop(fi))

    def _index(self, pf: pq.ParquetFile) -> tuple[list[int], np.ndarray]:
        """(rows of each row group, each row's length) of one file."""
        rows = [pf.metadata.row_group(ri).num_rows for ri in range(pf.metadata.num_row_groups)]
        threads = pa.cpu_count() > 1              # (as in row_group: a pool of one only adds hand-offs)
        if "n_tokens" in pf.schema_arrow.names:
            return rows, pf.read(columns=["n_tokens"], use_threads=threads).column(0).to_numpy()
        return rows, pc.list_value_length(pf.read(columns=["input_ids"], use_threads=threads).column(0)).to_numpy()

    def _index_file(self, fi: int) -> tuple[list[int], np.ndarray]:
        """``_index`` of file ``fi`` on a file of its own (index threads share nothing), closed after."""
        opened = self._open(fi)
        try:
            return self._index(opened[0])
        finally:
            _shut(*opened)

    def row_group(self, rg: int) -> FlatRows:
        with self._lock:
            if rg in self._cache:
                self._cache.move_to_end(rg)
                return self._cache[rg]
        # (decoding on Arrow's pool only when it has more than one thread: a pool of one adds a hand-off per column
        # and leaves the decoded row group in another core's cache)
        with self._read_lock:
            t = self._file(int(self.rg_file[rg])).read_row_group(int(self.rg_index[rg]), columns=self.columns,
                                                                 use_threads=pa.cpu_count() > 1)
        ids, off = _flat(t.column("input_ids"))
        if self.kind == "labels":
            lab, _ = _flat(t.column("labels"))
            out = FlatRows(ids, off, np.zeros(t.num_rows, np.int64), [None], labels=lab)
        else:
            seg = _one_array(t.column("segments"))
            so = seg.offsets.to_numpy()
            flat = seg.values.slice(so[0], so[-1] - so[0])
            (assistant,), (image, speech) = _equals(flat.field("role"), "assistant"), \
                _equals(flat.field("modality"), "image", "speech")
            out = FlatRows(ids, off, *_codes(_one_array(t.column("task"))), seg_offsets=so - so[0],
                           seg_start=flat.field("start").to_numpy().astype(np.int64),
                           seg_end=flat.field("end").to_numpy().astype(np.int64),
                           seg_assistant=assistant, seg_image=image, seg_speech=speech)
        with self._lock:
            self._cache[rg] = out
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def row(self, i: int) -> tuple[np.ndarray, list[Segment] | None, str | None, np.ndarray | None]:
        """(input_ids, segments, task, stored labels) of row ``i``."""
        rg = int(np.searchsorted(self.rg_start, i, side="right") - 1)
        g = self.row_group(rg)
        k = i - int(self.rg_start[rg])
        lo, hi = g.offsets[k], g.offsets[k + 1]
        if g.labels is not None:
            return g.ids[lo:hi], None, None, g.labels[lo:hi]
        a, b = g.seg_offsets[k], g.seg_offsets[k + 1]
        segs = [Segment("assistant" if r else "user", "image" if im else "speech" if sp else "text", int(s), int(e))
                for r, im, sp, s, e in zip(g.seg_assistant[a:b], g.seg_image[a:b], g.seg_speech[a:b],
                                           g.seg_start[a:b], g.seg_end[a:b])]
        return g.ids[lo:hi], segs, g.task_names[g.task_codes[k]], None

    # ---- the endless stream -----------------------------------------------------------------------------
    def order(self, g0: int, g1: int, shuffle: bool, seed: int) -> np.ndarray:
        """Row indices of stream samples g0..g1-1. Without shuffle every epoch reads the shards in order (the
        build already mixed them); with shuffle each epoch permutes row groups, then rows inside each group, so
        reads stay one row group at a time."""
        g = np.arange(g0, g1, dtype=np.int64)
        n = len(self)
        if not shuffle:
            return g % n
        out = np.empty_like(g)
        for e in np.unique(g // n):
            sel = g // n == e
            out[sel] = self._epoch_rows(int(e), seed)[g[sel] % n]
        return out

    def epoch_map(self, g: int, shuffle: bool, seed: int) -> tuple[np.ndarray, int]:
        """How stream index g's epoch maps to rows: (the epoch's row order, empty when it is the shards' order: row g
        % len; the stream index where the epoch ends)."""
        epoch = g // len(self)
        return (self._epoch_rows(epoch, seed) if shuffle else self._in_order), (epoch + 1) * len(self)

    def _epoch_rows(self, epoch: int, seed: int) -> np.ndarray:
        key = (epoch, seed)
        if getattr(self, "_epoch_key", None) != key:
            rng = np.random.default_rng(stable_hash("epoch", seed, epoch))
            parts = []
            for rg in rng.permutation(len(self.rg_rows)):
                r = np.random.default_rng(stable_hash("rows", seed, epoch, int(rg)))
                parts.append(self.rg_start[rg] + r.permutation(int(self.rg_rows[rg])))
            self._epoch_key, self._epoch_cache = key, np.concatenate(parts).astype(self._rows_dtype)
        return self._epoch_cache


# ---------------------------------------------------------------------------------------------------------------
# Window planning (lengths only) and materialisation (this rank's rows only)
# ---------------------------------------------------------------------------------------------------------------
class Piece(NamedTuple):          # (a named tuple: a plan makes one per sample, a dataclass costs 3x as much)
    g: int      # stream index
    row: int    # row in the shard set
    lo: int     # token range inside the sample
    hi: int


@dataclass
class Plan:
    """A window's layout as arrays: ``pieces`` holds every piece as (stream index, row in the shard set, lo, hi),
    row after row (each row's pieces in the order they were placed); ``row_sizes`` the pieces of each row that holds
    any (those are the first rows: first fit never passes an empty row)."""
    start: int                      # consumed samples before this window
    end: int                        # ... and after it
    pieces: np.ndarray              # int64 [n, 4]
    row_sizes: np.ndarray           # int64 [rows]
    dropped: Counter = field(default_factory=Counter)

    @property
    def rows(self) -> list[list[Piece]]:
        """The rows as lists of ``Piece`` (to read a plan; the loader itself works on the arrays)."""
        pieces = [Piece(*p) for p in self.pieces.tolist()]
        ends = np.cumsum(self.row_sizes).tolist()
        return [pieces[a:b] for a, b in zip([0] + ends[:-1], ends)]


def safe_cuts(n: int, segments: list[Segment]) -> np.ndarray:
    """Positions where a long sample may be cut: anywhere except strictly inside an image or speech span."""
    ok = np.ones(n + 1, dtype=bool)
    for s in segments:
        if s.modality in MEDIA:
            ok[s.start + 1:s.end] = False
    return np.flatnonzero(ok)


def split_sample(n: int, segments: list[Segment] | None, max_len: int) -> list[tuple[int, int]] | None:
    """Greedy cut of a long sample into pieces of at most max_len tokens; None when a span alone is too long."""
    cuts = safe_cuts(n, segments or [])
    out, lo = [], 0
    while lo < n:
        fits = cuts[(cuts > lo) & (cuts <= lo + max_len)]
        if not len(fits):
            return None
        out.append((lo, int(fits[-1])))
        lo = int(fits[-1])
    return out


def plan_window(shards: ShardSet, start: int, n_rows: int, max_len: int, pack: bool, long_samples: str = "drop",
                shuffle: bool = False, seed: int = 0) -> Plan:
    """Lay the stream from ``start`` into ``n_rows`` rows; every process computes the same plan."""
    remaining = np.full(n_rows, max_len, dtype=np.int64)     # (packing) each row's room
    used = 0                                   # rows used (pad mode)
    # the pieces in the order placed, a run of them at a time: their rows and stream indices. A piece is its whole
    # sample unless ``cut`` holds its token range (keyed by its place in that order)
    rows_parts: list[np.ndarray] = []         # (each piece's row in the window,
    srows_parts: list[np.ndarray] = []        #  its sample's row in the shard set,
    g_parts: list[np.ndarray] = []            #  and its sample's stream index)
    n_pieces = 0
    cut: dict[int, tuple[int, int]] = {}
    dropped: Counter = Counter()
    g = start
    room = max(64, 4 * n_rows)                 # samples placed per compiled call (it returns when they are full)
    rows_out, srows_out = np.empty(room, np.int64), np.empty(room, np.int64)
    since_placed = 0

    def drop(reason: str) -> tuple[int, int]:
        dropped[reason] += 1
        if since_placed + 1 > len(shards):     # a whole epoch and nothing fits: stop instead of spinning
            raise DataError(f"no sample of {shards.path} fits a window of {n_rows} rows x {max_len} tokens")
        return g + 1, since_placed + 1

    while True:
        if pack:                               # the common case, whole samples that fit: first fit, compiled
            perm, epoch_end = shards.epoch_map(g, shuffle, seed)
            placed, status = kernels.first_fit_stream(g, epoch_end, perm, shards.lengths, remaining, max_len,
                                                      rows_out, srows_out)
            if placed:                         # the samples just placed: the next ones of the stream
                rows_parts.append(rows_out[:placed].copy())
                srows_parts.append(srows_out[:placed].copy())
                g_parts.append(np.arange(g, g + placed))
                n_pieces += placed
                g += placed
                since_placed = 0
            if status == 1:
                break                          # fits no row: the next window starts with it (rows are not empty:
                                               # an empty window has max_len free in every row)
            if status == 0:
                continue                       # the epoch's end, or room for more: go on
        r = int(shards.order(g, g + 1, shuffle, seed)[0])
        n = int(shards.lengths[r])
        if n > max_len:
            pieces = None
            if long_samples == "split":
                _, segs, _, _ = shards.row(r)
                pieces = split_sample(n, segs, max_len)
            if pieces is None:
                g, since_placed = drop("too_long" if long_samples == "drop" else "span_longer_than_max_len")
                continue
        else:
            pieces = [(0, n)]
        if pack:
            # a cut sample's pieces go in by the same first fit, all or none (on a copy: nothing to undo)
            trial, at = remaining.copy(), np.empty(len(pieces), np.int64)
            placed, _ = kernels.first_fit(np.array([hi - lo for lo, hi in pieces], np.int64), 0, trial, max_len, at)
            fits, where = placed == len(pieces), at
        else:
            fits = used + len(pieces) <= n_rows
            where = np.arange(used, used + len(pieces))
        if not fits:
            if n_pieces:
                break                          # the next window starts with this sample
            g, since_placed = drop("more_pieces_than_rows")   # it would not fit an empty window either
            continue
        if pack:
            remaining = trial
        else:
            used += len(pieces)
        if len(pieces) > 1:
            cut.update(zip(range(n_pieces, n_pieces + len(pieces)), pieces))
        rows_parts.append(where)
        srows_parts.append(np.full(len(pieces), r))
        g_parts.append(np.full(len(pieces), g))
        n_pieces += len(pieces)
        g += 1
        since_placed = 0
    # every piece as (stream index, row in the shard set, lo, hi), row by row (each row's pieces in the order placed)
    join = (lambda parts: parts[0]) if len(g_parts) == 1 else np.concatenate   # noqa: E731  (one run: most windows)
    at, spans = (np.fromiter(cut, np.int64, len(cut)), np.array(list(cut.values()), np.int64)) if cut else _NO_CUTS
    pieces, sizes = kernels.by_row(join(g_parts), join(rows_parts), join(srows_parts), shards.lengths, at, spans,
                                   n_rows)
    return Plan(start, g, pieces, sizes[sizes > 0], dropped)


_NO_CUTS = (np.zeros(0, np.int64), np.zeros((0, 2), np.int64))


def expand(ids: torch.Tensor, flags: torch.Tensor, table: torch.Tensor, labels: torch.Tensor | None = None
           ) -> dict[str, torch.Tensor]:
    """The model's tensors from a ``Batch``'s, on whatever device they are: input_ids, labels and position ids int64,
    weights float32 (``table[weight class]``), the perceptual mask bool."""
    cls = (flags & WEIGHT_CLASS).long()
    input_ids = ids.long()
    if labels is None:
        labels = torch.where(cls != 0, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    ramp = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape)
    start = torch.where((flags & PIECE_START) != 0, ramp, torch.zeros_like(ramp))
    return {"input_ids": input_ids, "labels": labels.long(), "weights": table.to(ids.device)[cls],
            "percept_mask": (flags & PERCEPT) != 0,
            "position_ids": ramp - torch.cummax(start, dim=1).values}   # positions restart at each piece


class Batch(Mapping):
    """One micro-batch as the loader hands it over: the ids as stored (int32) and one byte of flags a token (weight
    class, perceptual mark, piece start: aromni.train.labels), 5 bytes a token instead of the 29 of the model's
    tensors. ``to(device)`` moves these and expands them there (``expand``: on a GPU the widening is free);
    indexing it like the dict of model tensors expands them once on the CPU."""
    KEYS = ("input_ids", "labels", "weights", "percept_mask", "position_ids")

    def __init__(self, ids: torch.Tensor, flags: torch.Tensor, table: torch.Tensor,
                 labels: torch.Tensor | None = None):
        self.ids, self.flags, self.table, self.labels = ids, flags, table, labels   # labels: stored ones only
        self._cpu: dict[str, torch.Tensor] | None = None

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    def to(self, device, non_blocking: bool = False) -> dict[str, torch.Tensor]:
        move = lambda x: None if x is None else x.to(device, non_blocking=non_blocking)  # noqa: E731
        return expand(move(self.ids), move(self.flags), self.table, move(self.labels))

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._cpu is None:
            self._cpu = self.to("cpu")
        return self._cpu[key]

    def __iter__(self):
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)


@dataclass
class Window:
    """One optimizer step for one rank: ``micro`` holds gradient_accumulation_steps micro-batches."""
    start: int
    end: int
    micro: list[Batch]
    weight_sum: float        # this rank's sum of loss weights (the loop all-reduces it), exact in float64
    percept_count: int       # this rank's perceptual positions
    filled: int              # this rank's micro-batches that hold rows (the others are empty placeholders)
    tokens: int              # real tokens (no padding) on this rank
    samples: list[int]       # stream indices on this rank, in row order
    dropped: Counter


class Loader:
    """Windows for one rank, starting at ``consumed`` samples; iterate or call ``next_window()``."""

    def __init__(self, shards: ShardSet, *, rank: int, world: int, micro_batch: int, train_batch: int,
                 max_len: int, pack: bool = True, policy: LossPolicy = LossPolicy(),
                 perceptual_tasks: tuple[str, ...] = ("text_to_image",), long_samples: str = "drop",
                 shuffle: bool = False, seed: int = 0, consumed: int = 0, vocab_size: int | None = None,
                 prefetch: int = 0, weight_rule: str = "aromni"):
        if train_batch % (micro_batch * world):
            raise DataError(f"train batch {train_batch} is not a multiple of micro batch {micro_batch} x world {world}")
        self.shards, self.rank, self.world, self.mb = shards, rank, world, micro_batch
        self.train_batch, self.max_len, self.pack = train_batch, max_len, pack
        self.policy, self.perceptual_tasks = policy, tuple(perceptual_tasks)
        self.long_samples, self.shuffle, self.seed = long_samples, shuffle, seed
        self.vocab_size, self.weight_rule = vocab_size, weight_rule
        self._derived: OrderedDict[int, tuple] = OrderedDict()
        self._table = torch.from_numpy(weight_table(policy))   # the weight of each weight class
        self._weights = self._table.tolist()
        # row groups kept derived between windows: a window holds the ones it reads while it collates, and the next
        # one continues in the last of them; keeping more costs time (a decode then lands in memory that left the
        # caches long ago)
        self.derived_cache = 2
        self.consumed = consumed
        self.layout = shards.layout
        self._prefetch = prefetch
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- one sample -> (ids, labels, weights, perceptual mask) -------------------------------------------
    def derived(self, rg: int) -> tuple[FlatRows, Derived]:
        """(flat rows, their flags) of row group ``rg``, derived once for the whole group (aromni.train.labels)
        and kept for the next window (``derived_cache`` groups)."""
        hit = self._derived.get(rg)
        if hit is not None:
            self._derived.move_to_end(rg)
            return hit
        g = self.shards.row_group(rg)
        if self.vocab_size is not None and len(g.ids) and int(g.ids.max()) >= self.vocab_size:
            bad = int(np.searchsorted(g.offsets, int(np.argmax(g.ids >= self.vocab_size)), side="right") - 1)
            raise DataError(f"row {int(self.shards.rg_start[rg]) + bad} of {self.shards.path} has id "
                            f"{int(g.ids.max())}, outside the model's vocabulary of {self.vocab_size} (wrong model "
                            f"for this data?)")
        out = (g, derive_flags(g, self.policy, self.layout, self.perceptual_tasks, self.weight_rule))
        self._derived[rg] = out
        while len(self._derived) > self.derived_cache:
            self._derived.popitem(last=False)
        return out

    def sample_arrays(self, row: int):
        """(ids, labels, weights, perceptual mask) of one row."""
        rg = int(np.searchsorted(self.shards.rg_start, row, side="right") - 1)
        g, d = self.derived(rg)
        k = row - int(self.shards.rg_start[rg])
        lo, hi = int(g.offsets[k]), int(g.offsets[k + 1])
        return (g.ids[lo:hi], *d.arrays(g.ids, lo, hi))

    def _collate(self, rows: list[list[Piece]]) -> Batch:
        """One micro-batch of the given rows (a plan's rows as ``Piece`` lists)."""
        spec = np.array([p for r in rows for p in r], dtype=np.int64).reshape(-1, 4)
        return self._collate_pieces(spec, np.array([len(r) for r in rows], np.int64),
                                    np.array([len(rows)], np.int64))[0][0]

    def _collate_pieces(self, spec: np.ndarray, per_row: np.ndarray, per_batch: np.ndarray
                        ) -> tuple[list[Batch], np.ndarray]:
        """(micro-batches, [tokens of weight class 1, 2, 3, perceptual tokens, real tokens]) for pieces ``spec``
        ([n, 4] as ``Plan.pieces``, row after row), ``per_row`` pieces in each row (at least one) and
        ``per_batch`` rows in each micro-batch. Micro-batches, each [rows, longest row] and C-contiguous, are
        laid out one after another in one flat buffer per tensor (ids as stored, flags); one compiled call
        (``kernels.collate``) places the pieces, copies them with their first-token rule, pads the rows and
        counts the flags, so every byte is written once and no Python runs per piece."""
        rg_start = self.shards.rg_start
        rgs = np.searchsorted(rg_start, spec[:, 1], side="right") - 1
        used = sorted(set(rgs.tolist()))             # the few row groups the pieces come from
        # (the row group of the stream's last sample is asked for last: the next window continues in it)
        last = int(rgs[np.argmax(spec[:, 0])])
        held = {rg: self.derived(rg) for rg in used if rg != last}
        held[last] = self.derived(last)
        groups = [held[rg] for rg in used]
        ids = tuple(g.ids for g, _ in groups)
        if len({a.dtype for a in ids}) > 1:          # (shards whose id types differ: one type for the window)
            ids = tuple(a.astype(np.int64) for a in ids)
        ids, flags, widths, counts, src, dst, k = kernels.collate(
            spec, per_row, per_batch, rg_start, np.array(used, np.int64), ids, tuple(d.flags for _, d in groups),
            tuple(g.offsets for g, _ in groups), self.layout.train_pad,
            # a packed row's padding is its own piece (restarted positions keep real tokens from seeing it; causal
            # attention already does), a single padded sample's positions just continue
            PIECE_START if self.pack else 0, PIECE_START, PERCEPT)
        labels = None
        if any(d.labels is not None for _, d in groups):   # imported labels that are not the ids: carried
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
            for r, s, e, a in zip(rgs.tolist(), src.tolist(), (src + k).tolist(), dst.tolist()):
                g, d = held[r]
                labels[a:a + e - s] = d.arrays(g.ids, s, e)[0]
            labels[dst[k > 0]] = IGNORE_INDEX       # (a piece's first token: no label, as its flags say)
        out, a, tensor = [], 0, torch.from_numpy     # (views of numpy views: cheaper than torch's own slicing)
        for B, T in zip(per_batch.tolist(), widths.tolist()):
            b = a + B * T
            out.append(Batch(tensor(ids[a:b].reshape(B, T)), tensor(flags[a:b].reshape(B, T)), self._table,
                             None if labels is None else tensor(labels[a:b].reshape(B, T))))
            a = b
        return out, counts

    def plan(self, start: int) -> Plan:
        return plan_window(self.shards, start, self.train_batch, self.max_len, self.pack, self.long_samples,
                           self.shuffle, self.seed)

    def _empty_micro(self) -> Batch:
        """A one-token row with no loss: a rank whose slots are empty still runs every micro step (DeepSpeed's
        accumulation boundary and the gradient all-reduce need all ranks in step)."""
        return Batch(torch.full((1, 1), self.layout.train_pad, dtype=torch.int32),
                     torch.zeros((1, 1), dtype=torch.uint8), self._table)

    def build_window(self, start: int) -> Window:
        plan = self.plan(start)
        R = len(plan.row_sizes)
        # this rank's rows of each micro step: rows lo..lo+mb of the plan (none past its last row)
        firsts = range(self.rank * self.mb, self.train_batch, self.world * self.mb)
        steps = [(lo, min(lo + self.mb, R)) for lo in firsts]
        filled = sum(lo < R for lo, _ in steps)        # the filled steps come first
        if filled:
            if self.world == 1:                        # every row, in order
                spec, per_row = plan.pieces, plan.row_sizes
            else:
                first_piece = np.concatenate([[0], np.cumsum(plan.row_sizes)])
                spec = np.concatenate([plan.pieces[first_piece[lo]:first_piece[hi]] for lo, hi in steps[:filled]])
                per_row = np.concatenate([plan.row_sizes[lo:hi] for lo, hi in steps[:filled]])
            per_batch = np.array([hi - lo for lo, hi in steps[:filled]], np.int64)
            micro, counts = self._collate_pieces(spec, per_row, per_batch)
        else:
            micro, counts, spec = [], np.zeros(5, np.int64), np.zeros((0, 4), np.int64)
        micro += [self._empty_micro() for _ in steps[filled:]]
        samples = spec[:, 0].tolist()                  # in row order
        # this rank's weight sum and perceptual positions, from the flags (empty micro-batches hold neither)
        n1, n2, n3, pcount, tokens = counts.tolist()
        w = n1 * self._weights[1] + n2 * self._weights[2] + n3 * self._weights[3]
        return Window(plan.start, plan.end, micro, w, pcount, filled, tokens, samples, plan.dropped)

    # ---- iteration (optionally prefetched in a thread: windows are a pure function of the start) -----------
    def next_window(self) -> Window:
        if self._prefetch <= 0:
            w = self.build_window(self.consumed)
        else:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=self._prefetch)
                self._thread = threading.Thread(target=self._produce, args=(self.consumed,), daemon=True)
                self._thread.start()
            w = self._queue.get()
            if isinstance(w, BaseException):
                raise w
        self.consumed = w.end
        return w

    def _produce(self, start: int) -> None:
        try:
            while not self._stop.is_set():
                w = self.build_window(start)
                start = w.end
                while not self._stop.is_set():
                    try:
                        self._queue.put(w, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced in next_window
            self._queue.put(e)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __iter__(self):
        while True:
            yield self.next_window()
