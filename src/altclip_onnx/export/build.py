"""One build step: source -> verified bundle. It composes sources, towers and verify.

The bundle is assembled in a temporary folder beside the output and renamed into place only
after it verified, so a failed or interrupted export never leaves a half-written bundle.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..bundle import (DEFAULT_OPSET, MANIFEST, PREPROCESSOR, TEXTUAL, TOKENIZER, TOWERS, VISUAL, Manifest, TextSpec,
                      Variant, file_entry)
from ..errors import InputError
from ..files import ensure_writable_folder, refuse_non_empty, staging_folder, write_json
from ..precisions import EXPORTED_BY_DEFAULT, parse_precisions
from . import towers as tower_export
from .sources import LoadedModel, load_model, resolve_source
from .variants import make_variants
from ..verification import VerifyReport, check_bundle, raise_if_failed, write_report
from ..verification.reference import write_reference
from .verify import build_reference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    """How ``export`` runs; its defaults are the command's, and it refuses values that cannot work
    (:class:`InputError`)."""

    opset: int = DEFAULT_OPSET
    max_length: int = TextSpec.max_length  # default text truncation stored in the manifest
    verify: bool = True
    overwrite: bool = False
    random_init: bool = False
    seed: int = 0
    cache_dir: str | None = None
    precisions: tuple[str, ...] = EXPORTED_BY_DEFAULT  # fp32 is always written: it is the reference variant
    optimize: bool = True  # fuse with onnxruntime's transformer optimizer; False gives the plain export

    OPSETS = range(14, 22)  # the opsets export accepts

    def __post_init__(self) -> None:
        if self.opset not in self.OPSETS:
            raise InputError(f"opset must be {self.OPSETS.start}..{self.OPSETS.stop - 1}, not {self.opset}")
        if not 3 <= self.max_length <= TextSpec.model_max_length:
            raise InputError(f"max_length must be 3..{TextSpec.model_max_length} (the text tower takes up to "
                             f"{TextSpec.model_max_length} tokens), not {self.max_length}")
        parse_precisions(self.precisions)  # unknown names: InputError


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    report: VerifyReport | None
    seconds: float
    notes: list[str]

    def summary(self) -> str:
        size = sum(entry.size for entry in self.manifest.files.values())
        return (f"wrote {self.bundle} ({size / 1e6:.1f} MB, {self.manifest.embedding_dim}-d embeddings) "
                f"in {self.seconds:.1f}s")


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
    precisions = parse_precisions(("fp32", *options.precisions))  # fp32 always: it is the reference variant
    refuse_non_empty(output, options.overwrite)  # before a download or a minute of loading, not after
    ensure_writable_folder(output.absolute().parent, "bundle")
    progress("resolving the model")
    resolved = resolve_source(source, random_init=options.random_init, seed=options.seed, cache_dir=options.cache_dir)
    progress(f"loading {resolved.name} ({resolved.kind})")
    loaded = load_model(resolved, max_length=options.max_length)
    with staging_folder(output, overwrite=options.overwrite) as stage:
        (stage / TOKENIZER).parent.mkdir(parents=True, exist_ok=True)
        (stage / TOKENIZER).write_text(loaded.tokenizer_json, encoding="utf-8")
        write_json(stage / PREPROCESSOR, loaded.image.preprocessor_config())
        reference_files: list[str] = []
        if options.verify:
            # Before export: the exporter may change the model it traces (see towers.export_tower). Stored in
            # the bundle, so any machine can verify it without torch.
            progress("computing the PyTorch reference")
            reference = build_reference(loaded.model, loaded.tokenizer_json,
                                        make_manifest(loaded, options, towers={}, files={}))
            reference_files = write_reference(stage, reference)
        manifest = write_graphs(loaded, stage, precisions, options, progress, reference_files)
        report = None
        if options.verify:
            report = check_bundle(stage, reference, manifest=manifest, progress=progress)
            write_report(stage, report)
            raise_if_failed(report, output)
            manifest = record_accuracy(stage, manifest, report)
    return ExportResult(output, manifest, report, time.perf_counter() - started, loaded.notes)


def write_graphs(loaded: LoadedModel, stage: Path, precisions: tuple[str, ...], options: ExportOptions,
                 progress: Callable[[str], None], reference_files: list[str]) -> Manifest:
    """Export both towers into ``stage`` with every requested precision; checksum; write the manifest.

    Memory: the PyTorch model is released once both raw graphs exist, and every graph transformation
    runs in a fresh process (``graphs.isolated``), because onnx and onnxruntime's tools hold several
    copies of the text tower at their peak and Python does not return that memory to the system.
    """
    import tempfile

    from .graphs import count_ops

    stage = stage.resolve()  # the graph steps resolve their paths; relative_to below needs both absolute
    shapes = {
        tower: (int(config.num_attention_heads), int(config.hidden_size))
        for tower, config in ((VISUAL, loaded.model.config.vision_config), (TEXTUAL, loaded.model.config.text_config))
    }
    variants: dict[str, dict[str, Variant]] = {}
    with tempfile.TemporaryDirectory(prefix=".raw-", dir=stage) as raw_dir:
        raw = {}
        for tower in TOWERS:
            progress(f"exporting the {tower} tower")
            raw[tower] = tower_export.export_tower(loaded.model, tower, Path(raw_dir) / tower / "model.onnx",
                                                   opset=options.opset)
        loaded.model = None  # the reference outputs are already computed; free the weights before the next steps
        release_memory()
        for tower in TOWERS:
            heads, hidden = shapes[tower]
            written = make_variants(raw[tower], tower, precisions, stage / tower, Path(raw_dir) / tower,
                                    num_heads=heads, hidden_size=hidden, optimize=options.optimize, progress=progress)
            variants[tower] = {}
            for precision, files in written.items():
                rel = [f.resolve().relative_to(stage).as_posix() for f in files]
                variants[tower][precision] = Variant(precision, rel[0], tuple(rel), fused_ops=count_ops(files[0]))
    progress("checksumming")
    files = {rel: file_entry(stage, rel) for rel in [*bundle_files(variants), *reference_files]}
    manifest = dataclasses.replace(make_manifest(loaded, options, towers=variants, files=files),
                                   reference=tuple(reference_files))
    write_json(stage / MANIFEST, manifest.to_json())
    return manifest


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc keeps them otherwise)."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass


def record_accuracy(stage: Path, manifest: Manifest, report: VerifyReport) -> Manifest:
    """Store the accuracy verify measured in each variant's manifest entry."""
    agreement = report.extra.get("zero_shot_agreement", {})
    towers = {
        tower: {
            precision: dataclasses.replace(
                variant,
                accuracy={**report.summary(tower, precision),
                          **({"zero_shot_top1_agreement": agreement[precision]} if precision in agreement else {})},
            )
            for precision, variant in by_precision.items()
        }
        for tower, by_precision in manifest.towers.items()
    }
    manifest = dataclasses.replace(manifest, towers=towers)
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
