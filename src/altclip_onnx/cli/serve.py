"""``altclip-onnx serve``: the HTTP service (runtime only: never import torch). The [serve] extra is imported
only when the command runs, so ``--help`` works without it."""

from __future__ import annotations

import os
from typing import Any

import click

from ..errors import InputError, MissingDependencyError
from ..serve_options import ServeOptions
from .app import (
    AUTO_OR_PRECISIONS,
    bundle_argument,
    friendly_errors,
    main,
    options_from_flags,
    provider_option,
    self_check,
    threads_option,
)

API_KEY_ENV = "ALTCLIP_API_KEY"
MB = 1024 * 1024


@main.command("serve")
@bundle_argument
@click.option("--db", metavar="DB", help="Photo index made by 'index' (a folder or a postgresql:// URI): "
              "enables /v1/search, thumbnails and the search page.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free one).")
@click.option("--health-port", type=click.IntRange(0, 65535), default=None,
              help="Also serve /health and /metrics on this port, from a thread of their own, so that health "
                   "checks are answered at once during a burst of uploads [default: only on --port].")
@click.option("--precision", type=click.Choice(AUTO_OR_PRECISIONS), default=None,
              help="[default: auto; with --db, the precision the index was made with, if the bundle has it]")
@click.option("--max-batch", type=int, default=ServeOptions.max_batch, show_default=True,
              help="Most inputs per model call, taken from concurrent requests.")
@click.option("--max-wait-ms", type=float, default=ServeOptions.max_wait_ms, show_default=True,
              help="How long a model call waits for more requests to join it.")
@click.option("--max-body-mb", type=float, default=ServeOptions.max_body_bytes / MB, show_default=True,
              help="Larger request bodies are refused (413) before being read.")
@click.option("--max-pixels", type=int, default=ServeOptions.max_pixels, show_default=True,
              help="Larger images are refused (413) from their header, without decoding them.")
@click.option("--max-request-pixels", type=int, default=ServeOptions.max_request_pixels, show_default=True,
              help="Requests whose images have more pixels together are refused (413) from their headers.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let pages from ORIGIN (e.g. https://photos.example.org, or *) call the API (repeatable) "
                   "[default: CORS off].")
@click.option("--workers", type=int, default=ServeOptions.workers, show_default=True,
              help="Threads that decode images while the model runs.")
@click.option("--shutdown-grace", type=float, default=ServeOptions.shutdown_grace, show_default=True,
              help="Seconds requests in flight may take to finish after SIGTERM; then each gets a 503.")
@click.option("--max-held-mb", type=float, default=None,
              help="Request bodies (over 64 KB) held at once; a larger body is refused (429) unread "
                   "[default: 32 MB, or 1/16 of memory when less].")
@click.option("--max-queue-seconds", type=float, default=ServeOptions.max_queue_seconds, show_default=True,
              help="Seconds of work, at the model's measured speed, each tower takes on; more is refused (429).")
@click.option("--request-timeout", type=float, default=ServeOptions.request_timeout, show_default=True,
              help="A request's deadline in seconds, unless it sends X-Request-Timeout; work still waiting then "
                   "is dropped (504).")
@provider_option
@threads_option
@friendly_errors
def serve(bundle: str, db: str | None, host: str, port: int, health_port: int | None, precision: str | None,
          max_batch: int, max_wait_ms: float, max_body_mb: float, max_pixels: int, max_request_pixels: int,
          cors_origins: tuple[str, ...], workers: int, shutdown_grace: float,
          max_held_mb: float | None, max_queue_seconds: float, request_timeout: float, provider: str | None, threads: int | None) -> None:
    """Serve BUNDLE over HTTP: embeddings (OpenAI's API), zero-shot classification, photo search (with --db)
    and a page at /.

    With ALTCLIP_API_KEY set in the environment, every /v1/ request needs the header
    'Authorization: Bearer <key>'. SIGTERM or Ctrl-C finishes the requests in flight, then exits.
    """
    key = os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise InputError(f"{API_KEY_ENV} is set but empty; unset it or give it a value")
    options = options_from_flags(ServeOptions, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                 max_body_bytes=int(max_body_mb * MB), max_pixels=max_pixels,
                                 max_request_pixels=max_request_pixels, workers=workers,
                                 api_key=key.strip() if key else None, cors_origins=cors_origins,
                                 shutdown_grace=shutdown_grace, max_queue_seconds=max_queue_seconds,
                                 request_timeout=request_timeout,
                                 **({} if max_held_mb is None else {"max_held_bytes": int(max_held_mb * MB)}))
    try:
        from ..serve import Service, server
    except ImportError as exc:
        raise MissingDependencyError("serve", "serve", exc.name) from exc

    service = Service.open(bundle, db=db, provider=provider, precision=precision, threads=threads,
                           self_check=self_check(), options=options)
    sock = None
    try:
        sock = server.listen(host, port)
        health_sock = None if health_port is None else server.listen(host, health_port, "--health-port")
    except BaseException:
        if sock is not None:
            sock.close()
        service.close()
        raise
    url = server.url(sock)
    click.echo(_banner(service, url), err=True)
    if health_sock is not None:
        click.echo(f"health checks also on {server.url(health_sock)}/health", err=True)
    if key is None and not server.is_loopback(host):
        click.echo(f"warning: listening on {host} without {API_KEY_ENV}: anyone who reaches this port can use it",
                   err=True)
    # SIGTERM / Ctrl-C: stop accepting, finish the requests in flight, then shut down
    server.run(service, sock, health_sock)
    click.echo("stopped", err=True)


def _banner(service: Any, url: str) -> str:
    encoder = service.encoder
    precisions = ", ".join(f"{tower} {p}" for tower, p in encoder.precisions.items())
    search = f"; search over {len(service.search)} photos in {service.search.name}" if service.search else ""
    key = "; API key required" if service.options.api_key else ""
    return (f"serving {service.model_name} ({encoder.embedding_dim}-d, {precisions}) on {url}{search}{key}\n"
            f"page: {url}/   API: {url}/v1/   health: {url}/health   metrics: {url}/metrics")
