"""How each precision variant is made: from which graph, by which step. One declaration per variant.

The variant's name, file name and gate are the contract (:mod:`altclip_onnx.precisions`); this module
is the recipe. Recipes were chosen by measurement (``benchmarks/compare.py``; the figures are in
benchmarks/README.md):

- fp32: the raw TorchScript export, fused (attention, LayerNorm, GELU; SkipLayerNormalization split back).
- int8: per-row dynamic int8 (:mod:`.quantize`: vectors that do not depend on the batch), from graphs with
  attention left unfused, so that its Q, K and V projections are plain MatMuls to quantize (onnxruntime's
  quantized attention kernel is slower than what it replaces): the image tower from the plain graph, the
  text tower from the graph with LayerNorm and GELU fused.
- fp16: converted from the bundle's fp32 graph.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ..bundle import TEXTUAL, VISUAL
from ..precisions import FP16, FP32, INT8, Precision
from . import graphs
from .fp16 import convert_fp16
from .optimize import FusionRecipe, optimize_graph
from .quantize import quantize_int8

RAW = "raw"  # start from the raw export
FP32_GRAPH = "fp32"  # start from the bundle's fp32 graph

#: A start graph: RAW, FP32_GRAPH, or the raw export fused with this recipe.
Start = Union[str, FusionRecipe]
Step = Callable[[Path, Path], "list[Path]"]


@dataclass(frozen=True)
class Recipe:
    precision: Precision
    start: Mapping[str, Start]  # per tower
    step: Step | None  # None: the start graph is the variant
    doing: str  # a progress line, {tower} filled in


RECIPES: dict[str, Recipe] = {
    "fp32": Recipe(FP32, {VISUAL: FusionRecipe(), TEXTUAL: FusionRecipe()}, None, "optimizing the {tower} tower"),
    "int8": Recipe(INT8, {VISUAL: RAW, TEXTUAL: FusionRecipe(attention=False)}, quantize_int8,
                   "quantizing the {tower} tower to int8"),
    "fp16": Recipe(FP16, {VISUAL: FP32_GRAPH, TEXTUAL: FP32_GRAPH}, convert_fp16, "converting the {tower} tower to fp16"),
}


def start_graph(precision: str, tower: str, *, optimize: bool) -> Start:
    """Where ``precision``'s graph of ``tower`` starts; without ``optimize`` every fusion is skipped."""
    start = RECIPES[precision].start[tower]
    return RAW if isinstance(start, FusionRecipe) and not optimize else start


def fusing(tower: str, recipe: FusionRecipe, precision: str) -> str:
    """The progress line of a fusion. fp32's full fusion is "optimizing the textual tower"; another says for
    which variant and what it leaves unfused (the text tower is fused twice: for fp32, and for int8)."""
    unfused = [name.replace("_", " ") for name in ("attention", "gelu", "layer_norm") if not getattr(recipe, name)]
    return f"optimizing the {tower} tower" + (f" for {precision} ({', '.join(unfused)} left unfused)"
                                              if unfused else "")


def make_variants(
    raw: Sequence[Path],
    tower: str,
    precisions: Sequence[str],
    destination: Path,
    work: Path,
    *,
    num_heads: int,
    hidden_size: int,
    optimize: bool = True,
    progress: Callable[[str], None] = lambda step: None,
) -> dict[str, list[Path]]:
    """Make ``precisions`` (fp32 first) of one tower from its raw export ``raw`` (graph, weights) into
    ``destination`` (``<precision's file name>``), intermediate graphs in ``work``. Returns the files
    written per precision, graph first. Every step runs in a fresh process (``graphs.isolated``).

    The raw export may be moved into ``destination`` (fp32 without ``optimize``); ``raw`` is not used after.
    """
    fused: dict[object, list[Path]] = {}
    written: dict[str, list[Path]] = {}

    def graph(start: Start, precision: str, target: Path | None = None) -> list[Path]:
        """The files of a start graph; each fused graph is made once (into ``target`` if given)."""
        if start == RAW:
            return list(raw)
        if start == FP32_GRAPH:
            return written["fp32"]
        if start not in fused:
            progress(fusing(tower, start, precision))
            fused[start] = graphs.isolated(optimize_graph, raw[0],
                                          target or work / f"fused-{len(fused)}" / "model.onnx", tower,
                                          num_heads=num_heads, hidden_size=hidden_size, recipe=start)
        return fused[start]

    for name in precisions:  # fp32 first: others may start from it
        recipe = RECIPES[name]
        target = destination / recipe.precision.filename
        start = start_graph(name, tower, optimize=optimize)
        if recipe.step is not None:
            source = graph(start, name)[0]
            progress(recipe.doing.format(tower=tower))
            written[name] = graphs.isolated(recipe.step, source, target)
        elif start == RAW:  # the raw export is already named model.onnx (+ .data): move it as it is
            target.parent.mkdir(parents=True, exist_ok=True)
            raw = written[name] = [Path(shutil.move(str(f), target.parent / f.name)) for f in raw]
        else:
            written[name] = graph(start, name, target)
    return written
