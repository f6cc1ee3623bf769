"""The service under more work than it can do: shutdown answers in JSON, what one request may cost is bounded,
work past a tower's bound is refused at once (429 with Retry-After), and work past its deadline is dropped
before the model. Servers here run the real model path, slowed down (``SLOW``) where a queue must build up."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from .conftest import Server, data_uri
from .test_bad_input import BIG, png

# ``altclip-onnx serve`` whose model calls each sleep ALTCLIP_TEST_SLOW_{TEXTS,IMAGES} seconds first (then run as usual).
SLOW = r"""
import os, sys, time
from altclip_onnx.serve.engine import Engine

for name, env in (("_run_texts", "ALTCLIP_TEST_SLOW_TEXTS"), ("_run_pixels", "ALTCLIP_TEST_SLOW_IMAGES")):
    delay, real = float(os.environ.get(env, "0")), getattr(Engine, name)

    def slowed(self, items, real=real, delay=delay):
        time.sleep(delay)
        return real(self, items)

    setattr(Engine, name, slowed)
from altclip_onnx.cli import main

main(sys.argv[1:], prog_name="altclip-onnx")
"""


def slow_server(bundle: Path, tmp_path: Path, *args: str, texts: float = 0.0, images: float = 0.0) -> Server:
    return Server.start(str(bundle), "--precision", "fp32", *args, python_code=SLOW, log_path=tmp_path / "serve.log",
                        env={"ALTCLIP_TEST_SLOW_TEXTS": str(texts), "ALTCLIP_TEST_SLOW_IMAGES": str(images)})


def test_a_request_running_past_the_shutdown_grace_gets_a_json_503(tiny_bundle: Path, tmp_path: Path) -> None:
    """2048 texts at 0.5 s per model call of 32 take 32 s; SIGTERM 1 s in, with a 1 s grace: the request is
    answered 503 shutting_down in OpenAI's shape (uvicorn's own answer would be a plain-text 500)."""
    server = slow_server(tiny_bundle, tmp_path, "--shutdown-grace", "1", texts=0.5)
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{server.url}/v1/embeddings", json={"input": [f"text {i}" for i in range(2048)]}, timeout=60)))
    try:
        sender.start()
        time.sleep(1.0)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        sender.join(30)
        waited = time.monotonic() - started
        code = server.process.wait(30)
    finally:
        server.stop()
    assert answers and answers[0].status_code == 503, (answers, server.log())
    assert answers[0].headers["content-type"] == "application/json"
    assert answers[0].json()["error"]["code"] == "shutting_down"
    assert answers[0].json()["error"]["type"] == "server_error"
    assert waited < 10, waited  # the grace (1 s), not the 32 s of work
    assert code == 0, server.log()
    assert "Traceback" not in server.log()


def test_the_pixels_of_a_request_are_bounded_together(tiny_bundle: Path, tmp_path: Path) -> None:
    """Each image is under --max-pixels, yet three together are over --max-request-pixels: 413 from the headers
    (nothing decoded), in OpenAI's shape; two of them are fine."""
    server = slow_server(tiny_bundle, tmp_path, "--max-request-pixels", "4000000")
    big = data_uri(png(BIG))  # 1.56 megapixels
    try:
        with server.client() as http:
            refused = http.post("/v1/embeddings", json={"input": [big] * 3, "modality": "image"})
            assert refused.status_code == 413, refused.text
            error = refused.json()["error"]
            assert error["code"] == "request_too_large" and error["param"] == "input"
            assert "4,680,000 pixels together" in error["message"] and "--max-request-pixels" in error["message"]
            form = http.post("/v1/classify", data={"labels": "a,b"}, files=[("image", ("a.png", png(BIG)))] * 3)
            assert form.status_code == 413 and form.json()["error"]["code"] == "request_too_large", form.text
            assert http.post("/v1/embeddings", json={"input": [big] * 2, "modality": "image"}).status_code == 200
            assert server.healthy()
    finally:
        assert server.stop() == 0, server.log()
