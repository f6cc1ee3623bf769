"""Measuring a bundle on data the user owns: classification accuracy and retrieval recall (runtime only).

``evaluate`` is a group; ``altclip-onnx evaluate BUNDLE TEST_DIR ...`` (the spelling from before the
group) still runs ``evaluate classification``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .app import (
    bundle_argument,
    encoder_options,
    exit_partial_if,
    friendly_errors,
    image_batch_options,
    json_option,
    load_encoder,
    main,
    percent,
    precisions_option,
    provider_option,
    report_failures,
    table,
    threads_option,
)

CLASSIFICATION = "classification"
DIRECTION_NAMES = {"text_to_image": "text->image", "image_to_text": "image->text"}


class EvaluateGroup(click.Group):
    """A group whose first word, when it names no subcommand (nor asks for help), starts ``classification``'s
    arguments: the old ``evaluate BUNDLE TEST_DIR`` keeps working, options first or last."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [CLASSIFICATION, *args]
        return super().parse_args(ctx, args)


@main.group(cls=EvaluateGroup)
def evaluate() -> None:
    """Measure a bundle on your own data: classification accuracy or retrieval recall.

    'altclip-onnx evaluate BUNDLE TEST_DIR ...' is short for 'evaluate classification BUNDLE TEST_DIR ...'.
    """


@evaluate.command(CLASSIFICATION)
@bundle_argument
@click.argument("test_dir", type=click.Path(path_type=Path))
@click.option("--fewshot", "cache", type=click.Path(path_type=Path), metavar="CACHE",
              help="Also score this Tip-Adapter cache (its zero-shot part is compared with it).")
@click.option("--labels", "label_lists", multiple=True, metavar="A,B,C",
              help="Zero-shot labels (each class folder must be one) [default: the folder names].")
@click.option("--label", "single_labels", multiple=True, metavar="LABEL", help="One label, commas allowed.")
@click.option("--template", "templates", multiple=True, metavar="TEXT",
              help="Zero-shot prompt with {} for the label (repeatable) [default: 5 English CLIP templates].")
@json_option("Print the accuracies (and the files that failed) as JSON.")
@image_batch_options
@encoder_options
@friendly_errors
def classification(bundle: str, test_dir: Path, cache: Path | None, label_lists: tuple[str, ...],
                   single_labels: tuple[str, ...], templates: tuple[str, ...], as_json: bool, batch_size: int,
                   workers: int, provider: str | None, precision: str, threads: int | None) -> None:
    """Accuracy on TEST_DIR (one sub-folder of images per class): zero-shot and Tip-Adapter side by side.

    With --fewshot, test images that the cache was built from (same content) are refused: they
    would score themselves. Exit code 4 when some images could not be read.
    """
    from ..fewshot import TipAdapter, evaluate as run_evaluation
    from ..runtime.pipeline import split_labels

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
        rows = [[name or "all", str(result.images[name] if name else result.total),
                 *(percent(result.accuracy(m, name)) for m in methods)] for name in [*result.classes, None]]
        header = ["class", "images", "zero-shot"] + (["tip-adapter"] if adapter is not None else [])
        click.echo(table(header, rows, right=tuple(range(1, len(header)))))
        if adapter is not None:
            click.echo(f"Tip-Adapter: alpha={adapter.alpha:g}, beta={adapter.beta:g}, "
                       f"{len(adapter.keys)} cached images")
    exit_partial_if(result.failures)


@evaluate.command("retrieval")
@bundle_argument
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Folder the captions' image paths are relative to.")
@click.option("--captions", "captions_path", required=True, type=click.Path(path_type=Path), metavar="FILE.jsonl",
              help='One caption per line: {"image": "a/1.jpg", "caption": "...", "language": "en"}.')
@precisions_option(None, "Precisions to compare side by side [default: every precision the bundle has].")
@json_option("Print the recalls as JSON (fractions, per precision, direction and language).")
@image_batch_options
@provider_option
@threads_option
@friendly_errors
def retrieval(bundle: str, images_dir: Path, captions_path: Path, precisions: tuple[str, ...], as_json: bool,
              batch_size: int, workers: int, provider: str | None, threads: int | None) -> None:
    """Recall@1/5/10, text->image and image->text, per language and overall, per precision.

    text->image: for each caption, is its image among the top k of all the set's images.
    image->text, language L: for each image with a caption in L, is one of its L-captions among
    the top k of all L-captions (overall: of all captions). Equal scores keep file order (images
    by first appearance). Every image must be readable: one that is not is an error (exit 1).
    """
    from ..evaluation import evaluate_retrieval

    report = evaluate_retrieval(bundle, images_dir, captions_path, precisions=precisions or None,
                                batch_size=batch_size, workers=workers,
                                load=lambda precision: load_encoder(bundle, provider, precision, threads))
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
        return
    click.echo(retrieval_table(report))
    languages = len(report.languages)
    click.echo(f"{report.images} images, {report.captions} captions in {languages} "
               f"language{'s' if languages != 1 else ''}")


def retrieval_table(report: Any) -> str:
    """One row per direction and language (overall first), recall@k of each precision side by side."""
    header = ["direction", "language", "queries"]
    header += [f"{precision} R@{k}" for precision in report.precisions for k in report.ks]
    rows = []
    for direction, shown in DIRECTION_NAMES.items():
        for language in [None, *report.languages]:
            cells = [shown, language or "all", str(report.queries[direction][language])]
            cells += [percent(report.recall(p, direction, language, k)) for p in report.precisions for k in report.ks]
            rows.append(cells)
    return table(header, rows, right=tuple(range(2, len(header))))
