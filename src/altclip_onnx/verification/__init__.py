"""Verification: a bundle's graphs against PyTorch's outputs, on any machine, provider and precision.

- :mod:`.reference`: the verification cases and PyTorch's outputs, as a bundle carries them.
- :mod:`.check`: running the cases, the gates, the report.
- :mod:`.selfcheck`: the first-use check ``Encoder`` runs once per variant, provider and machine.

:func:`verify_bundle` is ``altclip-onnx verify BUNDLE`` without torch: the stored reference, the same gates as
export. Export computes the reference itself and calls :func:`check_bundle` with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import (TEXTUAL, TOKENIZER, TOWER_INPUTS, TOWER_OUTPUTS, TOWERS, VERIFY_REPORT, Manifest, read_manifest,
                      verify_files)
from ..errors import AltclipOnnxError, VerificationError
from ..files import write_json
from ..precisions import FP32, PRECISION_NAMES
from .check import VerifyReport, check_precision, input_sensitivity
from .reference import StoredReference, read_reference
from .selfcheck import describe_where, record, verdict_key, where

log = logging.getLogger(__name__)

__all__ = ["VerifyReport", "StoredReference", "check_bundle", "verify_bundle", "raise_if_failed", "write_report"]


def signature_problems(session: Any, path: Path, tower: str) -> list[str]:
    """The graph's input and output names against the bundle contract (as onnxruntime loaded them)."""
    problems = []
    for kind, got, expected in (("input", session.get_inputs(), TOWER_INPUTS[tower]),
                                ("output", session.get_outputs(), TOWER_OUTPUTS[tower])):
        names = [value.name for value in got]
        if names != list(expected):
            problems.append(f"{path}: {kind}s are {names}, expected {list(expected)}")
    return problems


def tokenizer_problems(bundle: Path, manifest: Manifest, reference: StoredReference) -> list[str]:
    """The bundle's tokenizer, as this machine's tokenizers library runs it, against the ids stored at export."""
    from ..runtime.text import load_tokenizer, tokenize

    problems = []
    for case in reference.cases:
        if case.tower != TEXTUAL:
            continue
        tokenizer = load_tokenizer(bundle / TOKENIZER, manifest.text, case.max_length)
        ids = tokenize(tokenizer, list(case.texts))
        for name, stored in case.inputs.items():
            if ids[name].shape != stored.shape or not np.array_equal(ids[name], stored):
                problems.append(f"tokenizer: {case.name}: {name} differ from the ids stored at export "
                                "(another tokenizers version?); report it with both versions")
                break
    return problems


def check_bundle(
    bundle: Path,
    reference: StoredReference,
    *,
    manifest: Manifest | None = None,
    precisions: Sequence[str] | None = None,
    provider: str | None = "cpu",
    threads: int | None = None,
    record_passes: bool = True,
    progress: Callable[[str], None] = lambda step: None,
) -> VerifyReport:
    """Run every requested precision of the bundle on the reference's cases with ``provider``; gate each.

    ``record_passes``: record passing combinations as the first-use check would (:mod:`.selfcheck`); only
    for the bundle's own stored reference, the one that check runs.
    """
    from ..runtime.encoder import Encoder  # the one session wrapper (it imports this package)

    folder = Path(bundle)
    manifest = manifest or read_manifest(folder)
    report = VerifyReport()
    wanted = list(precisions or sorted({p for t in TOWERS for p in manifest.precisions(t)}, key=PRECISION_NAMES.index))
    for precision in wanted:
        missing = [tower for tower in TOWERS if precision not in manifest.towers[tower]]
        if missing:
            report.failures.append(f"{', '.join(missing)}: the bundle has no {precision} variant")
    report.failures += tokenizer_problems(folder, manifest, reference)
    if report.failures:
        return report
    agreement, invariance, places = {}, {}, {}
    for precision in wanted:
        progress(f"running the {precision} graphs on {len(reference.cases)} cases, and batched inputs alone")
        encoder = Encoder(folder, provider=provider, precision=precision, threads=threads, check_files=False,
                          self_check=False, spinning=False)
        sessions = {tower: encoder.session(tower) for tower in TOWERS}
        for tower, session in sessions.items():
            report.failures += signature_problems(session, folder / manifest.towers[tower][precision].path, tower)
            report.fused_ops.setdefault(tower, {})[precision] = dict(manifest.towers[tower][precision].fused_ops)
        report.provider = sessions[TOWERS[0]].get_providers()[0]
        rows, failures, invariance[precision], zero_shot = check_precision(
            reference, precision, sessions.__getitem__, logit_scale=manifest.logit_scale, provider=report.provider,
            pad_id=manifest.text.pad_id)
        report.rows += rows
        report.failures += failures
        if zero_shot is not None:
            agreement[precision] = zero_shot
        places[precision] = {tower: where(session.get_providers()[0]) for tower, session in sessions.items()}
        if record_passes and not failures:
            for tower, place in places[precision].items():
                record(folder, manifest, verdict_key(manifest, tower, precision, place),
                       {"tower": tower, "precision": precision, "where": place, "by": "verify",
                        "min_cosine": min(r.min_cosine for r in rows if r.tower == tower)})
        del sessions, encoder
    report.extra["max_cosine_between_inputs"] = input_sensitivity(reference)
    report.extra["zero_shot_agreement"] = agreement
    report.extra["batch_invariance"] = invariance
    first = next(iter(places.values()), {})
    report.extra["where"] = describe_where(next(iter(first.values()))) if first else ""
    return report


