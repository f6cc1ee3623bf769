"""The HTTP API and the page: :func:`create_app` turns a :class:`~.service.Service` into a Starlette app.

Endpoints (JSON unless said otherwise; errors in OpenAI's shape, see :mod:`.errors`):

- ``POST /v1/embeddings``: OpenAI's embeddings API; ``"modality": "image"`` (infinity's convention) for
  images given as data URIs or bare base64.
- ``POST /v1/classify``: zero-shot probabilities of images over labels (JSON, or a multipart form).
- ``POST /v1/search``, ``GET /v1/search?q=...&k=...`` and ``GET /v1/thumbnails/{id}``: with an index.
- ``GET /v1/models`` (OpenAI's shape), ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /`` (the page).

:func:`create_health_app` serves ``/health`` and ``/metrics`` alone, for a listener of their own (``--health-port``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..bundle import TEXTUAL, VISUAL
from ..errors import AltclipOnnxError, InputError, StoreError
from ..runtime.pipeline import split_labels
from ..search import Hit
from .arrivals import Ticket
from .admission import HeldBytes, expired
from .batcher import Closed, Expired
from .engine import Engine
from .errors import ApiError, bad_request, not_found, unsupported_media
from .media import check_media_type, image_bytes
from .middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    DeadlineMiddleware,
    MetricsMiddleware,
    ShutdownMiddleware,
)
from ..serve_options import MAX_IMAGES, MAX_K, MAX_LABELS, MAX_TEMPLATES, MAX_TEXT_CHARS, MAX_TEXTS
from .page import Page
from .service import Service

log = logging.getLogger(__name__)

_SQLITE_MAX_ID = 2**63 - 1
_BIG_JSON = 200_000  # numbers in a response above which it is serialized off the event loop
_BIG_INPUT = 1 << 16  # bytes of JSON, or characters of base64, above which they are decoded off the event loop
_IMAGE_MODALITY = re.compile(rb'"modality"\s*:\s*"image"')
_PEEK = 4096  # bytes at each end of a large body looked at for its modality


def create_app(service: Service) -> Starlette:
    """The ASGI app serving ``service``; the app's shutdown closes the service (queued work finishes first)."""
    api = _Api(service)
    page = Page(search=service.search is not None)
    routes = [
        Route("/", page.index, methods=["GET"]),
        Route("/static/{name}", page.asset, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/v1/classify", api.classify, methods=["POST"]),
        Route("/v1/search", api.search, methods=["GET", "POST"]),
        Route("/v1/thumbnails/{id:int}", api.thumbnail, methods=["GET"]),
    ]
    options = service.options
    middleware = [Middleware(MetricsMiddleware, metrics=service.metrics, routes=routes), Middleware(ShutdownMiddleware)]
    if options.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                                     max_age=600))
    if options.api_key:
        middleware.append(Middleware(ApiKeyMiddleware, key=options.api_key))
    images = service.engine.gates[VISUAL]
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=options.max_body_bytes,
                                 held=HeldBytes(options.max_held_bytes), retry_after=images.retry_after))
    middleware.append(Middleware(DeadlineMiddleware, default=options.request_timeout))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # In a thread: the event loop must stay free to hand the last batches' results to their requests.
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={
        ApiError: _api_error, HTTPException: _http_error, InputError: _input_error, Closed: _closed, Expired: _expired,
        StoreError: _store_error, AltclipOnnxError: _library_error, Exception: _server_error,
    })
    app.state.service = service
    return app


def create_health_app(service: Service, draining: threading.Event) -> Starlette:
    """``GET /health`` and ``GET /metrics`` of ``service`` alone; ``/health`` answers 503 ``shutting_down`` once
    ``draining`` is set, so a load balancer stops sending before the main port closes."""
    api = _Api(service)

    async def health(request: Request) -> Response:
        if draining.is_set():
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return await api.health(request)

    return Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/metrics", api.metrics, methods=["GET"])],
                     exception_handlers={HTTPException: _http_error, Exception: _server_error})


# --- errors ----------------------------------------------------------------------------------------

async def _api_error(request: Request, exc: Any) -> Response:
    return exc.response()  # an ApiError


async def _http_error(request: Request, exc: Any) -> Response:
    # Starlette's own HTTPException: no route (404), wrong method (405), a malformed multipart body (400)
    messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}
    message = messages.get(exc.status_code, str(exc.detail))
    return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()


async def _input_error(request: Request, exc: Exception) -> Response:
    return bad_request(str(exc)).response()


async def _closed(request: Request, exc: Exception) -> Response:
    return ApiError(503, "the service is shutting down; retry on another instance", code="shutting_down").response()


async def _expired(request: Request, exc: Exception) -> Response:
    return expired("model").response()


