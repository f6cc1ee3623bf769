"""The precision variants of a tower, declared once: name, file name, what it is for, its accuracy gate,
and the execution providers on which ``precision="auto"`` picks it.

Both halves read this: export writes and verifies each variant against its gate, the runtime picks
one, the CLI offers the names. How each variant is *made* (which graph, which transformation) is the
export half's business: :mod:`altclip_onnx.export.variants`. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InputError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
#: OpenVINO's own runtime (the ``[openvino]`` extra), used in place of onnxruntime; not an onnxruntime provider.
OPENVINO_RUNTIME = "OpenVINORuntime"
#: The same with OpenVINO's bf16 inference hint: on CPUs with bf16 instructions (AMX-BF16, AVX-512 BF16) the
#: float parts of a graph are computed in bf16.
OPENVINO_RUNTIME_BF16 = "OpenVINORuntimeBF16"
OPENVINO_RUNTIMES = (OPENVINO_RUNTIME, OPENVINO_RUNTIME_BF16)

#: Every variant must give the same vector for an input alone and inside any batch (cosine, per row).
BATCH_INVARIANCE_MIN_COSINE = 0.99999


@dataclass(frozen=True)
class Gate:
    """What a variant must reach against the PyTorch fp32 reference, or the export fails.

    ``max_abs_rel``: max |diff| <= max_abs_rel * max(1, max |reference|). ``min_cosine`` / ``mean_cosine``:
    per row, over every verification case. ``zero_shot_agreement``: top-1 agreement with the reference over
    the images where the reference is confident, gated only on at least ``zero_shot_min_cases`` of them and
    failed only by more disagreements than chance allows at ``zero_shot_significance`` (see
    :mod:`altclip_onnx.verification.check`).
    """

    max_abs_rel: float | None = None
    min_cosine: float | None = None
    mean_cosine: float | None = None
    zero_shot_agreement: float | None = None
    batch_invariance: float = BATCH_INVARIANCE_MIN_COSINE
    zero_shot_min_cases: int = 30
    zero_shot_significance: float = 0.05


@dataclass(frozen=True)
class Precision:
    name: str
    filename: str  # of the tower's graph inside visual/ or textual/
    purpose: str
    gate: Gate
    auto_on: tuple[str, ...] = ()  # providers on which "auto" prefers this variant when the bundle has it


FP32 = Precision("fp32", "model.onnx", "the reference", Gate(max_abs_rel=1e-4, min_cosine=0.99999))
INT8 = Precision(
    "int8", "model.int8.onnx", "CPUs",
    Gate(min_cosine=0.98, mean_cosine=0.995, zero_shot_agreement=0.98), auto_on=(CPU,),
)
FP16 = Precision(
    "fp16", "model.fp16.onnx", "GPUs",
    Gate(min_cosine=0.9995, zero_shot_agreement=0.98), auto_on=(CUDA, TENSORRT),
)

#: In the order bundles list them; fp32 first (every bundle has it: it is the reference).
PRECISIONS: dict[str, Precision] = {p.name: p for p in (FP32, INT8, FP16)}
PRECISION_NAMES: tuple[str, ...] = tuple(PRECISIONS)
#: transformers.js' name for each precision's graph (its ``dtype`` option; its "q8" file is our int8 graph).
TRANSFORMERS_JS_DTYPES: dict[str, str] = {"fp32": "fp32", "int8": "q8", "fp16": "fp16"}
#: What export writes unless told otherwise: the reference and the variant for CPUs.
EXPORTED_BY_DEFAULT: tuple[str, ...] = (FP32.name, INT8.name)
#: Left to the program: a precision (:func:`auto_order`), the providers (:mod:`altclip_onnx.runtime.providers`),
#: a Ray cluster (:mod:`altclip_onnx.distributed`).
AUTO = "auto"


def gate_for(name: str, provider: str | None = None) -> Gate:
    """The gate variant ``name`` must pass where ``provider`` runs it: the variant's own, except that the fp32
    graph computed in bf16 (:data:`OPENVINO_RUNTIME_BF16`) is held to the gate of fp16, the other 16-bit float
    variant, since it cannot match fp32's."""
    if provider == OPENVINO_RUNTIME_BF16 and name == FP32.name:
        return FP16.gate
    return PRECISIONS[name].gate


def precision(name: str) -> Precision:
    """The declaration of ``name``, or :class:`InputError` listing the known ones."""
    try:
        return PRECISIONS[name]
    except KeyError as exc:
        raise InputError(f"unknown precision {name!r}: choose from {', '.join(PRECISION_NAMES)}") from exc


def parse_precisions(values: str | Iterable[str], *, option: str = "--precision") -> tuple[str, ...]:
    """Precision names from ``"fp32,int8"``, ``["fp32", "int8,fp16"]`` or the like, in the canonical order.

    The one syntax every command accepts for several precisions: comma-separated, repeatable, any case.
    """
    parts = [values] if isinstance(values, str) else list(values)
    wanted = [name.strip().lower() for part in parts for name in part.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in PRECISIONS]
    if unknown:
        raise InputError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(PRECISION_NAMES)}")
    return tuple(name for name in PRECISION_NAMES if name in wanted)


def auto_order(provider: str) -> tuple[str, ...]:
    """The precisions "auto" tries on ``provider``, best first; fp32 always comes last."""
    return (*(p.name for p in PRECISIONS.values() if provider in p.auto_on), FP32.name)
