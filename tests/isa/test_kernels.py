"""The emulated CPUs really take onnxruntime's other integer kernels (else tests/isa could not fail).

One u8 [8 x 256] times s8 [256 x 64] product, as ``MatMulInteger`` and as the op the bundle's int8 uses
(com.microsoft ``MatMulIntegerToFloat``, zero point 128, scales 1 so the float output is the integer sum),
the weights a constant as in the bundle (onnxruntime packs them at load). Full-range values (weights up to
+-127): under Haswell the result equals a numpy model of AVX2's ``vpmaddubsw`` (each pair of adjacent
products added in a saturating int16) and not the exact product; on a VNNI CPU it is exact. Weights within
+-63 (the bundle's 7 bits) are exact everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ..conftest import require_module
from .conftest import EMULATED, HASWELL, host_has_vnni, run_job

require_module("onnx", "tests/isa builds its test graph with onnx: pip install -e '.[export]'")

from onnx import TensorProto, helper, numpy_helper, save  # noqa: E402

ROWS, DEPTH, COLUMNS = 8, 256, 64
ZERO_POINT = 128  # the bundle's activations: uint8 around 128
WEIGHTS = {"full": 127, "seven_bit": 63}  # name -> largest |weight|
OPS = ("MatMulInteger", "MatMulIntegerToFloat")


def exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) @ b.astype(np.int64)


def saturating_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """AVX2's u8s8 GEMM: products of adjacent k in pairs, each pair clipped to int16, then summed in int32."""
    products = a.astype(np.int64)[:, :, None] * b.astype(np.int64)[None]
    pairs = np.clip(products[:, 0::2] + products[:, 1::2], -32768, 32767)
    return pairs.sum(axis=1)


def expected(model: str, op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What ``op`` gives under ``model`` (exact or saturating_pairs) of the raw uint8 values; the
    float op then subtracts its zero point's share (exact, as onnxruntime does outside the GEMM)."""
    total = (exact if model == "exact" else saturating_pairs)(a, b)
    if op == "MatMulIntegerToFloat":
        total = total - ZERO_POINT * b.astype(np.int64).sum(axis=0)
    return total


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """(job spec, activations, weights by name): one graph computing every op with every weight set."""
    folder = tmp_path_factory.mktemp("kernels")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (ROWS, DEPTH), dtype=np.uint8)
    weights = {name: rng.integers(-top, top + 1, (DEPTH, COLUMNS)).astype(np.int8)
               for name, top in WEIGHTS.items()}
    initializers = [numpy_helper.from_array(w, f"b_{name}") for name, w in weights.items()]
    initializers += [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                     numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "zero_point")]
    nodes, outputs = [], []
    for name in weights:
        nodes.append(helper.make_node("MatMulInteger", ["a", f"b_{name}"], [f"MatMulInteger_{name}"]))
        nodes.append(helper.make_node("MatMulIntegerToFloat", ["a", f"b_{name}", "one", "one", "zero_point"],
                                      [f"MatMulIntegerToFloat_{name}"], domain="com.microsoft"))
        outputs += [helper.make_tensor_value_info(f"MatMulInteger_{name}", TensorProto.INT32, [ROWS, COLUMNS]),
                    helper.make_tensor_value_info(f"MatMulIntegerToFloat_{name}", TensorProto.FLOAT, [ROWS, COLUMNS])]
    graph = helper.make_graph(nodes, "u8s8", [helper.make_tensor_value_info("a", TensorProto.UINT8, [ROWS, DEPTH])],
                              outputs, initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    save(model, str(folder / "u8s8.onnx"))
    np.savez(folder / "inputs.npz", a=a)
    return {"model": str(folder / "u8s8.onnx"), "inputs": str(folder / "inputs.npz")}, a, weights


def test_the_model_of_saturating_pairs_differs_from_the_exact_product(case: tuple) -> None:
    _, a, weights = case
    assert np.abs(saturating_pairs(a, weights["full"]) - exact(a, weights["full"])).max() > 10_000
    # 7-bit weights: a pair stays within 2 * 255 * 63 = 32,130, so the model is the exact product
    np.testing.assert_array_equal(saturating_pairs(a, weights["seven_bit"]), exact(a, weights["seven_bit"]))


def test_haswell_adds_pairs_of_full_range_products_in_a_saturating_int16(case: tuple, qemu: str,
                                                                        tmp_path: Path) -> None:
    spec, a, weights = case
    out = run_job("graph", spec, tmp_path, cpu=HASWELL, qemu=qemu)
    assert "AVX2" in out["cpu"] and "AVX512F" not in out["cpu"], out["cpu"]  # what the child ran on
    for op in OPS:
        got = out[f"{op}_full"].astype(np.int64)
        np.testing.assert_array_equal(got, expected("saturating", op, a, weights["full"]), err_msg=op)
        assert np.abs(got - expected("exact", op, a, weights["full"])).max() > 10_000, op


@pytest.mark.parametrize("cpu", EMULATED)
def test_seven_bit_weights_are_exact_on_every_emulated_cpu(case: tuple, qemu: str, tmp_path: Path, cpu: str) -> None:
    spec, a, weights = case
    out = run_job("graph", spec, tmp_path, cpu=cpu, qemu=qemu)
    assert "AVX512F" not in out["cpu"], out["cpu"]
    for op in OPS:
        np.testing.assert_array_equal(out[f"{op}_seven_bit"].astype(np.int64),
                                      expected("exact", op, a, weights["seven_bit"]), err_msg=op)


def test_a_vnni_cpu_computes_the_exact_product(case: tuple, tmp_path: Path) -> None:
    if not host_has_vnni():
        pytest.skip("this CPU has neither avx512_vnni nor avx_vnni (/proc/cpuinfo)")
    spec, a, weights = case
    out = run_job("graph", spec, tmp_path)
    for op in OPS:
        for name, b in weights.items():
            np.testing.assert_array_equal(out[f"{op}_{name}"].astype(np.int64), expected("exact", op, a, b),
                                          err_msg=f"{op} {name}")