async def _store_error(request: Request, exc: Exception) -> Response:
    return ApiError(503, f"the index cannot be used: {exc}", code="index_unavailable").response()


async def _library_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return ApiError(500, str(exc)).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    return ApiError(500, f"internal error ({type(exc).__name__}); the server's log has the details").response()


# --- request parsing -------------------------------------------------------------------------------

def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_form(request: Request) -> bool:
    return _media_type(request) == "multipart/form-data"


async def _read_json(engine: Engine, request: Request, *, form_too: bool = False) -> dict[str, Any]:
    return await _parse_json(engine, await _json_body(request, form_too=form_too))


async def _json_body(request: Request, *, form_too: bool = False) -> bytes:
    kind = _media_type(request)
    if kind and kind != "application/json" and not kind.endswith("+json"):
        also = " or a multipart/form-data upload" if form_too else ""
        raise unsupported_media(f"send JSON (Content-Type: application/json){also}, not {kind}")
    return await request.body()


def _asks_for_images(body: bytes) -> bool:
    """Whether a large JSON body says ``"modality": "image"`` near its start or end (where a request's small
    fields are). Only JSON's own syntax can match: a string value cannot hold an unescaped quote."""
    return any(_IMAGE_MODALITY.search(part) for part in (body[:_PEEK], body[-_PEEK:]))


async def _parse_json(engine: Engine, body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise bad_request("the request body is empty; send a JSON object")
    try:
        if len(body) > _BIG_INPUT:
            data = await engine.off_loop(json.loads, body)
        else:
            data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


def _type_name(value: object) -> str:
    return {str: "a string", dict: "an object", list: "an array", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, not {_type_name(value)}", name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be {low}..{high}, not {value}", name)
    return value


def _strings(value: object, name: str, what: str, limit: int, *, allow_one: bool = True) -> list[str]:
    """A non-empty list of non-empty strings (one string counts as a list of one when ``allow_one``)."""
    if isinstance(value, str) and allow_one:
        value = [value]
    if not isinstance(value, list):
        raise bad_request(f"{name} must be {'a string or ' if allow_one else ''}an array of strings, "
                          f"not {_type_name(value)}", name)
    if not value:
        raise bad_request(f"{name} is empty; send at least one {what}", name)
    if len(value) > limit:
        raise bad_request(f"{name} has {len(value)} {what}s; at most {limit} per request", name, "too_many_inputs")
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, str):
            hint = "; token arrays are not supported, send text" if isinstance(item, (int, list)) else ""
            raise bad_request(f"{where} must be a string, not {_type_name(item)}{hint}", where)
        if not item.strip():
            raise bad_request(f"{where} is empty", where)
    return value


def _texts(value: object, name: str) -> list[str]:
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise bad_request(f"{name}: token arrays are not supported; send text", name)
    texts = _strings(value, name, "text", MAX_TEXTS)
    for i, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise bad_request(f"{name}[{i}] has {len(text):,} characters; at most {MAX_TEXT_CHARS:,} per text",
                              f"{name}[{i}]")
    return texts


def _images_from_json(value: object, name: str) -> list[tuple[bytes, str]]:
    if isinstance(value, str):
        return [(image_bytes(value, name), name)]
    if not isinstance(value, list):
        raise bad_request(f"{name} must be an image (a data URI or base64) or an array of them, "
                          f"not {_type_name(value)}", name)
    if not value:
        raise bad_request(f"{name} is empty; send at least one image", name)
    if len(value) > MAX_IMAGES:
        raise bad_request(f"{name} has {len(value)} images; at most {MAX_IMAGES} per request", name, "too_many_inputs")
    return [(image_bytes(item, f"{name}[{i}]"), f"{name}[{i}]") for i, item in enumerate(value)]


async def _images_from_json_off_loop(engine: Engine, value: object, name: str) -> list[tuple[bytes, str]]:
    """:func:`_images_from_json`, in a thread when there is much base64 to decode (the event loop stays free)."""
    size = len(value) if isinstance(value, str) else sum(len(v) for v in value if isinstance(v, str)) \
        if isinstance(value, list) else 0
    if size < _BIG_INPUT:
        return _images_from_json(value, name)
    return await engine.off_loop(_images_from_json, value, name)


async def _form(request: Request) -> FormData:
    return await request.form(max_files=MAX_IMAGES + 1, max_fields=MAX_LABELS + MAX_TEMPLATES + 16)


