"""The emulated CPUs really take onnxruntime's other integer kernels (else tests/isa could not fail), and
those kernels pair the weights the way the bundle's pair-safe weights assume.

u8 activations times constant s8 weights [256 x 64] (onnxruntime packs them at load, as the bundle's), as
``MatMulInteger`` and as the op the bundle's int8 uses (com.microsoft ``MatMulIntegerToFloat``, zero point
128, scales 1 so the float output is the integer sum), for 8 rows and for 1 row. Weight sets:

- ``full_range``: up to +-127. Haswell's result equals a numpy model of AVX2's ``vpmaddubsw`` (the products of
  weights k and k+1, k even, added in a saturating int16) and not the exact product; a VNNI CPU is exact.
- ``seven_bit``: within +-63, no pair can saturate wherever the kernel pairs them: exact everywhere.
- ``pair_safe``: the bundle's recipe (``gemm_weight_int8``): |w[k]| + |w[k+1]| <= 128 for even k, single
  weights up to 127: exact everywhere.
- ``pair_aligned``: 1, 127, 127, 1, ... with random signs: the even pairs sum to 128, the odd pairs (k odd) to
  254. Exact under Haswell only because its kernel pairs k with k+1 for even k, the assumption pair-safe rests on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ..conftest import require_module
from .conftest import EMULATED, HASWELL, host_has_vnni, run_job

require_module("onnx", "tests/isa builds its test graph with onnx: pip install -e '.[export]'")

from onnx import TensorProto, helper, numpy_helper, save  # noqa: E402

from altclip_onnx.export.quantize import PAIR_SAFE, gemm_weight_int8  # noqa: E402

DEPTH, COLUMNS = 256, 64
INPUT_ROWS = {"rows": 8, "row": 1}  # input name -> rows (one row: the projections of a single image or text)
ZERO_POINT = 128  # the bundle's activations: uint8 around 128
OPS = ("MatMulInteger", "MatMulIntegerToFloat")
SAFE = ("seven_bit", "pair_safe", "pair_aligned")  # weight sets no CPU may saturate


def weight_sets(rng: np.random.Generator) -> dict[str, np.ndarray]:
    heavy = rng.standard_t(3, (DEPTH, COLUMNS)).astype(np.float32)  # outliers: single weights reach 127
    signs = rng.choice(np.array([-1, 1], np.int8), (DEPTH, COLUMNS))
    return {
        "full_range": rng.integers(-127, 128, (DEPTH, COLUMNS)).astype(np.int8),
        "seven_bit": rng.integers(-63, 64, (DEPTH, COLUMNS)).astype(np.int8),
        "pair_safe": gemm_weight_int8(heavy, PAIR_SAFE)[0],
        "pair_aligned": (np.resize(np.array([1, 127, 127, 1], np.int8), DEPTH)[:, None] * signs).astype(np.int8),
    }


def exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) @ b.astype(np.int64)


def saturating_pairs(a: np.ndarray, b: np.ndarray, first: int = 0) -> np.ndarray:
    """AVX2's u8s8 GEMM: products of weights k and k+1 for k = first, first + 2, ... added in a saturating
    int16, then summed in int32 (a weight left without a partner at either end stands alone)."""
    products = a.astype(np.int64)[:, :, None] * b.astype(np.int64)[None]
    head, body = products[:, :first], products[:, first:]
    tail = body[:, len(body[0]) // 2 * 2:]
    body = body[:, : len(body[0]) // 2 * 2]
    pairs = np.clip(body[:, 0::2] + body[:, 1::2], -32768, 32767)
    return pairs.sum(axis=1) + head.sum(axis=1) + tail.sum(axis=1)


def expected(model: str, op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What ``op`` gives under ``model`` (exact or saturating pairs) of the raw uint8 values; the float op
    then subtracts its zero point's share (exact, as onnxruntime does outside the GEMM)."""
    total = exact(a, b) if model == "exact" else saturating_pairs(a, b)
    if op == "MatMulIntegerToFloat":
        total = total - ZERO_POINT * b.astype(np.int64).sum(axis=0)
    return total


