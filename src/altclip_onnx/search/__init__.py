"""Photo search: an incremental index of image embeddings, queried by text in any of the model's
languages or by example. The storage behind it is a :class:`~altclip_onnx.search.store.VectorStore`."""

from __future__ import annotations

from .index import Hit, Index, ModelRecord, UpdateReport

__all__ = ["Hit", "Index", "ModelRecord", "UpdateReport"]
