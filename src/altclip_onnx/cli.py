"""The ``altclip-onnx`` command: thin subcommands over the Python API.

This is the only place that reads environment variables (MODEL, ONNX_PROVIDER) and configures
logging. Known errors become one line on stderr and a non-zero exit; tracebacks are for bugs.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import AltclipOnnxError, MissingDependencyError

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn the project's own errors into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AltclipOnnxError as exc:
            report = getattr(exc, "report", None)
            if report is not None and hasattr(report, "format_table"):
                click.echo(report.format_table(), err=True)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was left behind", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def require_export_extra(feature: str) -> None:
    """The export half needs torch, transformers and onnx: say how to get them, in one line."""
    import importlib.util

    missing = [m for m in ("torch", "transformers", "onnx", "sentencepiece") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(feature, "export", ", ".join(missing) + " missing")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="altclip-onnx")
def main(verbose: int) -> None:
    """Export AltCLIP (multilingual CLIP) to verified ONNX bundles and run them without PyTorch."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


def step_printer() -> Callable[[str], None]:
    started = time.perf_counter()

    def show(step: str) -> None:
        click.echo(f"[{time.perf_counter() - started:7.1f}s] {step}", err=True)

    return show


@main.command()
@click.argument("source", required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Bundle folder [default: onnx/<variant>].")
@click.option("--random-init", is_flag=True, help="Random weights and a placeholder tokenizer; no download.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Hub download cache [default: ./model].")
@click.option("--max-length", type=click.IntRange(3, 512), default=77, show_default=True,
              help="Default text truncation stored in the bundle (the text tower takes up to 512 tokens).")
@click.option("--opset", type=click.IntRange(14, 21), default=17, show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip the comparison with PyTorch.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@friendly_errors
def export(
    source: str | None,
    output: Path | None,
    random_init: bool,
    seed: int,
    cache_dir: Path | None,
    max_length: int,
    opset: int,
    no_verify: bool,
    overwrite: bool,
) -> None:
    """Export SOURCE to an ONNX bundle and verify it against PyTorch.

    SOURCE is a Hub id (BAAI/AltCLIP, BAAI/AltCLIP-m9, BAAI/AltCLIP-m18), a seed name
    (AltCLIP-XLMR-L, AltCLIP-XLMR-L-m9, AltCLIP-XLMR-L-m18), a short name (m9, m18), or a local
    checkpoint folder in transformers' or FlagAI's layout. Default: $MODEL, else AltCLIP-m18.
    """
    require_export_extra("export")
    from .export.build import ExportOptions, export_bundle
    from .export.sources import DEFAULT_VARIANT, canonical_variant

    source = source or os.environ.get("MODEL") or DEFAULT_VARIANT
    if output is None:
        output = Path("onnx") / (canonical_variant(source) or Path(source.rstrip("/")).name)
    options = ExportOptions(
        opset=opset,
        max_length=max_length,
        verify=not no_verify,
        overwrite=overwrite,
        random_init=random_init,
        seed=seed,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    result = export_bundle(source, output, options, progress=step_printer())
    if result.report is not None:
        click.echo(result.report.format_table())
    for note in result.notes:
        click.echo(f"note: {note}")
    size = sum(e.size for e in result.manifest.files.values())
    click.echo(
        f"wrote {result.bundle} ({size / 1e6:.1f} MB, {result.manifest.embedding_dim}-d embeddings) "
        f"in {result.seconds:.1f}s"
    )


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--model", "model_source", help="Reference model (default: the source recorded in the manifest).")
@click.option("--integrity", is_flag=True, help="Only check every file against the manifest's sha256 (no torch).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "int8", "fp16"]),
              help="Precisions to check (default: all in the bundle).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Hub download cache [default: ./model].")
@friendly_errors
def verify(bundle: Path, model_source: str | None, integrity: bool, precisions: tuple[str, ...],
           cache_dir: Path | None) -> None:
    """Compare a bundle with the PyTorch reference (or, with --integrity, with its checksums)."""
    from .bundle import check_integrity, read_manifest
    from .errors import BundleError

    if integrity:
        manifest = read_manifest(bundle)
        problems = check_integrity(bundle, manifest)
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            raise BundleError(f"{bundle}: {len(problems)} of {len(manifest.files)} files fail the integrity check")
        click.echo(f"{bundle}: all {len(manifest.files)} files match the manifest")
        return
    require_export_extra("verify against PyTorch")
    from .export.verify import verify_bundle

    report = verify_bundle(bundle, model_source=model_source, precisions=list(precisions) or None,
                           cache_dir=str(cache_dir) if cache_dir else None)
    click.echo(report.format_table())
    click.echo(f"report written to {bundle / 'verify.json'}")


@main.command()
@friendly_errors
def doctor() -> None:
    """Show platform, onnxruntime flavour, providers, and how to switch to the best flavour here."""
    from .runtime.providers import doctor as collect, format_doctor

    click.echo(format_doctor(collect()))


if __name__ == "__main__":  # pragma: no cover
    main()
