"""Choosing onnxruntime execution providers, making sessions, and diagnosing the install.

Provider choice is a pure function of what onnxruntime reports as available and what the user
asked for, so it is tested with fake lists and no hardware. onnxruntime is imported only inside
the functions that need it. Nothing here reads environment variables: the CLI does that and
passes the values in.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from altclip_onnx.errors import BundleError, InputError

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"

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
}

#: pip distributions that all install the same ``onnxruntime`` module (and overwrite each other).
FLAVOURS: tuple[str, ...] = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-silicon",
    "onnxruntime-training",
)

_AUTO = "auto"
_UNKNOWN = "unknown"


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
    for full in PREFERENCE:
        if lowered == full.lower():
            return full
    if cleaned.endswith("ExecutionProvider") and len(cleaned) > len("ExecutionProvider"):
        return cleaned
    known = ", ".join((_AUTO, *SHORT_NAMES))
    raise InputError(
        f"unknown provider {name!r}; use one of: {known} "
        "(or a full onnxruntime provider name such as CUDAExecutionProvider)"
    )


def choose_providers(available: Sequence[str], requested: str | None = None) -> list[str]:
    """The providers to hand onnxruntime, best first, always ending with the CPU fallback.

    ``requested`` None or ``"auto"``: the available providers in ``PREFERENCE`` order.
    Otherwise the requested provider (short or full name) then CPU; it must be available.
    """
    if requested is None or requested.strip().lower() == _AUTO:
        chosen = [p for p in PREFERENCE if p in available and p != CPU]
        return [*chosen, CPU]
    provider = resolve_provider_name(requested)
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
) -> onnxruntime.InferenceSession:
    """Load ``model_path`` with the chosen providers (``provider`` None means ``"auto"``).

    Raises ``InputError`` for an unknown or unavailable provider and ``BundleError`` (one line
    naming the file) when onnxruntime cannot load the model.
    """
    import onnxruntime

    path = Path(model_path)
    providers = choose_providers(onnxruntime.get_available_providers(), provider)
    if not path.is_file():
        raise BundleError(f"cannot load ONNX model {path}: the file does not exist")
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
    return text[:300] or type(error).__name__


# --------------------------------------------------------------------------- doctor

_T = TypeVar("_T")


def _probe(what: str, fn: Callable[[], _T], default: _T) -> _T:
    """Run one platform probe; any failure gives ``default`` (doctor never crashes)."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - a probe may fail in any way on odd platforms
        logger.debug("doctor probe %s failed: %s", what, error)
        return default


def _read_cpuinfo() -> str:
    return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def parse_cpuinfo(text: str) -> tuple[str, str]:
    """(vendor, model) from Linux ``/proc/cpuinfo`` text; ``"unknown"`` for what is missing."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and value.strip() and key not in fields:
            fields[key] = value.strip()
    vendor = fields.get("vendor_id") or {"0x41": "ARM", "0x61": "Apple"}.get(
        fields.get("cpu implementer", ""), _UNKNOWN
    )
    model = fields.get("model name") or fields.get("hardware") or fields.get("model") or _UNKNOWN
    return vendor, model


def normalize_cpu_vendor(raw: str) -> str:
    """``GenuineIntel`` -> ``intel``, ``AuthenticAMD`` -> ``amd``; anything else lower-cased."""
    lowered = (raw or "").strip().lower()
    for name in ("intel", "amd", "apple", "arm"):
        if name in lowered:
            return name
    return lowered or _UNKNOWN


def _cpu(os_name: str) -> tuple[str, str]:
    vendor, model = _UNKNOWN, _UNKNOWN
    if os_name == "Linux":
        vendor, model = _probe("cpuinfo", lambda: parse_cpuinfo(_read_cpuinfo()), (vendor, model))
    elif os_name == "Darwin":
        brand = _probe("sysctl", lambda: _run("sysctl", "-n", "machdep.cpu.brand_string"), "")
        model = brand or model
    if model == _UNKNOWN:
        model = _probe("processor", platform.processor, "") or _UNKNOWN
    if vendor == _UNKNOWN:
        guessed = normalize_cpu_vendor(model)
        vendor = guessed if guessed in ("intel", "amd", "apple", "arm") else _UNKNOWN
    return vendor, model


def cpu_model() -> str:
    """This machine's CPU model name ("unknown" when no probe answers); never raises."""
    return _cpu(platform.system())[1]


