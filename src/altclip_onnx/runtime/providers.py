"""Choosing onnxruntime execution providers and making sessions.

Provider choice is a pure function of what onnxruntime reports as available and what the user
asked for, so it is tested with fake lists and no hardware. onnxruntime is imported only inside
the functions that need it. Nothing here reads environment variables: the CLI does that and
passes the values in.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BundleError, InputError
from ..precisions import AUTO, CPU, OPENVINO_RUNTIME, OPENVINO_RUNTIME_BF16, OPENVINO_RUNTIMES

if TYPE_CHECKING:
    import onnxruntime

    from .openvino_runtime import OpenVINOSession

logger = logging.getLogger(__name__)

#: Best first. "auto" keeps the available ones in this order; CPU is always the last fallback.
PREFERENCE: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "DmlExecutionProvider",
    CPU,
)

#: Short, case-insensitive names users may type instead of the full provider name.
SHORT_NAMES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "cpu": CPU,
    "openvino-runtime": OPENVINO_RUNTIME,
    "openvino-runtime-bf16": OPENVINO_RUNTIME_BF16,
}

# --------------------------------------------------------------------------- provider choice


def resolve_provider_name(name: str) -> str:
    """Map a short name (``cuda``, any case) or a full provider name to the full name.

    Full names of the providers in ``PREFERENCE`` are matched case-insensitively; any other name
    ending in ``ExecutionProvider`` (ROCm, QNN, ...) is passed through for ``choose_providers`` to
    check against what onnxruntime reports.
    """
    cleaned = name.strip()
    lowered = cleaned.lower()
    if lowered in SHORT_NAMES:
        return SHORT_NAMES[lowered]
    for full in (*PREFERENCE, *OPENVINO_RUNTIMES):
        if lowered == full.lower():
            return full
    if cleaned.endswith("ExecutionProvider") and len(cleaned) > len("ExecutionProvider"):
        return cleaned
    known = ", ".join((AUTO, *SHORT_NAMES))
    raise InputError(
        f"unknown provider {name!r}; use one of: {known} "
        "(or a full onnxruntime provider name such as CUDAExecutionProvider)"
    )


def openvino_runtime_available() -> bool:
    """Whether OpenVINO's own runtime (the ``[openvino]`` extra) can be imported here."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


@functools.lru_cache(maxsize=1)
def openvino_bf16_available() -> bool:
    """Whether OpenVINO's CPU device computes in bf16 here (it says so among its capabilities; elsewhere its
    bf16 hint would quietly compute in f32, the same as ``openvino-runtime``)."""
    if not openvino_runtime_available():
        return False
    import openvino

    try:
        return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001  (no CPU device, or a build without the property: then no bf16)
        return False


def available_providers() -> list[str]:
    """What can run a graph here: onnxruntime's providers (those this project knows, best first), then
    OpenVINO's own runtime when it is installed, and with its bf16 hint where the CPU computes in bf16."""
    import onnxruntime

    present = onnxruntime.get_available_providers()
    known = [p for p in PREFERENCE if p in present]
    if not openvino_runtime_available():
        return known
    return [*known, OPENVINO_RUNTIME, *([OPENVINO_RUNTIME_BF16] if openvino_bf16_available() else [])]


def choose_providers(available: Sequence[str], requested: str | None = None) -> list[str]:
    """The providers to hand onnxruntime, best first, always ending with the CPU fallback.

    ``requested`` None or ``"auto"``: the available providers in ``PREFERENCE`` order.
    Otherwise the requested provider (short or full name) then CPU; it must be available.
    ``openvino-runtime`` (OpenVINO's own runtime, not an onnxruntime provider) stands alone: ``[OpenVINORuntime]``;
    so does ``openvino-runtime-bf16`` (the same with its bf16 hint, on CPUs with bf16 instructions).
    """
    if requested is None or requested.strip().lower() == AUTO:
        chosen = [p for p in PREFERENCE if p in available and p != CPU]
        return [*chosen, CPU]
    provider = resolve_provider_name(requested)
    if provider in OPENVINO_RUNTIMES:
        short = next(name for name, full in SHORT_NAMES.items() if full == provider)
        if not openvino_runtime_available():
            raise InputError(f"provider {short} needs OpenVINO's runtime: pip install 'altclip-onnx[openvino]'")
        if provider == OPENVINO_RUNTIME_BF16 and not openvino_bf16_available():
            raise InputError(f"provider {short}: OpenVINO computes in bf16 only on CPUs with bf16 instructions "
                             "(AMX-BF16, AVX-512 BF16), which this one lacks; use openvino-runtime")
        return [provider]
    if provider not in available:
        listed = ", ".join(available) or "none"
        raise InputError(
            f"provider {provider} is not available in this onnxruntime (available: {listed}); "
            "run 'altclip-onnx doctor' to see how to install it"
        )
    return [provider] if provider == CPU else [provider, CPU]


