"""The graph steps: fuse (fp32), quantize (int8), convert (fp16).

Each step is ``step(source, destination, options) -> files written`` (graph first, then its weights
file when external) and never overwrites its source; the options are frozen dataclasses. Which step
makes which variant from which graph is declared in :mod:`.variants`; every variant is then checked
by :mod:`.verify` against PyTorch fp32 and must pass its gate, or the export fails.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..bundle import TEXTUAL, VISUAL
from ..errors import ExportError
from .towers import EXTERNAL_DATA_THRESHOLD

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# onnxruntime's transformer optimizer knows the CLIP image tower as "clip" (its "vit" fusions did not
# fuse attention on these graphs) and XLM-R as "bert".
OPTIMIZER_MODEL_TYPE = {VISUAL: "clip", TEXTUAL: "bert"}

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


@dataclass(frozen=True)
class FusionRecipe:
    """Which of onnxruntime's fusions to apply (see ``onnxruntime.transformers.fusion_options``)."""

    attention: bool = True
    gelu: bool = True
    layer_norm: bool = True
    # SkipLayerNormalization's CPU kernel measured 7x slower than LayerNormalization + Add on this
    # machine's image tower (31 ms vs 4.5 ms for 47 nodes, onnxruntime 1.32). The attention fusion
    # only matches after it, so it is fused, then split back into Add + LayerNormalization.
    split_skip_layer_norm: bool = True


@dataclass(frozen=True)
class Int8Recipe:
    """Dynamic int8 quantization: weights int8 ahead of time, activations quantized at run time."""

    op_types: tuple[str, ...] = ("MatMul", "Attention")
    per_channel: bool = False
    reduce_range: bool = False
    exclude_patterns: tuple[str, ...] = ()  # node names containing any of these stay fp32


@dataclass(frozen=True)
class Fp16Recipe:
    """float16 weights and compute, float32 inputs and outputs (``keep_io_types``)."""

    # Kept in float32: the final L2 normalisation (a sum of squares overflows float16 easily).
    op_block_list: tuple[str, ...] = ("ReduceL2", "ReduceSumSquare", "Pow", "Sqrt", "Div", "Clip", "Max")


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


def _save(model: Any, destination: Path, *, large: bool) -> list[Path]:
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
    # copies a weightless graph instead of 2.2 GB (peak 14.9 GB -> about 3 GB on the text tower).
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
    return _save(model, destination, large=graph_weight_bytes(source) > EXTERNAL_DATA_THRESHOLD)


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


def quantize_int8(source: Path, destination: Path, recipe: Int8Recipe = Int8Recipe()) -> list[Path]:
    """Dynamic int8 quantization with onnxruntime (weights QInt8; u8s8 kernels use VNNI where present)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if source == destination:
        raise ExportError(f"{source}: quantize_int8 never overwrites its source; give another destination")
    exclude = []
    if recipe.exclude_patterns:
        graph = onnx.load(str(source), load_external_data=False).graph
        exclude = [n.name for n in graph.node if any(p in n.name for p in recipe.exclude_patterns)]
    large = graph_weight_bytes(source) > EXTERNAL_DATA_THRESHOLD
    destination.parent.mkdir(parents=True, exist_ok=True)
    for stale in (destination, destination.with_name(destination.name + ".data")):
        stale.unlink(missing_ok=True)
    quantize_dynamic(
        str(source),
        str(destination),
        op_types_to_quantize=list(recipe.op_types),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        use_external_data_format=large,
        # Fused graphs carry com.microsoft ops whose outputs onnx shape inference cannot type.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return _written(destination)


def _written(destination: Path) -> list[Path]:
    """The graph and, when quantize_dynamic wrote one, its ``<name>.data`` weights file."""
    data = destination.with_name(destination.name + ".data")
    return [destination, data] if data.exists() else [destination]


def convert_fp16(source: Path, destination: Path, recipe: Fp16Recipe = Fp16Recipe()) -> list[Path]:
    """float16 weights and compute for GPUs; inputs and outputs stay float32.

    The converter needs every value's type. They are inferred (onnxruntime's symbolic shape inference,
    which understands the fused com.microsoft ops) on the graph without its weights, then attached to
    the full graph: inferring on the full text tower held several copies of 2.2 GB at once.
    """
    import onnx
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.shape_infer_helper import SymbolicShapeInferenceHelper

    if source == destination:
        raise ExportError(f"{source}: convert_fp16 never overwrites its source; give another destination")
    source, destination = source.resolve(), destination.resolve()
    skeleton = onnx.load(str(source), load_external_data=False)
    with warnings.catch_warnings(), working_directory(source.parent):
        warnings.simplefilter("ignore")
        typed = SymbolicShapeInferenceHelper(skeleton).infer_shapes(skeleton, auto_merge=True, guess_output_rank=False)
    model = onnx.load(str(source), load_external_data=True)
    known = {vi.name for vi in model.graph.value_info}
    for vi in typed.graph.value_info:
        if vi.name and vi.name not in known and vi.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(vi)
            copy.type.tensor_type.ClearField("shape")  # types are what the converter needs; shapes may be merged guesses
            model.graph.value_info.append(copy)
    del typed, skeleton
    model = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=True,
        op_block_list=sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(recipe.op_block_list)),
    )
    wrapper = OnnxModel(model)
    wrapper.remove_cascaded_cast_nodes()
    wrapper.remove_useless_cast_nodes()
    return _save(wrapper, destination, large=graph_weight_bytes(source) / 2 > EXTERNAL_DATA_THRESHOLD)
