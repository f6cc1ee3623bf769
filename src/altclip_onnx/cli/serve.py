"""``altclip-onnx serve``: the HTTP service (runtime only: never import torch). The [serve] extra is imported
only when the command runs, so ``--help`` works without it."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import click

from ..errors import InputError, MissingDependencyError, OutputError
from .app import (
    AUTO_OR_PRECISIONS,
    bundle_argument,
    friendly_errors,
    main,
    provider_option,
    self_check,
    threads_option,
)

API_KEY_ENV = "ALTCLIP_API_KEY"
GRACEFUL_SECONDS = 30  # on SIGTERM, how long requests in flight may take to finish

log = logging.getLogger(__name__)


@main.command("serve")
@bundle_argument
@click.option("--db", metavar="DB", help="Photo index made by 'index' (a folder or a postgresql:// URI): "
              "enables /v1/search, thumbnails and the search page.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free one).")
@click.option("--precision", type=click.Choice(AUTO_OR_PRECISIONS), default=None,
              help="[default: auto; with --db, the precision the index was made with, if the bundle has it]")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True,
              help="Most inputs per model call, taken from concurrent requests.")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a model call waits for more requests to join it.")
@click.option("--max-body-mb", type=click.FloatRange(0, min_open=True), default=20.0, show_default=True,
              help="Larger request bodies are refused (413) before being read.")
@click.option("--max-pixels", type=click.IntRange(1), default=50_000_000, show_default=True,
              help="Larger images are refused (413) from their header, without decoding them.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let pages from ORIGIN (e.g. https://photos.example.org, or *) call the API (repeatable) "
                   "[default: CORS off].")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Threads that decode images while the model runs.")
@provider_option
@threads_option
@friendly_errors
def serve(bundle: str, db: str | None, host: str, port: int, precision: str | None, max_batch: int,
          max_wait_ms: float, max_body_mb: float, max_pixels: int, cors_origins: tuple[str, ...], workers: int,
          provider: str | None, threads: int | None) -> None:
    """Serve BUNDLE over HTTP: embeddings (OpenAI's API), zero-shot classification, photo search (with --db)
    and a page at /.

    With ALTCLIP_API_KEY set in the environment, every /v1/ request needs the header
    'Authorization: Bearer <key>'. SIGTERM or Ctrl-C finishes the requests in flight, then exits.
    """
    try:
        import uvicorn

        from ..serve import ServeOptions, Service, create_app
    except ImportError as exc:
        raise MissingDependencyError("serve", "serve", exc.name) from exc

    key = os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise InputError(f"{API_KEY_ENV} is set but empty; unset it or give it a value")
    options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=int(max_body_mb * 1024 * 1024),
                           max_pixels=max_pixels, workers=workers, api_key=key.strip() if key else None,
                           cors_origins=cors_origins)
    service = Service.open(bundle, db=db, provider=provider, precision=precision, threads=threads,
                           self_check=self_check(), options=options)
    try:
        sock = _listen(host, port)
    except BaseException:
        service.close()
        raise
    bound = sock.getsockname()
    url = f"http://{_url_host(bound[0])}:{bound[1]}"
    click.echo(_banner(service, url), err=True)
    if key is None and not _is_loopback(host):
        click.echo(f"warning: listening on {host} without {API_KEY_ENV}: anyone who reaches this port can use it",
                   err=True)
    config = uvicorn.Config(create_app(service), log_config=None, lifespan="on", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False)
    server = _server_class(uvicorn)(config)
    try:
        server.run(sockets=[sock])  # SIGTERM / Ctrl-C: stop accepting, finish requests in flight, then shutdown
    finally:
        service.close()  # (already closed by the app's shutdown, unless start-up failed)
        sock.close()
    click.echo("stopped", err=True)


def _server_class(uvicorn: Any) -> Any:
    """uvicorn's Server, except that after its graceful shutdown on SIGTERM or Ctrl-C it returns (and the
    command exits 0) instead of raising the signal again, which would end the process before it says so."""

    class Server(uvicorn.Server):  # type: ignore[misc,name-defined]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

    return Server


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, so that a busy port is one line before anything is served."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: not an address of this machine ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise OutputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or stop "
                          "what uses it") from exc
    return sock


def _banner(service: Any, url: str) -> str:
    encoder = service.encoder
    precisions = ", ".join(f"{tower} {p}" for tower, p in encoder.precisions.items())
    search = f"; search over {len(service.search)} photos in {service.search.name}" if service.search else ""
    key = "; API key required" if service.options.api_key else ""
    return (f"serving {service.model_name} ({encoder.embedding_dim}-d, {precisions}) on {url}{search}{key}\n"
            f"page: {url}/   API: {url}/v1/   health: {url}/health   metrics: {url}/metrics")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
