"""One exception tree for everything altclip-onnx raises on purpose.

Every message is meant to be shown to a user as a single line: which file or name, what is
wrong, what to do. The CLI prints ``str(error)`` and exits with the error's ``exit_code``; it
never shows a traceback for these. Errors from libraries underneath are chained (``raise ... from``)
so a debugger still sees the cause.

Exit codes (the CLI's, documented in README): 0 done; 1 an error below; 2 a usage error (wrong
options); 3 verification failed; 4 done, but some inputs failed and were skipped; 130 interrupted.
"""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFICATION = 3
EXIT_PARTIAL = 4
EXIT_INTERRUPTED = 130


def one_line(exc: BaseException) -> str:
    """An exception's whole message on one line (whitespace collapsed, never cut)."""
    return " ".join(str(exc).split()) or type(exc).__name__


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
        super().__init__(f"{feature} needs the [{extra}] extra{what}: pip install 'altclip-onnx[{extra}]'")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during long work, carrying what was kept and how to go on (one line).

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C keeps doing so; the message is for people.
    """

    exit_code = EXIT_INTERRUPTED
