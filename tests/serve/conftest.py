"""Real servers for the service tests: ``altclip-onnx serve`` in a subprocess on a free loopback port, on the
tiny test bundle and a small index of scikit-image photos.

Two servers are shared by the whole session (starting one takes about two seconds):

- ``search_server``: with ``--db``, ``ALTCLIP_API_KEY`` set, fp32, small limits (``--max-body-mb 1``,
  ``--max-pixels 1000000``) so the refusals are cheap to provoke, and ``--max-wait-ms 20`` so concurrent
  requests reliably share model calls;
- ``zeroshot_server``: no index, no key, the default limits.

Tests that stop or break a server start their own. Needs the [serve] extra and the [test-services] tools
(openai, httpx, playwright); without them these tests are skipped, saying which package is missing, except
under CI (CI=true), where that is a failure: a skip there would hide a missing install step.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import missing as fail_or_skip
from ..conftest import free_port



def missing(what: str, fix: str) -> None:
    """Skip what needs ``what``; under CI (CI=true), fail instead: there a skip would hide a missing install step."""
    fail_or_skip(f"the service tests need {what}: {fix}")


for _module in ("starlette", "uvicorn", "prometheus_client", "httpx", "skimage", "usearch"):
    if importlib.util.find_spec(_module) is None:
        missing(_module, "pip install -e '.[serve,search,test,test-services]'")
if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
    missing("python-multipart", "pip install -e '.[serve]'")
import skimage.data as skdata  # noqa: E402

import httpx  # noqa: E402

from altclip_onnx import Encoder, Index  # noqa: E402

API_KEY = "test-key-0123456789"
SRC = Path(__file__).resolve().parents[2] / "src"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "hubble_deep_field", "immunohistochemistry")


def photo_array(name: str) -> np.ndarray:
    image = getattr(skdata, name)()
    return (image * 255).astype(np.uint8) if image.dtype == bool else image


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def data_uri(data: bytes, media: str = "image/jpeg") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@dataclass
class Server:
    """``altclip-onnx serve`` running in a subprocess; ``url`` is its base URL."""

    process: subprocess.Popen
    url: str
    log_path: Path
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, *args: str, env: dict[str, str] | None = None, key: str | None = None, log_path: Path,
              python_code: str | None = None, timeout: float = 60.0) -> Server:
        port = free_port()
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
                        **(env or {}))
        full_env.pop("ALTCLIP_API_KEY", None)
        if key is not None:
            full_env["ALTCLIP_API_KEY"] = key
        argv = ["serve", *args, "--port", str(port), "--host", "127.0.0.1"]
        command = ([sys.executable, "-c", python_code, *argv] if python_code
                   else [sys.executable, "-m", "altclip_onnx.cli", *argv])
        log = open(log_path, "wb")  # noqa: SIM115  (closed with the process)
        process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        server = cls(process, f"http://127.0.0.1:{port}", log_path, key,
                     {"Authorization": f"Bearer {key}"} if key else {})
        server.wait_ready(timeout)
        return server

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {timeout}s:\n{self.log()}")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=10).json()["status"] == "ok"

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The indexed photos: scikit-image's, as JPEG files."""
    folder = tmp_path_factory.mktemp("serve-photos")
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.jpg"
        path.write_bytes(jpeg_bytes(photo_array(name)))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def fp32_encoder(tiny_bundle: Path) -> Encoder:
    return Encoder(tiny_bundle, provider="cpu", precision="fp32")


@pytest.fixture(scope="session")
def index_db(tmp_path_factory: pytest.TempPathFactory, fp32_encoder: Encoder, library: list[Path]) -> Path:
    db = tmp_path_factory.mktemp("serve-index") / "photos.idx"
    with Index.open(db, create=True) as index:
        index.update(fp32_encoder, library[0].parent, progress=False)
    return db


@pytest.fixture(scope="session")
def search_server(tiny_bundle: Path, index_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server.start(str(tiny_bundle), "--db", str(index_db), "--precision", "fp32", "--max-wait-ms", "20",
                          "--max-body-mb", "1", "--max-pixels", "1000000", key=API_KEY,
                          log_path=tmp_path_factory.mktemp("serve-logs") / "search.log")
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def zeroshot_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server.start(str(tiny_bundle), "--precision", "fp32",
                          log_path=tmp_path_factory.mktemp("serve-logs") / "zeroshot.log")
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """Where the browser tests save their screenshots: $ALTCLIP_SCREENSHOTS, else build/screenshots."""
    folder = Path(os.environ.get("ALTCLIP_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
