"""Fusion: onnxruntime's transformer optimizer on a tower's graph (the fp32 variant, and int8's start).

Each step is ``step(source, destination, options) -> files written`` (graph first, then its weights file
when external) and never overwrites its source. Which step makes which variant from which graph is
declared in :mod:`.variants`; every variant is then checked by :mod:`.verify` against PyTorch.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import TEXTUAL, VISUAL
from ..errors import ExportError
from .graphs import is_large, save, working_directory

log = logging.getLogger(__name__)

# onnxruntime's transformer optimizer knows the CLIP image tower as "clip" (its "vit" fusions did not
# fuse attention on these graphs) and XLM-R as "bert".
OPTIMIZER_MODEL_TYPE = {VISUAL: "clip", TEXTUAL: "bert"}


@dataclass(frozen=True)
class FusionRecipe:
    """Which of onnxruntime's fusions to apply (see ``onnxruntime.transformers.fusion_options``)."""

    attention: bool = True
    gelu: bool = True
    layer_norm: bool = True
    # SkipLayerNormalization's CPU kernel is slower than LayerNormalization + Add (benchmarks/README.md),
    # but the attention fusion only matches after it: so it is fused, then split back into Add +
    # LayerNormalization.
    split_skip_layer_norm: bool = True


def optimize_graph(source: Path, destination: Path, tower: str, *, num_heads: int, hidden_size: int,
                   recipe: FusionRecipe = FusionRecipe()) -> list[Path]:
    """Fuse attention, LayerNorm and GELU with onnxruntime's transformer optimizer."""
    import onnx
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    if source == destination:
        raise ExportError(f"{source}: optimize_graph never overwrites its source; give another destination")
    model_type = OPTIMIZER_MODEL_TYPE[tower]
    options = FusionOptions(model_type)
    options.enable_attention = recipe.attention
    options.enable_gelu = options.enable_bias_gelu = recipe.gelu
    # When SkipLayerNormalization is split again, the preceding MatMul keeps its bias: the quantizer
    # then folds it into DynamicQuantizeMatMul instead of leaving a separate Add.
    options.enable_bias_skip_layer_norm = not recipe.split_skip_layer_norm
    options.enable_layer_norm = recipe.layer_norm
    source, destination = source.resolve(), destination.resolve()
    # The graph is loaded without its weights: fusions read the few they need lazily from the external
    # data file (resolved against the working directory), and the optimizer's symbolic shape inference
    # copies a weightless graph instead of every weight, several times over.
    proto = onnx.load(str(source), load_external_data=False)
    with warnings.catch_warnings(), working_directory(source.parent):
        warnings.simplefilter("ignore")
        # opt_level 0: only the Python fusions. onnxruntime applies its own graph optimizations when it
        # loads a model; saving them is avoided because its highest level is tied to the exporting CPU.
        model = optimizer.optimize_model(
            proto,
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,
            use_gpu=False,
        )
        onnx.load_external_data_for_model(model.model, str(source.parent))
    # Fused ops live in onnxruntime's com.microsoft domain; declare it (the optimizer only does when it
    # round-trips the model through an onnxruntime session, which opt_level 0 skips).
    if not any(o.domain == "com.microsoft" for o in model.model.opset_import):
        model.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    if recipe.split_skip_layer_norm:
        split_skip_layer_norms(model.model)
        model.topological_sort()
    return save(model, destination, large=is_large(source))


def split_skip_layer_norms(proto: Any) -> int:
    """Replace each SkipLayerNormalization by Add (+ bias Add) and LayerNormalization, in place.

    Same computation (the residual sum is the fourth output of SkipLayerNormalization and the Add's
    output here); the standard ops have faster CPU kernels. Returns how many were split.
    """
    from onnx import helper

    graph = proto.graph
    nodes = []
    split = 0
    for node in graph.node:
        if node.op_type != "SkipLayerNormalization":
            nodes.append(node)
            continue
        split += 1
        inputs = list(node.input) + [""] * (5 - len(node.input))
        outputs = list(node.output) + [""] * (4 - len(node.output))
        x, skip, gamma, beta, bias = inputs
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        total = outputs[3] or f"{node.name}_sum"
        summed = f"{node.name}_skip" if bias else total
        nodes.append(helper.make_node("Add", [x, skip], [summed], name=f"{node.name}_add"))
        if bias:
            nodes.append(helper.make_node("Add", [summed, bias], [total], name=f"{node.name}_bias"))
        norm_inputs = [total, gamma] + ([beta] if beta else [])
        norm_outputs = [outputs[0]] + [o for o in outputs[1:3]]
        while norm_outputs and not norm_outputs[-1]:
            norm_outputs.pop()
        nodes.append(helper.make_node("LayerNormalization", norm_inputs, norm_outputs, name=f"{node.name}_ln",
                                      axis=-1, epsilon=epsilon))
    del graph.node[:]
    graph.node.extend(nodes)
    return split



