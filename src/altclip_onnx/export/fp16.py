"""fp16 for GPUs: float16 weights and compute with float32 inputs and outputs."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError
from .graphs import is_large, save, working_directory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fp16Recipe:
    """float16 weights and compute, float32 inputs and outputs (``keep_io_types``)."""

    # Kept in float32: the final L2 normalisation (a sum of squares overflows float16 easily), and the fused
    # QuickGelu (com.microsoft): OpenVINO's ONNX frontend (2026.4) decomposes it with a float32 alpha constant
    # and refuses a float16 input ("element::Type::merge" in its Multiply), so a float16 QuickGelu made the
    # whole image tower unloadable there. In float32 it costs two Casts per layer and loads everywhere.
    op_block_list: tuple[str, ...] = ("ReduceL2", "ReduceSumSquare", "Pow", "Sqrt", "Div", "Clip", "Max",
                                      "QuickGelu")


def convert_fp16(source: Path, destination: Path, recipe: Fp16Recipe = Fp16Recipe()) -> list[Path]:
    """float16 weights and compute for GPUs; inputs and outputs stay float32.

    The converter needs every value's type. They are inferred (onnxruntime's symbolic shape inference,
    which understands the fused com.microsoft ops) on the graph without its weights, then attached to
    the full graph: inferring on the full text tower held several copies of its weights at once.
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
    return save(wrapper, destination, large=is_large(source, 0.5))
