"""The engine behind the service, in-process: its text classifier is the Encoder's recipe, batched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx import Encoder, InputError
from altclip_onnx.serve.engine import Engine
from altclip_onnx.serve_options import ServeOptions

LABELS = ["cat", "rocket", "咖啡"]


@pytest.mark.parametrize("templates", [None, ["一张{}的照片", "{}"], "a photo of a {}."])
def test_the_classifier_is_the_encoders(tiny_bundle: Path, templates: object) -> None:
    encoder = Encoder(tiny_bundle, precision="fp32", spinning=False)
    engine = Engine(encoder, ServeOptions())
    try:
        served = asyncio.run(engine.classifier(LABELS, templates))  # type: ignore[arg-type]
        again = asyncio.run(engine.classifier(LABELS, templates))  # type: ignore[arg-type]  (kept)
        with pytest.raises(InputError, match="has no {}"):
            asyncio.run(engine.classifier(LABELS, ["no place for the label"]))
    finally:
        engine.close()
    np.testing.assert_allclose(served, encoder.text_classifier(LABELS, templates), atol=1e-6)  # type: ignore[arg-type]
    assert again is served


def test_serve_options_refuse_bad_values_as_input_errors() -> None:
    for bad in ({"max_batch": 0}, {"workers": 0}, {"max_wait_ms": -1}, {"api_key": ""}):
        with pytest.raises(InputError):
            ServeOptions(**bad)  # type: ignore[arg-type]
