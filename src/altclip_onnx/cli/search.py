"""Commands for photo search: index a collection, search it (runtime only: never import torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .app import (
    bundle_argument,
    AUTO_OR_PRECISIONS,
    encoder_options,
    exit_partial_if,
    friendly_errors,
    image_batch_options,
    json_option,
    load_encoder,
    self_check,
    main,
    provider_option,
    report_failures,
    table,
    threads_option,
)


@main.command("index")
@bundle_argument
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option("--db", required=True, metavar="DB",
              help="Index: a folder (created if missing) or a postgresql:// URI.")
@click.option("--prune", is_flag=True,
              help="Also drop every row whose file is gone, wherever it was (a library moved or deleted elsewhere).")
@image_batch_options
@encoder_options
@friendly_errors
def index_command(bundle: str, folders: tuple[Path, ...], db: str, prune: bool, batch_size: int, workers: int,
                  provider: str | None, precision: str, threads: int | None) -> None:
    """Index the images under FOLDERS (recursively) into DB for 'altclip-onnx search'.

    Running it again is incremental: new and changed files are embedded, rows of deleted files
    removed, and a photo moved (its old path gone) keeps its vector under the new path. An
    interrupted run keeps its finished batches; run it again to continue. Files that cannot be
    read are listed on stderr with the reason and skipped; the exit code is then 4.
    """
    from ..search import Index

    if not folders and not prune:
        raise click.UsageError("give at least one FOLDER (or --prune alone to drop the rows of files that are gone)")
    encoder = load_encoder(bundle, provider, precision, threads)
    with Index.open(db, create=True) as index:
        report = index.update(encoder, folders, prune=prune, batch_size=batch_size, workers=workers)
    report_failures(report.failures)
    click.echo(report.summary())
    exit_partial_if(report.failures)


@main.command("search")
@click.argument("query", required=False)
@click.option("--db", required=True, metavar="DB", help="Index made by 'index': a folder or a postgresql:// URI.")
@click.option("--image", type=click.Path(path_type=Path), help="Find images similar to this one instead of a text.")
@click.option("-k", "--top", "k", type=click.IntRange(1), default=10, show_default=True, help="Results to show.")
@json_option('Print JSON: [{"id": ..., "path": ..., "score": ...}], best first.')
@click.option("--bundle", metavar="BUNDLE",
              help="Bundle for the query, a folder or hf://OWNER/REPO [default: the one recorded in the index].")
@provider_option
@click.option("--precision", type=click.Choice(AUTO_OR_PRECISIONS), default=None,
              help="[default: the precision the index was made with, if the bundle has it]")
@threads_option
@friendly_errors
def search_command(query: str | None, db: str, image: Path | None, k: int, as_json: bool, bundle: str | None,
                   provider: str | None, precision: str | None, threads: int | None) -> None:
    """Search the images indexed in DB by a text QUERY (any language) or by --image.

    Scores are cosine similarities (exact, re-ranked from the approximate index's candidates).
    """
    from ..search import Index

    if (query is None) == (image is None):
        raise click.UsageError("give either a text QUERY or --image FILE")
    with Index.open(db) as index:
        encoder = index.encoder(bundle, provider=provider, precision=precision, threads=threads,
                                self_check=self_check())
        hits = index.search_image(encoder, image, k) if image is not None else index.search_text(encoder, query, k)
    if as_json:
        click.echo(json.dumps([{"id": h.id, "path": h.path, "score": round(h.score, 6)} for h in hits],
                              ensure_ascii=False, indent=2))
    else:
        click.echo(format_hits(hits))


def format_hits(hits: list[Any]) -> str:
    """A table: rank, cosine score, path; best first."""
    if not hits:
        return "(the index is empty)"
    return table(["rank", "score", "path"], [[str(r), f"{h.score:.4f}", h.path] for r, h in enumerate(hits, 1)],
                 right=(0, 1))
