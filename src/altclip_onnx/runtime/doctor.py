"""What this machine has, which onnxruntime is installed, and which one it should use (``altclip-onnx doctor``).

Every probe falls back to "unknown" (or empty) on failure, on any platform: doctor never crashes.
The CPU facts (model, instruction sets) also head every benchmark table, because int8 speed depends
on them (VNNI doubles int8 throughput over plain AVX2; AMX more still).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, TypeVar

logger = logging.getLogger(__name__)

#: pip distributions that all install the same ``onnxruntime`` module (and overwrite each other).
FLAVOURS: tuple[str, ...] = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-silicon",
    "onnxruntime-training",
)

_UNKNOWN = "unknown"

#: Instruction sets that decide int8 and fp32 speed on x86 (Linux /proc/cpuinfo flag names -> shown names).
CPU_FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimddp": "NEON dot product",
    "i8mm": "NEON int8 matmul",
}


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


def parse_cpu_flags(text: str) -> list[str]:
    """The instruction sets of :data:`CPU_FEATURES` named in ``/proc/cpuinfo`` text, in that order."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return [shown for flag, shown in CPU_FEATURES.items() if flag in flags]


def cpu_features() -> list[str]:
    """This CPU's instruction sets that matter for inference speed (empty where they cannot be read)."""
    if platform.system() != "Linux":
        return []
    return _probe("cpu flags", lambda: parse_cpu_flags(_read_cpuinfo()), [])


def cpu_summary() -> str:
    """One line for benchmark headers: the CPU model and its relevant instruction sets."""
    features = cpu_features()
    return f"{cpu_model()} [{', '.join(features) if features else 'instruction sets unknown'}]"


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


def recommend_flavour(
    os_name: str, machine: str, cpu_vendor: str, has_nvidia: bool, has_other_gpu: bool = False
) -> tuple[str, str]:
    """(the onnxruntime pip distribution for this kind of machine, why). Precedence: macOS, NVIDIA,
    Intel CPU, other Windows GPU, plain.

    ``os_name`` as ``platform.system()`` reports it, ``machine`` as ``platform.machine()``,
    ``cpu_vendor`` raw (``GenuineIntel``) or normalized (``intel``). ``has_other_gpu``: a
    non-NVIDIA GPU was found (only probed, and only used, on Windows for DirectML).
    """
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
    recommended, reason = recommend_flavour(os_name, machine, vendor, has_nvidia, has_other_gpu)

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
