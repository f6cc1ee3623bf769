"""The runtime half: onnxruntime, tokenizers, numpy and Pillow only (never torch or transformers)."""

from __future__ import annotations

from .encoder import DEFAULT_TEMPLATES, Encoder

__all__ = ["DEFAULT_TEMPLATES", "Encoder"]
