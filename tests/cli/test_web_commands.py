"""convert --to web without node or npm (one line, exit 1) and serve-static's headers and refusals, standard
library only (tests/web runs the whole site in a browser)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import altclip_onnx

from ..conftest import free_port

SRC = Path(altclip_onnx.__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ if env is None else env, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "altclip_onnx.cli", *args], env=full, capture_output=True,
                          text=True, timeout=60)


def test_convert_to_web_without_node_says_what_to_install(tiny_bundle: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bin"  # a PATH without node and npm
    bare.mkdir()
    done = run_cli("convert", str(tiny_bundle), "--to", "web", "-o", str(tmp_path / "site"),
                   env=dict(os.environ, PATH=str(bare)))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "node" in lines[0] and "npm" in lines[0] and "apt-get install nodejs npm" in lines[0]
    assert not (tmp_path / "site").exists()


def test_convert_to_web_takes_one_precision(tiny_bundle: Path, tmp_path: Path) -> None:
    done = run_cli("convert", str(tiny_bundle), "--to", "web", "--precision", "int8,fp32", "-o", str(tmp_path / "s"))
    assert done.returncode != 0 and "one --precision" in done.stderr


def test_serve_static_sends_the_isolation_headers(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "ort").mkdir(parents=True)
    (site / "site.json").write_text(json.dumps({"model": "m"}))
    (site / "index.html").write_text("<!doctype html><title>t</title>")
    (site / "ort" / "x.wasm").write_bytes(b"\0asm\1\0\0\0")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "altclip_onnx.cli", "serve-static", str(site), "--port",
                                str(port)], env=dict(os.environ, PYTHONPATH=str(SRC)), stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        wasm = urllib.request.urlopen(f"http://127.0.0.1:{port}/ort/x.wasm", timeout=2)
        assert wasm.headers["Content-Type"] == "application/wasm"
        assert wasm.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(15)
    assert code == 0, process.stderr.read()


def test_serve_static_refuses_a_folder_that_is_not_a_site(tmp_path: Path) -> None:
    done = run_cli("serve-static", str(tmp_path), "--port", "0")
    assert done.returncode == 1 and "convert BUNDLE --to web" in done.stderr
    assert "Traceback" not in done.stderr
