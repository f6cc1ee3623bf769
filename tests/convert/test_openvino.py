"""OpenVINO (the ``openvino`` package, the [openvino] extra) compiles every variant of both towers and gives
onnxruntime's numbers: fp32 with INFERENCE_PRECISION_HINT f32 at cosine >= 0.99999, int8 and fp16 within
their gates against PyTorch. Whatever ops the bundle's int8 graph uses are what is compiled here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx import Encoder
from altclip_onnx.precisions import PRECISIONS

from ..cases import PARITY_TEXTS
from ..reference import Reference

from ..conftest import require_module

require_module("openvino", "the OpenVINO tests need openvino: pip install -e '.[openvino]'")
import openvino as ov  # noqa: E402

FP32_MIN_COSINE = 0.99999
CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # else CPUs with bf16 (this one has AVX-512 BF16) run bf16


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def has_float16_quickgelu(path: Path) -> bool:
    """Whether an fp16 graph predates the fix: since then each QuickGelu reads a Cast to float32."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    to_float = {n.output[0] for n in graph.node if n.op_type == "Cast"
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)}
    return any(n.op_type == "QuickGelu" and n.input[0] not in to_float for n in graph.node)


@pytest.fixture(scope="module")
def graph_of(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """The bundle's graph of (tower, precision). A fixture built before fp16 kept QuickGelu in float32 carries
    the old fp16 image graph, which OpenVINO refuses; then the current convert_fp16 makes it afresh from the
    bundle's fp32 graph (what an export makes now)."""
    from altclip_onnx.export.fp16 import convert_fp16

    manifest = Encoder(tiny_bundle).manifest
    made: dict[tuple[str, str], Path] = {}

    def graph(tower: str, precision: str) -> Path:
        path = tiny_bundle / manifest.towers[tower][precision].path
        if precision == "fp16" and has_float16_quickgelu(path):
            if (tower, precision) not in made:
                target = tmp_path_factory.mktemp("fp16") / tower / "model.fp16.onnx"
                made[(tower, precision)] = convert_fp16(tiny_bundle / manifest.towers[tower]["fp32"].path, target)[0]
            return made[(tower, precision)]
        return path

    return graph


@pytest.fixture(scope="module")
def inputs(tiny_bundle: Path, fixture_photos: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    encoder = Encoder(tiny_bundle, precision="fp32")
    return {"visual": {"pixel_values": encoder.preprocess(fixture_photos)},
            "textual": encoder.tokenize(PARITY_TEXTS)}


def run_openvino(path: Path, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", CONFIG)
    return compiled(feed)[compiled.output(output)]


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
@pytest.mark.parametrize("tower", ["visual", "textual"])
def test_every_variant_compiles_and_matches_onnxruntime(tower: str, precision: str, graph_of: Callable[[str, str], Path],
                                                        inputs: dict[str, dict[str, np.ndarray]], ref: Reference) -> None:
    from altclip_onnx.runtime.providers import make_session

    output = "image_embeds" if tower == "visual" else "text_embeds"
    path = graph_of(tower, precision)
    got = run_openvino(path, inputs[tower], output)
    want = make_session(path, provider="cpu").run([output], inputs[tower])[0]
    reference = ref["photo_features"] if tower == "visual" else ref["parity_text_features"]
    to_runtime, to_reference = cosines(got, want), cosines(got, reference)
    gate = PRECISIONS[precision].gate
    if precision == "fp32":
        assert to_runtime.min() >= FP32_MIN_COSINE and to_reference.min() >= FP32_MIN_COSINE
    else:
        assert to_runtime.min() >= 0.999, to_runtime  # the same graph in two runtimes (int8: their own rounding)
        assert to_reference.min() >= gate.min_cosine
        assert gate.mean_cosine is None or to_reference.mean() >= gate.mean_cosine


def test_the_immich_graphs_compile_too(converted: Callable[..., Path], inputs: dict[str, dict[str, np.ndarray]]) -> None:
    """immich uses onnxruntime's OpenVINO provider where it has it: its int32 inputs and renamed input compile."""
    from altclip_onnx.runtime.providers import make_session

    folder = converted("immich")
    text = {k: v.astype(np.int32) for k, v in inputs["textual"].items()}
    for path, feed in ((folder / "textual" / "model.onnx", text),
                       (folder / "visual" / "model.onnx", {"image": inputs["visual"]["pixel_values"]})):
        got = run_openvino(path, feed, "embedding")
        want = make_session(path, provider="cpu").run(["embedding"], feed)[0]
        assert cosines(got, want).min() >= FP32_MIN_COSINE
