"""Commands that embed or classify many inputs (runtime only: never import torch or transformers)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..distributed import RayOptions
from ..precisions import AUTO
from .app import (
    bundle_argument,
    encoder_options,
    exit_partial_if,
    friendly_errors,
    image_batch_options,
    json_option,
    line_source,
    load_encoder,
    main,
    report_failures,
    table,
    text_batch_options,
)


def output_option(what: str) -> Any:
    return click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
                        help=f"OUT.npy (+ OUT.{what}) or OUT.parquet.")


def ray_options(func: Any) -> Any:
    """--ray and what goes with it (embed, embed-text): the same run spread over a Ray cluster."""
    func = click.option("--ship-bundle", is_flag=True,
                        help="With --ray: send the bundle to the workers through Ray's object store "
                             "[default: every worker reads BUNDLE from the same path].")(func)
    func = click.option("--shard-rows", type=click.IntRange(1), default=None, metavar="N",
                        help="With --ray: inputs per Parquet shard, the unit of resuming "
                             f"[default: {RayOptions.shard_rows}].")(func)
    func = click.option("--actors", type=click.IntRange(1), default=None, metavar="N",
                        help="With --ray: model replicas, each with --threads onnxruntime threads (1 unless given) "
                             "and --workers decoding threads [default: the cluster's CPUs / --threads].")(func)
    return click.option("--ray", "ray_address", is_flag=False, flag_value=AUTO, default=None,
                        metavar="[auto|ADDRESS]",
                        help="Run on Ray: 'auto' (RAY_ADDRESS, else a cluster running here, else a local one) or "
                             "a cluster's HOST:PORT. OUT is then a folder of Parquet shards.")(func)


def run_on_ray(kind: str, items: list[str], bundle: str, output: Path, ray_address: str, actors: int | None,
               shard_rows: int | None, ship_bundle: bool, **options: Any) -> None:
    """embed / embed-text --ray: the distributed API, its failures listed, one summary line."""
    from ..distributed import ShardReport
    from ..distributed.ray_run import run

    given = {"shard_rows": shard_rows, "threads": options.pop("threads", None)}  # None or 0: RayOptions' default
    settings = RayOptions(address=ray_address, actors=actors, ship_bundle=ship_bundle,
                          **{name: value for name, value in given.items() if value}, **options)
    report: ShardReport = run(kind, items, bundle, output, settings)
    report_failures(report.failures)
    what = f"{kind}s"
    resumed = f", {report.resumed} resumed" if report.resumed else ""
    failed = f", {len(report.failures)} failed" if report.failures else ""
    click.echo(f"embedded {report.embedded} {what}{failed}, {report.per_second:.1f} {what}/s on {report.actors} Ray "
               f"actors in {report.seconds:.1f}s; wrote {report.output} ({report.rows} rows in {report.shards} "
               f"shards{resumed})")
    exit_partial_if(report.failures)


def require_ray(ray_address: str | None, actors: int | None, shard_rows: int | None, ship_bundle: bool) -> None:
    if ray_address is None:
        given = [name for name, value in (("--actors", actors), ("--shard-rows", shard_rows),
                                          ("--ship-bundle", ship_bundle)) if value]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --ray")


def summary(report: Any, what: str) -> str:
    resumed = f" ({report.resumed} resumed)" if report.resumed else ""
    failed = f", {len(report.failures)} failed" if report.failures else ""
    return (f"embedded {report.rows} {what}{resumed}{failed}, {report.per_second:.1f} {what}/s in "
            f"{report.seconds:.1f}s; wrote {', '.join(map(str, report.outputs))}")


@main.command()
@bundle_argument
@click.argument("paths", nargs=-1, type=click.Path())  # text: an s3:// URI (with --ray) must keep its //
@output_option("paths.txt")
@click.option("--from-file", metavar="LIST", help="Images or folders, one per line ('-': standard input).")
@image_batch_options
@encoder_options
@click.option("--draft", is_flag=True, help="Decode JPEGs at 1/2-1/8 scale: much faster for big photos, not exact.")
@click.option("--no-normalize", is_flag=True, help="Raw get_image_features instead of L2-normalized embeddings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@ray_options
@friendly_errors
def embed(bundle: str, paths: tuple[str, ...], output: Path, from_file: str | None, batch_size: int,
          workers: int, provider: str | None, precision: str, threads: int | None, draft: bool,
          no_normalize: bool, overwrite: bool, ray_address: str | None, actors: int | None,
          shard_rows: int | None, ship_bundle: bool) -> None:
    """Embed images (files, folders walked recursively, or a list) into OUT.

    An interrupted run resumes where it stopped when run again. Files that cannot be read are
    listed on stderr with the reason and skipped; the exit code is then 4. With --ray, actors on a
    Ray cluster embed the images (each reads its files: paths must be the same on every node) and OUT
    is a folder of Parquet shards (path, embedding, error) written as they complete.
    """
    from ..runtime.outputs import EmbedOptions, embed_images_to_file
    from ..runtime.pipeline import iter_image_files

    if not paths and from_file is None:
        raise click.UsageError("give at least one PATH or --from-file")
    require_ray(ray_address, actors, shard_rows, ship_bundle)
    if ray_address is not None:
        from ..distributed import expand_inputs
        from ..runtime.pipeline import iter_lines

        listed = list(iter_lines(line_source(from_file))) if from_file else []
        files = expand_inputs([*paths, *listed])
        run_on_ray("image", files, bundle, output, ray_address, actors, shard_rows, ship_bundle,
                   batch_size=batch_size, workers=workers, provider=provider, precision=precision, threads=threads,
                   draft=draft, normalize=not no_normalize, overwrite=overwrite)
        return
    encoder = load_encoder(bundle, provider, precision, threads)
    files = list(iter_image_files(paths, from_file=line_source(from_file) if from_file else None))  # a total
    options = EmbedOptions(batch_size=batch_size, workers=workers, draft=draft, normalize=not no_normalize,
                           overwrite=overwrite)
    report = embed_images_to_file(encoder, files, output, options)
    report_failures(report.failures)
    click.echo(summary(report, "images"))
    exit_partial_if(report.failures)


@main.command("embed-text")
@bundle_argument
@click.argument("texts", nargs=-1)
@output_option("texts.jsonl")
@click.option("--from-file", metavar="LIST", help="Texts, one per line ('-': standard input).")
@text_batch_options
@encoder_options
@click.option("--no-normalize", is_flag=True, help="Raw get_text_features instead of L2-normalized embeddings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@ray_options
@friendly_errors
def embed_text(bundle: str, texts: tuple[str, ...], output: Path, from_file: str | None, batch_size: int,
               provider: str | None, precision: str, threads: int | None, no_normalize: bool,
               overwrite: bool, ray_address: str | None, actors: int | None, shard_rows: int | None,
               ship_bundle: bool) -> None:
    """Embed TEXTs (or a file of texts, one per line; a lone '-' reads standard input) into OUT.

    Blank lines are skipped. OUT.texts.jsonl holds each text as a JSON string, one per line. With
    --ray, actors on a Ray cluster embed them into a folder of Parquet shards (text, embedding).
    """
    from ..runtime.outputs import EmbedOptions, embed_texts_to_file
    from ..runtime.pipeline import iter_lines

    if not texts and from_file is None:
        raise click.UsageError("give at least one TEXT, '-' or --from-file")
    sources: list[Any] = [iter_lines(sys.stdin) if texts == ("-",) else iter(texts)]
    if from_file is not None:
        sources.append(iter_lines(line_source(from_file)))
    all_texts = list(itertools.chain(*sources))  # a total for the progress line
    require_ray(ray_address, actors, shard_rows, ship_bundle)
    if ray_address is not None:
        run_on_ray("text", all_texts, bundle, output, ray_address, actors, shard_rows, ship_bundle,
                   batch_size=batch_size, provider=provider, precision=precision, threads=threads,
                   normalize=not no_normalize, overwrite=overwrite)
        return
    encoder = load_encoder(bundle, provider, precision, threads)
    options = EmbedOptions(batch_size=batch_size, normalize=not no_normalize, overwrite=overwrite)
    report = embed_texts_to_file(encoder, all_texts, output, options)
    click.echo(summary(report, "texts"))


@main.command()
@bundle_argument
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--labels", "label_lists", multiple=True, metavar="A,B,C", help="Comma-separated labels (repeatable).")
@click.option("--label", "single_labels", multiple=True, metavar="LABEL",
              help="One label, commas allowed (repeatable).")
@click.option("--template", "templates", multiple=True, metavar="TEXT",
              help="Prompt with {} for the label (repeatable) [default: 5 English CLIP templates].")
@click.option("--fewshot", type=click.Path(path_type=Path), metavar="CACHE",
              help="Few-shot (Tip-Adapter) cache from 'fewshot build': its classes replace --labels.")
@click.option("-k", "--top", type=click.IntRange(1), default=3, show_default=True,
              help="Labels shown per image in the table.")
@json_option("Print JSON: [{path, probabilities: {label: p}} or {path, error}], every label, every file.")
@click.option("--from-file", metavar="LIST", help="Images or folders, one per line ('-': standard input).")
@image_batch_options
@encoder_options
@click.option("--draft", is_flag=True, help="Decode JPEGs at 1/2-1/8 scale (faster for big photos).")
@friendly_errors
def classify(bundle: str, images: tuple[Path, ...], label_lists: tuple[str, ...], single_labels: tuple[str, ...],
             templates: tuple[str, ...], fewshot: Path | None, top: int, as_json: bool, from_file: str | None,
             batch_size: int, workers: int, provider: str | None, precision: str, threads: int | None,
             draft: bool) -> None:
    """Zero-shot classify IMAGEs (files or folders) among the labels.

    Probabilities are softmax(logit_scale x cosine(image, label)), each label embedded as the
    mean of its templates. With --fewshot CACHE, the classes and Tip-Adapter logits come from the
    cache. Exit code 4 when some images could not be read.
    """
    from ..runtime.pipeline import classify_images, iter_image_files, split_labels

    labels = split_labels(label_lists, single_labels)
    if not labels and fewshot is None:
        raise click.UsageError("give labels with --labels a,b,c or --label (or a cache with --fewshot)")
    if not images and from_file is None:
        raise click.UsageError("give at least one IMAGE or --from-file")
    encoder = load_encoder(bundle, provider, precision, threads)
    files = list(iter_image_files(images, from_file=line_source(from_file) if from_file else None))  # a total
    if fewshot is not None:  # Tip-Adapter: the cache brings its classes, classifier, alpha and beta
        from ..fewshot import TipAdapter, classify_with_cache

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
        rows: list[dict[str, Any]] = [
            {"path": path, "probabilities": {label: round(float(p), 6) for label, p in zip(labels, probs)}}
            for path, probs in results
        ]
        rows += [{"path": failure.item, "error": failure.reason} for failure in failures]
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        click.echo(format_classification(results, labels, top))
    exit_partial_if(failures)


def format_classification(results: list[tuple[str, Any]], labels: list[str], top: int) -> str:
    """A table: one row per image, its ``top`` labels with probabilities in %, best first."""
    top = min(top, len(labels))
    rows = []
    for path, probs in results:
        best = sorted(range(len(labels)), key=lambda i: -float(probs[i]))[:top]
        rows.append([path, *(f"{labels[i]} {100 * float(probs[i]):5.1f}%" for i in best)])
    header = ["image", f"top {top} (probability)", *([""] * (top - 1))]
    return table(header, rows)
