"""Embedding past one machine: Ray Data spreads the work over a cluster, Parquet shards hold the result.

::

    from altclip_onnx.distributed import RayOptions, embed_images

    report = embed_images(["/mnt/photos"], "/mnt/models/AltCLIP-m18", "/mnt/out/photos.parquet",
                          RayOptions(address="head-node:6379", threads=1))
    print(report.rows, report.failures)

- **Inputs**: files and folders (walked on the driver, in the fixed order of
  :func:`~altclip_onnx.runtime.pipeline.iter_image_files`), URIs every node can read (``s3://``, ``gs://``,
  ``hdfs://``: read through pyarrow's filesystems), or a Ray Dataset with a ``path`` column. Paths must mean the
  same file on every node (a shared or identically mounted folder).
- **Work**: a pool of Ray actors (``actors`` of them, ``threads`` onnxruntime threads and CPUs each) that each
  build one :class:`~altclip_onnx.runtime.encoder.Encoder` when they start; each reads, decodes and
  preprocesses its inputs in ``workers`` threads while its model runs. See :mod:`.ray_run`.
- **The bundle** is read by every worker from the path given (which every node must be able to read; an
  ``hf://`` name is fetched by each node into its own Hub cache), or, with ``ship_bundle=True``, sent once
  through Ray's object store and written into each node's temp folder (only the files the run needs: one
  tower at one precision). Either way the driver chooses the precision, so every actor runs the same variant.
- **Output**: a folder of Parquet shards in input order, each written whole when complete; a rerun skips the
  shards already there (see :mod:`.shards`). Rows equal a single-process run of
  :func:`~altclip_onnx.runtime.outputs.embed_images_to_file` (the same code embeds them); files that cannot be
  used are rows with an ``error`` and no embedding, and are in the report.

Needs the ``[distributed]`` extra (``ray[data]``, ``pyarrow``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .ray_run import RayOptions, ShardReport, connect
from .shards import read_shards

__all__ = ["RayOptions", "ShardReport", "connect", "embed_images", "embed_texts", "expand_inputs", "read_shards"]


def embed_images(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | Any,
    bundle: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: RayOptions = RayOptions(),
) -> ShardReport:
    """Embed images on Ray into a folder of Parquet shards (``path``, ``embedding``, ``error``).

    ``inputs``: a path, folder or URI, an iterable of them, or a Ray Dataset with a ``path`` column.
    """
    from .ray_run import run

    if hasattr(inputs, "select_columns") and hasattr(inputs, "take_all"):  # a Ray Dataset: its order, kept
        paths = inputs.select_columns(["path"])
        paths.context.execution_options.preserve_order = True  # this dataset's own settings, not the global ones
        items = [str(row["path"]) for row in paths.iter_rows()]
    else:
        items = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
    return run("image", items, bundle, output, options)


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Image files in order: folders walked (:func:`~altclip_onnx.runtime.pipeline.iter_image_files`), files
    and URIs (``s3://...``, read by the workers through pyarrow) kept as given."""
    from ..runtime.pipeline import iter_image_files
    from .ray_run import _is_uri

    items: list[str] = []
    local: list[str] = []
    for item in inputs:
        name = os.fsdecode(item)
        if _is_uri(name):
            items += [os.fsdecode(p) for p in iter_image_files(local)] if local else []
            local = []
            items.append(name)
        else:
            local.append(name)
    if local or not items:
        items += [os.fsdecode(p) for p in iter_image_files(local)]
    return items


def embed_texts(
    texts: Iterable[str],
    bundle: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: RayOptions = RayOptions(),
) -> ShardReport:
    """Embed texts on Ray into a folder of Parquet shards (``text``, ``embedding``), in the given order."""
    from ..runtime.text import check_texts
    from .ray_run import run

    return run("text", check_texts(list(texts)), bundle, output, options)
