"""``altclip-onnx serve``: embeddings, zero-shot classification and photo search over HTTP, and a page.

::

    from altclip_onnx.serve import ServeOptions, Service, create_app

    service = Service.open("onnx/AltCLIP-m18", db="photos.idx", options=ServeOptions(max_batch=32))
    app = create_app(service)          # an ASGI app: uvicorn.run(app), or any ASGI server

Needs the ``[serve]`` extra (Starlette, uvicorn, prometheus-client, python-multipart). Like the rest of
the runtime, it never imports torch, transformers or onnx.

Modules: service (the model and index loaded, checked at start-up), engine (batched embeddings and
classifiers), batcher (dynamic batching, model-agnostic), arrivals (which requests a model call may wait for),
admission (how much work each tower takes on, bytes held, deadlines), priority (image work at a lower CPU
priority), media (images from requests, checked before decoding), search (the index in its own thread,
thumbnails), app (endpoints), middleware (metrics, the API key, the body limit, deadlines, shutdown), metrics,
page (the page and its files), errors (OpenAI's error shape), lingering (a graceful close for refusals), server
(uvicorn on a listening socket, and ``/health`` on a port and thread of its own). The options and limits are
:mod:`altclip_onnx.serve_options`, outside this package so that they import without the extra.
"""

from __future__ import annotations

from ..serve_options import ServeOptions
from .app import create_app
from .batcher import Batcher
from .service import Service

__all__ = ["Batcher", "ServeOptions", "Service", "create_app"]