def _has_nvidia() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


def _windows_gpus() -> list[str]:
    out = _run(
        "powershell", "-NoProfile", "-Command",
        "Get-CimInstance Win32_VideoController | Select-Object -ExpandProperty Name",
    )
    ignored = ("basic display", "basic render", "remote display", "virtual")
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return [name for name in names if not any(i in name.lower() for i in ignored)]


def _installed_flavours() -> dict[str, str]:
    found = {}
    for name in FLAVOURS:
        version = _probe(name, lambda n=name: importlib.metadata.version(n), None)
        if version:
            found[name] = version
    return found


def _onnxruntime_facts() -> tuple[str, list[str]]:
    import onnxruntime

    return onnxruntime.__version__, list(onnxruntime.get_available_providers())


def _recommend(
    os_name: str, machine: str, cpu_vendor: str, has_nvidia: bool, has_other_gpu: bool
) -> tuple[str, str]:
    """(flavour, reason). Precedence: macOS, NVIDIA, Intel CPU, other Windows GPU, plain."""
    system = (os_name or "").lower()
    arch = (machine or "").lower()
    vendor = normalize_cpu_vendor(cpu_vendor)
    x86 = arch in ("x86_64", "amd64", "x64")
    if system == "darwin":
        if arch in ("arm64", "aarch64"):
            return "onnxruntime", "Apple silicon: plain onnxruntime ships the CoreML provider"
        return "onnxruntime", "macOS: plain onnxruntime (CoreML provider included)"
    if has_nvidia and system in ("linux", "windows"):
        return "onnxruntime-gpu", "NVIDIA GPU: onnxruntime-gpu has the CUDA and TensorRT providers"
    if vendor == "intel" and x86 and system in ("linux", "windows"):
        return "onnxruntime-openvino", "Intel CPU: onnxruntime-openvino has the OpenVINO provider"
    if system == "windows" and has_other_gpu:
        return "onnxruntime-directml", "Windows, non-NVIDIA GPU: onnxruntime-directml has DirectML"
    return "onnxruntime", "no accelerator this project can use: the plain CPU build"


def recommend_flavour(
    os_name: str, machine: str, cpu_vendor: str, has_nvidia: bool, *, has_other_gpu: bool = False
) -> str:
    """The onnxruntime pip distribution to use on this kind of machine.

    ``os_name`` as ``platform.system()`` reports it, ``machine`` as ``platform.machine()``,
    ``cpu_vendor`` raw (``GenuineIntel``) or normalized (``intel``). ``has_other_gpu``: a
    non-NVIDIA GPU was found (only probed, and only used, on Windows for DirectML).
    """
    return _recommend(os_name, machine, cpu_vendor, has_nvidia, has_other_gpu)[0]


def _switch_commands(installed: Sequence[str], recommended: str) -> list[str]:
    if list(installed) == [recommended]:
        return []
    commands = [f"pip uninstall -y {' '.join(installed)}"] if installed else []
    return [*commands, f"pip install {recommended}"]


