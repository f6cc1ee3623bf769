"""Commands about a bundle itself: export, verify, bench, tune, doctor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..bundle import DEFAULT_OPSET, TextSpec
from ..precisions import EXPORTED_BY_DEFAULT
from ..runtime.providers import SHORT_NAMES
from ..runtime.tune import TuneSettings
from .app import (
    bundle_argument,
    friendly_errors,
    json_option,
    main,
    options_from_flags,
    precisions_option,
    provider_option,
    require_export_extra,
    step_printer,
    threads_option,
)


@main.command()
@click.argument("source", required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Bundle folder [default: onnx/<variant>].")
@click.option("--random-init", is_flag=True, help="Random weights and a placeholder tokenizer; no download.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Hub download cache [default: ./model].")
@click.option("--max-length", type=int, default=TextSpec.max_length, show_default=True,
              help=f"Default text truncation stored in the bundle (the text tower takes up to "
                   f"{TextSpec.model_max_length} tokens).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@precisions_option(",".join(EXPORTED_BY_DEFAULT), "Variants to write (fp32 always: it is the reference).")
@click.option("--no-optimize", is_flag=True, help="Write the plain, unfused export (for comparisons).")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with PyTorch.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@friendly_errors
def export(source: str | None, output: Path | None, random_init: bool, seed: int, cache_dir: Path | None,
           max_length: int, opset: int, precisions: tuple[str, ...], no_optimize: bool, no_verify: bool,
           overwrite: bool) -> None:
    """Export SOURCE to an ONNX bundle and verify it against PyTorch.

    SOURCE is a Hub id (BAAI/AltCLIP, BAAI/AltCLIP-m9, BAAI/AltCLIP-m18), a seed name
    (AltCLIP-XLMR-L, AltCLIP-XLMR-L-m9, AltCLIP-XLMR-L-m18), a short name (m9, m18), or a local
    checkpoint folder in transformers' or FlagAI's layout. Default: $MODEL, else AltCLIP-m18.
    """
    require_export_extra("export")
    from ..export.build import ExportOptions, export_bundle
    from ..export.sources import default_output
    from ..models import DEFAULT_VARIANT

    source = source or os.environ.get("MODEL") or DEFAULT_VARIANT
    options = options_from_flags(ExportOptions, opset=opset, max_length=max_length, verify=not no_verify,
                                 overwrite=overwrite, random_init=random_init, seed=seed,
                                 cache_dir=str(cache_dir) if cache_dir else None, precisions=precisions,
                                 optimize=not no_optimize)
    result = export_bundle(source, output or default_output(source), options, progress=step_printer())
    if result.report is not None:
        click.echo(result.report.format_table())
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(result.summary())


@main.command()
@bundle_argument
@provider_option
@precisions_option(None, "Precisions to check [default: all in the bundle].")
@threads_option
@click.option("--model", "model_source",
              help="Run PyTorch afresh as the reference (the [export] extra): a Hub id, a short name or a checkpoint "
                   "folder; 'manifest' for the source the manifest records.")
@click.option("--images", type=click.Path(path_type=Path), metavar="DIR",
              help="Also your own images (a folder): against PyTorch with --model, else against the bundle's fp32 "
                   "graphs on this machine once they passed the stored reference.")
@click.option("--texts", type=click.Path(path_type=Path), metavar="FILE", help="Also your own texts, one per line "
              "(as --images).")
@click.option("--integrity", is_flag=True, help="Only check every file against the manifest's sha256.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Hub download cache, with --model [default: ./model].")
@json_option("Print the report as JSON (what verify.json holds).")
@friendly_errors
def verify(bundle: str, provider: str | None, precisions: tuple[str, ...], threads: int | None,
           model_source: str | None, images: Path | None, texts: Path | None, integrity: bool,
           cache_dir: Path | None, as_json: bool) -> None:
    """Check a bundle's numbers on this machine against the PyTorch reference it carries (no torch needed).

    Every precision runs with --provider on the bundle's verification cases, under the gates export used
    (cosine, max |diff|, batch invariance, zero-shot agreement). Exit code 3 when one fails. A pass is
    recorded, so Encoder's first-use check on this machine and provider is already done.
    """
    from ..hub import locate_bundle

    folder = locate_bundle(bundle)
    if integrity:
        from ..bundle import require_integrity

        manifest = require_integrity(folder)
        click.echo(f"{bundle}: all {len(manifest.files)} files match the manifest")
        return
    if model_source is not None:
        require_export_extra("verify against PyTorch afresh (--model)")
        from ..export.verify import verify_against_model

        report = verify_against_model(folder, model_source=None if model_source == "manifest" else model_source,
                                      precisions=list(precisions) or None, provider=provider, threads=threads,
                                      cache_dir=str(cache_dir) if cache_dir else None, images=images, texts=texts,
                                      progress=step_printer())
    else:
        from ..verification import verify_bundle

        report = verify_bundle(folder, provider=provider, precisions=list(precisions) or None, threads=threads,
                               images=images, texts=texts, progress=step_printer())
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(report.format_table())
    click.echo(f"report written to {folder / 'verify.json'}")


@main.command()
@bundle_argument
@precisions_option(None, "Variants to time [default: all in the bundle].")
@threads_option
@provider_option
@click.option("--tokens", type=click.IntRange(2, 512), default=16, show_default=True, help="Text length.")
@click.option("--batch-sizes", default="8,32", show_default=True, help="Throughput batch sizes, comma-separated.")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True, help="Interleaved rounds.")
@json_option("Print the results as JSON instead of Markdown tables.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Also write the results as JSON to this file.")
@friendly_errors
def bench(bundle: str, precisions: tuple[str, ...], threads: int | None, provider: str | None, tokens: int,
          batch_sizes: str, repeats: int, as_json: bool, output: Path | None) -> None:
    """Time the bundle's own variants side by side: latency, throughput, peak memory, size."""
    from ..runtime import bench as runner

    settings = runner.BenchSettings.parse(batch_sizes, tokens=tokens, repeats=repeats, threads=threads,
                                          provider=provider, precisions=precisions)
    result = runner.bench_bundle(bundle, settings, output=output, progress=step_printer())
    click.echo(result.to_json() if as_json else result.format_markdown())
    if output is not None:
        click.echo(f"wrote {output}", err=True)


