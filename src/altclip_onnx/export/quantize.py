"""int8 for CPUs: quantization of a tower's graph (see :mod:`.variants` for which graph it starts from).

The bundle's int8 is **per-row dynamic int8** (:func:`quantize_int8`): every MatMul with a constant weight
becomes an integer MatMul whose activations are quantized one row (one token, one image patch) at a time,
with that row's own scale ``max|x| / 127``. onnxruntime's dynamic quantization (:func:`quantize_dynamic_int8`,
kept as the baseline that peers ship) takes one scale for the whole input tensor, so a text's vector moved
with whatever else was in the batch: an index or a service that batches requests would then give different
vectors for the same input. Per row, integer products are exact and every scale depends on its own row only,
so a vector is the same whatever the batch, up to float rounding (verify's batch-invariance gate checks it;
benchmarks/README.md has both figures).

Weights of the integer MatMuls are int8 per output column (symmetric), a finer grid than onnxruntime's one
scale per tensor, and **pair-safe**: how CPUs without VNNI multiply sets their range. onnxruntime's u8s8 GEMM
on AVX2 without VNNI uses ``vpmaddubsw``, which adds the products of each pair of weights k, k+1 (k even,
along the reduction axis) with their uint8 activations in a saturating int16 (its AVX-512 kernel without VNNI
is built the same way; no emulator here runs AVX-512, so that one is untested; SSE4.2's kernel is exact). With
activations as uint8 (1..255) and weights up to 127, a pair reached 2 * 255 * 127 = 64,770 and was clipped to
32,767, so the same bundle gave other vectors there than on a VNNI CPU. So each column's scale makes the
largest ``|w[k]| + |w[k+1]|`` over its even pairs 128 (and rounding never lets a pair pass it): a pair then
stays within 255 * 128 = 32,640 and every CPU computes the exact integer product. Only the pairs the kernels
add are bounded, not every weight to 7 bits (-63..63, the unconditional bound, :data:`SEVEN_BIT`), which
doubles the weights' rounding error. :data:`FULL_RANGE` (up to 127, the old recipe that saturates) is kept for
comparisons and tests.
The text tower's word-embedding table (250k x 1024, half the text tower) is no GEMM: it keeps 8-bit rows with
a scale each (``Gather`` + ``Cast`` + ``Mul``: standard ops every runtime has).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import TEXTUAL, TOWER_INPUTS
from ..errors import ExportError
from .graphs import is_large, save, written

log = logging.getLogger(__name__)

# A row of zeros would give scale 0 and 0/0: the smallest normal float32 keeps it 0 after rounding.
TINY_SCALE = np.float32(np.finfo(np.float32).tiny)
# Integer ranges (symmetric): activations are 8-bit per row, table rows 8-bit; GEMM weights by recipe.
ACTIVATION_LEVELS = 127
TABLE_LEVELS = 127
# The GEMM weight recipes (see the module's docstring).
PAIR_SAFE = "pair-safe"  # per column, |w[k]| + |w[k+1]| <= PAIR_LIMIT for every even k
SEVEN_BIT = "7-bit"  # per column, |w| <= 63: no two weights can saturate, wherever the kernel pairs them
FULL_RANGE = "full-range"  # per column, |w| <= 127: saturates on CPUs without VNNI
GEMM_WEIGHTS = (PAIR_SAFE, SEVEN_BIT, FULL_RANGE)
UINT8_MAX = 255
INT16_MAX = 32767
PAIR_LIMIT = INT16_MAX // UINT8_MAX  # 128: 255 * 128 = 32,640


@dataclass(frozen=True)
class Int8Recipe:
    """Per-row dynamic int8 (see the module's docstring)."""

    embeddings: bool = True  # the table indexed by the graph's token ids, as int8 rows with a scale each
    gemm_weights: str = PAIR_SAFE

    def __post_init__(self) -> None:
        if self.gemm_weights not in GEMM_WEIGHTS:
            raise ExportError(f"unknown int8 weight recipe {self.gemm_weights!r}: choose from {', '.join(GEMM_WEIGHTS)}")


def gemm_weight_int8(weight: np.ndarray, recipe: str = PAIR_SAFE) -> tuple[np.ndarray, np.ndarray]:
    """A MatMul weight [K, N] as int8 [K, N] and one float32 scale per column [N] (see the module's docstring)."""
    weight = weight.astype(np.float32)
    if recipe != PAIR_SAFE:
        levels = 63 if recipe == SEVEN_BIT else 127
        scale = np.maximum(np.abs(weight).max(axis=0) / levels, TINY_SCALE).astype(np.float32)
        return np.clip(np.rint(weight / scale), -levels, levels).astype(np.int8), scale
    padded = np.concatenate([weight, np.zeros((1, weight.shape[1]), np.float32)]) if len(weight) % 2 else weight
    pairs = np.abs(padded[0::2]) + np.abs(padded[1::2])
    scale = np.maximum(pairs.max(axis=0) / PAIR_LIMIT, TINY_SCALE).astype(np.float32)
    exact = padded / scale
    quantized = np.clip(np.rint(exact), -127, 127)
    # Rounding may lift a pair to PAIR_LIMIT + 1: take one step off the member rounded up the most.
    even, odd = quantized[0::2], quantized[1::2]
    over = np.abs(even) + np.abs(odd) > PAIR_LIMIT
    lift_even = np.abs(even) - np.abs(exact[0::2])
    lift_odd = np.abs(odd) - np.abs(exact[1::2])
    take_even = over & (lift_even >= lift_odd)
    take_odd = over & ~take_even
    even[take_even] -= np.sign(even[take_even])
    odd[take_odd] -= np.sign(odd[take_odd])
    return quantized[: len(weight)].astype(np.int8), scale


def quantize_int8(source: Path, destination: Path, recipe: Int8Recipe = Int8Recipe()) -> list[Path]:
    """Rewrite ``source`` into ``destination`` with per-row dynamic int8 MatMuls (and int8 embeddings)."""
    import onnx

    if source == destination:
        raise ExportError(f"{source}: quantize_int8 never overwrites its source; give another destination")
    model = onnx.load(str(source))  # with its weights: they are rewritten
    rewriter = _PerRowRewriter(model, recipe)
    rewriter.rewrite()
    log.info("%s: %d MatMuls and %d embedding tables to int8", source, rewriter.matmuls, rewriter.tables)
    if not rewriter.matmuls:
        raise ExportError(f"{source}: no MatMul with a constant weight to quantize; is this a tower graph?")
    return save(model, destination, large=is_large(source))


class _PerRowRewriter:
    """Rewrites one ModelProto in place; counts what it changed."""

    def __init__(self, model: Any, recipe: Int8Recipe) -> None:
        self.recipe = recipe
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            from onnx import helper

            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        self.matmuls = 0
        self.tables = 0
        self._quantized: dict[str, tuple[str, str]] = {}  # fp32 weight -> (int8 weight, scale)
        self._rows: dict[str, tuple[str, str]] = {}  # MatMul input -> (its per-row scales, its rows as uint8)
        self._constants: dict[str, str] = {}
        self._constant_nodes: list[Any] = []

    def rewrite(self) -> None:
        from onnx import helper

        token_ids = TOWER_INPUTS[TEXTUAL][0]  # the text tower's input_ids
        nodes = []
        for node in self.graph.node:
            weight = self.initializers.get(node.input[1]) if len(node.input) > 1 else None
            if node.op_type == "MatMul" and weight is not None and len(weight.dims) == 2:
                nodes += self._matmul(node, helper)
            elif (self.recipe.embeddings and node.op_type == "Gather" and node.input[0] in self.initializers
                  and node.input[1] == token_ids and len(self.initializers[node.input[0]].dims) == 2):
                nodes += self._gather(node, helper)
            else:
                nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(self._constant_nodes + nodes)
        self._drop_unused_initializers()

    def _constant(self, value: float | list[int], dtype: Any) -> str:
        """A small constant as a Constant node (never an initializer: saved with external weights, an
        initializer may be moved out of the graph, and onnxruntime's shape inference then cannot read
        the shapes and axes it needs when loading)."""
        from onnx import helper, numpy_helper

        key = f"{np.dtype(dtype).name}:{value}"
        if key not in self._constants:
            name = f"int8_const_{len(self._constants)}"
            self._constant_nodes.append(helper.make_node(
                "Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(value, dtype=dtype))))
            self._constants[key] = name
        return self._constants[key]

    def _int8_weight(self, name: str, gemm: bool) -> tuple[str, str]:
        """``name`` as int8: a GEMM weight by the recipe (a scale per output column, broadcast over the MatMul's
        result), or a table's rows (8-bit, a scale per row)."""
        from onnx import numpy_helper

        if name not in self._quantized:
            weight = numpy_helper.to_array(self.initializers[name]).astype(np.float32)
            if gemm:
                quantized, scale = gemm_weight_int8(weight, self.recipe.gemm_weights)
            else:
                scale = np.maximum(np.abs(weight).max(axis=1, keepdims=True) / TABLE_LEVELS, TINY_SCALE)
                scale = scale.astype(np.float32)
                quantized = np.clip(np.rint(weight / scale), -TABLE_LEVELS, TABLE_LEVELS).astype(np.int8)
            self.graph.initializer.append(numpy_helper.from_array(quantized, f"{name}_int8"))
            self.graph.initializer.append(numpy_helper.from_array(scale, f"{name}_scale"))
            self._quantized[name] = (f"{name}_int8", f"{name}_scale")
        return self._quantized[name]

    def _matmul(self, node: Any, helper: Any) -> list[Any]:
        """y = x @ W as (int8 x_row) @ (int8 W) * scale_W * scale_row, scale_row = max|x_row| / 127.

        Each row is divided by its scale, then ``QuantizeLinear`` with scale 1 rounds, shifts and casts in
        one vectorized pass (separate Round + Add + Cast ops cost a good share of the tower's time). A per-row
        scale given to QuantizeLinear itself (axis 0 of a [rows, K] view) would save the Div, but OpenVINO
        cannot load it. The int8 values are stored as uint8 around zero point 128 (the same integers, shifted):
        onnxruntime's u8s8 kernels use VNNI/AMX, its s8s8 path is slower than float32. MatMulIntegerToFloat
        (com.microsoft) applies the weight scales in the GEMM's output loop. Slower than onnxruntime's
        per-tensor DynamicQuantizeMatMul (one fused op) by the row reductions, the scaling passes and the bias
        Add it cannot fold (benchmarks/README.md has the figures).
        """
        self.matmuls += 1
        x, out, prefix = node.input[0], node.output[0], node.name or f"matmul_{self.matmuls}"
        weight, weight_scale = self._int8_weight(node.input[1], gemm=True)
        one, zero_point = self._constant(1.0, np.float32), self._constant(128, np.uint8)
        nodes = []
        if x not in self._rows:  # the Q, K and V projections read the same input: quantize its rows once
            row = f"{prefix}_row"
            self._rows[x] = (f"{row}_scale", f"{row}_uint8")
            nodes = [
                helper.make_node("Abs", [x], [f"{row}_abs"]),
                self._reduce("ReduceMax", f"{row}_abs", f"{row}_abs_max", helper),
                # The smallest scale keeps a row of zeros at zero (0 / tiny) instead of 0 / 0.
                helper.make_node("Max", [f"{row}_abs_max", self._constant(float(TINY_SCALE) * ACTIVATION_LEVELS,
                                                                          np.float32)], [f"{row}_nonzero_max"]),
                helper.make_node("Div", [f"{row}_nonzero_max", self._constant(float(ACTIVATION_LEVELS), np.float32)],
                                 [f"{row}_scale"]),
                helper.make_node("Div", [x, f"{row}_scale"], [f"{row}_scaled"]),  # -127..127
                helper.make_node("QuantizeLinear", [f"{row}_scaled", one, zero_point], [f"{row}_uint8"]),
            ]
        row_scale, x_uint8 = self._rows[x]
        return nodes + [
            helper.make_node("MatMulIntegerToFloat", [x_uint8, weight, one, weight_scale, zero_point],
                             [f"{prefix}_columns"], domain="com.microsoft"),
            helper.make_node("Mul", [f"{prefix}_columns", row_scale], [out], name=prefix),
        ]

    def _reduce(self, op: str, data: str, output: str, helper: Any) -> Any:
        """``op`` over the last axis, keeping it (one value per row, broadcast against the row)."""
        if self.opset >= 18:
            return helper.make_node(op, [data, self._constant([-1], np.int64)], [output], keepdims=1)
        return helper.make_node(op, [data], [output], axes=[-1], keepdims=1)

    def _gather(self, node: Any, helper: Any) -> list[Any]:
        """Rows of the table as int8 times each row's scale."""
        from onnx import TensorProto

        self.tables += 1
        prefix = node.name or f"gather_{self.tables}"
        table, row_scale = self._int8_weight(node.input[0], gemm=False)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis != 0:
            raise ExportError(f"{node.name}: an embedding Gather along axis {axis}; expected 0")
        return [
            helper.make_node("Gather", [table, node.input[1]], [f"{prefix}_int8"], axis=0),
            helper.make_node("Gather", [row_scale, node.input[1]], [f"{prefix}_scale"], axis=0),
            helper.make_node("Cast", [f"{prefix}_int8"], [f"{prefix}_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{prefix}_float", f"{prefix}_scale"], [node.output[0]], name=prefix),
        ]

    def _drop_unused_initializers(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        kept = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)


def quantize_dynamic_int8(source: Path, destination: Path, *, op_types: tuple[str, ...] = ("MatMul",)) -> list[Path]:
    """onnxruntime's dynamic int8 (one activation scale per tensor): the baseline ``benchmarks/compare.py``
    measures against (what a plain ``quantize_dynamic`` gives). Its vectors depend on the batch."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if source == destination:
        raise ExportError(f"{source}: quantize_dynamic_int8 never overwrites its source; give another destination")
    destination.parent.mkdir(parents=True, exist_ok=True)
    for stale in (destination, destination.with_name(destination.name + ".data")):
        stale.unlink(missing_ok=True)
    quantize_dynamic(
        str(source),
        str(destination),
        op_types_to_quantize=list(op_types),
        weight_type=QuantType.QInt8,
        use_external_data_format=is_large(source),
        # Fused graphs carry com.microsoft ops whose outputs onnx shape inference cannot type.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return written(destination)
