"""A service ready to answer: the model loaded, the index opened, the metrics registered.

:meth:`Service.open` does everything that can fail for a bad bundle or index (reading the manifest,
checking the files, loading both sessions, opening the index and checking it was made by this model),
so a server fails at start-up with one line instead of on its first request.
"""

from __future__ import annotations

import logging
from typing import Any

from ..bundle import TEXTUAL, VISUAL
from ..precisions import AUTO
from ..runtime.encoder import Encoder
from .engine import Engine
from .metrics import Metrics
from ..serve_options import THUMBNAIL_SIZE, ServeOptions
from .search import PhotoSearch, Thumbnails

log = logging.getLogger(__name__)


class Service:
    """What the app serves: :attr:`engine` (embeddings, zero-shot), :attr:`search` and :attr:`thumbnails`
    (None without an index), :attr:`metrics`. Close it to finish queued work and release the index."""

    def __init__(self, encoder: Encoder, options: ServeOptions = ServeOptions(), *,
                 search: PhotoSearch | None = None) -> None:
        self.options = options
        self.metrics = Metrics()
        self.engine = Engine(encoder, options, observer=self.metrics)
        self.search = search
        self.thumbnails = (Thumbnails(search, self.engine.decoder, size=THUMBNAIL_SIZE, cache=options.thumbnail_cache)
                           if search is not None else None)
        self.metrics.model.labels(self.model_name, str(encoder.embedding_dim), encoder.precisions[VISUAL],
                                  encoder.precisions[TEXTUAL]).set(1)
        self._closed = False

    @classmethod
    def open(cls, bundle: str, *, db: str | None = None, provider: str | None = None, precision: str | None = None,
             threads: int | None = None, self_check: bool = True, options: ServeOptions = ServeOptions()) -> Service:
        """Load ``bundle`` (and the index ``db``) for serving. ``precision`` None: "auto", or with ``db`` the
        precision the index was made with when the bundle has it (as ``altclip-onnx search`` does).

        Sessions run without onnxruntime's spinning: two towers' thread pools, the image decoding threads and
        the event loop share the cores, and idle threads busy-waiting after each run take them from the others.
        """
        search = PhotoSearch(db) if db is not None else None
        settings = {"self_check": self_check, "spinning": False}
        try:
            if search is not None:
                encoder = search.encoder(bundle, provider=provider, precision=precision, threads=threads, **settings)
            else:
                encoder = Encoder(bundle, provider=provider, precision=precision or AUTO, threads=threads, **settings)
            service = cls(encoder, options, search=search)
        except BaseException:
            if search is not None:
                search.close()
            raise
        try:
            service.engine.load()
        except BaseException:
            service.close()
            raise
        return service

    @property
    def encoder(self) -> Encoder:
        return self.engine.encoder

    @property
    def model_name(self) -> str:
        """The name clients see in responses and /v1/models: the bundle's variant (e.g. AltCLIP-m18)."""
        return self.encoder.manifest.variant

    def health(self) -> dict[str, Any]:
        encoder = self.encoder
        return {
            "status": "ok",
            "model": self.model_name,
            "variant": encoder.manifest.variant,
            "embedding_dim": encoder.embedding_dim,
            "precision": dict(encoder.precisions),
            "providers": list(encoder.providers),
            "tower_providers": {tower: encoder.provider_of(tower) for tower in encoder.precisions},
            "tuned": list(encoder.tuned),
            "search": self.search is not None,
            "max_batch": self.options.max_batch,
        }

    def close(self) -> None:
        """Finish the requests already queued for the model, then stop its threads and close the index."""
        if self._closed:
            return
        self._closed = True
        try:
            self.engine.close()
        finally:
            if self.search is not None:
                self.search.close()
