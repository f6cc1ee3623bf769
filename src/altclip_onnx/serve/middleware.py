"""ASGI middleware of the service: metrics for every request, the API key, the request body limit, and a JSON
503 for a request cut off by the end of a graceful shutdown.

Pure ASGI (no BaseHTTPMiddleware), so nothing buffers a body or a response on the way through.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import HeldBytes, deadline_in
from .errors import ApiError, bad_request, too_large
from .metrics import Metrics


class MetricsMiddleware:
    """Counts every response by route template (not raw path: ids would explode the label set), method and
    status, and times it; a request that raised is counted as a 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", "other")
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        status = 500
        started = time.perf_counter()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


class ShutdownMiddleware:
    """A request still running when the graceful shutdown's time is up is cancelled by uvicorn, whose own answer
    would be a plain-text 500. Here it gets OpenAI's shape instead: 503 ``shutting_down`` (when no part of its
    response was sent yet; otherwise the connection just closes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except asyncio.CancelledError:
            if started:
                raise
            error = ApiError(503, "the service is shutting down and this request did not finish in time; retry on "
                             "another instance", code="shutting_down", headers={"Connection": "close"})
            await error.response()(scope, receive, send)  # answered, the cancellation ends here


class ApiKeyMiddleware:
    """Every request under /v1/ needs ``Authorization: Bearer <key>`` (compared in constant time), else 401.
    CORS preflights (OPTIONS) pass: browsers never send credentials with them."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            header = Headers(scope=scope).get("authorization")
            scheme, _, token = (header or "").partition(" ")
            if header is None:
                error = "no API key: send the header 'Authorization: Bearer <key>'"
            elif scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), self.key):
                error = "incorrect API key in the Authorization header"
            else:
                error = None
            if error is not None:
                await ApiError(401, error, code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"}).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class DeadlineMiddleware:
    """Every request gets a deadline (see :mod:`.admission`): ``X-Request-Timeout: SECONDS`` from the client
    (more than 0, at most ``longest``), else ``default`` seconds."""

    HEADER = "x-request-timeout"

    def __init__(self, app: ASGIApp, default: float, longest: float = 3600.0) -> None:
        self.app = app
        self.default = default
        self.longest = longest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(self.HEADER)
        seconds = self.default
        if given is not None:
            try:
                seconds = float(given)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds <= self.longest:  # (NaN fails too)
                error = bad_request(f"X-Request-Timeout must be seconds, more than 0 and at most {self.longest:g}, "
                                    f"not {given!r}", "X-Request-Timeout")
                await error.response()(scope, receive, send)
                return
        with deadline_in(seconds):
            await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Request bodies over ``max_bytes`` get a 413: at once from their Content-Length (nothing is read), or
    as soon as the bytes received pass the limit (chunked uploads), never after reading them whole. With
    ``held``, a large body that would take the bytes held over their bound gets a 429 from its Content-Length
    (a chunked one counts as ``max_bytes``), unread; ``retry_after`` gives its Retry-After."""

    def __init__(self, app: ASGIApp, max_bytes: int, held: HeldBytes | None = None,
                 retry_after: Callable[[], float] = lambda: 1.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.held = held
        self.retry_after = retry_after

    def _error(self) -> ApiError:
        mb = self.max_bytes / (1024 * 1024)
        return too_large(f"the request body is over the limit of {mb:g} MB (--max-body-mb); send less per request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await ApiError(400, "the Content-Length header is not a number").response()(scope, receive, send)
                return
            if declared > self.max_bytes:
                error = self._error()
                error.headers["Connection"] = "close"  # the body stays unread: this connection cannot be reused
                await error.response()(scope, receive, send)
                return
        if self.held is None or scope["method"] not in ("POST", "PUT"):
            await self._limited(scope, receive, send)
            return
        try:
            taken = self.held.take(self.max_bytes if length is None else declared, self.retry_after)
        except ApiError as error:
            error.headers["Connection"] = "close"  # the body stays unread
            await error.response()(scope, receive, send)
            return
        try:
            await self._limited(scope, receive, send)
        finally:
            self.held.give(taken)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0

        async def limited() -> Message:
            nonlocal received
            message: Any = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    error = self._error()
                    error.headers["Connection"] = "close"
                    raise error  # answered by the app's ApiError handler, from inside the endpoint reading it
            return message

        await self.app(scope, limited, send)
