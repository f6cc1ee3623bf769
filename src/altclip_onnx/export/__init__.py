"""The export half (needs the [export] extra: torch, transformers, onnx, sentencepiece).

Heavy imports stay inside the functions that need them, so this package imports cheaply.
"""

from __future__ import annotations

from .build import ExportOptions, ExportResult, export_bundle
from .verify import verify_against_model

__all__ = ["ExportOptions", "ExportResult", "export_bundle", "verify_against_model"]
