"""Assemble the static site: the page, its bundled JavaScript, onnxruntime-web's WebAssembly files and the
model in transformers.js' layout, in one folder that any static host can serve (with COOP/COEP headers for
threads: docs/web.md).

    SITE/
      index.html, style.css, icon.svg     the page (sources/page/; the served page's stylesheet and icon)
      site.json                           what the page loads: model folder, transformers.js dtype, sizes
      check.json                          the bundle's quick PyTorch reference cases, which the page runs first
      assets/app.js, assets/worker.js     sources/src/ bundled by esbuild (transformers.js, onnxruntime-web)
      ort/<version>/ort-wasm-simd-threaded.asyncify.{mjs,wasm}   onnxruntime-web's runtime, from the site itself
      models/<fingerprint>-<precision>/   the transformers.js layout of the bundle at one precision
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import TEXTUAL, TOWER_INPUTS, TOWER_OUTPUTS, VISUAL, Manifest, read_manifest
from ..errors import InputError
from ..files import refuse_non_empty, staging_folder, write_json
from ..precisions import TRANSFORMERS_JS_DTYPES
from ..precisions import precision as declared_precision
from ..verification.reference import read_reference
from . import npm

SITE_CONFIG = "site.json"
SITE_CHECK = "check.json"
PRECISIONS = ("int8", "fp32")
DEFAULT_PRECISION = "int8"
SERVED_STATIC = Path(__file__).resolve().parents[1] / "serve" / "static"  # the served page's look


@dataclass
class SiteReport:
    bundle: Path
    destination: Path
    precision: str
    files: dict[str, int] = field(default_factory=dict)  # relative path -> bytes
    seconds: float = 0.0
    model: Any = None  # what write_model returned (the transformers.js conversion's report)

    def to_json(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "destination": str(self.destination), "precision": self.precision,
                "files": self.files, "bytes": sum(self.files.values()), "seconds": round(self.seconds, 2)}


def build_site(bundle: str | Path, destination: str | Path, write_model: Callable[[Path], Any], *,
               precision: str = DEFAULT_PRECISION, overwrite: bool = False,
               progress: Callable[[str], None] = lambda step: None) -> SiteReport:
    """Write the site for ``bundle`` (a folder or hf://OWNER/REPO) to ``destination``.

    ``write_model(folder)`` writes the transformers.js layout of the bundle at ``precision`` into ``folder``
    (the caller's job: it needs onnx). Node and npm are checked before any work."""
    from ..hub import locate_bundle

    started = time.perf_counter()
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: the web site takes one of {', '.join(PRECISIONS)}")
    node, npm_path = npm.require_node()
    sources = npm.require_sources()
    target = Path(destination)
    refuse_non_empty(target, overwrite)
    folder = locate_bundle(bundle)
    manifest = read_manifest(folder)
    if precision not in manifest.precisions("textual") or precision not in manifest.precisions("visual"):
        raise InputError(f"the bundle has no {precision} variant of both towers; choose --precision "
                         f"{' or '.join(p for p in PRECISIONS if p != precision)} or re-export with it")
    packages = npm.installed_packages(npm_path, sources, progress)
    model_id = f"{manifest.fingerprint()[:12]}-{precision}"
    report = SiteReport(folder, target, precision)
    with staging_folder(target, overwrite) as staging:
        progress("bundling the page's JavaScript with esbuild")
        npm.bundle_page(node, packages, staging / "assets", sources)
        # Under the version: the page keeps them in Cache Storage by URL, so a newer build gets new URLs.
        ort_version, ort_files = npm.runtime_files(packages)
        ort = staging / "ort" / ort_version
        ort.mkdir(parents=True)
        for path in ort_files:
            shutil.copyfile(path, ort / path.name)
        for name in ("index.html",):
            shutil.copyfile(sources / "page" / name, staging / name)
        shutil.copyfile(SERVED_STATIC / "icon.svg", staging / "icon.svg")
        style = (SERVED_STATIC / "style.css").read_text(encoding="utf-8")
        (staging / "style.css").write_text(style + "\n/* the site's own */\n" +
                                           (sources / "page" / "site.css").read_text(encoding="utf-8"),
                                           encoding="utf-8")
        (staging / "models").mkdir()
        report.model = write_model(staging / "models" / model_id)
        model_files = {str(p.relative_to(staging / "models" / model_id)): p.stat().st_size
                       for p in sorted((staging / "models" / model_id).rglob("*")) if p.is_file()}
        write_json(staging / SITE_CONFIG, {
            "name": str(manifest.source.get("name") or manifest.variant),
            "model": model_id,
            "precision": precision,
            "dtype": TRANSFORMERS_JS_DTYPES[precision],
            "embedding_dim": manifest.embedding_dim,
            "max_length": manifest.text.max_length,
            "image": {"size": manifest.image.size, "shortest_edge": manifest.image.shortest_edge,
                      "resample": manifest.image.resample, "rescale_factor": manifest.image.rescale_factor,
                      "mean": list(manifest.image.mean), "std": list(manifest.image.std)},
            "model_files": model_files,
            "wasm": {ext: f"ort/{ort_version}/{path.name}" for ext, path in zip(("mjs", "wasm"), ort_files)},
        })
        write_json(staging / SITE_CHECK, browser_check(folder, manifest, precision))
        report.files = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*"))
                        if p.is_file()}
    report.seconds = time.perf_counter() - started
    return report


def browser_check(bundle: Path, manifest: Manifest, precision: str) -> dict[str, Any]:
    """The first-use check for the page (docs/web.md): the bundle's quick reference cases, images as their 8-bit
    squares (base64, [N, S, S, 3]) and texts as token ids, with PyTorch's L2-normalized embeddings and the
    precision's gate (cosines, and batch invariance: the page also runs each row alone). The page runs them on
    its backend before it embeds anything (its worker.js)."""
    reference = read_reference(bundle, manifest, quick_only=True)
    gate = declared_precision(precision).gate
    cases: dict[str, list[dict[str, Any]]] = {VISUAL: [], TEXTUAL: []}
    for case, outputs in zip(reference.cases, reference.outputs):
        expected = outputs[TOWER_OUTPUTS[case.tower][1]]  # PyTorch's normalized embeddings, as stored
        data: dict[str, Any] = {"name": case.name, "expected": np.round(expected.astype(np.float64), 7).tolist()}
        if case.tower == VISUAL:
            squares = np.ascontiguousarray(reference.images[list(case.rows)], dtype=np.uint8)
            data.update(shape=list(squares.shape), squares=base64.b64encode(squares.tobytes()).decode("ascii"))
        else:
            data.update({name: case.inputs[name].astype(np.int64).tolist() for name in TOWER_INPUTS[TEXTUAL]})
        cases[case.tower].append(data)
    return {"precision": precision, "min_cosine": gate.min_cosine, "mean_cosine": gate.mean_cosine,
            "batch_invariance": gate.batch_invariance, **cases}
