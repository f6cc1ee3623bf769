"""Few-shot classification with Tip-Adapter: a cache of labelled image embeddings, no training."""

from __future__ import annotations

from .adapter import TipAdapter, tip_adapter_logits
from .build import build_cache
from .evaluate import Evaluation, classify_with_cache, evaluate

__all__ = ["Evaluation", "TipAdapter", "build_cache", "classify_with_cache", "evaluate", "tip_adapter_logits"]
