"""Where a bundle is: a local folder, or ``hf://OWNER/REPO[@REVISION]`` fetched from the Hugging Face Hub.

Every command's BUNDLE argument and ``Encoder(...)`` go through :func:`locate_bundle`. A local path is
returned as it is; a Hub reference is downloaded into huggingface_hub's cache (the ``[hub]`` extra; no
torch): first the bundle's ``manifest.json``, then exactly the files it lists, and every one of them is
checked against the manifest's sha256 before use (once per file state: see
:func:`~altclip_onnx.bundle.verify_files`). huggingface_hub's own rules apply: ``HF_HUB_OFFLINE=1`` uses
the cache only, ``HF_HUB_CACHE``/``HF_HOME`` move it, ``HF_ENDPOINT`` points at a mirror, ``HF_TOKEN``
reads private repositories.

:func:`push_bundle` is the other direction (``altclip-onnx push``): the bundle's checked files and a
generated model card (:mod:`altclip_onnx.convert.card`) in one commit.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import MANIFEST, VERIFY_REPORT, Manifest, read_manifest, verify_files
from .errors import BundleError, InputError, MissingDependencyError, OutputError, one_line

log = logging.getLogger(__name__)

HUB_PREFIX = "hf://"
MODEL_CARD = "README.md"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_reference(name: str | os.PathLike[str]) -> bool:
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


@dataclass(frozen=True)
class HubReference:
    """``hf://OWNER/REPO[@REVISION]``: a model repository and a branch, tag or commit (default: main)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def parse_reference(name: str) -> HubReference:
    """Split ``hf://OWNER/REPO[@REVISION]``; :class:`InputError` (one line, with the syntax) otherwise."""
    rest = name[len(HUB_PREFIX):] if name.startswith(HUB_PREFIX) else name
    repo_id, _, revision = rest.partition("@")
    repo_id = repo_id.rstrip("/")
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or (revision == "" and "@" in rest):
        raise InputError(f"{name}: not a Hub bundle reference; write hf://OWNER/REPO or hf://OWNER/REPO@REVISION")
    return HubReference(repo_id, revision or None)


def locate_bundle(name: str | os.PathLike[str], *, precisions: Sequence[str] | None = None) -> Path:
    """The local folder of a bundle: ``name`` itself, or the Hub snapshot it names (downloaded if needed).

    ``precisions`` (Hub only): download just these variants (and the tokenizer) instead of every one.
    """
    if is_hub_reference(name):
        return download_bundle(parse_reference(str(name)), precisions=precisions)
    return Path(name)


def _require_hub(feature: str) -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise MissingDependencyError(feature, "hub", "huggingface-hub missing") from exc
    return huggingface_hub


def _download_hint(ref: HubReference) -> str:
    revision = f" --revision {ref.revision}" if ref.revision else ""
    name = ref.repo_id.split("/")[-1]
    return (f"on a machine with access run 'hf download {ref.repo_id}{revision} --local-dir {name}', copy the "
            f"folder here and pass its path as the bundle (or set HF_ENDPOINT to a mirror)")


def _hub_failure(ref: HubReference, exc: Exception, what: str) -> BundleError:
    """One line for a failed download: not found, or unreachable (then what to run elsewhere)."""
    from huggingface_hub import errors

    reason = f"{type(exc).__name__}: {one_line(exc)}"
    if isinstance(exc, errors.RevisionNotFoundError):
        return BundleError(f"{ref}: the repository has no revision {ref.revision!r} ({reason})")
    if isinstance(exc, errors.RepositoryNotFoundError):  # also private repositories without a token
        return BundleError(f"{ref}: no such repository on the Hub, or it is private and no token was given "
                           f"(log in with 'hf auth login' or set HF_TOKEN) ({reason})")
    if isinstance(exc, errors.EntryNotFoundError) and not isinstance(exc, errors.LocalEntryNotFoundError):
        return BundleError(f"{ref}: the repository has no {what}, so it is not an altclip-onnx bundle "
                           "(push one with 'altclip-onnx push')")
    return BundleError(f"{ref}: could not download {what} from the Hugging Face Hub ({reason}); {_download_hint(ref)}")


