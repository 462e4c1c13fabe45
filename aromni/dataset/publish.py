"""``aromni publish``: validate, write the card, upload the build to a Hugging Face dataset repo.

What goes up: README.md (the card), manifest.json, the shards and rejects files the manifest lists (never a glob of
``data/``: a stray file there is a validate finding, not a shard), plots/*.png — never parts/ (per-unit
intermediates) or anything else in the folder. The upload is ``HfApi.upload_folder``, which with hf_xet (a
dependency of huggingface_hub) streams files in several commits and resumes: rerunning the same command after an
interruption skips what is already committed and re-sends no chunk the Hub already has.

The token comes from ``HF_TOKEN`` or the user's ``hf auth login`` (``huggingface_hub.get_token``), is passed to the
client in memory and is never written, printed or logged by aromni. ``HF_ENDPOINT`` selects another Hub endpoint.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from aromni.dataset.card import CARD, write_card
from aromni.dataset.folder import BuildFolder, DatasetError
from aromni.dataset.stats import PLOT_FILES, PLOTS_DIR
from aromni.pipeline.manifest import MANIFEST

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
             *(f"{PLOTS_DIR}/{n}" for n in sorted(PLOT_FILES))]
    return [(n, (folder.path / n).stat().st_size) for n in names if (folder.path / n).is_file()]


def _endpoint(endpoint: str | None) -> str | None:
    return endpoint or os.environ.get("HF_ENDPOINT") or None


def publish(path: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
            dry_run: bool = False, allow_stand_in: bool = False, token: str | None = None,
            endpoint: str | None = None, license: str | None = None, source_licenses: dict[str, str] | None = None,
            commit_message: str | None = None) -> PublishResult:
    from aromni.pipeline.validate import validate

    if not REPO_ID.match(repo_id or ""):
        raise PublishError(f"--repo {repo_id!r}: expected ORG/NAME (letters, digits, '.', '_', '-'), e.g. my-org/my-data")
    folder = BuildFolder(path)
    # cheap refusals first: validating a big build takes a while
    notes = []
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
