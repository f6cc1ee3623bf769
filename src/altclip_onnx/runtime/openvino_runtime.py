"""OpenVINO's own runtime behind the session interface the rest of the runtime uses (``provider="openvino-runtime"``).

onnxruntime's OpenVINO execution provider hands OpenVINO only the parts of a graph it claims (not the int8
``MatMulIntegerToFloat``), so OpenVINO's own runtime, compiling the whole graph file, can be faster than both
the provider and onnxruntime on some CPUs and slower on others (and, with its bf16 hint, on CPUs with bf16
instructions: ``provider="openvino-runtime-bf16"``). ``altclip-onnx tune`` times it beside the onnxruntime
candidates, and the first-use check holds its numbers against the bundle's PyTorch reference like
any other provider's (see :mod:`altclip_onnx.verification.selfcheck`). Needs the ``[openvino]`` extra.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import TOWER_INPUTS, TOWER_OUTPUTS
from ..errors import BundleError
from ..precisions import OPENVINO_RUNTIME, OPENVINO_RUNTIME_BF16


@dataclass(frozen=True)
class Port:
    """What onnxruntime's ``NodeArg`` offers that callers read: the name."""

    name: str


_BUNDLE_NAMES = frozenset(name for names in (*TOWER_INPUTS.values(), *TOWER_OUTPUTS.values()) for name in names)


def _port(port: Any) -> Port:
    """A port by the name the bundle's contract gives it: OpenVINO keeps every name a tensor had in the ONNX
    graph (a graph input feeding a Cast is also the Cast's output), and any of them may come first."""
    names = port.get_names()
    return Port(next((name for name in sorted(names) if name in _BUNDLE_NAMES), port.get_any_name()))


class OpenVINOSession:
    """A graph file compiled for OpenVINO's CPU device, run like an onnxruntime session.

    The precision hint is f32 unless ``bf16``: on CPUs with bf16 (AMX, AVX-512 BF16) OpenVINO would otherwise
    compute fp32 graphs in bf16 and drift from the reference unnoticed; with ``bf16`` it does so on purpose, as
    the provider :data:`~altclip_onnx.precisions.OPENVINO_RUNTIME_BF16`, held to its own gate
    (:func:`~altclip_onnx.precisions.gate_for`). ``threads``: OpenVINO's inference threads (None: its default).
    Each thread calling :meth:`run` gets its own infer request (a request is not thread-safe).
    """

    # OpenVINO's float kernels round by sequence length, and per-row int8 carries a float difference across a
    # rounding step: a text padded in a batch got another vector than the same text alone (benchmarks/README.md).
    # Texts of one length batched unpadded give identical vectors, so texts are batched that way here.
    pads_texts = False

    def __init__(self, path: str | Path, *, threads: int | None = None, bf16: bool = False) -> None:
        import openvino

        core = openvino.Core()
        self._provider = OPENVINO_RUNTIME_BF16 if bf16 else OPENVINO_RUNTIME
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as error:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            detail = " ".join(str(error).split())[:300]
            raise BundleError(f"cannot load ONNX model {path} with OpenVINO's runtime: {detail}") from error
        self._inputs = [_port(port) for port in self._compiled.inputs]
        self._outputs = [_port(port) for port in self._compiled.outputs]
        self._local = threading.local()

    def get_providers(self) -> list[str]:
        return [self._provider]

    def get_inputs(self) -> list[Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[Port]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None, feed: dict[str, np.ndarray], run_options: Any = None) -> list[np.ndarray]:
        """Outputs named ``output_names`` (None: all) for ``feed``; ``run_options`` (onnxruntime's) are ignored."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer({name: np.ascontiguousarray(value) for name, value in feed.items()})
        names = [port.name for port in self._outputs] if output_names is None else output_names
        # The request's output tensors are reused by its next run: hand out copies.
        return [np.array(result[self._compiled.output(name)], copy=True) for name in names]
