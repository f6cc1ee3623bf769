"""Few-shot classification (Tip-Adapter): building a cache (runtime only). Scoring it: cli/evaluate.py."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .app import (
    bundle_argument,
    encoder_options,
    friendly_errors,
    image_batch_options,
    load_encoder,
    main,
    percent,
    table,
)


def parse_grid(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise InputError(f"{option}: {text!r} is not a comma-separated list of numbers") from exc


@main.group()
def fewshot() -> None:
    """Few-shot classification with Tip-Adapter: a cache of labelled images, no training."""


@fewshot.command("build")
@bundle_argument
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
@image_batch_options
@encoder_options
@click.option("--overwrite", is_flag=True, help="Replace an existing cache file.")
@friendly_errors
def fewshot_build(bundle: str, data_dir: Path, output: Path, shots: int | None, val_per_class: int | None,
                  val_fraction: float, templates: tuple[str, ...], alphas: str, betas: str, seed: int,
                  batch_size: int, workers: int, provider: str | None, precision: str, threads: int | None,
                  overwrite: bool) -> None:
    """Build a Tip-Adapter cache from DATA_DIR, which holds one sub-folder of images per class.

    The folder name is the class; its prompt label is the name with underscores as spaces, or
    the one DATA_DIR/labels.json gives ({"folder": "label"}). Each class is split (by --seed)
    into cached images and validation images; alpha and beta are the grid point with the best
    validation accuracy. Test the cache on other images with 'altclip-onnx evaluate classification'.
    """
    from ..fewshot import build_cache
    from ..fewshot.adapter import check_cache_destination

    check_cache_destination(output, overwrite=overwrite)  # before the work, not after it
    encoder = load_encoder(bundle, provider, precision, threads)
    adapter = build_cache(encoder, data_dir, shots=shots, val_per_class=val_per_class, val_fraction=val_fraction,
                          templates=list(templates) or None, alphas=parse_grid(alphas, "--alphas"),
                          betas=parse_grid(betas, "--betas"), seed=seed, batch_size=batch_size, workers=workers)
    adapter.save(output, overwrite=overwrite)
    counts = adapter.counts()
    click.echo(table(["class", "cached", "validation", "prompt label"],
                     [[name, str(counts[name]["cache"]), str(counts[name]["validation"]), label]
                      for name, label in zip(adapter.class_names, adapter.labels)], right=(1, 2)))
    result = adapter.validation
    if result.images:
        click.echo(f"validation ({result.images} images): zero-shot {percent(result.zero_shot)}, "
                   f"Tip-Adapter {percent(result.tip_adapter)} with alpha={adapter.alpha:g}, beta={adapter.beta:g} "
                   f"(best of {len(result.alphas)} x {len(result.betas)})")
    else:
        click.echo(f"no validation images: alpha={adapter.alpha:g}, beta={adapter.beta:g} (not tuned)")
    click.echo(f"wrote {output} ({len(adapter.keys)} cached images, {len(adapter.class_names)} classes)")

