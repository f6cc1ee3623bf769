"""serve-static: a site made by 'convert --to web', on loopback, cross-origin isolated (runtime only)."""

from __future__ import annotations

from pathlib import Path

import click

from .app import friendly_errors, main, options_from_flags


@main.command("serve-static")
@click.argument("site", metavar="SITE", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free one).")
@friendly_errors
def serve_static(site: Path, host: str, port: int) -> None:
    """Serve SITE (made by 'convert BUNDLE --to web') with the headers WebAssembly threads need.

    Every response carries Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy:
    require-corp, so the page is cross-origin isolated and onnxruntime-web can use threads. Standard library
    only; Ctrl-C or SIGTERM stops it.
    """
    from ..web import StaticOptions
    from ..web import serve_static as run

    options = options_from_flags(StaticOptions, host=host, port=port)
    run(site, options, announce=lambda line: click.echo(line, err=True))
