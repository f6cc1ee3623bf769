"""Write a client's layout of a bundle, then check every written graph against the bundle's own.

``convert_bundle(bundle, destination, client)`` reads the bundle's verified graphs (their checksums are
checked first), writes the layout :func:`~altclip_onnx.convert.layouts.plan` describes into a temporary
folder beside ``destination``, runs each written graph the way its client feeds it next to the bundle's
graph on the same inputs (onnxruntime, CPU), and moves the folder into place only when every graph
agrees (cosine >= 0.99999 for every row: the edits are casts and renames, so they should agree exactly).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import INPUT_IDS, PIXEL_VALUES, TOKENIZER, VISUAL, Manifest, read_manifest, tower_output, verify_files
from ..errors import ExportError, MissingDependencyError
from ..files import refuse_non_empty, staging_folder, write_json
from .graph import save_edited
from .layouts import GraphFile, plan

log = logging.getLogger(__name__)

#: A converted graph must give the bundle graph's vectors: every row at least this cosine.
MIN_COSINE = 0.99999

# Texts the check feeds (several scripts, an empty one, one past max_length) and how many random images.
CHECK_TEXTS = (
    "A photo of an astronaut in an orange suit.",
    "一只猫躺在沙发上睡觉。",
    "ภาพถ่ายของจรวดที่กำลังขึ้นสู่ท้องฟ้า",
    "",
    " ".join(["Фотография ракеты, взлетающей в небо."] * 30),
)
CHECK_IMAGES = 2


@dataclass(frozen=True)
class GraphCheck:
    path: str
    tower: str
    precision: str
    edits: list[str]
    min_cosine: float
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.min_cosine >= MIN_COSINE


@dataclass
class ConvertReport:
    client: str
    bundle: Path
    destination: Path
    files: list[str] = field(default_factory=list)
    checks: list[GraphCheck] = field(default_factory=list)
    seconds: float = 0.0

    def format_table(self) -> str:
        header = ("graph", "tower", "precision", "edits", "min cos", "max|diff|", "ok")
        rows = [(c.path, c.tower, c.precision, "; ".join(c.edits) or "-", f"{c.min_cosine:.7f}",
                 f"{c.max_abs_diff:.2e}", "yes" if c.ok else "NO") for c in self.checks]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
                         for row in [header, *rows])

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "bundle": str(self.bundle),
            "destination": str(self.destination),
            "files": self.files,
            "checks": [dict(c.__dict__, ok=c.ok) for c in self.checks],
            "seconds": round(self.seconds, 2),
        }


def require_onnx() -> None:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise MissingDependencyError("altclip-onnx convert", "convert", "onnx missing")


def convert_bundle(
    bundle: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    client: str,
    *,
    precisions: Sequence[str] | None = None,
    overwrite: bool = False,
    check: bool = True,
    progress: Callable[[str], None] = lambda step: None,
) -> ConvertReport:
    """Write ``client``'s layout of ``bundle`` (a folder or ``hf://OWNER/REPO``) to ``destination``."""
    from ..hub import locate_bundle

    require_onnx()
    started = time.perf_counter()
    target = Path(destination)
    refuse_non_empty(target, overwrite)  # before any download or work
    folder = locate_bundle(bundle)
    manifest = read_manifest(folder)
    layout = plan(client, manifest, precisions)
    if target.resolve() == folder.resolve() or folder.resolve() in target.resolve().parents:
        raise ExportError(f"{target}: is the bundle or inside it; write the {client} layout somewhere else")
    sources = [f for g in layout.graphs for f in manifest.towers[g.tower][g.precision].files]
    progress(f"checking the bundle's files against its manifest ({len(sources) + 1} files)")
    verify_files(folder, manifest, [*sources, TOKENIZER])
    report = ConvertReport(client, folder, target)
    with staging_folder(target, overwrite) as staging:
        for graph in layout.graphs:
            progress(f"writing {graph.path} ({graph.tower} {graph.precision})")
            source = folder / manifest.towers[graph.tower][graph.precision].path
            save_edited(source, staging / graph.path, graph.edits, graph.weight_names)
        for relpath, data in layout.configs.items():
            write_json(staging / relpath, data)
        for relpath, original in layout.copies.items():
            (staging / relpath).parent.mkdir(parents=True, exist_ok=True)
            (staging / relpath).write_bytes((folder / original).read_bytes())
        report.files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        if check:
            for graph in layout.graphs:
                progress(f"checking {graph.path} against the bundle's {graph.tower} {graph.precision} graph")
                report.checks.append(check_graph(folder, manifest, staging, graph))
            bad = [c for c in report.checks if not c.ok]
            if bad:
                raise ExportError(f"{bad[0].path}: min cosine {bad[0].min_cosine:.7f} to the bundle's graph "
                                  f"(needs {MIN_COSINE}); nothing was written")
    report.seconds = time.perf_counter() - started
    return report


