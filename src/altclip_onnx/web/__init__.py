"""The bundle as a static site that searches photos in the browser (``altclip-onnx convert --to web``), and a
loopback server for it with the headers WebAssembly threads need (``altclip-onnx serve-static``).

:mod:`.npm` installs the page's npm packages (``sources/package-lock.json``, shipped with the package) into the user's cache
and bundles the page with esbuild; :mod:`.site` assembles the folder; :mod:`.server` serves it. Runtime side:
never imports torch, transformers or onnx (the transformers.js layout of the model is written by the caller,
``cli/convert.py``, with :mod:`altclip_onnx.convert`).
"""

from __future__ import annotations

from .npm import WEB_SOURCES, NodeMissingError
from .site import SITE_CONFIG, SiteReport, build_site
from .server import StaticOptions, serve_static

__all__ = ["SITE_CONFIG", "WEB_SOURCES", "NodeMissingError", "SiteReport", "StaticOptions", "build_site",
           "serve_static"]
