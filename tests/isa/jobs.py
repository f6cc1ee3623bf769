"""What tests/isa runs in a child process, natively or under ``qemu-x86_64 -cpu MODEL`` (see conftest.run_job).

A standalone script: ``python jobs.py JOB SPEC.json OUT.npz``. It imports only what the runtime has
(numpy, onnxruntime, altclip_onnx), never the test package, so the child starts as fast as it can (under
emulation every import costs). The same script runs natively and emulated: only the CPU differs.

Jobs:
- ``graph``: run ``spec["model"]`` on the arrays in ``spec["inputs"]`` (an .npz); save every output by name.
- ``encode``: embed ``spec["texts"]`` and ``spec["images"]`` (paths) with ``Encoder(spec["bundle"],
  precision=spec["precision"])``; save ``texts`` and ``images`` (normalized vectors; none for an empty
  list) and ``cpu`` (what numpy's dispatcher saw: the proof of which instruction sets the child ran with).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import numpy as np


def cpu_features() -> np.ndarray:
    """The SIMD extensions numpy found at start-up, as a sorted array of names."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return np.array(sorted(name for name, present in __cpu_features__.items() if present))


SELF_CHECKS = {"self_check", "check_numbers"}  # the first-use self-check's keyword, under either name


def run_graph(spec: dict) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    with np.load(spec["inputs"]) as inputs:
        feeds = {name: inputs[name] for name in inputs.files}
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def encode(spec: dict) -> dict[str, np.ndarray]:
    from altclip_onnx import Encoder

    options = {"precision": spec["precision"], "provider": "cpu", "check_files": spec.get("check_files", True)}
    # The first-use numeric self-check, where Encoder has one: these jobs compare the vectors themselves.
    options.update(dict.fromkeys(SELF_CHECKS & set(inspect.signature(Encoder).parameters), False))
    encoder = Encoder(spec["bundle"], **options)
    out = {}
    if spec["texts"]:
        out["texts"] = encoder.encode_texts(spec["texts"])
    if spec["images"]:
        out["images"] = encoder.encode_images(spec["images"])
    return out


JOBS = {"graph": run_graph, "encode": encode}


def main(job: str, spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    arrays = JOBS[job](spec)
    np.savez(out_path, **arrays, cpu=cpu_features())


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in JOBS:
        sys.exit(f"usage: python jobs.py {{{','.join(JOBS)}}} SPEC.json OUT.npz")
    main(*sys.argv[1:])
