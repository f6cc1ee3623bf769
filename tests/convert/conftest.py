"""What the convert, hub and client tests share: converted folders, a bundle with external weights, and
transformers.js installed for Node.

transformers.js is installed with npm (pinned version, onnxruntime-node's GPU download skipped) into
``build/node-clients/`` of the checkout (git-ignored; ``ALTCLIP_NODE_DIR`` moves it), once: later runs reuse
it. Without node or npm those tests are skipped, unless ``ALTCLIP_REQUIRE_CLIENTS=1`` (CI) makes that a
failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from altclip_onnx.bundle import MANIFEST, Manifest, Variant, file_entry, read_manifest

TRANSFORMERS_JS_VERSION = "4.3.2"
CLIENT_SCRIPTS = (Path(__file__).with_name("transformers_js_client.mjs"), Path(__file__).with_name("onnxruntime_client.mjs"))
REQUIRE_ENV = "ALTCLIP_REQUIRE_CLIENTS"
NODE_DIR_ENV = "ALTCLIP_NODE_DIR"


def missing_client(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def convert_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("converted")


@pytest.fixture(scope="session")
def converted(tiny_bundle: Path, convert_out: Path) -> Callable[..., Path]:
    """convert_bundle(tiny_bundle, ..., client) once per (client, precisions); returns the folder."""
    from altclip_onnx.convert import convert_bundle

    made: dict[tuple[str, tuple[str, ...] | None], Path] = {}

    def make(client: str, precisions: tuple[str, ...] | None = None, bundle: Path | None = None) -> Path:
        key = (f"{client}-{bundle.name if bundle else 'tiny'}", precisions)
        if key not in made:
            out = convert_out / f"{key[0]}-{'-'.join(precisions or ('all',))}"
            convert_bundle(bundle or tiny_bundle, out, client, precisions=precisions)
            made[key] = out
        return made[key]

    return make


def rewrite_manifest(folder: Path, manifest: Manifest, towers: dict[str, dict[str, Variant]]) -> Manifest:
    """Write ``folder/manifest.json`` for new variant files, every file's checksum recomputed."""
    names = {name for name in manifest.files if not any(name in v.files for vs in manifest.towers.values()
                                                        for v in vs.values())}
    names |= {f for vs in towers.values() for v in vs.values() for f in v.files}
    files = {name: file_entry(folder, name) for name in sorted(names)}
    new = Manifest(**{**manifest.__dict__, "towers": towers, "files": files})
    (folder / MANIFEST).write_text(json.dumps(new.to_json(), indent=2), encoding="utf-8")
    (folder / ".verified.json").unlink(missing_ok=True)
    return read_manifest(folder)


@pytest.fixture(scope="session")
def external_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with every graph's weights in an external ``<graph>.data`` file, as full-size bundles
    have them (the text tower is 2.2 GB); the manifest lists the new files with their checksums."""
    import onnx

    folder = tmp_path_factory.mktemp("external") / "bundle"
    shutil.copytree(tiny_bundle, folder)
    manifest = read_manifest(folder)
    towers: dict[str, dict[str, Variant]] = {}
    for tower, variants in manifest.towers.items():
        towers[tower] = {}
        for precision, variant in variants.items():
            path = folder / variant.path
            model = onnx.load(str(path))
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=0)
            towers[tower][precision] = Variant(precision, variant.path, (variant.path, variant.path + ".data"),
                                               variant.accuracy, variant.fused_ops)
    rewrite_manifest(folder, manifest, towers)
    return folder


@dataclass(frozen=True)
class NodeClients:
    node: str
    folder: Path  # holds node_modules and the client scripts

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.node, str(self.folder / script), *args], capture_output=True, text=True,
                              timeout=300)


@pytest.fixture(scope="session")
def node_clients() -> NodeClients:
    """transformers.js (and the onnxruntime-node / onnxruntime-web it depends on) installed for Node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing_client("node and npm are needed to run transformers.js (apt-get install nodejs npm)")
    root = Path(__file__).resolve().parents[2]
    folder = Path(os.environ.get(NODE_DIR_ENV) or root / "build" / "node-clients")
    folder.mkdir(parents=True, exist_ok=True)
    installed = folder / "node_modules" / "@huggingface" / "transformers" / "package.json"
    current = installed.is_file() and json.loads(installed.read_text())["version"] == TRANSFORMERS_JS_VERSION
    if not current:
        (folder / "package.json").write_text(json.dumps({
            "name": "altclip-onnx-client-tests", "private": True, "type": "module",
            "dependencies": {"@huggingface/transformers": TRANSFORMERS_JS_VERSION}}, indent=2))
        env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip", ONNXRUNTIME_NODE_INSTALL_CUDA="skip")
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            missing_client(f"npm install @huggingface/transformers@{TRANSFORMERS_JS_VERSION} failed in {folder}: "
                           f"{done.stderr.strip()[-500:]}")
    for script in CLIENT_SCRIPTS:  # beside node_modules, so their imports resolve
        shutil.copyfile(script, folder / script.name)
    return NodeClients(node, folder)


def _request_file(folder: Path, request: dict[str, Any]) -> Path:
    path = folder / f"request-{os.getpid()}.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def transformers_js(node_clients: NodeClients) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Run tests/convert/transformers_js_client.mjs with a request; returns its JSON answer."""

    def run(request: dict[str, Any]) -> dict[str, Any]:
        done = node_clients.run("transformers_js_client.mjs", str(_request_file(node_clients.folder, request)))
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    return run


@pytest.fixture(scope="session")
def onnxruntime_js(node_clients: NodeClients) -> Callable[[str, Path, dict[str, Any]], dict[str, Any]]:
    """Run one graph in onnxruntime-node ("node") or onnxruntime-web's WebAssembly backend ("web")."""

    def run(backend: str, model: Path, feed: dict[str, Any]) -> dict[str, Any]:
        inputs = {name: {"type": str(array.dtype), "dims": list(array.shape), "data": array.ravel().tolist()}
                  for name, array in feed.items()}
        done = node_clients.run("onnxruntime_client.mjs", backend, str(model),
                                str(_request_file(node_clients.folder, inputs)))
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run
