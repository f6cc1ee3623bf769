"""One exception tree for everything altclip-onnx raises on purpose.

Every message is meant to be shown to a user as a single line: which file or name, what is
wrong, what to do. The CLI prints ``str(error)`` and exits with the error's ``exit_code``; it
never shows a traceback for these. Errors from libraries underneath are chained (``raise ... from``)
so a debugger still sees the cause.

Exit codes (the CLI's, documented in README): 0 done; 1 an error below; 2 a usage error (wrong
options); 3 verification failed; 4 done, but some inputs failed and were skipped; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from importlib import metadata
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFICATION = 3
EXIT_PARTIAL = 4
EXIT_INTERRUPTED = 130


def one_line(exc: BaseException) -> str:
    """An exception's whole message on one line (whitespace collapsed, never cut)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def install_command(extra: str) -> str:
    """The pip command that adds ``extra`` (e.g. "search", "hub,convert") to this altclip-onnx, as it was installed.

    pip records where a package came from (``direct_url.json``, PEP 610): from a folder (a checkout, editable
    or not) the command names that folder, from a Git URL or an archive it names that URL; only a package from
    an index gets ``pip install 'altclip-onnx[extra]'``. Run from a virtual environment that is not activated
    (``.venv/bin/altclip-onnx``), ``pip`` would be another Python's: the command names this one's.
    """
    return f"{_pip()} install {_requirement(extra)}"


def _pip() -> str:
    """"pip", or this Python's pip by its path when it runs in a virtual environment other than the activated one."""
    active = os.environ.get("VIRTUAL_ENV")
    if sys.prefix == sys.base_prefix or (active and os.path.realpath(active) == os.path.realpath(sys.prefix)):
        return "pip"
    return f"{shlex.quote(sys.executable)} -m pip"


def _requirement(extra: str) -> str:
    origin = None
    try:
        for dist in metadata.distributions(name="altclip-onnx"):
            recorded = dist.read_text("direct_url.json")
            if recorded:
                origin = json.loads(recorded)
                break
    except (OSError, ValueError):  # an unreadable record: fall back to the index form
        origin = None
    url = origin.get("url") if isinstance(origin, dict) else None
    if not isinstance(url, str) or not url:
        return f"'altclip-onnx[{extra}]'"
    if "dir_info" in origin and url.startswith("file:"):
        folder = url2pathname(unquote(urlparse(url).path))
        editable = "-e " if (origin.get("dir_info") or {}).get("editable") else ""
        return f"{editable}{shlex.quote(f'{folder}[{extra}]')}"
    vcs = origin.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs"):
        revision = vcs.get("commit_id") or vcs.get("requested_revision")
        url = f"{vcs['vcs']}+{url}" + (f"@{revision}" if revision else "")
    return shlex.quote(f"altclip-onnx[{extra}] @ {url}")


class AltclipOnnxError(Exception):
    """Root of all errors raised by altclip-onnx on purpose."""

    exit_code = EXIT_ERROR


class BundleError(AltclipOnnxError):
    """A bundle folder is missing, incomplete or of an unknown format version."""


class IntegrityError(BundleError):
    """A bundle file differs from its manifest (size or checksum): corrupt, truncated or modified."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [message])


class SourceError(AltclipOnnxError):
    """A model source (Hub id, short name, local checkpoint) cannot be resolved or loaded."""


class ExportError(AltclipOnnxError):
    """Exporting, optimizing or converting graphs failed."""


class VerificationError(AltclipOnnxError):
    """ONNX outputs differ from the PyTorch reference by more than the gate allows."""

    exit_code = EXIT_VERIFICATION

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class InputError(AltclipOnnxError):
    """User input (an image, a text, a list file, an option value) cannot be used."""


class OutputError(AltclipOnnxError):
    """A destination cannot be written (read-only folder, full disk, exists without --overwrite)."""


class BusyError(AltclipOnnxError):
    """Another process holds the lock on an output, an index or a checkpoint."""


class StoreError(AltclipOnnxError):
    """A search index cannot be used: unreadable, of another format, or made with another model."""


class CacheError(AltclipOnnxError):
    """A Tip-Adapter cache cannot be used: unreadable, of another format, or built with another model."""


class MissingDependencyError(AltclipOnnxError):
    """An optional feature needs packages that are not installed."""

    def __init__(self, feature: str, extra: str, packages: str | None = None) -> None:
        self.feature = feature
        self.extra = extra
        what = f" ({packages})" if packages else ""
        super().__init__(f"{feature} needs the [{extra}] extra{what}: {install_command(extra)}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during long work, carrying what was kept and how to go on (one line).

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C keeps doing so; the message is for people.
    """

    exit_code = EXIT_INTERRUPTED
