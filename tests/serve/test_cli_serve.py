"""``altclip-onnx serve`` as a command: start-up errors in one line, no torch, SIGTERM finishing the requests
in flight; and options of the app (CORS) in-process."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from altclip_onnx import Encoder, Index
from altclip_onnx.cli import main
from altclip_onnx.serve import ServeOptions, Service, create_app

from ..blocking import BLOCK_EXPORT_SIDE
from .conftest import Server, cosine, data_uri

# Runs the command in a fresh interpreter where torch, transformers, sentencepiece and onnx cannot be
# imported (as tests/core/test_torch_free.py does), and prints what of them got loaded when it exits.
TORCH_FREE = BLOCK_EXPORT_SIDE + r"""
import atexit, json


def report():
    loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in BLOCKED)
    print("LOADED=" + json.dumps(loaded), flush=True)


atexit.register(report)
from altclip_onnx.cli import main

main(sys.argv[1:], prog_name="altclip-onnx")
"""


def run(*args: object, env: dict | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["serve", *map(str, args)], env=env, catch_exceptions=False)


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_a_bad_bundle_or_index_fails_at_start_up_in_one_line(tmp_path: Path, tiny_bundle: Path, other_bundle: Path,
                                                              library: list[Path]) -> None:
    assert "no such bundle folder" in one_line_error(result := run(tmp_path / "missing")) and result.exit_code == 1
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "visual" / "model.onnx").write_bytes(b"not a model")
    result = run(broken, "--precision", "fp32")
    assert result.exit_code == 1 and "visual/model.onnx" in one_line_error(result)
    (tmp_path / "not-an-index").mkdir()
    result = run(tiny_bundle, "--db", tmp_path / "not-an-index")
    assert result.exit_code == 1 and "no index here" in one_line_error(result)
    result = run(tiny_bundle, "--db", "ftp://somewhere/index")
    assert result.exit_code == 1 and "unknown database scheme" in one_line_error(result)
    other_db = tmp_path / "other.idx"
    with Index.open(other_db, create=True) as index:  # made by another model
        index.update(Encoder(other_bundle, precision="fp32"), library[0].parent, progress=False)
    result = run(tiny_bundle, "--db", other_db)
    assert result.exit_code == 1 and "other.idx" in one_line_error(result)


def test_a_busy_port_and_an_empty_key_are_one_line_errors(tiny_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = run(tiny_bundle, "--port", taken.getsockname()[1])
    assert result.exit_code == 1 and "cannot listen on 127.0.0.1:" in one_line_error(result)
    result = run(tiny_bundle, env={"ALTCLIP_API_KEY": "  "})
    assert result.exit_code == 1 and "ALTCLIP_API_KEY is set but empty" in one_line_error(result)
    for args in (("--max-batch", "0"), ("--max-body-mb", "0"), ("--max-pixels", "0"), ("--port", "70000"),
                 ("--shutdown-grace", "-1")):
        assert run(tiny_bundle, *args).exit_code == 2, args


def test_sigterm_finishes_requests_in_flight_then_exits_without_torch(tiny_bundle: Path, fp32_encoder: Encoder,
                                                                       library: list[Path], tmp_path: Path) -> None:
    """Three requests in flight at SIGTERM: one still sending its body, two waiting in the batchers for it (a
    model call waits up to --max-wait-ms for requests still arriving). All three are answered, then it exits."""
    server = Server.start(str(tiny_bundle), "--precision", "fp32", "--max-wait-ms", "2000", "--max-batch", "64",
                          python_code=TORCH_FREE, log_path=tmp_path / "serve.log")
    results: dict[str, httpx.Response] = {}

    def send(name: str, body: dict) -> None:
        results[name] = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=30)

    photo = library[0].read_bytes()
    slow_body = json.dumps({"input": ["a slow upload"], "model": "m"}).encode()
    senders = [threading.Thread(target=send, args=("text", {"input": ["海边的日落", "a cat"], "model": "m"})),
               threading.Thread(target=send, args=("image", {"input": [data_uri(photo)], "modality": "image"}))]
    port = int(server.url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(slow_body) + slow_body[:10])
            time.sleep(0.2)
            for thread in senders:
                thread.start()
            time.sleep(0.5)
            assert not results  # both wait for the slow request to join their model call
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):  # no new connections once told to stop
                httpx.get(f"{server.url}/health", timeout=2)
            slow.sendall(slow_body[10:])
            answer = b""
            while not answer.endswith(b"}"):
                chunk = slow.recv(65536)
                if not chunk:
                    break
                answer += chunk
        for thread in senders:
            thread.join(30)
        code = server.process.wait(30)
    finally:
        server.stop()
    assert code == 0, server.log()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    slow_vector = np.array(json.loads(answer.split(b"\r\n\r\n", 1)[1])["data"][0]["embedding"])
    assert cosine(slow_vector, fp32_encoder.encode_texts(["a slow upload"])[0])[0] >= 0.99999
    assert results["text"].status_code == 200 and results["image"].status_code == 200
    texts = np.array([row["embedding"] for row in results["text"].json()["data"]])
    assert cosine(texts, fp32_encoder.encode_texts(["海边的日落", "a cat"])).min() >= 0.99999
    image = np.array(results["image"].json()["data"][0]["embedding"])
    assert cosine(image, fp32_encoder.encode_images([photo])[0])[0] >= 0.99999
    log = server.log()
    assert "stopped" in log and "Traceback" not in log
    assert json.loads(log.split("LOADED=")[1].splitlines()[0]) == []  # not torch, transformers, ... (onnxruntime is fine)


def test_cors_only_for_the_origins_given(tiny_bundle: Path) -> None:
    from starlette.testclient import TestClient

    allowed = "https://photos.example.org"
    options = ServeOptions(cors_origins=(allowed,), api_key="k")
    service = Service.open(str(tiny_bundle), precision="fp32", options=options)
    with TestClient(create_app(service)) as http:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        ok = http.options("/v1/embeddings", headers={"Origin": allowed, **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        other = http.options("/v1/embeddings", headers={"Origin": "https://evil.example", **preflight})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        answer = http.post("/v1/embeddings", json={"input": "cat"},
                           headers={"Origin": allowed, "Authorization": "Bearer k"})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == allowed
        refused = http.post("/v1/embeddings", json={"input": "cat"}, headers={"Origin": allowed})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == allowed
    assert service.engine.texts.closed  # the app's shutdown closed the service


def test_the_service_loads_its_sessions_without_spinning(tiny_bundle: Path) -> None:
    service = Service.open(str(tiny_bundle), precision="fp32")
    try:
        for tower in ("visual", "textual"):
            options = service.encoder.session(tower).get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0", tower
    finally:
        service.close()
