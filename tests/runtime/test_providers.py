"""Provider choice and sessions, tested without hardware by faking what is available."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx.errors import BundleError, InputError
from altclip_onnx.precisions import CPU, OPENVINO_RUNTIME, OPENVINO_RUNTIMES
from altclip_onnx.runtime import providers
from altclip_onnx.runtime.providers import (
    PREFERENCE,
    SHORT_NAMES,
    choose_providers,
    make_session,
    provider_options,
    resolve_provider_name,
    session_options,
)

GPU_BOX = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
MAC = ["CoreMLExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"]
CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]


# ------------------------------------------------------------------ names and choice


def test_short_names_cover_every_preferred_provider():
    # and OpenVINO's own runtime (with and without its bf16 hint), which auto never takes without a tune profile
    assert set(SHORT_NAMES.values()) == {*PREFERENCE, *OPENVINO_RUNTIMES}
    assert OPENVINO_RUNTIME not in choose_providers([*CPU_ONLY, OPENVINO_RUNTIME])
    assert PREFERENCE[-1] == CPU


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cuda", "CUDAExecutionProvider"),
        ("CUDA", "CUDAExecutionProvider"),
        (" DirectML ", "DmlExecutionProvider"),
        ("openvino", "OpenVINOExecutionProvider"),
        ("CUDAExecutionProvider", "CUDAExecutionProvider"),
        ("cudaexecutionprovider", "CUDAExecutionProvider"),
        ("ROCMExecutionProvider", "ROCMExecutionProvider"),
    ],
)
def test_resolve_provider_name(name, expected):
    assert resolve_provider_name(name) == expected


@pytest.mark.parametrize("name", ["gpu", "", "ExecutionProvider", "cuda12"])
def test_resolve_unknown_name_lists_short_names_in_one_line(name):
    with pytest.raises(InputError) as caught:
        resolve_provider_name(name)
    message = str(caught.value)
    assert "\n" not in message
    for short in SHORT_NAMES:
        assert short in message


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (GPU_BOX, GPU_BOX),
        (list(reversed(GPU_BOX)), GPU_BOX),
        (MAC, ["CoreMLExecutionProvider", CPU]),
        (CPU_ONLY, [CPU]),
        ([], [CPU]),
        (["OpenVINOExecutionProvider", "CPUExecutionProvider"], ["OpenVINOExecutionProvider", CPU]),
    ],
)
@pytest.mark.parametrize("requested", [None, "auto", "AUTO"])
def test_auto_keeps_preference_order_and_ends_with_cpu(available, expected, requested):
    assert choose_providers(available, requested) == expected


@pytest.mark.parametrize(
    ("available", "requested", "expected"),
    [
        (GPU_BOX, "cuda", ["CUDAExecutionProvider", CPU]),
        (GPU_BOX, "Cuda", ["CUDAExecutionProvider", CPU]),
        (GPU_BOX, "CUDAExecutionProvider", ["CUDAExecutionProvider", CPU]),
        (GPU_BOX, "cpu", [CPU]),
        (MAC, "coreml", ["CoreMLExecutionProvider", CPU]),
        (CPU_ONLY, "CPUExecutionProvider", [CPU]),
    ],
)
def test_requested_provider_then_cpu(available, requested, expected):
    assert choose_providers(available, requested) == expected


def test_requested_unavailable_provider_is_a_one_line_input_error():
    with pytest.raises(InputError) as caught:
        choose_providers(CPU_ONLY, "cuda")
    message = str(caught.value)
    assert "\n" not in message
    assert "CUDAExecutionProvider is not available" in message
    assert "AzureExecutionProvider, CPUExecutionProvider" in message
    assert "altclip-onnx doctor" in message


def test_requested_unknown_provider_is_an_input_error():
    with pytest.raises(InputError):
        choose_providers(GPU_BOX, "gpu")


def test_provider_options_are_small():
    assert provider_options("CUDAExecutionProvider", 4) == {}
    assert provider_options(CPU, 4) == {}
    openvino = {"device_type": "CPU", "precision": "FP32"}
    assert provider_options("OpenVINOExecutionProvider", None) == openvino
    assert provider_options("OpenVINOExecutionProvider", 4)["num_of_threads"] == "4"


def test_session_options_threads():
    assert session_options(None).intra_op_num_threads == 0
    assert session_options(3).intra_op_num_threads == 3
    with pytest.raises(InputError):
        session_options(-1)


# ------------------------------------------------------------------ sessions


def test_make_session_runs_a_tiny_model(fixture_dir: Path):
    add = fixture_dir / "graphs" / "add.onnx"  # y = x + x
    session = make_session(add, provider="cpu", threads=1)
    (out,) = session.run(None, {"x": np.array([[1.0, 2.0]], dtype=np.float32)})
    np.testing.assert_array_equal(out, [[2.0, 4.0]])
    assert session.get_providers() == [CPU]
    assert make_session(add).get_providers()[-1] == CPU


def test_make_session_on_corrupt_file_is_a_one_line_bundle_error(tmp_path):
    bad = tmp_path / "visual" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00not an onnx model at all")
    with pytest.raises(BundleError) as caught:
        make_session(bad)
    message = str(caught.value)
    assert str(bad) in message
    assert "\n" not in message


def test_make_session_on_missing_external_data_names_the_file(fixture_dir: Path, tmp_path: Path):
    path = tmp_path / "model.onnx"
    shutil.copy(fixture_dir / "graphs" / "external" / "model.onnx", path)  # its weights: model.onnx.data, not copied
    with pytest.raises(BundleError) as caught:
        make_session(path)
    message = str(caught.value)
    assert str(path) in message
    assert "model.onnx.data" in message
    assert "\n" not in message


def test_make_session_on_missing_file(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        make_session(tmp_path / "nope.onnx")


def test_make_session_with_unavailable_provider(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(CPU_ONLY))
    with pytest.raises(InputError, match="TensorrtExecutionProvider is not available"):
        make_session("unused.onnx", provider="tensorrt")


def test_openvino_bf16_is_refused_in_one_line_where_the_cpu_has_no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO ignores its bf16 hint on CPUs without bf16 instructions and computes in f32: asking for
    ``openvino-runtime-bf16`` there says so instead of quietly running the f32 candidate twice."""
    monkeypatch.setattr(providers, "openvino_runtime_available", lambda: True)
    monkeypatch.setattr(providers, "openvino_bf16_available", lambda: False)
    with pytest.raises(InputError, match=r"^provider openvino-runtime-bf16: .*bf16 instructions.*use openvino-runtime$"):
        choose_providers(CPU_ONLY, "openvino-runtime-bf16")
    assert choose_providers(CPU_ONLY, "openvino-runtime") == [OPENVINO_RUNTIME]
