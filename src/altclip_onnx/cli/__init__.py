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

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            return True

    missing = [m for m in ("torch", "transformers", "onnx", "sentencepiece") if absent(m)]
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
@click.option("--precision", "precisions", default="fp32,int8", show_default=True,
              help="Comma-separated variants to write: fp32 (always), int8 (CPUs), fp16 (GPUs).")
@click.option("--no-optimize", is_flag=True, help="Write the plain, unfused export (for comparisons).")
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
    precisions: str,
    no_optimize: bool,
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
        precisions=parse_precisions(precisions),
        optimize=not no_optimize,
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


def parse_precisions(text: str) -> tuple[str, ...]:
    from .bundle import PRECISIONS
    from .errors import InputError

    wanted = [p.strip().lower() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown:
        raise InputError(f"--precision: unknown {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in wanted or p == "fp32")


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
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "int8", "fp16"]),
              help="Variants to time (default: all in the bundle).")
@click.option("--threads", type=click.IntRange(1), help="onnxruntime intra-op threads [default: one per core].")
@click.option("--provider", envvar="ONNX_PROVIDER", help="Execution provider (cpu, cuda, ...) [env: ONNX_PROVIDER].")
@click.option("--tokens", type=click.IntRange(2, 512), default=16, show_default=True, help="Text length.")
@click.option("--batch-sizes", default="8,32", show_default=True, help="Throughput batch sizes.")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True, help="Interleaved rounds.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the results as JSON.")
@friendly_errors
def bench(bundle: Path, precisions: tuple[str, ...], threads: int | None, provider: str | None, tokens: int,
          batch_sizes: str, repeats: int, json_path: Path | None) -> None:
    """Time the bundle's own variants side by side: latency, throughput, peak memory, size."""
    from .bundle import atomic_path, read_manifest
    from .errors import InputError
    from .runtime import bench as runner

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise InputError(f"--batch-sizes: {batch_sizes!r} is not a comma-separated list of numbers") from None
    manifest = read_manifest(bundle)
    candidates = runner.bundle_candidates(bundle, precisions=list(precisions) or None, threads=threads,
                                          provider=provider)
    results = runner.measure(candidates, batch_sizes=sizes, tokens=tokens, image_size=manifest.image.size,
                             vocab_size=manifest.text.vocab_size, repeats=repeats, progress=lambda m: click.echo(f"... {m}", err=True))
    facts = runner.machine_facts(threads)
    click.echo(f"{bundle}: {manifest.variant}, {facts['cpu']}, {facts['logical_cpus']} logical CPUs, "
               f"threads: {facts['threads']}, onnxruntime {facts['onnxruntime']}, text {tokens} tokens\n")
    click.echo(runner.format_markdown(results, baseline="fp32", batch_sizes=sizes))
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            tmp.write_text(runner.to_json(results, facts, {"tokens": tokens, "batch_sizes": list(sizes),
                                                           "repeats": repeats, "provider": provider}))


@main.command()
@friendly_errors
def doctor() -> None:
    """Show platform, onnxruntime flavour, providers, and how to switch to the best flavour here."""
    from .runtime.providers import doctor as collect, format_doctor

    click.echo(format_doctor(collect()))



# --- embedding and classifying many inputs (runtime only: never imports torch or transformers) ----


def encoder_options(func: F) -> F:
    """--provider, --precision and --threads, shared by the commands that load an Encoder."""
    func = click.option("--threads", type=click.IntRange(0), default=None,
                        help="onnxruntime intra-op threads [default: one per physical core].")(func)
    func = click.option("--precision", type=click.Choice(["auto", "fp32", "int8", "fp16"]), default="auto",
                        show_default=True,
                        help="auto: int8 on CPU, fp16 on CUDA/TensorRT (when the bundle has them).")(func)
    func = click.option("--provider", default=None,
                        help="cpu, cuda, tensorrt, coreml, openvino, directml or auto "
                             "[default: $ONNX_PROVIDER, else auto].")(func)
    return func


def load_encoder(bundle: Path, provider: str | None, precision: str, threads: int | None) -> Any:
    from .runtime.encoder import Encoder

    return Encoder(bundle, provider=provider or os.environ.get("ONNX_PROVIDER") or None, precision=precision,
                   threads=threads)


def line_source(value: str) -> Any:
    """A list file's path, or standard input for "-"."""
    return sys.stdin if value == "-" else value


def report_failures(failures: Any) -> None:
    for failure in failures:
        click.echo(f"failed: {failure}", err=True)


