"""The engine behind the service, in-process: its text classifier is the Encoder's recipe, batched."""

from __future__ import annotations

import asyncio
import os
import threading
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


def _niceness(tid: int) -> int:
    # /proc/self/task/TID/stat: "TID (name) state ..." with the nice value the 19th field
    return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="a thread's own nice value is Linux's")
def test_image_work_runs_at_a_lower_cpu_priority_than_texts(tiny_bundle: Path, library: list[Path]) -> None:
    """The image tower's batching thread, its onnxruntime thread pool and the decoding threads run at
    IMAGE_NICENESS above the rest; the text tower's threads and the caller's stay where they were."""
    from altclip_onnx.serve.priority import IMAGE_NICENESS

    base = _niceness(threading.get_native_id())
    before = {int(t) for t in os.listdir("/proc/self/task")}
    encoder = Encoder(tiny_bundle, precision="fp32", spinning=False, threads=2)
    engine = Engine(encoder, ServeOptions(workers=2))
    try:
        engine.load()
        images = [(path.read_bytes(), f"input[{i}]") for i, path in enumerate(library[:2])]
        vectors = asyncio.run(engine.embed_images(images))
        texts, _ = asyncio.run(engine.embed_texts(["a cat", "a rocket"]))
        started = {int(t) for t in os.listdir("/proc/self/task")} - before
        lowered = {tid for tid in started if _niceness(tid) == base + IMAGE_NICENESS}
        decoders = {thread.native_id for thread in engine.decoder._threads}  # noqa: SLF001
        assert engine.images._thread.native_id in lowered  # noqa: SLF001
        assert decoders and decoders <= lowered
        # threads=2: each session's pool has one thread besides the caller's; the image tower's is lowered
        assert len(lowered - decoders - {engine.images._thread.native_id}) >= 1  # noqa: SLF001
        assert _niceness(engine.texts._thread.native_id) == base  # noqa: SLF001
        assert _niceness(threading.get_native_id()) == base
        assert len(started - lowered) >= 2  # the text tower's batching thread and its pool thread
    finally:
        engine.close()
    np.testing.assert_allclose(vectors, encoder.encode_images(library[:2]), atol=1e-5)
    np.testing.assert_allclose(texts, encoder.encode_texts(["a cat", "a rocket"]), atol=1e-5)
