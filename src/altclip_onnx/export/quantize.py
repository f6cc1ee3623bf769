"""int8 for CPUs: quantization of a tower's graph (see :mod:`.variants` for which graph it starts from)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError
from .graphs import is_large, written

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Recipe:
    """Dynamic int8 quantization: weights int8 ahead of time, activations quantized at run time."""

    op_types: tuple[str, ...] = ("MatMul", "Attention")
    per_channel: bool = False
    reduce_range: bool = False
    exclude_patterns: tuple[str, ...] = ()  # node names containing any of these stay fp32


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
    large = is_large(source)
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
    return written(destination)
