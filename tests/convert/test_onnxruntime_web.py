"""The converted transformers.js graphs in onnxruntime for JavaScript: onnxruntime-web's WebAssembly backend
(what transformers.js runs in browsers) and onnxruntime-node (what it runs in Node), the versions
transformers.js itself depends on. Every op of every variant (fused com.microsoft ops, the int8 graph,
fp16) must load there and give onnxruntime's numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altclip_onnx import Encoder

from ..cases import PARITY_TEXTS

# The same graph in two builds of onnxruntime: fp32 and fp16 agree to rounding; int8 kernels may round
# differently (measured on the tiny bundle: all >= 0.99999).
MIN_COSINE = {"fp32": 0.99999, "int8": 0.9999, "fp16": 0.99999}
GRAPHS = {"visual": "vision_model", "textual": "text_model"}
SUFFIXES = {"fp32": "", "int8": "_quantized", "fp16": "_fp16"}


def cosines(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("backend", ["web", "node"])
@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
@pytest.mark.parametrize("tower", ["visual", "textual"])
def test_every_graph_runs_in_onnxruntime_js(tower: str, precision: str, backend: str, converted: Callable[..., Path],
                                            onnxruntime_js: Callable[..., dict[str, Any]], tiny_bundle: Path,
                                            fixture_photos: list[Path]) -> None:
    from altclip_onnx.runtime.providers import make_session

    encoder = Encoder(tiny_bundle, precision="fp32")
    feed = ({"pixel_values": encoder.preprocess(fixture_photos[:2])} if tower == "visual"
            else encoder.tokenize(PARITY_TEXTS[:6]))
    path = converted("transformers.js") / "onnx" / f"{GRAPHS[tower]}{SUFFIXES[precision]}.onnx"
    answer = onnxruntime_js(backend, path, feed)
    assert answer["ok"], answer["error"]
    output = "image_embeds" if tower == "visual" else "text_embeds"
    got = np.array(answer["outputs"][output]["data"]).reshape(answer["outputs"][output]["dims"])
    want = make_session(path, provider="cpu").run([output], feed)[0]
    assert cosines(got, want).min() >= MIN_COSINE[precision]