@main.command()
@bundle_argument
@click.option("--provider", "providers", multiple=True, metavar="P[,P...]",
              help=f"Providers to try: {', '.join(SHORT_NAMES)}; comma-separated or repeated [default: every "
                   "one available here].")
@precisions_option(None, "Precisions to try [default: all in the bundle].")
@threads_option
@click.option("--repeats", type=click.IntRange(1), default=TuneSettings.repeats, show_default=True,
              help="Interleaved rounds per tower and batch size.")
@click.option("--budget", type=click.FloatRange(0, min_open=True), default=TuneSettings.budget_s, show_default=True,
              help="Seconds per tower and batch size after which rounds stop (at least 3 run).")
@json_option("Print the choice and every candidate's speed as JSON.")
@friendly_errors
def tune(bundle: str, providers: tuple[str, ...], precisions: tuple[str, ...], threads: int | None, repeats: int,
         budget: float, as_json: bool) -> None:
    """Find the fastest verified provider and precision per tower on this machine, for precision auto.

    Every candidate (provider x precision x tower) is first checked against the PyTorch reference the
    bundle carries; those that pass are timed interleaved at 1 and 8 images, 1 and 32 texts. The choice is
    recorded for this CPU, GPU and runtime (beside the bundle, or in the user's cache when the bundle is
    read-only), and precision auto follows it from then on: Encoder, every command, serve.
    """
    from ..runtime.tune import tune_bundle

    settings = TuneSettings.parse(providers, precisions, threads=threads, repeats=repeats, budget_s=budget)
    result = tune_bundle(bundle, settings, progress=step_printer())
    click.echo(result.to_json() if as_json else result.format_markdown())


@main.command()
@friendly_errors
def doctor() -> None:
    """Show platform, onnxruntime flavour, providers, and how to switch to the best flavour here."""
    from ..runtime.doctor import doctor as collect, format_doctor

    click.echo(format_doctor(collect()))
