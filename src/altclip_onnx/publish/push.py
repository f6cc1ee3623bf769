"""``altclip-onnx push``: a bundle to the Hugging Face Hub, its checked files and a generated model card
(:mod:`.card`) in one commit. Loading from the Hub is :mod:`altclip_onnx.hub`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle import MANIFEST, REFERENCE_FILES, TOWERS, VERIFY_REPORT, require_integrity
from ..errors import InputError, OutputError, one_line
from ..hub import is_hub_reference, is_repo_id, require_hub
from .card import model_card

MODEL_CARD = "README.md"
#: The folders a bundle writes into: what a new push replaces as a whole.
BUNDLE_FOLDERS = (*TOWERS, *{name.split("/")[0] for name in REFERENCE_FILES})


@dataclass
class PushPlan:
    """What ``push`` uploads: (path in the repository, local file) pairs, plus the generated model card."""

    repo_id: str
    bundle: Path
    files: list[tuple[str, Path]] = field(default_factory=list)
    card: str = ""
    branch: str | None = None
    private: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for _, path in self.files) + len(self.card.encode("utf-8"))

    def operations(self) -> list[Any]:
        from huggingface_hub import CommitOperationAdd

        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in self.files]
        ops.append(CommitOperationAdd(path_in_repo=MODEL_CARD, path_or_fileobj=self.card.encode("utf-8")))
        return ops


def plan_push(bundle: str | os.PathLike[str], repo_id: str, *, branch: str | None = None,
              private: bool = False) -> PushPlan:
    """Check every file of the bundle against its manifest and list what a push uploads (no network)."""
    if not is_repo_id(repo_id):
        raise InputError(f"{repo_id}: not a repository id; write OWNER/REPO")
    folder = Path(bundle)
    if is_hub_reference(str(bundle)):
        raise InputError(f"{bundle}: push takes a local bundle folder")
    manifest = require_integrity(folder)  # what is uploaded is what was verified
    files = [(MANIFEST, folder / MANIFEST)] + [(name, folder / name) for name in sorted(manifest.files)]
    if (folder / VERIFY_REPORT).is_file():
        files.append((VERIFY_REPORT, folder / VERIFY_REPORT))
    card = model_card(manifest, repo_id, verify_report=folder / VERIFY_REPORT)
    return PushPlan(repo_id, folder, files, card, branch, private)


def push_bundle(plan: PushPlan, *, commit_message: str | None = None, token: str | None = None,
                api: Any = None, progress: Callable[[str], None] = lambda step: None) -> str:
    """Upload ``plan`` in one commit (creating the repository if needed); returns the commit URL.

    Files of an earlier push that this bundle does not have (under ``visual/``, ``textual/`` and
    ``reference/``, and an old ``verify.json``) are deleted in the same commit, so the repository holds exactly one bundle; other files
    (``.gitattributes``, anything added by hand) are left alone.
    """
    hub = require_hub("altclip-onnx push")
    api = api if api is not None else hub.HfApi(token=token)
    try:
        progress(f"creating {plan.repo_id} if it does not exist")
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
        operations = plan.operations()
        uploaded = {name for name, _ in plan.files} | {MODEL_CARD}
        existing = api.list_repo_files(plan.repo_id, revision=plan.branch, repo_type="model")
        stale = [name for name in existing if name not in uploaded
                 and (name.split("/")[0] in BUNDLE_FOLDERS or name == VERIFY_REPORT)]
        operations += [hub.CommitOperationDelete(path_in_repo=name) for name in stale]
        progress(f"uploading {len(plan.files) + 1} files ({plan.total_bytes / 1e6:.1f} MB) to {plan.repo_id}"
                 + (f", deleting {len(stale)} stale" if stale else ""))
        info = api.create_commit(plan.repo_id, operations,
                                 commit_message=commit_message or f"altclip-onnx bundle ({len(plan.files)} files)",
                                 revision=plan.branch, repo_type="model")
    except Exception as exc:  # network, authentication, permissions: all from huggingface_hub
        if isinstance(exc, hub.errors.RepositoryNotFoundError | hub.errors.HfHubHTTPError) and _is_auth(exc):
            raise OutputError(f"{plan.repo_id}: the Hub refused the push ({type(exc).__name__}: {one_line(exc)}); "
                              "log in with 'hf auth login' or pass a token with write access (HF_TOKEN)") from exc
        raise OutputError(
            f"{plan.repo_id}: could not push to the Hugging Face Hub ({type(exc).__name__}: {one_line(exc)}); on a "
            f"machine with access, copy the bundle there and run 'altclip-onnx push BUNDLE {plan.repo_id}'"
        ) from exc
    return str(getattr(info, "commit_url", info))


def _is_auth(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) in (401, 403)