def doctor() -> dict[str, Any]:
    """What this machine has, which onnxruntime is installed, and which one it should use.

    Every probe falls back to ``"unknown"`` (or empty) on failure, on any platform.
    """
    os_name = _probe("system", platform.system, "") or _UNKNOWN
    machine = _probe("machine", platform.machine, "") or _UNKNOWN
    vendor, model = _cpu(os_name)
    gpus = _probe("windows gpus", _windows_gpus, []) if os_name == "Windows" else []
    has_nvidia = _probe("nvidia", _has_nvidia, False) or any("nvidia" in g.lower() for g in gpus)
    has_other_gpu = any("nvidia" not in g.lower() for g in gpus)
    apple_cpu = normalize_cpu_vendor(model) == "apple"
    apple_silicon = os_name == "Darwin" and (machine == "arm64" or apple_cpu)
    installed = _installed_flavours()
    ort_version, available = _probe("onnxruntime", _onnxruntime_facts, (_UNKNOWN, []))
    recommended, reason = _recommend(os_name, machine, vendor, has_nvidia, has_other_gpu)

    problems: list[str] = []
    notes: list[str] = []
    if len(installed) > 1:
        problems.append(
            f"{len(installed)} onnxruntime packages are installed ({', '.join(installed)}); they "
            "overwrite each other's files, so uninstall all of them and install one"
        )
    if ort_version == _UNKNOWN:
        problems.append("onnxruntime cannot be imported")
    elif not installed:
        notes.append("onnxruntime is importable but from no known pip package (conda? source?)")
    if os_name == "Darwin" and machine == "x86_64" and apple_silicon:
        problems.append("this Python runs under Rosetta (x86_64); use an arm64 Python instead")
    if "onnxruntime-silicon" in installed:
        notes.append("onnxruntime-silicon is an old third-party package; onnxruntime has CoreML")
    if "onnxruntime-training" in installed:
        notes.append("onnxruntime-training is meant for training, not for inference")
    if recommended == "onnxruntime-gpu":
        notes.append(
            "onnxruntime-gpu also needs NVIDIA's CUDA and cuDNN libraries, versions as listed at "
            "https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html"
        )
    if recommended == "onnxruntime-openvino" and os_name == "Windows":
        notes.append("on Windows, onnxruntime-openvino also needs: pip install openvino")

    return {
        "os": os_name,
        "os_release": _probe("release", platform.release, "") or _UNKNOWN,
        "machine": machine,
        "cpu_vendor": vendor,
        "cpu_model": model,
        "has_nvidia_gpu": has_nvidia,
        "other_gpus": [g for g in gpus if "nvidia" not in g.lower()],
        "apple_silicon": apple_silicon,
        "python": _probe("python", platform.python_version, "") or _UNKNOWN,
        "python_executable": sys.executable or _UNKNOWN,
        "installed_flavours": installed,
        "onnxruntime_version": ort_version,
        "available_providers": available,
        "recommended_flavour": recommended,
        "reason": reason,
        "commands": _switch_commands(list(installed), recommended),
        "problems": problems,
        "notes": notes,
    }


def format_doctor(info: dict[str, Any]) -> str:
    """Human-readable report of ``doctor()``; tolerates missing keys."""
    def get(key: str) -> Any:
        value = info.get(key)
        return _UNKNOWN if value in (None, "") else value

    installed = info.get("installed_flavours") or {}
    lines = [
        f"platform:     {get('os')} {get('os_release')} ({get('machine')})",
        f"cpu:          {get('cpu_model')} [vendor: {get('cpu_vendor')}]",
        f"nvidia gpu:   {'yes' if info.get('has_nvidia_gpu') else 'no'}",
    ]
    if info.get("other_gpus"):
        lines.append(f"other gpus:   {', '.join(info['other_gpus'])}")
    if info.get("apple_silicon"):
        lines.append("apple silicon: yes")
    lines += [
        f"python:       {get('python')} ({get('python_executable')})",
        "installed:    "
        + (", ".join(f"{n} {v}" for n, v in installed.items()) or "no onnxruntime package"),
        f"onnxruntime:  {get('onnxruntime_version')}",
        f"providers:    {', '.join(info.get('available_providers') or []) or 'none'}",
        f"recommended:  {get('recommended_flavour')} ({get('reason')})",
    ]
    lines += [f"problem:      {p}" for p in info.get("problems") or []]
    lines += [f"note:         {n}" for n in info.get("notes") or []]
    commands = info.get("commands") or []
    if commands:
        lines.append("to switch, run:")
        lines += [f"    {c}" for c in commands]
    else:
        lines.append("the recommended onnxruntime is installed; nothing to change")
    return "\n".join(lines)