async def _images_from_form(form: FormData, *names: str) -> list[tuple[bytes, str]]:
    files = [(name, value) for name in names for value in form.getlist(name)]
    if not files:
        raise bad_request(f"no image in the form; send it as a file field named {names[0]!r}", names[0])
    if len(files) > MAX_IMAGES:
        raise bad_request(f"{len(files)} images; at most {MAX_IMAGES} per request", names[0], "too_many_inputs")
    images = []
    for i, (name, value) in enumerate(files):
        where = f"{name}[{i}]" if len(files) > 1 else name
        if not isinstance(value, UploadFile):
            raise bad_request(f"{where} must be a file upload, not a text field", name)
        check_media_type(value.content_type, f"{where} ({value.filename})" if value.filename else where)
        data = await value.read()
        if not data:
            raise bad_request(f"{where}: the file is empty", name)
        images.append((data, value.filename or where))
    return images


def _form_texts(form: FormData, name: str) -> list[str]:
    values = form.getlist(name)
    for value in values:
        if not isinstance(value, str):
            raise bad_request(f"{name} must be a text field, not a file", name)
    return [str(v) for v in values]


async def _json_response(engine: Engine, payload: dict[str, Any], numbers: int) -> Response:
    """JSON as Starlette writes it, serialized in a thread when large (a big batch of embeddings)."""

    def render() -> bytes:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")

    body = await engine.off_loop(render) if numbers > _BIG_JSON else render()
    return Response(body, media_type="application/json")


# --- endpoints -------------------------------------------------------------------------------------

