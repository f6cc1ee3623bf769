"""altclip-onnx: AltCLIP (multilingual CLIP) as verified ONNX bundles, run without PyTorch.

The public surface is listed in ``__all__`` (a test pins it); everything else is an implementation
module. Importing this package never imports torch, transformers or onnx.
"""

from __future__ import annotations

from .bundle import FORMAT_VERSION, Manifest, ModelIdentity, check_integrity, read_manifest, require_integrity
from .errors import (
    AltclipOnnxError,
    BundleError,
    BusyError,
    CacheError,
    ExportError,
    InputError,
    IntegrityError,
    Interrupted,
    MissingDependencyError,
    OutputError,
    SourceError,
    StoreError,
    VerificationError,
)
from .fewshot import Evaluation, TipAdapter, build_cache, evaluate
from .precisions import PRECISION_NAMES
from .runtime.encoder import DEFAULT_TEMPLATES, Encoder
from .runtime.outputs import EmbedOptions, embed_images_to_file, embed_texts_to_file, read_embeddings
from .runtime.pipeline import iter_image_files
from .search import Hit, Index
from .verification import VerifyReport, verify_bundle

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TEMPLATES",
    "FORMAT_VERSION",
    "PRECISION_NAMES",
    "AltclipOnnxError",
    "BundleError",
    "BusyError",
    "CacheError",
    "EmbedOptions",
    "Encoder",
    "Evaluation",
    "ExportError",
    "Hit",
    "Index",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "Manifest",
    "MissingDependencyError",
    "ModelIdentity",
    "OutputError",
    "SourceError",
    "StoreError",
    "TipAdapter",
    "VerificationError",
    "VerifyReport",
    "__version__",
    "build_cache",
    "check_integrity",
    "embed_images_to_file",
    "embed_texts_to_file",
    "evaluate",
    "iter_image_files",
    "read_embeddings",
    "read_manifest",
    "require_integrity",
    "verify_bundle",
]
