"""One build step: source -> verified bundle. It composes sources, towers and verify.

The bundle is assembled in a temporary folder beside the output and renamed into place only
after it verified, so a failed or interrupted export never leaves a half-written bundle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..bundle import (
    MANIFEST,
    PREPROCESSOR,
    TEXTUAL,
    TOKENIZER,
    TOWERS,
    VISUAL,
    Manifest,
    Variant,
    file_entry,
    staging_folder,
    write_json,
)
from . import towers as tower_export
from .sources import LoadedModel, load_model, resolve_source
from .verify import VerifyReport, check_bundle, raise_if_failed, reference_outputs, verification_cases, write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    opset: int = tower_export.DEFAULT_OPSET
    max_length: int = 77  # default text truncation stored in the manifest (the tower takes up to 512)
    verify: bool = True
    overwrite: bool = False
    random_init: bool = False
    seed: int = 0
    cache_dir: str | None = None


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    report: VerifyReport | None
    seconds: float
    notes: list[str]


def tool_versions() -> dict[str, str]:
    versions = {}
    for dist in ("altclip-onnx", "torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def export_bundle(
    source: str | None,
    output: str | Path,
    options: ExportOptions = ExportOptions(),
    *,
    progress: Callable[[str], None] = lambda step: None,
) -> ExportResult:
    """Export ``source`` (Hub id, short name, local folder) to a verified bundle at ``output``."""
    started = time.perf_counter()
    output = Path(output)
    progress("resolving the model")
    resolved = resolve_source(source, random_init=options.random_init, seed=options.seed, cache_dir=options.cache_dir)
    progress(f"loading {resolved.name} ({resolved.kind})")
    loaded = load_model(resolved, max_length=options.max_length)
    with staging_folder(output, overwrite=options.overwrite) as stage:
        (stage / TOKENIZER).parent.mkdir(parents=True, exist_ok=True)
        (stage / TOKENIZER).write_text(loaded.tokenizer_json, encoding="utf-8")
        write_json(stage / PREPROCESSOR, loaded.image.preprocessor_config())
        if options.verify:
            # Before export: the exporter may change the model it traces (see towers.export_tower).
            progress("computing the PyTorch reference")
            cases = verification_cases(loaded.tokenizer_json, make_manifest(loaded, options, towers={}, files={}))
            reference = reference_outputs(loaded.model, cases)
        manifest = write_graphs(loaded, stage, options, progress)
        report = None
        if options.verify:
            progress("verifying against PyTorch")
            report = check_bundle(stage, reference, cases, manifest=manifest)
            write_report(stage, report)
            raise_if_failed(report, output)
    return ExportResult(output, manifest, report, time.perf_counter() - started, loaded.notes)


def write_graphs(loaded: LoadedModel, stage: Path, options: ExportOptions, progress: Callable[[str], None]) -> Manifest:
    """Export both towers into ``stage``, then checksum everything and write the manifest."""
    variants: dict[str, dict[str, Variant]] = {}
    for tower in TOWERS:
        progress(f"exporting the {tower} tower")
        files = tower_export.export_tower(loaded.model, tower, stage / tower / "model.onnx", opset=options.opset)
        rel = [f.relative_to(stage).as_posix() for f in files]
        variants[tower] = {"fp32": Variant("fp32", rel[0], tuple(rel))}
    progress("checksumming")
    files = {rel: file_entry(stage, rel) for rel in bundle_files(variants)}
    manifest = make_manifest(loaded, options, towers=variants, files=files)
    write_json(stage / MANIFEST, manifest.to_json())
    return manifest


def bundle_files(variants: dict[str, dict[str, Variant]]) -> list[str]:
    files = [TOKENIZER, PREPROCESSOR]
    for by_precision in variants.values():
        for variant in by_precision.values():
            files += list(variant.files)
    return files


def make_manifest(loaded: LoadedModel, options: ExportOptions, *, towers, files) -> Manifest:  # type: ignore[no-untyped-def]
    return Manifest(
        source=loaded.source.describe(),
        variant=loaded.source.variant,
        embedding_dim=loaded.embedding_dim,
        logit_scale=loaded.logit_scale,
        image=loaded.image,
        text=loaded.text,
        opset=options.opset,
        towers=towers or {VISUAL: {}, TEXTUAL: {}},
        files=files,
        exported_with=tool_versions(),
    )