def outputs(op: str, weights: str) -> list[str]:
    return [f"{op}_{weights}_{name}" for name in INPUT_ROWS]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(job spec, activations by input name, weights by set name): one graph computing every op on every
    input with every weight set."""
    folder = tmp_path_factory.mktemp("kernels")
    rng = np.random.default_rng(0)
    inputs = {name: rng.integers(0, 256, (rows, DEPTH), dtype=np.uint8) for name, rows in INPUT_ROWS.items()}
    weights = weight_sets(rng)
    initializers = [numpy_helper.from_array(w, f"b_{name}") for name, w in weights.items()]
    initializers += [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                     numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "zero_point")]
    nodes, graph_outputs = [], []
    for w in weights:
        for a, rows in INPUT_ROWS.items():
            nodes.append(helper.make_node("MatMulInteger", [a, f"b_{w}"], [f"MatMulInteger_{w}_{a}"]))
            nodes.append(helper.make_node("MatMulIntegerToFloat", [a, f"b_{w}", "one", "one", "zero_point"],
                                          [f"MatMulIntegerToFloat_{w}_{a}"], domain="com.microsoft"))
            graph_outputs += [
                helper.make_tensor_value_info(f"MatMulInteger_{w}_{a}", TensorProto.INT32, [rows, COLUMNS]),
                helper.make_tensor_value_info(f"MatMulIntegerToFloat_{w}_{a}", TensorProto.FLOAT, [rows, COLUMNS])]
    graph_inputs = [helper.make_tensor_value_info(a, TensorProto.UINT8, [rows, DEPTH])
                    for a, rows in INPUT_ROWS.items()]
    graph = helper.make_graph(nodes, "u8s8", graph_inputs, graph_outputs, initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    save(helper.make_model(graph, opset_imports=opsets), str(folder / "u8s8.onnx"))
    np.savez(folder / "inputs.npz", **inputs)
    return {"model": str(folder / "u8s8.onnx"), "inputs": str(folder / "inputs.npz")}, inputs, weights


def check(out: dict[str, np.ndarray], model: str, inputs: dict, weights: dict, sets: tuple[str, ...]) -> None:
    for w in sets:
        for op in OPS:
            for a in INPUT_ROWS:
                np.testing.assert_array_equal(out[f"{op}_{w}_{a}"].astype(np.int64),
                                              expected(model, op, inputs[a], weights[w]), err_msg=f"{op} {w} {a}")


def test_the_weight_sets_are_what_they_claim(case: tuple) -> None:
    _, inputs, weights = case
    a = inputs["rows"]
    assert np.abs(saturating_pairs(a, weights["full_range"]) - exact(a, weights["full_range"])).max() > 10_000
    assert np.abs(weights["pair_safe"].astype(np.int32)).max() > 63  # wider than 7 bits where pairs allow
    for w in SAFE:  # the model of the kernel finds nothing to saturate
        np.testing.assert_array_equal(saturating_pairs(a, weights[w]), exact(a, weights[w]), err_msg=w)
    # ... but pairs starting at odd k would saturate pair_aligned: its test tells how the kernel pairs
    assert np.abs(saturating_pairs(a, weights["pair_aligned"], first=1) - exact(a, weights["pair_aligned"])).max() > 0


def test_haswell_adds_pairs_of_full_range_products_in_a_saturating_int16(case: tuple, qemu: str,
                                                                        tmp_path: Path) -> None:
    spec, inputs, weights = case
    out = run_job("graph", spec, tmp_path, cpu=HASWELL, qemu=qemu)
    assert "AVX2" in out["cpu"] and "AVX512F" not in out["cpu"], out["cpu"]  # what the child ran on
    check(out, "saturating", inputs, weights, ("full_range",))
    for op in OPS:
        got = out[f"{op}_full_range_rows"].astype(np.int64)
        assert np.abs(got - expected("exact", op, inputs["rows"], weights["full_range"])).max() > 10_000, op


@pytest.mark.parametrize("cpu", EMULATED)
def test_safe_weights_are_exact_on_every_emulated_cpu(case: tuple, qemu: str, tmp_path: Path, cpu: str) -> None:
    spec, inputs, weights = case
    out = run_job("graph", spec, tmp_path, cpu=cpu, qemu=qemu)
    assert "AVX512F" not in out["cpu"], out["cpu"]
    check(out, "exact", inputs, weights, SAFE)


def test_a_vnni_cpu_computes_the_exact_product(case: tuple, tmp_path: Path) -> None:
    if not host_has_vnni():
        pytest.skip("this CPU has neither avx512_vnni nor avx_vnni (/proc/cpuinfo)")
    spec, inputs, weights = case
    out = run_job("graph", spec, tmp_path)
    check(out, "exact", inputs, weights, ("full_range", *SAFE))