def interrupted(output: Path) -> None:
    from .runtime.outputs import checkpoint_folder, output_files

    partial = checkpoint_folder(output_files(output)[0])
    if partial.exists():
        click.echo(f"interrupted; finished rows are kept in {partial}: rerun the same command to resume", err=True)
    else:
        click.echo("interrupted; nothing was written", err=True)


def summary(report: Any, what: str) -> str:
    resumed = f" ({report.resumed} resumed)" if report.resumed else ""
    failed = f", {len(report.failures)} failed" if what == "images" else ""
    return (
        f"embedded {report.rows} {what}{resumed}{failed}, "
        f"{report.per_second:.1f} {what}/s in {report.seconds:.1f}s; wrote {', '.join(map(str, report.outputs))}"
    )


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="OUT.npy (+ OUT.paths.txt) or OUT.parquet.")
@click.option("--from-file", metavar="LIST", help="Images or folders, one per line ('-': standard input).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="Threads that decode images while the model runs (0: none).")
@encoder_options
@click.option("--draft", is_flag=True, help="Decode JPEGs at 1/2-1/8 scale: much faster for big photos, not exact.")
@click.option("--no-normalize", is_flag=True, help="Raw get_image_features instead of L2-normalized embeddings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@friendly_errors
def embed(bundle: Path, paths: tuple[Path, ...], output: Path, from_file: str | None, batch_size: int,
          workers: int, provider: str | None, precision: str, threads: int | None, draft: bool,
          no_normalize: bool, overwrite: bool) -> None:
    """Embed images (files, folders walked recursively, or a list) into OUT.

    An interrupted run resumes where it stopped when run again. Files that cannot be read are
    listed on stderr with the reason and skipped; the exit code is then 2.
    """
    from .runtime.outputs import EmbedOptions, embed_images_to_file
    from .runtime.pipeline import iter_image_files

    if not paths and from_file is None:
        raise click.UsageError("give at least one PATH or --from-file")
    encoder = load_encoder(bundle, provider, precision, threads)
    files = iter_image_files(paths, from_file=line_source(from_file) if from_file else None)
    options = EmbedOptions(batch_size=batch_size, workers=workers, draft=draft, normalize=not no_normalize,
                           overwrite=overwrite)
    try:
        report = embed_images_to_file(encoder, files, output, options)
    except KeyboardInterrupt:
        interrupted(output)
        sys.exit(130)
    report_failures(report.failures)
    click.echo(summary(report, "images"))
    if report.failures:
        sys.exit(2)


@main.command("embed-text")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="OUT.npy (+ OUT.texts.jsonl) or OUT.parquet.")
@click.option("--from-file", metavar="LIST", help="Texts, one per line ('-': standard input).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@encoder_options
@click.option("--no-normalize", is_flag=True, help="Raw get_text_features instead of L2-normalized embeddings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@friendly_errors
def embed_text(bundle: Path, texts: tuple[str, ...], output: Path, from_file: str | None, batch_size: int,
               provider: str | None, precision: str, threads: int | None, no_normalize: bool,
               overwrite: bool) -> None:
    """Embed TEXTs (or a file of texts, one per line; a lone '-' reads standard input) into OUT.

    Blank lines are skipped. OUT.texts.jsonl holds each text as a JSON string, one per line.
    """
    import itertools

    from .runtime.outputs import EmbedOptions, embed_texts_to_file
    from .runtime.pipeline import iter_lines

    sources: list[Any] = []
    if texts == ("-",):
        sources.append(iter_lines(sys.stdin))
    else:
        sources.append(iter(texts))
    if from_file is not None:
        sources.append(iter_lines(line_source(from_file)))
    if not texts and from_file is None:
        raise click.UsageError("give at least one TEXT, '-' or --from-file")
    encoder = load_encoder(bundle, provider, precision, threads)
    options = EmbedOptions(batch_size=batch_size, normalize=not no_normalize, overwrite=overwrite)
    try:
        report = embed_texts_to_file(encoder, itertools.chain(*sources), output, options)
    except KeyboardInterrupt:
        interrupted(output)
        sys.exit(130)
    click.echo(summary(report, "texts"))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--labels", "label_lists", multiple=True, metavar="A,B,C", help="Comma-separated labels (repeatable).")
@click.option("--label", "single_labels", multiple=True, metavar="LABEL",
              help="One label, commas allowed (repeatable).")
@click.option("--template", "templates", multiple=True, metavar="TEXT",
              help="Prompt with {} for the label (repeatable) [default: 5 English CLIP templates].")
@click.option("--fewshot", type=click.Path(path_type=Path), metavar="CACHE",
              help="Few-shot (Tip-Adapter) cache from 'fewshot build': its classes replace --labels.")
@click.option("--top", type=click.IntRange(1), default=3, show_default=True,
              help="Labels shown per image in the table.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: [{path, probabilities: {label: p}}] with every label.")
@click.option("--from-file", metavar="LIST", help="Images or folders, one per line ('-': standard input).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@encoder_options
@click.option("--draft", is_flag=True, help="Decode JPEGs at 1/2-1/8 scale (faster for big photos).")
@friendly_errors
def classify(bundle: Path, images: tuple[Path, ...], label_lists: tuple[str, ...], single_labels: tuple[str, ...],
             templates: tuple[str, ...], fewshot: Path | None, top: int, as_json: bool, from_file: str | None,
             batch_size: int, workers: int, provider: str | None, precision: str, threads: int | None,
             draft: bool) -> None:
    """Zero-shot classify IMAGEs (files or folders) among the labels.

    Probabilities are softmax(logit_scale x cosine(image, label)), each label embedded as the
    mean of its templates. With --fewshot CACHE, the classes and Tip-Adapter logits come from the
    cache. Exit code 2 when some images could not be read.
    """
    import json

    from .runtime.pipeline import classify_images, iter_image_files, split_labels

    labels = split_labels(label_lists, single_labels)
    if not labels and fewshot is None:
        raise click.UsageError("give labels with --labels a,b,c or --label (or a cache with --fewshot)")
    if not images and from_file is None:
        raise click.UsageError("give at least one IMAGE or --from-file")
    encoder = load_encoder(bundle, provider, precision, threads)
    files = iter_image_files(images, from_file=line_source(from_file) if from_file else None)
    if fewshot is not None:  # Tip-Adapter: the cache brings its classes, classifier, alpha and beta
        from .runtime.fewshot import TipAdapter, classify_with_cache

        adapter = TipAdapter.load(fewshot, encoder)
        adapter.check_labels(labels, templates)
        labels = list(adapter.class_names)
        batches = classify_with_cache(encoder, files, adapter, batch_size=batch_size, workers=workers, draft=draft)
    else:  # zero-shot classifier: [labels, D]
        classifier = encoder.text_classifier(labels, list(templates) or None)
        batches = classify_images(encoder, files, classifier, batch_size=batch_size, workers=workers, draft=draft)
    results: list[tuple[str, Any]] = []
    failures = []
    for batch in batches:
        failures.extend(batch.failures)
        results.extend(zip(batch.items, batch.probabilities))
    report_failures(failures)
    if as_json:
        rows = [{"path": path, "probabilities": {label: round(float(p), 6) for label, p in zip(labels, probs)}}
                for path, probs in results]
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        click.echo(format_classification(results, labels, top))
    if failures:
        sys.exit(2)


def display_width(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, width: int) -> str:
    return text + " " * max(width - display_width(text), 0)


def format_classification(results: list[tuple[str, Any]], labels: list[str], top: int) -> str:
    """A table: one row per image, its ``top`` labels with probabilities in %, best first."""
    top = min(top, len(labels))
    path_width = max([display_width("image"), *(display_width(path) for path, _ in results)])
    label_width = max(display_width(label) for label in labels)
    lines = [f"{pad('image', path_width)}  top {top} (probability)"]
    for path, probs in results:
        best = sorted(range(len(labels)), key=lambda i: -float(probs[i]))[:top]
        cells = [f"{pad(labels[i], label_width)} {100 * float(probs[i]):5.1f}%" for i in best]
        lines.append(f"{pad(path, path_width)}  " + "   ".join(cells))
    return "\n".join(lines)



# --- few-shot classification (Tip-Adapter) and evaluation on a labelled folder ----------------------


def parse_grid(text: str, option: str) -> tuple[float, ...]:
    from .errors import InputError

    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{option}: {text!r} is not a comma-separated list of numbers") from None


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


@main.group()
def fewshot() -> None:
    """Few-shot classification with Tip-Adapter: a cache of labelled images, no training."""


@fewshot.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Cache file to write (.npz).")
@click.option("--shots", type=click.IntRange(1), help="Cache at most N images per class [default: all not held out].")
@click.option("--val-per-class", type=click.IntRange(0), metavar="N",
              help="Validation images per class, never cached (0: none) [default: --val-fraction, at least 1].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Share of each class held out for validation when --val-per-class is not given.")
@click.option("--template", "templates", multiple=True, metavar="TEXT",
              help="Prompt with {} for the class label (repeatable) [default: 5 English CLIP templates].")
@click.option("--alphas", default="0.1,0.25,0.5,0.75,1,1.5,2,3,4,5,7.5,10", show_default=True,
              help="Grid searched for alpha (how much the cache counts).")
@click.option("--betas", default="0.1,0.5,1,2,3,4,5.5,7,8.5,10,12.5,15,17.5,20", show_default=True,
              help="Grid searched for beta (how sharply the cache's votes fall off).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the cache/validation split.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@encoder_options
@click.option("--overwrite", is_flag=True, help="Replace an existing cache file.")
@friendly_errors
def fewshot_build(bundle: Path, data_dir: Path, output: Path, shots: int | None, val_per_class: int | None,
                  val_fraction: float, templates: tuple[str, ...], alphas: str, betas: str, seed: int,
                  batch_size: int, workers: int, provider: str | None, precision: str, threads: int | None,
                  overwrite: bool) -> None:
    """Build a Tip-Adapter cache from DATA_DIR, which holds one sub-folder of images per class.

    The folder name is the class; its prompt label is the name with underscores as spaces, or
    the one DATA_DIR/labels.json gives ({"folder": "label"}). Each class is split (by --seed)
    into cached images and validation images; alpha and beta are the grid point with the best
    validation accuracy. Test the cache on other images with 'altclip-onnx evaluate'.
    """
    from .errors import InputError
    from .runtime.fewshot import build_cache

    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists; pass --overwrite to replace it")
    encoder = load_encoder(bundle, provider, precision, threads)
    adapter = build_cache(encoder, data_dir, shots=shots, val_per_class=val_per_class, val_fraction=val_fraction,
                          templates=list(templates) or None, alphas=parse_grid(alphas, "--alphas"),
                          betas=parse_grid(betas, "--betas"), seed=seed, batch_size=batch_size, workers=workers)
    adapter.save(output, overwrite=overwrite)
    counts = adapter.counts()
    width = max(display_width("class"), *(display_width(name) for name in adapter.class_names))
    click.echo(f"{pad('class', width)}  cached  validation  prompt label")
    for name, label in zip(adapter.class_names, adapter.labels):
        click.echo(f"{pad(name, width)}  {counts[name]['cache']:6d}  {counts[name]['validation']:10d}  {label}")
    result = adapter.validation
    if result.images:
        click.echo(f"validation ({result.images} images): zero-shot {percent(result.zero_shot)}, "
                   f"Tip-Adapter {percent(result.tip_adapter)} with alpha={adapter.alpha:g}, beta={adapter.beta:g} "
                   f"(best of {len(result.alphas)} x {len(result.betas)})")
    else:
        click.echo(f"no validation images: alpha={adapter.alpha:g}, beta={adapter.beta:g} (not tuned)")
    click.echo(f"wrote {output} ({len(adapter.keys)} cached images, {len(adapter.class_names)} classes)")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("test_dir", type=click.Path(path_type=Path))
@click.option("--fewshot", "cache", type=click.Path(path_type=Path), metavar="CACHE",
              help="Also score this Tip-Adapter cache (its zero-shot part is compared with it).")
@click.option("--labels", "label_lists", multiple=True, metavar="A,B,C",
              help="Zero-shot labels (each class folder must be one) [default: the folder names].")
@click.option("--label", "single_labels", multiple=True, metavar="LABEL", help="One label, commas allowed.")
@click.option("--template", "templates", multiple=True, metavar="TEXT",
              help="Zero-shot prompt with {} for the label (repeatable) [default: 5 English CLIP templates].")
@click.option("--json", "as_json", is_flag=True, help="Print the accuracies as JSON.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@encoder_options
@friendly_errors
def evaluate(bundle: Path, test_dir: Path, cache: Path | None, label_lists: tuple[str, ...],
             single_labels: tuple[str, ...], templates: tuple[str, ...], as_json: bool, batch_size: int,
             workers: int, provider: str | None, precision: str, threads: int | None) -> None:
    """Accuracy on TEST_DIR (one sub-folder of images per class): zero-shot and Tip-Adapter side by side.

    With --fewshot, test images that the cache was built from (same content) are refused: they
    would score themselves. Exit code 2 when some images could not be read.
    """
    import json

    from .runtime.fewshot import TipAdapter, evaluate as run_evaluation
    from .runtime.pipeline import split_labels

    encoder = load_encoder(bundle, provider, precision, threads)
    adapter = TipAdapter.load(cache, encoder) if cache is not None else None
    result = run_evaluation(encoder, test_dir, adapter, labels=split_labels(label_lists, single_labels),
                            templates=list(templates), batch_size=batch_size, workers=workers)
    report_failures(result.failures)
    if as_json:
        click.echo(json.dumps({"test_dir": str(test_dir), "cache": str(cache) if cache else None,
                               **result.to_json()}, ensure_ascii=False, indent=2))
    else:
        methods = ["zero_shot"] + (["tip_adapter"] if adapter is not None else [])
        width = max(display_width("class"), *(display_width(name) for name in result.classes))
        click.echo(f"{pad('class', width)}  images  zero-shot" + ("  tip-adapter" if adapter else ""))
        for name in [*result.classes, None]:
            count = result.images[name] if name else result.total
            cells = "".join(f"  {percent(result.accuracy(m, name)):>{len(m) + 2 * (m == 'tip_adapter')}}"
                            for m in methods)
            click.echo(f"{pad(name or 'all', width)}  {count:6d}{cells}")
        if adapter is not None:
            click.echo(f"Tip-Adapter: alpha={adapter.alpha:g}, beta={adapter.beta:g}, "
                       f"{len(adapter.keys)} cached images")
    if result.failures:
        sys.exit(2)


# --- search: an incremental index of a photo collection (runtime only: never imports torch) -------


@main.command("index")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--db", required=True, type=click.Path(path_type=Path), help="Index folder (created if missing).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="Threads that decode images while the model runs (0: none).")
@encoder_options
@friendly_errors
def index_command(bundle: Path, folders: tuple[Path, ...], db: Path, batch_size: int, workers: int,
                  provider: str | None, precision: str, threads: int | None) -> None:
    """Index the images under FOLDERS (recursively) into DB for 'altclip-onnx search'.

    Running it again is incremental: new and changed files are embedded, rows of deleted files
    removed. An interrupted run keeps its finished batches; run it again to continue. Files that
    cannot be read are listed on stderr with the reason and skipped; the exit code is then 2.
    """
    from .runtime.search import Index

    encoder = load_encoder(bundle, provider, precision, threads)
    with Index.open(db, create=True) as index:
        try:
            report = index.update(encoder, folders, batch_size=batch_size, workers=workers)
        except KeyboardInterrupt:
            click.echo(f"interrupted; {len(index)} images are indexed in {db}: rerun the same command to continue",
                       err=True)
            sys.exit(130)
    report_failures(report.failures)
    click.echo(report.summary())
    if report.failures:
        sys.exit(2)


@main.command("search")
@click.argument("query", required=False)
@click.option("--db", required=True, type=click.Path(path_type=Path), help="Index folder made by 'index'.")
@click.option("--image", type=click.Path(path_type=Path), help="Find images similar to this one instead of a text.")
@click.option("-k", "--top", "k", type=click.IntRange(1), default=10, show_default=True, help="Results to show.")
@click.option("--json", "as_json", is_flag=True, help='Print JSON: [{"path": ..., "score": ...}], best first.')
@click.option("--bundle", type=click.Path(path_type=Path),
              help="Bundle for the query [default: the one recorded in the index].")
@click.option("--provider", default=None,
              help="cpu, cuda, tensorrt, coreml, openvino, directml or auto [default: $ONNX_PROVIDER, else auto].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "int8", "fp16"]), default=None,
              help="[default: the precision the index was made with, if the bundle has it]")
@click.option("--threads", type=click.IntRange(0), default=None,
              help="onnxruntime intra-op threads [default: one per physical core].")
@friendly_errors
def search_command(query: str | None, db: Path, image: Path | None, k: int, as_json: bool, bundle: Path | None,
                   provider: str | None, precision: str | None, threads: int | None) -> None:
    """Search the images indexed in DB by a text QUERY (any language) or by --image.

    Scores are cosine similarities (exact, re-ranked from the approximate index's candidates).
    """
    import json

    from .runtime.search import Index

    if (query is None) == (image is None):
        raise click.UsageError("give either a text QUERY or --image FILE")
    with Index.open(db) as index:
        encoder = index.encoder(bundle, provider=provider or os.environ.get("ONNX_PROVIDER") or None,
                                precision=precision, threads=threads)
        if image is not None:
            hits = index.search_image(encoder, image, k)
        else:
            hits = index.search_text(encoder, query, k)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps([{"path": h.path, "score": round(h.score, 6)} for h in hits], ensure_ascii=False,
                              indent=2))
    else:
        click.echo(format_hits(hits))


def format_hits(hits: list[Any]) -> str:
    """A table: rank, cosine score, path; best first."""
    lines = ["rank   score  path"]
    lines += [f"{rank:4d}  {hit.score:6.4f}  {hit.path}" for rank, hit in enumerate(hits, 1)]
    if not hits:
        lines.append("(the index is empty)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()
