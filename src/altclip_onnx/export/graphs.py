"""What every graph step shares: running in a fresh process, saving with external weights, counting ops."""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .towers import EXTERNAL_DATA_THRESHOLD

_T = TypeVar("_T")

# Op types worth counting in a report: fused ops, and what quantization turned MatMul/Attention into.
COUNTED_OPS = (
    "Attention",
    "QAttention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "QuickGelu",
    "FastGelu",
    "Gelu",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
)


def isolated(step: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run one graph transformation in a fresh process, so its peak memory is returned when it ends."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(step, *args, **kwargs).result()


def count_ops(path: Path) -> dict[str, int]:
    """How many of each interesting op type the saved graph contains (a fusion regression shows here)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return {op: counts[op] for op in COUNTED_OPS if counts[op]}


def graph_weight_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def save(model: Any, destination: Path, *, large: bool) -> list[Path]:
    """Save an onnxruntime OnnxModel (or ModelProto) with external data when the weights are large."""
    from .towers import save_model

    proto = model.model if hasattr(model, "model") else model
    return save_model(proto, destination, external=large)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)




def written(destination: Path) -> list[Path]:
    """The graph and, when one was written, its ``<name>.data`` weights file."""
    data = destination.with_name(destination.name + ".data")
    return [destination, data] if data.exists() else [destination]


def is_large(source: Path, factor: float = 1.0) -> bool:
    """Whether a graph made from ``source`` (its weights scaled by ``factor``) needs external weights."""
    return graph_weight_bytes(source) * factor > EXTERNAL_DATA_THRESHOLD
