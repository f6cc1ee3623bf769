"""Where a bundle is: a local folder, or ``hf://OWNER/REPO[@REVISION]`` fetched from the Hugging Face Hub.

Every command's BUNDLE argument and ``Encoder(...)`` go through :func:`locate_bundle`. A local path is
returned as it is; a Hub reference is downloaded into huggingface_hub's cache (the ``[hub]`` extra; no
torch): first the bundle's ``manifest.json``, then exactly the files it lists, and every one of them is
checked against the manifest's sha256 before use (once per file state: see
:func:`~altclip_onnx.bundle.verify_files`). huggingface_hub's own rules apply: ``HF_HUB_OFFLINE=1`` uses
the cache only, ``HF_HUB_CACHE``/``HF_HOME`` move it, ``HF_ENDPOINT`` points at a mirror, ``HF_TOKEN``
reads private repositories.

The other direction, ``altclip-onnx push``, is :mod:`altclip_onnx.publish`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle import MANIFEST, Manifest, needed_files, read_manifest, verify_files
from .errors import BundleError, InputError, MissingDependencyError, one_line

log = logging.getLogger(__name__)

HUB_PREFIX = "hf://"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_reference(name: str | os.PathLike[str]) -> bool:
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def is_repo_id(text: str) -> bool:
    """``OWNER/REPO``, as the Hub spells a repository."""
    return _REPO_ID.fullmatch(text) is not None


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
    if not is_repo_id(repo_id) or ".." in repo_id or (revision == "" and "@" in rest):
        raise InputError(f"{name}: not a Hub bundle reference; write hf://OWNER/REPO or hf://OWNER/REPO@REVISION")
    return HubReference(repo_id, revision or None)


def locate_bundle(name: str | os.PathLike[str], *, precisions: Sequence[str] | None = None) -> Path:
    """The local folder of a bundle: ``name`` itself, or the Hub snapshot it names (downloaded if needed).

    ``precisions`` (Hub only): download just these variants (and the tokenizer) instead of every one.
    """
    if is_hub_reference(name):
        return download_bundle(parse_reference(str(name)), precisions=precisions)
    return Path(name)


def require_hub(feature: str) -> Any:
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

    Asked once, without retries: huggingface_hub retries a file it does not have cached with backoff, for
    long, even when the connection is refused. The Hub answering with an error is not "unreachable":
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
    hub = require_hub(f"loading {ref}")
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
    """The checksummed files to download: all of them, or what running ``precisions`` needs (see
    :func:`~altclip_onnx.bundle.needed_files`)."""
    if precisions is None:
        return sorted(manifest.files)
    return needed_files(manifest, [(tower, precision) for tower in manifest.towers for precision in precisions])
