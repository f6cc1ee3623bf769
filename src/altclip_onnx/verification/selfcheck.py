"""The first-use check: a bundle variant checks its own numbers on each machine and provider that runs it.

Export verified the bundle on one CPU with one onnxruntime. The same graphs can compute other numbers
elsewhere: int8 kernels differ by instruction set, execution providers rewrite graphs (OpenVINO, CUDA at
fp16), onnxruntime versions change kernels. So the first time a tower's variant runs with a given provider,
onnxruntime build and CPU/GPU, :class:`~altclip_onnx.runtime.encoder.Encoder` runs the bundle's quick
verification cases (:mod:`.reference`) through the very session it will use and holds them against the
stored PyTorch outputs with the variant's gates. A pass is recorded (in ``bundle/.verified.json``, or in the
user's cache when the bundle is read-only) under a key of all of that, so later starts skip it; a failure
refuses the combination in one line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from glob import glob
from importlib import metadata
from pathlib import Path
from typing import Any

from ..bundle import VERIFIED_RECORD, Manifest, read_record, write_record
from ..errors import VerificationError
from ..precisions import CPU, OPENVINO_RUNTIMES
from ..files import write_json
from .check import check_precision
from .reference import has_reference, read_reference

log = logging.getLogger(__name__)

SECTION = "numbers"  # the section of .verified.json this module keeps
CPU_FEATURES = (  # the instruction-set extensions onnxruntime's kernels choose between (x86 and ARM names)
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx512_fp16",
    "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2", "fphp", "asimdhp",
)
_warned_no_reference: set[str] = set()


@functools.lru_cache(maxsize=1)
def cpu_identity() -> dict[str, Any]:
    """The CPU as kernels see it: architecture, model name and the relevant instruction-set extensions."""
    model, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: the architecture and platform's name are what there is
        pass
    return {"machine": platform.machine(), "model": model, "features": sorted(flags & set(CPU_FEATURES))}


def gpu_identity() -> list[str]:
    """NVIDIA GPUs' model names as the driver reports them (empty elsewhere)."""
    names = []
    for path in sorted(glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("Model:"):
                    names.append(line.partition(":")[2].strip())
        except OSError:
            continue
    return names


@functools.lru_cache(maxsize=None)
def runtime_identity(provider: str | None = None) -> str:
    """Which runtime build runs: OpenVINO's for its own runtime, else onnxruntime's (the package name tells
    CPU, GPU and OpenVINO flavours apart). Cached: every Encoder start asks it once per provider (the tune
    profile's key), and the installed packages do not change under a running process."""
    if provider in OPENVINO_RUNTIMES:
        try:
            return f"openvino {metadata.version('openvino')}"
        except metadata.PackageNotFoundError:
            return "openvino"
    import onnxruntime

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                 "onnxruntime-qnn"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return f"{dist} {onnxruntime.__version__}"
    return f"onnxruntime {onnxruntime.__version__}"


def where(provider: str) -> dict[str, Any]:
    """Everything a verdict depends on besides the variant's files: provider, runtime, CPU, GPU."""
    place: dict[str, Any] = {"provider": provider, "runtime": runtime_identity(provider), "cpu": cpu_identity()}
    if provider not in (CPU, *OPENVINO_RUNTIMES):
        place["gpu"] = gpu_identity()
    return place


def describe_where(place: dict[str, Any]) -> str:
    cpu = place["cpu"]
    text = f"{place['provider']}, {place['runtime']}, {cpu['model'] or cpu['machine']}"
    return text + (f", {', '.join(place['gpu'])}" if place.get("gpu") else "")


def verdict_key(manifest: Manifest, tower: str, precision: str, place: dict[str, Any]) -> str:
    files = manifest.towers[tower][precision].files
    content = {"files": {name: manifest.files[name].sha256 for name in files if name in manifest.files},
               "reference": {name: manifest.files[name].sha256 for name in manifest.reference if name in manifest.files},
               "tower": tower, "precision": precision, "where": place}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def user_cache() -> Path:
    """Where verdicts go when the bundle is read-only: $XDG_CACHE_HOME/altclip-onnx (default ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "altclip-onnx" / "verified"


def _cache_file(manifest: Manifest) -> Path:
    return user_cache() / f"{manifest.fingerprint()[:32]}.json"


def lookup(bundle: Path, manifest: Manifest, key: str, section: str = SECTION) -> Any:
    """The entry recorded under ``key`` in ``section``, beside the bundle or in the user's cache; None if none."""
    entry = read_record(bundle, section).get(key)
    if entry is not None:
        return entry
    try:
        return json.loads(_cache_file(manifest).read_text(encoding="utf-8")).get(section, {}).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def recorded(bundle: Path, manifest: Manifest, key: str) -> bool:
    return lookup(bundle, manifest, key) is not None


def record(bundle: Path, manifest: Manifest, key: str, verdict: dict[str, Any], section: str = SECTION) -> Path | None:
    """Keep an entry beside the bundle, else in the user's cache, else nowhere (checked again next time);
    where it went."""
    entries = {**read_record(bundle, section), key: verdict}
    if write_record(bundle, section, entries):
        return bundle / VERIFIED_RECORD
    path = _cache_file(manifest)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    cached = data.get(section) if isinstance(data.get(section), dict) else {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**data, "format": 1, "bundle": str(bundle), section: {**cached, key: verdict}})
    except Exception as exc:  # noqa: BLE001  (a cache that cannot be written only costs a check next time)
        log.debug("%s: not recorded (%s)", path, exc)
        return None
    return path


def ensure_verified(bundle: Path, manifest: Manifest, tower: str, precision: str, session: Any) -> None:
    """Run the quick check for one tower's variant in ``session`` unless this place passed it before.

    Raises :class:`VerificationError` (one line: tower, precision, provider, the failed gate) on failure.
    """
    if not has_reference(manifest):
        if str(bundle) not in _warned_no_reference:
            _warned_no_reference.add(str(bundle))
            log.warning("%s: carries no PyTorch reference (made before bundle format 1.1), so its numbers on this "
                        "machine are not checked; re-export it with this altclip-onnx to have them checked", bundle)
        return
    provider = session.get_providers()[0]
    place = where(provider)
    key = verdict_key(manifest, tower, precision, place)
    if recorded(bundle, manifest, key):
        return
    started = time.perf_counter()
    reference = read_reference(bundle, manifest, towers=(tower,), quick_only=True)
    rows, failures, _, _ = check_precision(reference, precision, lambda _tower: session,
                                           logit_scale=manifest.logit_scale, towers=(tower,), quick=True,
                                           provider=provider, pad_id=manifest.text.pad_id)
    seconds = time.perf_counter() - started
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise VerificationError(
            f"{bundle}: the {tower} tower at {precision} on {provider} does not match the bundle's PyTorch "
            f"reference here: {failures[0]}{more}; choose another precision or provider (or turn the self-check "
            "off to use it anyway)")
    lowest = min(row.min_cosine for row in rows)
    log.info("%s: %s %s checked on %s in %.2f s (min cosine %.6f)", bundle, tower, precision,
             describe_where(place), seconds, lowest)
    record(bundle, manifest, key, {"tower": tower, "precision": precision, "where": place, "min_cosine": lowest,
                                   "seconds": round(seconds, 3), "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
