"""Where an index keeps its rows: the :class:`VectorStore` interface and the stores behind it."""

from __future__ import annotations

from .base import Entry, VectorStore

__all__ = ["Entry", "VectorStore"]
