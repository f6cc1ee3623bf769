"""int8 vectors do not depend on the batch (per-row dynamic int8, export.quantize), and verify's gate
catches a graph whose vectors do (onnxruntime's per-tensor dynamic int8, the quantizer peers ship)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from altclip_onnx.bundle import TEXTUAL, VISUAL, read_manifest
from altclip_onnx.export.quantize import quantize_dynamic_int8, quantize_int8
from altclip_onnx.runtime.providers import make_session
from altclip_onnx.verification.check import run_cases
from altclip_onnx.verification.reference import read_reference
from altclip_onnx.runtime.encoder import Encoder

from ..cases import PARITY_TEXTS

# The bundle gate (altclip_onnx.precisions), written out here: a vector alone and inside a batch.
BATCH_INVARIANCE = 0.99999


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_int8_texts_alone_equal_texts_in_a_batch(tiny_bundle: Path) -> None:
    encoder = Encoder(tiny_bundle, precision="int8")
    texts = PARITY_TEXTS[:12]
    batch = encoder.encode_texts(texts)  # padded to the longest text
    alone = np.concatenate([encoder.encode_texts([t]) for t in texts])
    assert cosines(alone, batch).min() >= BATCH_INVARIANCE
    np.testing.assert_allclose(alone, batch, atol=2e-6)


def test_int8_images_alone_equal_images_in_a_batch(tiny_bundle: Path, fixture_photos: list[Path]) -> None:
    encoder = Encoder(tiny_bundle, precision="int8")
    batch = encoder.encode_images(fixture_photos)
    alone = np.concatenate([encoder.encode_images([p]) for p in fixture_photos])
    np.testing.assert_allclose(alone, batch, atol=2e-6)


def per_tensor_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """The tiny bundle with its text int8 remade by onnxruntime's per-tensor dynamic quantization."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    target = bundle / TEXTUAL / "model.int8.onnx"
    target.unlink()
    quantize_dynamic_int8(bundle / TEXTUAL / "model.onnx", target)
    return bundle


def test_verify_catches_vectors_that_depend_on_the_batch(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = per_tensor_copy(tiny_bundle, tmp_path)
    cases = read_reference(tiny_bundle, read_manifest(tiny_bundle)).cases

    def lowest(folder: Path) -> float:
        session = make_session(folder / TEXTUAL / "model.int8.onnx", provider="cpu")
        return run_cases(session, TEXTUAL, cases, pad_id=read_manifest(folder).text.pad_id)[1]

    assert lowest(tiny_bundle) >= BATCH_INVARIANCE
    assert lowest(bundle) < BATCH_INVARIANCE  # the same texts, another vector in another batch


def test_zero_rows_stay_zero_and_the_rewrite_is_exact_integer_math(tmp_path: Path) -> None:
    """A row of zeros (scale 0) gives zeros, not NaN; other rows equal the int8 arithmetic done in numpy."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(weight, "w")])
    source = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    quantize_int8(source, tmp_path / "int8.onnx")
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 16)).astype(np.float32)
    x[1] = 0.0
    y = session.run(None, {"x": x})[0]
    assert np.isfinite(y).all() and not y[1].any()
    # Pair-safe weights: per column, the largest |w[k]| + |w[k+1]| over even k is 128 (written out here).
    w_scale = (np.abs(weight[0::2]) + np.abs(weight[1::2])).max(axis=0) / 128
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "int8.onnx")).graph.initializer}
    w_int = next(v for v in stored.values() if v.dtype == np.int8)
    assert np.abs(w_int - weight / w_scale).max() <= 1.0  # rounded (a pair over 128 loses one step)
    x_scale = np.abs(x).max(axis=1, keepdims=True) / 127
    expected = (np.rint(x[[0, 2]] / x_scale[[0, 2]]) @ w_int.astype(np.float32)) * w_scale * x_scale[[0, 2]]
    np.testing.assert_allclose(y[[0, 2]], expected, rtol=1e-5, atol=1e-6)
    assert cosines(y[[0, 2]], x[[0, 2]] @ weight).min() > 0.999


def test_quantizing_a_graph_without_matmuls_is_refused(tmp_path: Path) -> None:
    from altclip_onnx.errors import ExportError

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(ExportError, match="no MatMul with a constant weight"):
        quantize_int8(tmp_path / "relu.onnx", tmp_path / "out.onnx")


def test_gemm_weights_cannot_saturate_a_pair_on_cpus_without_vnni(tiny_bundle: Path) -> None:
    """AVX2's vpmaddubsw adds the u8 x s8 products of weights k and k+1 (k even) in a saturating int16: every
    such pair an integer GEMM of the bundle reads must keep 255 x (|w[k]| + |w[k+1]|) within 32,767 (tests/isa
    runs the kernels themselves)."""
    for tower in (VISUAL, TEXTUAL):
        model = onnx.load(str(tiny_bundle / tower / "model.int8.onnx"))
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        gemms = [n for n in model.graph.node if n.op_type in ("MatMulIntegerToFloat", "MatMulInteger")]
        assert gemms
        for node in gemms:
            w = np.abs(weights[node.input[1]].astype(np.int32))
            w = np.concatenate([w, np.zeros((len(w) % 2, w.shape[1]), np.int32)])
            largest = int((w[0::2] + w[1::2]).max())
            assert 255 * largest <= np.iinfo(np.int16).max, (tower, node.name, largest)
            assert int(w.max()) > 63  # wider than 7 bits where the pairs allow it
