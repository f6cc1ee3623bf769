"""The runtime half, the engine: onnxruntime, tokenizers, numpy and Pillow only (never torch or transformers).

images (pixels), text (token ids), providers (sessions), encoder (embeddings and zero-shot), pipeline
(many inputs, decoded in threads), outputs (files, resumable), bench (timing a bundle), doctor (the install).
"""

from __future__ import annotations

from .encoder import DEFAULT_TEMPLATES, Encoder

__all__ = ["DEFAULT_TEMPLATES", "Encoder"]