def check_inputs(manifest: Manifest, folder: Path, tower: str) -> list[dict[str, np.ndarray]]:
    """Inputs for the bundle's graph of ``tower``, in our names and dtypes (one batch per entry)."""
    if tower == VISUAL:
        size = manifest.image.size
        rng = np.random.default_rng(0)
        return [{PIXEL_VALUES: rng.standard_normal((CHECK_IMAGES, 3, size, size)).astype(np.float32)}]
    from ..runtime.text import load_tokenizer, tokenize

    tokenizer = load_tokenizer(folder / TOKENIZER, manifest.text)
    return [tokenize(tokenizer, [text]) for text in CHECK_TEXTS]


def padded(ours: dict[str, np.ndarray], graph: GraphFile, pad_id: int) -> dict[str, np.ndarray]:
    """Our inputs padded to the length the client pads to (``Feed.pad_to``), still in our names and dtypes."""
    length = graph.feed.pad_to
    if length is None or INPUT_IDS not in ours or ours[INPUT_IDS].shape[1] >= length:
        return ours
    extra = length - ours[INPUT_IDS].shape[1]
    return {name: np.pad(array, ((0, 0), (0, extra)), constant_values=pad_id if name == INPUT_IDS else 0)
            for name, array in ours.items()}


def client_inputs(ours: dict[str, np.ndarray], graph: GraphFile) -> dict[str, np.ndarray]:
    """The same arrays as the client feeds them: its input names and its integer dtype."""
    return {client_name: array.astype(graph.feed.int_dtype) if array.dtype.kind == "i" else array
            for (name, array), client_name in zip(ours.items(), graph.feed.inputs)}


def check_graph(folder: Path, manifest: Manifest, staging: Path, graph: GraphFile) -> GraphCheck:
    """Run the written graph as its client feeds it, and the bundle's graph on the same inputs.

    Both get the same values (padded as the client pads), so any difference comes from the edits alone.
    """
    from ..runtime.providers import make_session

    inputs = [padded(batch, graph, manifest.text.pad_id) for batch in check_inputs(manifest, folder, graph.tower)]
    original = make_session(folder / manifest.towers[graph.tower][graph.precision].path, provider="cpu")
    ours_output = tower_output(graph.tower, normalized=graph.feed.normalized)
    want = np.concatenate([original.run([ours_output], batch)[0] for batch in inputs])
    del original
    converted = make_session(staging / graph.path, provider="cpu")
    got = np.concatenate([converted.run([graph.feed.output], client_inputs(batch, graph))[0] for batch in inputs])
    del converted
    want, got = want.astype(np.float64), got.astype(np.float64)
    cosines = np.sum(want * got, axis=1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1) + 1e-30)
    return GraphCheck(graph.path, graph.tower, graph.precision, graph.edits.describe(),
                      float(cosines.min()), float(np.abs(want - got).max()))