def _unreachable(hub: Any, ref: HubReference) -> Exception | None:
    """Why the Hub gave no answer to one request for the manifest (refused, no route, no DNS, timed out), or None.

    Asked once, without retries: huggingface_hub retries a file it does not have cached with backoff (about
    24 s) even when the connection is refused. The Hub answering with an error is not "unreachable":
    hf_hub_download then says what it answered. Under HF_HUB_OFFLINE huggingface_hub asks nothing itself.
    """
    from huggingface_hub import constants, errors

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        hub.get_hf_file_metadata(hub.hf_hub_url(ref.repo_id, MANIFEST, revision=ref.revision))
    except (errors.HfHubHTTPError, errors.EntryNotFoundError):
        return None
    except Exception as exc:  # no answer at all
        return exc
    return None


def download_bundle(ref: HubReference, *, precisions: Sequence[str] | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch a bundle into huggingface_hub's cache and return its snapshot folder, every file checked."""
    hub = _require_hub(f"loading {ref}")
    unreachable = _unreachable(hub, ref)
    cache_only = unreachable is not None  # no answer: the cache or a one-line error, at once
    try:
        manifest_path = Path(hub.hf_hub_download(ref.repo_id, MANIFEST, revision=ref.revision, cache_dir=cache_dir,
                                                 local_files_only=cache_only))
    except Exception as exc:  # huggingface_hub raises many types for "offline" and "not found"
        raise _hub_failure(ref, unreachable or exc, MANIFEST) from exc
    folder = manifest_path.parent
    manifest = _read_manifest(ref, folder)
    wanted = bundle_files(manifest, precisions)
    try:
        snapshot = Path(hub.snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache_dir,
                                              allow_patterns=[MANIFEST, *wanted], local_files_only=cache_only))
    except Exception as exc:
        raise _hub_failure(ref, exc, f"the bundle's {len(wanted)} files") from exc
    if snapshot.resolve() != folder.resolve():  # the revision moved between the two calls
        manifest = _read_manifest(ref, snapshot)
        wanted = bundle_files(manifest, precisions)
    missing = [name for name in wanted if not (snapshot / name).is_file()]
    if missing:  # offline, huggingface_hub returns what the cache has
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise BundleError(f"{ref}: {missing[0]}{more} not in the Hub cache and could not be downloaded; "
                          f"{_download_hint(ref)}")
    try:
        verify_files(snapshot, manifest, wanted)
    except BundleError as exc:
        raise type(exc)(f"{ref}: {exc}; the copy in the Hub cache ({snapshot}) is incomplete or damaged: "
                        "delete it ('hf cache delete') and load again") from exc
    return snapshot


def _read_manifest(ref: HubReference, folder: Path) -> Manifest:
    try:
        return read_manifest(folder)
    except BundleError as exc:
        raise BundleError(f"{ref}: not a usable altclip-onnx bundle: {exc}") from exc


def bundle_files(manifest: Manifest, precisions: Sequence[str] | None = None) -> list[str]:
    """The checksummed files a bundle needs: all of them, or the graphs of ``precisions`` only, with every
    file that belongs to no graph (tokenizer, image settings)."""
    if precisions is None:
        return sorted(manifest.files)
    graph_files = {f for variants in manifest.towers.values() for v in variants.values() for f in v.files}
    files = set(manifest.files) - graph_files
    for tower, variants in manifest.towers.items():
        for precision in precisions:
            if precision not in variants:
                raise InputError(f"the bundle's {tower} tower has no {precision} variant "
                                 f"(it has {', '.join(variants)})")
            files.update(variants[precision].files)
    return sorted(files)


# --- push -------------------------------------------------------------------------------------------


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
    from .bundle import require_integrity
    from .convert.card import model_card

    if not _REPO_ID.fullmatch(repo_id):
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

    Files of an earlier push that this bundle does not have (under ``visual/`` and ``textual/``, and an old
    ``verify.json``) are deleted in the same commit, so the repository holds exactly one bundle; other files
    (``.gitattributes``, anything added by hand) are left alone.
    """
    hub = _require_hub("altclip-onnx push")
    api = api if api is not None else hub.HfApi(token=token)
    try:
        progress(f"creating {plan.repo_id} if it does not exist")
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
        operations = plan.operations()
        uploaded = {name for name, _ in plan.files} | {MODEL_CARD}
        existing = api.list_repo_files(plan.repo_id, revision=plan.branch, repo_type="model")
        stale = [name for name in existing if name not in uploaded
                 and (name.split("/")[0] in ("visual", "textual") or name == VERIFY_REPORT)]
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
