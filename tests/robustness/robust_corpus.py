"""Corpora and build helpers for the robustness tests and bench/memory.py, all made by code.

- ``demo_corpus(tmp)``: the demo corpus (``make demo-data`` leaves it in demo_data/; otherwise it is written here).
- ``split_copy``: the same items cut into more, smaller units (more done markers, so a kill lands between units).
- ``scaled_copy``: the corpus repeated ``factor`` times, every copy with new keys (bench/memory.py).
- ``write_recipe``: recipes/demo.yaml pointed at a corpus, with changes.
- ``start_build`` / ``kill_tree`` / ``snapshot``: run ``aromni build`` as a real process, SIGKILL its whole tree,
  and fingerprint an output folder (shard, part and reject sha256s + the manifest).
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO_RECIPE = REPO / "recipes" / "demo.yaml"
SECRET = "hf_aromniTestSecretDoNotLeak0123456789"   # planted as HF_TOKEN in every build the tests start


def demo_corpus(tmp: Path) -> Path:
    """The repository's demo corpus if ``make demo-data`` made it, else a fresh one under ``tmp``."""
    repo_copy = REPO / "demo_data"
    if (repo_copy / "tokenizer" / "tokenizer.json").exists() and (repo_copy / "laion" / "00000.tar").exists() \
            and (repo_copy / "eval" / "README.txt").exists():   # one made before the demo had eval sets: afresh
        return repo_copy
    from aromni.demo import make_demo_corpus
    make_demo_corpus(tmp)
    return Path(tmp)


def _tar_groups(path: Path) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """A webdataset tar as [(key, [(ext, payload), ...]), ...] in file order."""
    groups: list = []
    with tarfile.open(path) as tf:
        for m in tf:
            key, _, ext = m.name.rpartition(".")
            if not groups or groups[-1][0] != key:
                groups.append((key, []))
            groups[-1][1].append((ext, tf.extractfile(m).read()))
    return groups


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, payload in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(payload), 0
            tf.addfile(ti, io.BytesIO(payload))


def _rekey_laion(dst: Path, copy_no: int, groups: list, sidecar: pa.Table | None) -> None:
    """One LAION tar (+ its img2dataset sidecar) whose keys are prefixed with the copy number."""
    def new(key: str) -> str:
        return f"{copy_no:03d}{key[3:]}" if copy_no else key
    members = []
    for key, files in groups:
        for ext, payload in files:
            if ext == "json":
                meta = json.loads(payload)
                meta["key"] = new(meta["key"])
                payload = json.dumps(meta).encode()
            members.append((f"{new(key)}.{ext}", payload))
    write_tar(dst, members)
    if sidecar is not None:
        keys = {new(k) for k, _ in groups}
        rows = [dict(r, key=new(r["key"])) for r in sidecar.to_pylist()]
        rows = [r for r in rows if r["key"] in keys or r["status"] != "success"]
        pq.write_table(pa.Table.from_pylist(rows, schema=sidecar.schema), dst.with_suffix(".parquet"))