def provider_options(provider: str, threads: int | None) -> dict[str, str]:
    """Options for one provider, deliberately few; onnxruntime's defaults are used otherwise.

    - OpenVINO: ``device_type=CPU`` (the Intel-CPU case ``doctor`` recommends it for) and
      ``precision=FP32`` (onnxruntime's docs map it to OpenVINO's INFERENCE_PRECISION_HINT=f32)
      so CPUs with bf16 support do not quietly run in lower precision and drift from the
      PyTorch reference (not verified on such hardware here); ``num_of_threads`` when
      ``threads`` is given, because OpenVINO keeps its own thread pool (documented default 8).
      These keys are accepted by every onnxruntime-openvino release this project supports;
      since 1.23 they are marked deprecated in favour of ``load_config``, whose value changed
      meaning (file path, then JSON string) between releases, so it is not used here.
    - Everything else (CUDA, TensorRT, CoreML, DirectML, CPU): no options. CPU threads are set
      in ``session_options``.
    """
    if provider == "OpenVINOExecutionProvider":
        options = {"device_type": "CPU", "precision": "FP32"}
        if threads:
            options["num_of_threads"] = str(threads)
        return options
    return {}


def session_options(threads: int | None, *, spinning: bool = True) -> onnxruntime.SessionOptions:
    """Session options: ``threads`` intra-op threads (None or 0: onnxruntime's default, one per
    physical core) and every graph optimization, applied at load time and never saved.

    ``spinning=False`` stops idle worker threads from busy-waiting after each run: needed when several
    sessions (or PyTorch) take turns in one process, as in benchmarks, or they steal each other's cores."""
    import onnxruntime

    valid = threads is None or (type(threads) is int and threads >= 0)
    if not valid:
        raise InputError(f"threads must be a whole number >= 0 (0: automatic), got {threads!r}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are about its internals, not the user's input
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(
    model_path: str | Path,
    *,
    provider: str | None = None,
    threads: int | None = None,
    spinning: bool = True,
) -> onnxruntime.InferenceSession | OpenVINOSession:
    """Load ``model_path`` with the chosen providers (``provider`` None means ``"auto"``); with
    ``openvino-runtime``, compile it with OpenVINO's own runtime behind the same ``run`` interface.

    Raises ``InputError`` for an unknown or unavailable provider and ``BundleError`` (one line
    naming the file) when onnxruntime cannot load the model.
    """
    import onnxruntime

    path = Path(model_path)
    providers = choose_providers(onnxruntime.get_available_providers(), provider)
    if not path.is_file():
        raise BundleError(f"cannot load ONNX model {path}: the file does not exist")
    if providers[0] in OPENVINO_RUNTIMES:
        from .openvino_runtime import OpenVINOSession

        return OpenVINOSession(path, threads=threads, bf16=providers[0] == OPENVINO_RUNTIME_BF16)
    options = session_options(threads, spinning=spinning)
    if "DmlExecutionProvider" in providers:
        # DirectML supports neither memory patterns nor parallel execution.
        options.enable_mem_pattern = False
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = onnxruntime.InferenceSession(
            str(path),
            sess_options=options,
            providers=providers,
            provider_options=[provider_options(p, threads) for p in providers],
        )
    except Exception as error:  # onnxruntime's exception classes live in a private module
        detail = _describe_load_error(error)
        raise BundleError(f"cannot load ONNX model {path}: {detail}") from error
    used = session.get_providers()
    if used and used[0] != providers[0]:
        logger.warning(
            "%s: asked for %s but onnxruntime uses %s", path, providers[0], ", ".join(used)
        )
    logger.debug("%s: providers %s", path, ", ".join(used))
    return session


def _describe_load_error(error: Exception) -> str:
    text = " ".join(str(error).split())
    missing = re.search(r'External data path does not exist: "?([^"]+)"?', text)
    if missing:
        return f"its external weights file {missing.group(1)} is missing (keep it beside the model)"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    if "Protobuf parsing failed" in text:
        return "the file is not a valid ONNX model (corrupt or truncated?)"
    return text or type(error).__name__
