"""The page's JavaScript: npm packages from the lockfile shipped with the package, installed once into the user's cache,
and esbuild bundling the page's sources with them.

``sources/package.json`` and ``sources/package-lock.json`` (package data) pin @huggingface/transformers (which brings
onnxruntime-web) and esbuild. ``npm ci`` runs into ``$XDG_CACHE_HOME/altclip-onnx/web-npm/<lockfile hash>``
(install scripts off: nothing downloads a binary), under a lock, so a second build reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import AltclipOnnxError, ExportError
from ..files import lock_file

#: The page's sources: package.json, package-lock.json, src/ (JavaScript), page/ (HTML, CSS).
WEB_SOURCES = Path(__file__).resolve().parent / "sources"  # package data: a pip install has them too
LOCKFILE = "package-lock.json"
# The entry points esbuild bundles (sources/src/NAME.js -> SITE/assets/NAME.js).
ENTRY_POINTS = ("app", "worker")
NPM_TIMEOUT = 900  # seconds


class NodeMissingError(AltclipOnnxError):
    """node or npm is not installed: the page cannot be bundled."""


def require_node() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        raise NodeMissingError(f"convert --to web bundles the page with npm packages and needs {missing}: install "
                               "Node.js 18 or later with npm (Debian/Ubuntu: apt-get install nodejs npm)")
    return node, npm


def require_sources(sources: Path = WEB_SOURCES) -> Path:
    if not (sources / LOCKFILE).is_file():
        raise ExportError(f"{sources}: the page's sources (package-lock.json, src/, page/) are missing; "
                          "reinstall altclip-onnx")
    return sources


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "altclip-onnx" / "web-npm"


def lock_hash(sources: Path = WEB_SOURCES) -> str:
    return hashlib.sha256((sources / LOCKFILE).read_bytes()).hexdigest()[:16]


def installed_packages(npm: str, sources: Path = WEB_SOURCES, progress=lambda step: None) -> Path:  # noqa: ANN001
    """The folder holding node_modules for ``sources``' lockfile: installed with ``npm ci`` on first use."""
    folder = cache_root() / lock_hash(sources)
    done = folder / ".installed"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with lock_file(folder / ".lock", "the page's npm packages"):
        if done.is_file():  # another process installed them meanwhile
            return folder
        for name in ("package.json", LOCKFILE):
            shutil.copyfile(sources / name, folder / name)
        progress(f"installing the page's npm packages into {folder} (npm ci, once per lockfile)")
        env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip", ONNXRUNTIME_NODE_INSTALL_CUDA="skip")
        result = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                                cwd=folder, env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT)
        if result.returncode != 0:
            raise ExportError(f"npm ci in {folder} failed: {result.stderr.strip()[-400:] or result.stdout[-400:]}")
        done.write_text(lock_hash(sources) + "\n", encoding="utf-8")
    return folder


def bundle_page(node: str, packages: Path, out: Path, sources: Path = WEB_SOURCES) -> list[Path]:
    """esbuild sources/src/{app,worker}.js (with their npm imports) into ``out`` as browser ES modules."""
    esbuild = packages / "node_modules" / "esbuild" / "bin" / "esbuild"
    entries = [str(sources / "src" / f"{name}.js") for name in ENTRY_POINTS]
    command = [node, str(esbuild), *entries, "--bundle", "--format=esm", "--platform=browser", "--target=es2022",
               "--minify", "--legal-comments=none", "--log-level=warning", f"--outdir={out.resolve()}"]  # (cwd: packages)
    env = dict(os.environ, NODE_PATH=str(packages / "node_modules"))  # the sources' imports resolve there
    result = subprocess.run(command, cwd=packages, env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT)
    if result.returncode != 0:
        raise ExportError(f"esbuild failed: {result.stderr.strip()[-600:]}")
    return [out / f"{name}.js" for name in ENTRY_POINTS]


def runtime_files(packages: Path) -> tuple[str, list[Path]]:
    """onnxruntime-web's version and the WebAssembly files transformers.js loads (the asyncify build: WebAssembly
    with SIMD and threads, and WebGPU), to be served by the site itself instead of a CDN."""
    package = packages / "node_modules" / "onnxruntime-web"
    version = json.loads((package / "package.json").read_text(encoding="utf-8"))["version"]
    files = [package / "dist" / f"ort-wasm-simd-threaded.asyncify.{ext}" for ext in ("mjs", "wasm")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ExportError(f"onnxruntime-web's files are missing: {', '.join(missing)}")
    return version, files
