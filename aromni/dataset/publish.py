"""``aromni publish``: validate, write the card, upload the build to a Hugging Face dataset repo.

What goes up: README.md (the card), manifest.json, the shards and rejects files the manifest lists (never a glob of
``data/``: a stray file there is a validate finding, not a shard), plots/*.png — never parts/ (per-unit
intermediates) or anything else in the folder. The upload is ``HfApi.upload_folder``, which with hf_xet (a
dependency of huggingface_hub) streams files in several commits and resumes: rerunning the same command after an
interruption skips what is already committed and re-sends no chunk the Hub already has.

Scale: with hf_xet (installed with huggingface_hub 2.x) ``upload_folder`` *is* the large-folder upload: streamed,
committed in batches under the Hub's per-commit limits, resumed by rerunning (huggingface_hub 2.x folded the former
``upload_large_folder`` into it; there is no separate call any more). Without hf_xet it falls back to one commit,
so a build of ``large_bytes`` or more is refused in that case, with what to install. Before anything is sent, the
plan is checked against the Hub's repository limits (files per folder, file size, files per repo): a build over one
is refused with the file or folder and the setting to change (``mixing.shard_rows`` for too many/too large shards).

A build on object storage (``s3://``, ``gs://``, ``memory://``, any fsspec URL) is first staged into a local folder
(``staging``; default under ``~/.cache/aromni/publish``) through fsspec: the manifest, then exactly the shards and
rejects it lists (paths checked to stay inside the build), each copied once and skipped on a rerun when its size
matches; validate then runs on the staged bytes, the card and plots are written there, and that folder is uploaded.

The token comes from ``HF_TOKEN`` or the user's ``hf auth login`` (``huggingface_hub.get_token``), is passed to the
client in memory and is never written, printed or logged by aromni. ``HF_ENDPOINT`` selects another Hub endpoint.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from aromni.dataset.card import CARD, write_card
from aromni.dataset.folder import BuildFolder, DatasetError
from aromni.dataset.filtering import filtering, plot_files
from aromni.dataset.stats import PLOT_FILES, PLOTS_DIR
from aromni.pipeline.manifest import MANIFEST
from aromni.pipeline.validate import Folder, validate

# The Hub's repository limits (https://huggingface.co/docs/hub/storage-limits): keep a folder under 10k files, a
# repo under 100k, and a file under 50 GB. Module constants so a deployment with other limits can set them.
HUB_MAX_FILES_PER_FOLDER = 10_000
HUB_MAX_FILES_PER_REPO = 100_000
HUB_MAX_FILE_BYTES = 50 * 10**9
LARGE_BYTES = 5 * 2**30  # from here on the upload must be the streamed multi-commit one (hf_xet)
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PublishError(DatasetError):
    """Publishing refused or failed; the message says why and what to do."""


@dataclass
class PublishResult:
    repo_id: str
    revision: str | None
    private: bool
    files: list[tuple[str, int]]          # (path in repo, bytes)
    dry_run: bool
    stand_in: bool
    commit_url: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)


def upload_files(folder: BuildFolder) -> list[tuple[str, int]]:
    """What ``publish`` uploads, as (path relative to the folder, size), in a stable order: the card, the manifest,
    the shards and rejects the manifest lists (validate has checked those paths), the plots the card links."""
    names = [CARD, MANIFEST, *sorted(s["path"] for s in folder.shards), *sorted(folder.manifest.get("rejects", [])),
             *(f"{PLOTS_DIR}/{n}" for n in sorted(PLOT_FILES)),
             *(f"{PLOTS_DIR}/{n}" for _, _, n in plot_files(filtering(folder.manifest)))]  # the card links them
    return [(n, (folder.path / n).stat().st_size) for n in names if (folder.path / n).is_file()]


@dataclass
class UploadPlan:
    files: list[tuple[str, int]]
    large: bool                       # total bytes >= large_bytes: needs the streamed, multi-commit upload
    method: str                       # what will be called on HfApi

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)


def _xet_available() -> bool:
    from huggingface_hub import constants
    return importlib.util.find_spec("hf_xet") is not None and not constants.HF_HUB_DISABLE_XET


def plan_upload(files: list[tuple[str, int]], large_bytes: int = LARGE_BYTES) -> UploadPlan:
    """How ``files`` go up, or a PublishError naming the Hub limit a build breaks and what to change."""
    per_folder: dict[str, int] = {}
    for p, n in files:
        folder = p.rsplit("/", 1)[0] if "/" in p else "."
        per_folder[folder] = per_folder.get(folder, 0) + 1
        if n > HUB_MAX_FILE_BYTES:
            raise PublishError(f"{p} is {n:,} bytes, over the Hub's limit of {HUB_MAX_FILE_BYTES:,} per file: "
                               f"rebuild with smaller shards (mixing.shard_rows / mixing.shard_tokens)")
    for folder, k in sorted(per_folder.items()):
        if k > HUB_MAX_FILES_PER_FOLDER:
            raise PublishError(f"{folder}/ would hold {k:,} files, over the Hub's limit of "
                               f"{HUB_MAX_FILES_PER_FOLDER:,} per folder: rebuild with larger shards "
                               f"(mixing.shard_rows / mixing.shard_tokens)")
    if len(files) > HUB_MAX_FILES_PER_REPO:
        raise PublishError(f"{len(files):,} files, over the Hub's limit of {HUB_MAX_FILES_PER_REPO:,} per repo")
    total = sum(n for _, n in files)
    large = total >= large_bytes
    method = "upload_folder (streamed, multi-commit: hf_xet)" if _xet_available() else "upload_folder (one commit)"
    return UploadPlan(files, large, method)


def stage(url: str, dest: str | Path) -> Path:
    """Copy a build on object storage (any fsspec URL) into ``dest``: the manifest and exactly what it lists."""
    import json

    src = Folder(url)
    dest = Path(dest)
    if not src.exists(MANIFEST):
        raise PublishError(f"{url}: no {MANIFEST} (is this an aromni build folder?)")
    try:
        m = json.loads(src.read(MANIFEST).decode("utf-8"))
        listed = [(s["path"], "data") for s in m["shards"]] + [(r, "rejects") for r in m.get("rejects", [])]
    except (ValueError, KeyError, TypeError) as e:
        raise PublishError(f"{url}/{MANIFEST}: unreadable ({type(e).__name__}: {e}); run `aromni validate {url}`") \
            from None
    for rel, under in listed:
        why = src.confined(rel, under)
        if why:
            raise PublishError(f"{url}: the manifest lists {rel!r}, which is {why}; not staged")
    names = [rel for rel, _ in listed]
    dest.mkdir(parents=True, exist_ok=True)
    for rel in names:  # the manifest last: a staging folder is usable only once everything it lists is there
        target = dest / rel
        size = src.fs.size(src.path(rel))
        if target.is_file() and target.stat().st_size == size:
            continue  # staged by an earlier, interrupted run; validate checks its sha256 below
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.staging")
        src.fs.get_file(src.path(rel), str(tmp))
        os.replace(tmp, target)
    (dest / MANIFEST).write_bytes(src.read(MANIFEST))
    return dest


def default_staging(url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(os.environ.get("AROMNI_CACHE", Path.home() / ".cache" / "aromni")) / "publish" / key


def _endpoint(endpoint: str | None) -> str | None:
    return endpoint or os.environ.get("HF_ENDPOINT") or None


def publish(path: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
            dry_run: bool = False, allow_stand_in: bool = False, token: str | None = None,
            endpoint: str | None = None, license: str | None = None, source_licenses: dict[str, str] | None = None,
            commit_message: str | None = None, large_bytes: int = LARGE_BYTES,
            staging: str | Path | None = None) -> PublishResult:
    if not REPO_ID.match(repo_id or ""):
        raise PublishError(f"--repo {repo_id!r}: expected ORG/NAME (letters, digits, '.', '_', '-'), e.g. my-org/my-data")
    notes = []
    url = str(path)
    if "://" in url and not url.startswith("file://"):
        path = stage(url, staging or default_staging(url))
        notes.append(f"staged {url} into {path} (through fsspec)")
    elif url.startswith("file://"):
        path = fsspec.core.url_to_fs(url)[1]
    folder = BuildFolder(path)
    # cheap refusals first: validating a big build takes a while
    if folder.stand_in:
        if not (allow_stand_in or dry_run):
            raise PublishError(f"refusing to publish {folder.path}: it was built with STAND-IN tokenizers (its ids are "
                               f"not the released Chameleon/WavTokenizer codes). Pass --allow-stand-in to publish it "
                               f"anyway (the card says so in its first line).")
        notes.append(folder.warning or "STAND-IN tokenizers")
        if dry_run and not allow_stand_in:
            notes.append("a real upload of this build needs --allow-stand-in")
    if not dry_run:
        from huggingface_hub import constants, get_token

        if constants.HF_HUB_OFFLINE:
            raise PublishError("HF_HUB_OFFLINE is set: publishing needs the network; unset it for this command")
        token = token or get_token()
        if not token:
            raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (aromni never stores it)")
    found = validate(folder.path)
    if not found.ok:
        n = len(found.problems) + found.more
        raise PublishError(f"refusing to publish {folder.path}: `aromni validate` found {n} problem(s), first: "
                           f"{found.problems[0]}")
    write_card(folder.path, license=license, source_licenses=source_licenses, repo_id=repo_id, plots=None)
    files = upload_files(folder)
    plan = plan_upload(files, large_bytes)
    if plan.large and not _xet_available():
        raise PublishError(f"{folder.path}: {plan.total_bytes:,} bytes need the streamed, resumable multi-commit "
                           f"upload, which huggingface_hub does only with hf_xet: `pip install hf_xet` (and unset "
                           f"HF_HUB_DISABLE_XET), then rerun")
    notes.append(f"upload: {plan.method}, {len(files)} file(s), {plan.total_bytes:,} bytes")
    res = PublishResult(repo_id, revision, private, files, dry_run, folder.stand_in, notes=notes)
    if dry_run:
        return res

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=_endpoint(endpoint), token=token)
    try:
        # private=None when not asked: the organisation's default visibility applies (ignored if the repo exists)
        api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, repo_type="dataset", folder_path=folder.path, revision=revision,
            allow_patterns=[p for p, _ in files],  # exact names: nothing the manifest does not list
            commit_message=commit_message or f"aromni: {folder.name} ({folder.rows} rows, recipe "
                                             f"{(folder.manifest.get('recipe_sha256') or '?')[:12]})")
    except (HfHubHTTPError, ValueError) as e:  # ValueError: the Hub rejected the card's metadata
        first = " ".join(str(e).split("\n")[:3]) if str(e) else type(e).__name__
        raise PublishError(f"upload to {repo_id} failed: {first}. Rerun the same command to resume "
                           f"(files already committed are skipped).") from None
    res.commit_url = getattr(info, "commit_url", None)
    return res