class _Api:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.engine = service.engine

    async def health(self, request: Request) -> Response:
        health = self.service.health()
        if self.service.search is not None:
            health["images"] = await self.service.search.count()
        return JSONResponse(health)

    async def metrics(self, request: Request) -> Response:
        metrics = self.service.metrics
        for batcher in (self.engine.texts, self.engine.images):
            metrics.queued(batcher.name, batcher.depth)
        return Response(metrics.render(), media_type=metrics.content_type)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.service.model_name, "object": "model", "created": 0, "owned_by": "altclip-onnx"}]})

    async def embeddings(self, request: Request) -> Response:
        with self.engine.arrivals.request() as ticket:
            return await self._embeddings(request, ticket)

    async def classify(self, request: Request) -> Response:
        with self.engine.arrivals.request() as ticket:
            return await self._classify(request, ticket)

    async def search(self, request: Request) -> Response:
        with self.engine.arrivals.request() as ticket:
            return await self._search(request, ticket)

    async def _embeddings(self, request: Request, ticket: Ticket) -> Response:
        body = await _json_body(request)
        if len(body) > _BIG_INPUT and _asks_for_images(body):
            # Refused before its JSON is parsed when the image model has no room: in a burst of photos, parsing
            # bodies only to refuse them would hold the GIL the event loop needs for everything else.
            self.engine.gates[VISUAL].check(1)
        data = await _parse_json(self.engine, body)
        modality = data.get("modality", "text")
        if modality not in ("text", "image"):
            raise bad_request(f"modality must be \"text\" or \"image\", not {json.dumps(modality)}", "modality")
        encoding = data.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise bad_request(f"encoding_format must be \"float\" or \"base64\", not {json.dumps(encoding)}",
                              "encoding_format")
        dim = self.engine.encoder.embedding_dim
        dimensions = data.get("dimensions")
        if dimensions is not None and dimensions != dim:
            raise bad_request(f"this model's embeddings have {dim} dimensions; leave dimensions out or give {dim}",
                              "dimensions")
        if "input" not in data:
            raise bad_request("input is missing: send a text, an array of texts, or images with \"modality\": "
                              "\"image\"", "input")
        ticket.expect(TEXTUAL if modality == "text" else VISUAL)
        if modality == "text":
            texts = _texts(data["input"], "input")
            vectors, tokens = await self.engine.embed_texts(texts)
            used = int(tokens.sum())
        else:
            vectors = await self.engine.embed_images(await _images_from_json_off_loop(self.engine, data["input"], "input"))
            used = 0  # images are not counted in tokens
        self.service.metrics.inputs.labels(modality).inc(len(vectors))
        rows = [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)} for i, v in enumerate(vectors)]
        payload = {"object": "list", "data": rows, "model": self.service.model_name,
                   "usage": {"prompt_tokens": used, "total_tokens": used}}
        return await _json_response(self.engine, payload, vectors.size if encoding == "float" else 0)

    async def _classify(self, request: Request, ticket: Ticket) -> Response:
        if _is_form(request):
            form = await _form(request)
            images = await _images_from_form(form, "image", "input")
            labels = split_labels(_form_texts(form, "labels"), _form_texts(form, "label"))
            if not labels:
                raise bad_request("no labels: send label fields (one label each) or a labels field (comma-separated)",
                                  "labels")
            templates = [t for t in _form_texts(form, "template") if t.strip()] or None
        else:
            data = await _read_json(self.engine, request, form_too=True)
            if "input" not in data:
                raise bad_request("input is missing: send an image (a data URI or base64) or an array of them",
                                  "input")
            images = await _images_from_json_off_loop(self.engine, data["input"], "input")
            if "labels" not in data:
                raise bad_request("labels is missing: send an array of labels", "labels")
            labels = _strings(data["labels"], "labels", "label", MAX_LABELS, allow_one=False)
            templates = data.get("templates")
            if templates is not None:
                templates = _strings(templates, "templates", "template", MAX_TEMPLATES)
        if len(labels) > MAX_LABELS:
            raise bad_request(f"{len(labels)} labels; at most {MAX_LABELS} per request", "labels", "too_many_inputs")
        ticket.expect(TEXTUAL, VISUAL)
        classifier, embeds = await asyncio.gather(self.engine.classifier(labels, templates),
                                                  self.engine.embed_images(images))
        self.service.metrics.inputs.labels("image").inc(len(embeds))
        probabilities = self.engine.probabilities(embeds, classifier)
        rows = [{"index": i, "probabilities": {label: float(p) for label, p in zip(labels, row)}}
                for i, row in enumerate(probabilities)]
        return JSONResponse({"object": "list", "data": rows, "labels": labels, "model": self.service.model_name})

    def _search_enabled(self) -> Any:
        if self.service.search is None:
            raise not_found("search needs a photo index: start the service with --db INDEX", "search_not_enabled")
        return self.service.search

    async def _search(self, request: Request, ticket: Ticket) -> Response:
        search = self._search_enabled()
        query: str | None = None
        image: tuple[bytes, str] | None = None
        row: int | None = None
        if request.method == "GET":
            params = request.query_params
            text = params.get("q", params.get("query"))
            k = _integer(params.get("k", "10"), "k", 1, MAX_K)
            if params.get("id") is not None:
                row = _integer(params.get("id"), "id", 0, _SQLITE_MAX_ID)
            elif text is None:
                raise bad_request("give the query as ?q=TEXT (or ?id=N for photos like an indexed one)", "q")
            else:
                query = text
        elif _is_form(request):
            form = await _form(request)
            k = _integer(form.get("k") or "10", "k", 1, MAX_K)
            text = form.get("query") or form.get("q")
            if text is not None and not isinstance(text, str):
                raise bad_request("query must be a text field", "query")
            if text is None:
                image = (await _images_from_form(form, "image"))[0]
            query = text
        else:
            data = await _read_json(self.engine, request, form_too=True)
            k = _integer(data.get("k", 10), "k", 1, MAX_K)
            given = [name for name in ("query", "image", "id") if data.get(name) is not None]
            if len(given) != 1:
                raise bad_request("give exactly one of query (a text), image (a data URI or base64) or id "
                                  "(an indexed photo's id)", "query")
            if given[0] == "query":
                query = data["query"]
                if not isinstance(query, str):
                    raise bad_request(f"query must be a string, not {_type_name(query)}", "query")
            elif given[0] == "image":
                if not isinstance(data["image"], str):
                    raise bad_request(f"image must be a data URI or base64 text, not {_type_name(data['image'])}",
                                      "image")
                image = (await _images_from_json_off_loop(self.engine, data["image"], "image"))[0]
            else:
                row = _integer(data["id"], "id", 0, _SQLITE_MAX_ID)
        ticket.expect(*([TEXTUAL] if query is not None else [VISUAL] if image is not None else []))
        if query is not None:
            if not query.strip():
                raise bad_request("the query text is empty", "query")
            if len(query) > MAX_TEXT_CHARS:
                raise bad_request(f"the query has {len(query):,} characters; at most {MAX_TEXT_CHARS:,}", "query")
            vector = (await self.engine.embed_texts([query]))[0][0]
        elif image is not None:
            vector = (await self.engine.embed_images([image]))[0]
        else:
            vector = await search.vector_of(row)
            if vector is None:
                raise not_found(f"no photo with id {row} in the index")
        hits = await search.search(vector, k)
        return JSONResponse({"object": "list", "data": [_hit(hit) for hit in hits], "model": self.service.model_name})

    async def thumbnail(self, request: Request) -> Response:
        self._search_enabled()
        row = int(request.path_params["id"])
        if row > _SQLITE_MAX_ID:
            raise not_found(f"no photo with id {row} in the index")
        data = await self.service.thumbnails.get(row)  # type: ignore[union-attr]  (set with search)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _hit(hit: Hit) -> dict[str, Any]:
    return {"id": hit.id, "path": hit.path, "score": hit.score, "thumbnail": f"/v1/thumbnails/{hit.id}"}


def _encode(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":  # OpenAI's: little-endian float32 bytes
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()
