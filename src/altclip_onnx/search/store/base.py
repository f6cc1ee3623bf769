"""What an index needs from storage: the :class:`VectorStore` interface and its row type.

:class:`VectorStore` is everything :class:`~altclip_onnx.search.Index` needs from storage: add
(upsert by path), delete, approximate search, get, iterate metadata, and a key-value record of the
model that made the index. :class:`~altclip_onnx.search.store.local.LocalStore` (SQLite + usearch,
one folder) is the default; a server backend is one more class with these methods, and neither the
Index nor the CLI changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Entry:
    """One indexed file: its path, ``os.stat`` size and mtime (ns), and a digest of its bytes."""

    path: str
    size: int
    mtime_ns: int
    digest: str


@runtime_checkable
class VectorStore(Protocol):
    """Storage for an index: rows of (:class:`Entry`, unit-length float32 vector) keyed by path.

    Each :meth:`add` and :meth:`delete` is atomic and kept once it returns; :meth:`flush` makes any
    derived structure (an ANN graph) durable too, and :meth:`close` releases the store.
    """

    def __len__(self) -> int: ...

    @property
    def info(self) -> dict[str, Any]:
        """The key-value record stored with the index (which model made it, ...)."""
        ...

    def set_info(self, values: Mapping[str, Any]) -> None: ...

    def add(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        """Insert or replace rows by path; a row whose vector is unchanged only gets the new metadata."""
        ...

    def delete(self, paths: Iterable[str]) -> int:
        """Remove rows by path; returns how many existed."""
        ...

    def search(self, vector: np.ndarray, count: int) -> tuple[list[int], list[str], np.ndarray]:
        """Up to ``count`` approximate nearest rows to ``vector``: their ids, paths and stored vectors."""
        ...

    def path_of(self, row_id: int) -> str | None:
        """The path of the row with this id (ids are stable while the row is unchanged), or None."""
        ...

    def get(self, paths: Sequence[str]) -> tuple[list[Entry], np.ndarray]:
        """The rows of those ``paths`` that exist, in the given order, with their vectors."""
        ...

    def entries(self, under: str | None = None) -> Iterator[Entry]:
        """Every row's metadata (only paths starting with ``under`` when given), by path."""
        ...

    def find_digest(self, digest: str) -> tuple[list[str], np.ndarray]:
        """The rows whose files had this content digest: their paths and vectors (none: empty)."""
        ...

    def scan(self) -> Iterator[tuple[list[int], list[str], np.ndarray]]:
        """Every row as (ids, paths, vectors) chunks, for exact search."""
        ...

    def begin_writing(self) -> None:
        """Claim the store for writing (one writer at a time) before long work; raises BusyError when
        another process writes it and OutputError when it cannot be written at all."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def rows_to_add(entries: Sequence[Entry], vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as contiguous float32 [len(entries), D], as every store's ``add`` takes them."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(entries):
        raise ValueError(f"add: {len(entries)} entries but vectors of shape {vectors.shape}")  # a caller's bug
    return vectors
