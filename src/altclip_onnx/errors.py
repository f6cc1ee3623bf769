"""One exception tree for everything altclip-onnx raises on purpose.

Every message is meant to be shown to a user as a single line: which file or name, what is
wrong, what to do. The CLI prints ``str(error)`` and exits non-zero; it never shows a traceback
for these.
"""

from __future__ import annotations


class AltclipOnnxError(Exception):
    """Root of all errors raised by altclip-onnx on purpose."""

    exit_code = 1


class BundleError(AltclipOnnxError):
    """A bundle folder is missing, incomplete, corrupt or of an unknown format version."""


class SourceError(AltclipOnnxError):
    """A model source (Hub id, short name, local checkpoint) cannot be resolved or loaded."""


class ExportError(AltclipOnnxError):
    """Exporting, optimizing or writing a bundle failed."""


class VerificationError(AltclipOnnxError):
    """ONNX outputs differ from the PyTorch reference by more than the gate allows."""

    exit_code = 3

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class InputError(AltclipOnnxError):
    """User input (an image, a text list, an option value) cannot be used."""


class MissingDependencyError(AltclipOnnxError):
    """An optional feature needs packages that are not installed."""

    def __init__(self, feature: str, extra: str, packages: str | None = None) -> None:
        self.feature = feature
        self.extra = extra
        what = f" ({packages})" if packages else ""
        super().__init__(
            f"{feature} needs the [{extra}] extra{what}: pip install 'altclip-onnx[{extra}]'"
        )
