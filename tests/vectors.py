"""Synthetic vectors for the store tests (both stores: tests/search and tests/postgres)."""

from __future__ import annotations

import numpy as np
import pytest

from altclip_onnx.search import Hit, Index
from altclip_onnx.search.store import Entry, VectorStore

ANN_MIN_RECALL = 0.95  # recall@10 of the approximate search against the exact one


def low_rank(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors near an 8-dimensional subspace: close neighbours, as embeddings have, not uniform noise."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 8)) @ rng.standard_normal((8, dim)) + 0.3 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def fill(store: VectorStore, vectors: np.ndarray, start: int = 0, prefix: str = "/v/") -> list[str]:
    paths = [f"{prefix}{i:05d}" for i in range(start, start + len(vectors))]
    store.add([Entry(p, i, i, f"d{i}") for i, p in enumerate(paths, start)], vectors)
    return paths


def check_approximate_search(index: Index, vectors: np.ndarray, paths: list[str]) -> None:
    """The approximate search finds what the exact one finds (recall@10), and every stored vector finds itself."""
    queries = low_rank(50, dim=vectors.shape[1], seed=1)
    recall = np.mean([
        len({h.path for h in index.search_vector(q, 10)} & {h.path for h in index.search_vector(q, 10, exact=True)})
        for q in queries]) / 10
    assert recall >= ANN_MIN_RECALL
    for i in (0, len(vectors) // 2, len(vectors) - 1):
        assert index.search_vector(vectors[i], 1)[0] == Hit(paths[i], pytest.approx(1.0, abs=1e-6))
