"""altclip-onnx: AltCLIP (multilingual CLIP) as verified ONNX bundles, run without PyTorch.

The public surface is listed in ``__all__``; everything else is an implementation module.
Importing this package never imports torch or transformers.
"""

from __future__ import annotations

from .bundle import FORMAT_VERSION, Manifest, check_integrity, read_manifest
from .runtime.encoder import DEFAULT_TEMPLATES, Encoder
from .errors import (
    AltclipOnnxError,
    BundleError,
    ExportError,
    InputError,
    MissingDependencyError,
    SourceError,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TEMPLATES",
    "FORMAT_VERSION",
    "Encoder",
    "AltclipOnnxError",
    "BundleError",
    "ExportError",
    "InputError",
    "Manifest",
    "MissingDependencyError",
    "SourceError",
    "VerificationError",
    "__version__",
    "check_integrity",
    "read_manifest",
]
