"""The page at ``/``: one HTML file, a script, a style sheet and an icon, all served from this package
(no CDN; a Content-Security-Policy of 'self' keeps it that way). With an index it is the photo search page,
without one the zero-shot page; the script reads which from ``<body data-mode>``."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from .errors import not_found

ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "icon.svg": "image/svg+xml"}
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer"}


def _read(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


class Page:
    """The page's files, read once. Asset names come from a fixed list: no request path reaches the disk."""

    def __init__(self, *, search: bool) -> None:
        mode = "search" if search else "classify"
        self.html = _read("index.html").replace(b"__MODE__", mode.encode())
        self.assets = {name: _read(name) for name in ASSETS}

    async def index(self, request: Request) -> Response:
        return Response(self.html, media_type="text/html; charset=utf-8", headers=_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.assets:
            raise not_found(f"no such file: /static/{name}")
        return Response(self.assets[name], media_type=ASSETS[name], headers=_HEADERS)