def verify_bundle(
    bundle: str | Path,
    *,
    provider: str | None = None,
    precisions: Sequence[str] | None = None,
    threads: int | None = None,
    images: str | os.PathLike[str] | None = None,
    texts: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> VerifyReport:
    """``altclip-onnx verify BUNDLE``: the stored reference on this machine, no torch; write verify.json when
    the bundle is writable; :class:`VerificationError` (exit 3) naming tower and precision on failure.

    ``images`` (a folder) and ``texts`` (a file, one per line): the user's own data too, with the bundle's
    fp32 graphs on this machine as their reference (see :mod:`.own_data`)."""
    folder = Path(bundle)
    manifest = read_manifest(folder)
    reference_files = list(manifest.reference)
    chosen = precisions or [p for p in PRECISION_NAMES if any(p in manifest.towers[t] for t in TOWERS)]
    files = [f for t in TOWERS for p in chosen if p in manifest.towers[t] for f in manifest.towers[t][p].files]
    verify_files(folder, manifest, [*reference_files, *files])  # numbers from corrupt files mean nothing
    reference = read_reference(folder, manifest)
    own = None
    if images is not None or texts is not None:  # read first: a typo in a path should not wait for the whole check
        from .own_data import fp32_reference, own_cases  # the runtime's pipeline imports Encoder, which imports this
        from ..runtime.encoder import Encoder

        cases, crops = own_cases(folder, manifest, images, texts)
        fp32 = Encoder(folder, provider=provider, precision=FP32.name, threads=threads, check_files=False,
                       self_check=False, spinning=False)
        sessions = {tower: fp32.session(tower) for tower in TOWERS}
        own = OwnData(fp32_reference(sessions, cases, crops, manifest.text.pad_id),
                      [p for p in chosen if p != FP32.name], "the bundle's fp32 graphs on this machine")
    return check_and_report(folder, reference, own, manifest=manifest, precisions=precisions, provider=provider,
                            threads=threads, progress=progress)


@dataclass
class OwnData:
    """The user's own cases, the reference they are held against, and at which precisions."""

    reference: StoredReference
    precisions: Sequence[str] | None
    against: str


def check_and_report(folder: Path, reference: StoredReference, own: OwnData | None, *, manifest: Manifest,
                     precisions: Sequence[str] | None, provider: str | None, threads: int | None,
                     progress: Callable[[str], None]) -> VerifyReport:
    """The stored (or fresh) reference, then the user's own data once that passed; verify.json; exit 3."""
    report = check_bundle(folder, reference, manifest=manifest, precisions=precisions, provider=provider,
                          threads=threads, progress=progress)
    if own is not None and report.passed and own.precisions != []:
        progress(f"your data: {len(own.reference.cases)} cases against {own.against}")
        checked = check_bundle(folder, own.reference, manifest=manifest, precisions=own.precisions,
                               provider=provider, threads=threads, record_passes=False, progress=progress)
        report.rows += checked.rows
        report.failures += checked.failures
        report.extra["your_data"] = {"reference": f"{len(own.reference.cases)} cases against {own.against}",
                                     "batch_invariance": checked.extra.get("batch_invariance", {})}
    write_report(folder, report)
    raise_if_failed(report, folder)
    return report


def write_report(bundle: Path, report: VerifyReport) -> None:
    """verify.json beside the manifest; a read-only bundle keeps its old one (the report is printed anyway)."""
    try:
        write_json(bundle / VERIFY_REPORT, report.to_json())
    except AltclipOnnxError as exc:
        log.info("%s: report not written (%s)", bundle / VERIFY_REPORT, exc)


def raise_if_failed(report: VerifyReport, bundle: Path) -> None:
    if not report.passed:
        first = report.failures[0]
        more = f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        raise VerificationError(f"{bundle}: ONNX does not match PyTorch: {first}{more}", report)