def split_copy(src: Path, dst: Path, laion_tars: int = 3, rows_per_group: int = 8) -> Path:
    """The demo items in more units: LAION in ``laion_tars`` tars, parquet sources in ``rows_per_group`` row groups."""
    dst = Path(dst)
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    if (src / "eval").is_dir():   # the demo recipe's decontamination sets
        shutil.copytree(src / "eval", dst / "eval")
    groups = _tar_groups(src / "laion" / "00000.tar")
    sidecar = pq.read_table(src / "laion" / "00000.parquet")
    per = -(-len(groups) // laion_tars)
    for i in range(laion_tars):
        part = groups[i * per:(i + 1) * per]
        keys = {k for k, _ in part}
        rows = [r for r in sidecar.to_pylist() if r["key"] in keys or (i == 0 and r["status"] != "success")]
        write_tar(dst / "laion" / f"{i:05d}.tar", [(f"{k}.{e}", p) for k, fs in part for e, p in fs])
        pq.write_table(pa.Table.from_pylist(rows, schema=sidecar.schema), dst / "laion" / f"{i:05d}.parquet")
    for rel in ("gigaspeech/data", "ultrafineweb/data/ultrafineweb_en"):
        for f in sorted((src / rel).glob("*.parquet")):
            (dst / rel).mkdir(parents=True, exist_ok=True)
            pq.write_table(pq.read_table(f), dst / rel / f.name, row_group_size=rows_per_group)
    return dst


def scaled_copy(src: Path, dst: Path, factor: int) -> Path:
    """``factor`` copies of every unit file, each with new keys (so nothing is a duplicate of another copy)."""
    dst = Path(dst)
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    if (src / "eval").is_dir():   # the demo recipe's decontamination sets
        shutil.copytree(src / "eval", dst / "eval")
    groups = _tar_groups(src / "laion" / "00000.tar")
    sidecar = pq.read_table(src / "laion" / "00000.parquet")
    giga = pq.read_table(src / "gigaspeech" / "data" / "train-00000-of-00001.parquet")
    ufw = pq.read_table(src / "ultrafineweb" / "data" / "ultrafineweb_en" / "part-00000.parquet")
    for k in range(factor):
        _rekey_laion(dst / "laion" / f"{k:05d}.tar", k, groups, sidecar)
        ids = [f"{s}_C{k}" if k else s for s in giga.column("segment_id").to_pylist()]
        g = giga.set_column(giga.schema.get_field_index("segment_id"), "segment_id", pa.array(ids, pa.string()))
        (dst / "gigaspeech" / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(g, dst / "gigaspeech" / "data" / f"train-{k:05d}-of-{factor:05d}.parquet", row_group_size=16)
        # Ultra-FineWeb keys are content hashes: a copy needs (slightly) new content.
        docs = [d if (k == 0 or not d.strip()) else f"{d} (copy {k})" for d in ufw.column("content").to_pylist()]
        u = ufw.set_column(0, "content", pa.array(docs, pa.string()))
        (dst / "ultrafineweb" / "data" / "ultrafineweb_en").mkdir(parents=True, exist_ok=True)
        pq.write_table(u, dst / "ultrafineweb" / "data" / "ultrafineweb_en" / f"part-{k:05d}.parquet",
                       row_group_size=32)
    return dst


def write_recipe(path: Path, data_root: Path, changes: dict | None = None, base: Path = DEMO_RECIPE) -> Path:
    """recipes/demo.yaml with ``data_root`` set and top-level/nested ``changes`` applied (dotted keys)."""
    data = yaml.safe_load(base.read_text())
    data["data_root"] = str(data_root)
    for key, value in (changes or {}).items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        node[last] = value
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
    return Path(path)


def load_demo_recipe_dict() -> dict:
    return copy.deepcopy(yaml.safe_load(DEMO_RECIPE.read_text()))


# ---- running builds as real processes ---------------------------------------------------------------------------
def build_env(ray_tmp: Path) -> dict:
    """The environment every test build runs in: offline, no usage stats, Ray's files under ``ray_tmp``, and an HF
    token planted so the security test can look for it in everything the build writes."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false",
               RAY_TMPDIR=str(ray_tmp), HF_TOKEN=SECRET, HUGGING_FACE_HUB_TOKEN=SECRET, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def build_cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aromni.cli", "build", str(recipe), "--out", str(out), "--workers", "1",
            "--no-progress", *extra]


def run_build(recipe: Path, out: Path, env: dict, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(build_cmd(recipe, out, *extra), env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def start_build(recipe: Path, out: Path, env: dict, *extra: str) -> subprocess.Popen:
    """A build in its own session (and process group), so its whole tree can be killed like a crashed node."""
    return subprocess.Popen(build_cmd(recipe, out, *extra), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO)


def session_procs(sid: int) -> list:
    """Every live process of session ``sid``: the driver, Ray's daemons and Ray's workers (which Ray puts in
    process groups of their own, so killing the group alone would leave them running)."""
    import psutil
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return out


def kill_tree(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGKILL the build's process group, then anything else left in its session; returns how many were killed."""
    killed = 0
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        killed += 1
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        left = session_procs(proc.pid)
        if not left:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of the killed build survive: {[p.pid for p in left]}")
        for p in left:
            try:
                p.kill()
                killed += 1
            except Exception:  # noqa: BLE001 - it died on its own meanwhile
                pass
        time.sleep(0.05)
    proc.wait(timeout=timeout)
    return killed


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(out: Path) -> dict:
    """What must be identical between two builds of the same recipe and inputs: every shard, part and reject file
    (by sha256) and the manifest (shards, accounting, mixing, totals, ...)."""
    out = Path(out)
    files = {str(p.relative_to(out)): sha256(p)
             for sub in ("data", "rejects", "parts") for p in sorted((out / sub).rglob("*.parquet"))}
    return {"files": files, "manifest": json.loads((out / "manifest.json").read_text())}


def temp_leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in Path(out).rglob("*") if ".tmp-" in p.name)
