"""Photo search for the service: an :class:`~altclip_onnx.Index` used from one thread of its own, and
thumbnails of its photos.

The index's stores keep connections that belong to the thread that opened them (SQLite), so every
call to the index runs in one dedicated thread; searches are short and queue there. A PostgreSQL index whose
connection was lost (the server restarted or failed over) is opened again by the next call, and a call that
found it lost is run once more on the new connection: reads only, so repeating one is safe. A thumbnail is
looked up by the row id of a search hit: the path comes from the index, never from the client.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageOps

from ..errors import StoreError
from ..runtime.encoder import Encoder
from ..runtime.images import to_rgb
from ..search import Hit, Index
from .errors import not_found

T = TypeVar("T")
log = logging.getLogger(__name__)


class PhotoSearch:
    """The index named by ``db`` (a folder or a postgresql:// URI), opened now; see the module docstring."""

    def __init__(self, db: str) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="altclip-index")
        self.db = db
        try:
            self.index: Index = self._thread.submit(Index.open, db).result()
        except BaseException:
            self._thread.shutdown()
            raise
        self.name = self.index.name

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the index's thread and wait (start-up and shutdown only; requests use :meth:`_async`)."""
        return self._thread.submit(fn, *args, **kwargs).result()

    async def _async(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(index, *args)`` in the index's thread (see the module docstring for a lost connection)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._read, fn, *args)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._lost():
            self._reopen()
        try:
            return fn(self.index, *args)
        except StoreError:
            if not self._lost():
                raise
            log.warning("%s: the connection to the index was lost; connecting again", self.name)
            self._reopen()
            return fn(self.index, *args)

    def _lost(self) -> bool:
        return bool(getattr(self.index.store, "lost", False))

    def _reopen(self) -> None:
        """The index opened again (a StoreError, answered 503, while its server is unreachable)."""
        index = Index.open(self.db)
        self.index.close()
        self.index = index

    def encoder(self, bundle: str, *, provider: str | None, precision: str | None, threads: int | None,
                **settings: bool) -> Encoder:
        """The Encoder for ``bundle``, at the index's precision unless ``precision`` says otherwise; refused
        (StoreError) when it is another model than the one that made the index."""
        encoder = self.call(self.index.encoder, bundle, provider=provider, precision=precision, threads=threads,
                            **settings)
        self.call(self.index.check, encoder)
        return encoder

    def __len__(self) -> int:
        return self.call(len, self.index)

    async def count(self) -> int:
        return await self._async(len)

    async def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        return await self._async(Index.search_vector, vector, k)

    async def path_of(self, row_id: int) -> str | None:
        return await self._async(Index.path_of, row_id)

    async def vector_of(self, row_id: int) -> np.ndarray | None:
        """The stored vector of a row (to search for photos like an indexed one), or None."""

        def lookup(index: Index) -> np.ndarray | None:
            path = index.path_of(row_id)
            if path is None:
                return None
            entries, vectors = index.store.get([path])
            return vectors[0] if entries else None

        return await self._async(lookup)

    def close(self) -> None:
        try:
            self.call(self.index.close)
        finally:
            self._thread.shutdown()


def make_thumbnail(path: str, size: int) -> bytes:
    """A JPEG of the photo at ``path``, upright, its longest edge at most ``size`` pixels."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale when that is still big enough
        upright = ImageOps.exif_transpose(image) or image
        rgb = to_rgb(upright)
    rgb.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=85)
    return out.getvalue()


class Thumbnails:
    """Thumbnails by row id, made in ``executor`` and the last ``cache`` of them kept in memory."""

    def __init__(self, search: PhotoSearch, executor: Executor, *, size: int, cache: int) -> None:
        self.search = search
        self.executor = executor
        self.size = size
        self.cache = cache
        self._kept: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, row_id: int) -> bytes:
        with self._lock:
            if row_id in self._kept:
                self._kept.move_to_end(row_id)
                return self._kept[row_id]
        path = await self.search.path_of(row_id)
        if path is None:
            raise not_found(f"no photo with id {row_id} in the index")
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self.executor, make_thumbnail, path, self.size)
        except FileNotFoundError as exc:
            raise not_found(f"photo {row_id} is no longer at its indexed path; run 'altclip-onnx index' again") from exc
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise not_found(f"photo {row_id} cannot be read ({_reason(exc)})") from exc
        with self._lock:
            self._kept[row_id] = data
            while len(self._kept) > self.cache:
                self._kept.popitem(last=False)
        return data


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


__all__ = ["PhotoSearch", "Thumbnails", "make_thumbnail"]
