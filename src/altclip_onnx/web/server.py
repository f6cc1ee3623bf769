"""Serve a static site (``convert --to web``'s) with the headers WebAssembly threads need.

Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp make the page
cross-origin isolated, which is what lets onnxruntime-web use SharedArrayBuffer (threads). Standard library
only: ``http.server`` on one address, a thread per connection.
"""

from __future__ import annotations

import functools
import http.server
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .site import SITE_CONFIG

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
         ".json": "application/json", ".onnx": "application/octet-stream", ".onnx_data": "application/octet-stream",
         ".svg": "image/svg+xml", ".css": "text/css"}


@dataclass(frozen=True)
class StaticOptions:
    """``host``: the address to listen on (loopback by default); ``port``: 0 picks a free one."""

    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be 0..65535, not {self.port}")


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        if self.path.split("?")[0].endswith((".html", "/", SITE_CONFIG)):
            self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  quiet: one line per error only
        if args and str(args[1] if len(args) > 1 else "").startswith(("4", "5")):
            super().log_message(format, *args)


def make_server(site: Path, options: StaticOptions) -> http.server.ThreadingHTTPServer:
    if not (site / SITE_CONFIG).is_file():
        raise InputError(f"{site}: not a site made by 'altclip-onnx convert BUNDLE --to web' (no {SITE_CONFIG})")
    handler = functools.partial(Handler, directory=str(site))
    server_class = http.server.ThreadingHTTPServer
    if ":" in options.host:
        server_class = type("Server6", (server_class,), {"address_family": socket.AF_INET6})
    try:
        return server_class((options.host, options.port), handler)
    except OSError as exc:
        raise InputError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}") from exc


def serve_static(site: str | Path, options: StaticOptions, announce: Callable[[str], None] = print) -> None:
    """Serve ``site`` until Ctrl-C or SIGTERM."""
    import signal

    server = make_server(Path(site), options)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    announce(f"serving {site} on http://{shown}:{port}/ (cross-origin isolated: COOP/COEP)")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
