"""convert (a bundle in the layout transformers.js or immich loads, or a static site searching photos in the
browser) and push (a bundle to the Hugging Face Hub)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import bundle_argument, friendly_errors, main, precisions_option, step_printer, table

CLIENT_CHOICES = ["transformers.js", "immich", "web"]
WEB = "web"


@main.command()
@bundle_argument
@click.option("--to", "client", required=True, type=click.Choice(CLIENT_CHOICES, case_sensitive=False),
              help="The client whose layout to write; web: a static site that searches photos in the browser "
                   "(needs node and npm).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder to write.")
@precisions_option(None, "Variants to carry [default: transformers.js every one the bundle has; immich fp32, "
                         "exactly one; web int8, exactly one of int8 or fp32].")
@click.option("--no-check", is_flag=True, help="Skip running every written graph against the bundle's.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def convert(bundle: str, client: str, output: Path, precisions: tuple[str, ...], no_check: bool,
            overwrite: bool, as_json: bool) -> None:
    """Write BUNDLE in the layout a client loads: transformers.js, immich, or web (a static site).

    The graphs are the bundle's own (checked against its manifest first), edited only at their boundary
    where the client needs it (input names, int32 inputs, the output it reads), never re-exported. Every
    written graph is then run as the client feeds it next to the bundle's graph; OUT appears only when
    all agree (cosine >= 0.99999). --to web writes the transformers.js layout at one precision beside a page
    that embeds and searches photos in the browser (its JavaScript bundled with esbuild from the npm packages
    of the lockfile shipped in altclip_onnx/web/sources/, installed once into the user's cache with npm);
    serve it with 'serve-static'.
    """
    from ..convert import convert_bundle

    if client.lower() == WEB:
        _convert_web(bundle, output, precisions, no_check, overwrite, as_json)
        return

    report = convert_bundle(bundle, output, client.lower(), precisions=list(precisions) or None,
                            overwrite=overwrite, check=not no_check, progress=step_printer())
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        return
    if report.checks:
        click.echo(report.format_table())
    click.echo(f"wrote {output} ({client} layout, {len(report.files)} files) in {report.seconds:.1f}s")


def _convert_web(bundle: str, output: Path, precisions: tuple[str, ...], no_check: bool, overwrite: bool,
                 as_json: bool) -> None:
    from ..convert import TRANSFORMERS_JS, convert_bundle
    from ..errors import InputError
    from ..web import build_site
    from ..web.site import DEFAULT_PRECISION

    if len(precisions) > 1:
        raise InputError("--to web carries one precision: give one --precision (int8 or fp32)")
    precision = precisions[0] if precisions else DEFAULT_PRECISION
    progress = step_printer()

    def write_model(folder: Path) -> object:
        return convert_bundle(bundle, folder, TRANSFORMERS_JS, precisions=[precision], check=not no_check,
                              progress=progress)

    report = build_site(bundle, output, write_model, precision=precision, overwrite=overwrite, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        return
    if report.model is not None and report.model.checks:
        click.echo(report.model.format_table())
    model = sum(size for path, size in report.files.items() if path.startswith("models/"))
    click.echo(f"wrote {output} (web site, {precision}: {len(report.files)} files, model {model / 1e6:.1f} MB) in "
               f"{report.seconds:.1f}s; serve it with: altclip-onnx serve-static {output}")


@main.command()
@bundle_argument
@click.argument("repo_id", metavar="REPO_ID")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--branch", default=None, help="Branch to commit to [default: main].")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("--dry-run", is_flag=True, help="Check the bundle and show what would be uploaded and the model "
                                              "card; upload nothing.")
@friendly_errors
def push(bundle: str, repo_id: str, private: bool, branch: str | None, message: str | None, dry_run: bool) -> None:
    """Upload BUNDLE to the Hugging Face Hub as REPO_ID (OWNER/NAME), with a generated model card.

    Every file is checked against the manifest first. Authentication is huggingface_hub's: 'hf auth login'
    or HF_TOKEN. Load it anywhere with hf://REPO_ID.
    """
    from ..publish import plan_push, push_bundle

    plan = plan_push(bundle, repo_id, branch=branch, private=private)
    if dry_run:
        rows = [(name, f"{path.stat().st_size:,}") for name, path in plan.files]
        rows.append(("README.md (model card, generated)", f"{len(plan.card.encode('utf-8')):,}"))
        click.echo(table(("file", "bytes"), rows, right=(1,)))
        click.echo(f"would upload {len(rows)} files ({plan.total_bytes / 1e6:.1f} MB) to {repo_id}; nothing was "
                   "uploaded (--dry-run). The model card:\n")
        click.echo(plan.card)
        return
    url = push_bundle(plan, commit_message=message, progress=step_printer())
    click.echo(f"pushed {bundle} to {repo_id}: {url}")
    click.echo(f"load it with Encoder('hf://{repo_id}') or any command's BUNDLE argument hf://{repo_id}")
