"""Running a job (tests/isa/jobs.py) in a child Python, natively or under ``qemu-x86_64 -cpu MODEL``.

qemu-user runs this very interpreter (``sys.executable``, with its venv) on an emulated CPU model, so
onnxruntime picks the kernels that CPU would get: ``Haswell`` (AVX2 and FMA, no AVX-512, no VNNI),
``Nehalem`` (SSE4.2). Arrays come back through an .npz in the test's folder. Without qemu-x86_64 the
emulated tests skip locally and fail under CI (tests/conftest.py ``missing()``); on a host that is not
x86-64 there is nothing to emulate this way, and they skip.
"""

from __future__ import annotations

import itertools
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ..conftest import missing

QEMU = "qemu-x86_64"
HASWELL = "Haswell"  # AVX2 + FMA: onnxruntime's u8s8 GEMM adds pairs of products in a saturating int16
NEHALEM = "Nehalem"  # SSE4.2 only
EMULATED = (HASWELL, NEHALEM)
TIMEOUT = 300  # seconds per child; one takes 3-10 s on the tiny bundle (Zen 4 host, qemu 7.2)
JOBS_SCRIPT = Path(__file__).with_name("jobs.py")
# qemu's TCG lists the CPU model's features it cannot emulate (pcid, x2apic, TSX, ...): none that matter here.
QEMU_NOISE = "TCG doesn't support requested feature"

#: int8 on another CPU against int8 on this one: the least cosine per row (texts and images).
SAME_VECTORS = 0.9995

_runs = itertools.count()


@pytest.fixture(scope="session")
def qemu() -> str:
    """The path of qemu-x86_64 (tests that use this fixture run on emulated CPUs)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"{QEMU} runs this x86-64 interpreter only on an x86-64 host, not {platform.machine()}")
    found = shutil.which(QEMU)
    if found is None:
        missing(f"{QEMU} is not installed: apt-get install qemu-user (scripts/test.sh does)")
    return found


def run_job(job: str, spec: dict[str, Any], folder: Path, *, cpu: str | None = None, qemu: str = QEMU,
            timeout: float = TIMEOUT) -> dict[str, np.ndarray]:
    """Run ``jobs.py JOB`` with ``spec`` in a child of this interpreter: natively (``cpu=None``) or under
    ``qemu -cpu CPU``; return the arrays it saved. A child that fails or overruns ``timeout`` fails the test."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{job}-{cpu or 'native'}-{next(_runs)}"
    spec_path, out_path = folder / f"{name}.json", folder / f"{name}.npz"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    command = [sys.executable, str(JOBS_SCRIPT), job, str(spec_path), str(out_path)]
    if cpu is not None:
        command = [qemu, "-cpu", cpu, *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=folder)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)}: still running after {timeout} s", pytrace=False)
    if done.returncode != 0:
        stderr = "\n".join(line for line in done.stderr.splitlines() if QEMU_NOISE not in line)
        pytest.fail(f"{' '.join(command)}: exit status {done.returncode}\n{stderr[-4000:]}", pytrace=False)
    with np.load(out_path) as saved:
        return {key: saved[key] for key in saved.files}


def encode_spec(bundle: Path, precision: str, texts: list[str], images: list[Path], **extra: object) -> dict:
    """The spec of an ``encode`` job (jobs.py)."""
    return {"bundle": str(bundle), "precision": precision, "texts": list(texts), "images": [str(p) for p in images],
            **extra}


def vectors(out: dict[str, np.ndarray]) -> np.ndarray:
    """An ``encode`` job's vectors: texts, then images, one row each."""
    return np.concatenate([out["texts"], out["images"]])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b``."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def host_has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI or AVX-VNNI (onnxruntime's exact u8s8 kernels)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags
