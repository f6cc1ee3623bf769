"""Provider choice, sessions and doctor, tested without hardware by faking what is available."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from altclip_onnx.errors import BundleError, InputError
from altclip_onnx.runtime import providers
from altclip_onnx.runtime.providers import (
    CPU,
    PREFERENCE,
    SHORT_NAMES,
    choose_providers,
    doctor,
    format_doctor,
    make_session,
    parse_cpuinfo,
    provider_options,
    recommend_flavour,
    resolve_provider_name,
    session_options,
)

GPU_BOX = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
MAC = ["CoreMLExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"]
CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]


# ------------------------------------------------------------------ names and choice


def test_short_names_cover_every_preferred_provider():
    assert set(SHORT_NAMES.values()) == set(PREFERENCE)
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


# ------------------------------------------------------------------ recommendation


@pytest.mark.parametrize(
    ("os_name", "machine", "vendor", "nvidia", "other_gpu", "expected"),
    [
        ("Linux", "x86_64", "GenuineIntel", True, False, "onnxruntime-gpu"),
        ("Windows", "AMD64", "AuthenticAMD", True, False, "onnxruntime-gpu"),
        ("Linux", "x86_64", "GenuineIntel", False, False, "onnxruntime-openvino"),
        ("Windows", "AMD64", "intel", False, True, "onnxruntime-openvino"),
        ("Darwin", "arm64", "apple", False, False, "onnxruntime"),
        ("Darwin", "x86_64", "GenuineIntel", False, False, "onnxruntime"),
        ("Windows", "AMD64", "AuthenticAMD", False, True, "onnxruntime-directml"),
        ("Windows", "ARM64", "unknown", False, True, "onnxruntime-directml"),
        ("Windows", "AMD64", "AuthenticAMD", False, False, "onnxruntime"),
        ("Linux", "x86_64", "AuthenticAMD", False, False, "onnxruntime"),
        ("Linux", "aarch64", "ARM", False, False, "onnxruntime"),
        ("Linux", "x86_64", "AuthenticAMD", False, True, "onnxruntime"),
        ("FreeBSD", "amd64", "unknown", False, False, "onnxruntime"),
        ("", "", "", False, False, "onnxruntime"),
    ],
)
def test_recommend_flavour(os_name, machine, vendor, nvidia, other_gpu, expected):
    assert recommend_flavour(os_name, machine, vendor, nvidia, has_other_gpu=other_gpu) == expected


def test_parse_cpuinfo():
    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7\n"
    assert parse_cpuinfo(intel) == ("GenuineIntel", "Intel(R) Core(TM) i7")
    arm = "processor\t: 0\nCPU implementer\t: 0x41\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4\n"
    assert parse_cpuinfo(arm) == ("ARM", "BCM2835")
    assert parse_cpuinfo("") == ("unknown", "unknown")
    assert parse_cpuinfo("garbage without colons\n\x00") == ("unknown", "unknown")


# ------------------------------------------------------------------ doctor


def test_doctor_on_this_machine():
    import onnxruntime

    info = doctor()
    text = format_doctor(info)
    assert onnxruntime.__version__ in text
    assert "CPUExecutionProvider" in text
    assert info["recommended_flavour"] in providers.FLAVOURS


def test_doctor_survives_unreadable_cpuinfo_and_missing_tools(monkeypatch):
    def unreadable() -> str:
        raise PermissionError("/proc/cpuinfo")

    def broken() -> str:
        raise OSError("no such thing")

    monkeypatch.setattr(providers, "_read_cpuinfo", unreadable)
    monkeypatch.setattr(providers.platform, "processor", broken)
    monkeypatch.setattr(providers, "_has_nvidia", broken)
    info = doctor()
    assert info["cpu_vendor"] == "unknown"
    assert info["cpu_model"] == "unknown"
    assert info["has_nvidia_gpu"] is False
    assert "CPUExecutionProvider" in format_doctor(info)


def test_doctor_on_unknown_platform(monkeypatch):
    monkeypatch.setattr(providers.platform, "system", lambda: "Plan9")
    monkeypatch.setattr(providers.platform, "machine", lambda: "")
    monkeypatch.setattr(providers.platform, "processor", lambda: "")
    info = doctor()
    assert info["os"] == "Plan9"
    assert info["machine"] == "unknown"
    assert info["recommended_flavour"] == "onnxruntime"


def test_doctor_reports_several_flavours_and_switch_commands(monkeypatch):
    both = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"}
    monkeypatch.setattr(providers, "_installed_flavours", lambda: both)
    monkeypatch.setattr(providers, "_has_nvidia", lambda: False)
    monkeypatch.setattr(providers, "_read_cpuinfo", lambda: "vendor_id : AuthenticAMD\n")
    monkeypatch.setattr(providers.platform, "system", lambda: "Linux")
    info = doctor()
    assert any("overwrite each other" in p for p in info["problems"])
    assert info["commands"] == [
        "pip uninstall -y onnxruntime onnxruntime-gpu",
        "pip install onnxruntime",
    ]
    text = format_doctor(info)
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in text


def test_doctor_no_commands_when_recommended_is_installed(monkeypatch):
    monkeypatch.setattr(providers, "_installed_flavours", lambda: {"onnxruntime": "1.32.0"})
    monkeypatch.setattr(providers, "_has_nvidia", lambda: False)
    monkeypatch.setattr(providers, "_read_cpuinfo", lambda: "vendor_id : AuthenticAMD\n")
    monkeypatch.setattr(providers.platform, "system", lambda: "Linux")
    info = doctor()
    assert info["commands"] == []
    assert info["problems"] == []


def test_format_doctor_tolerates_an_empty_dict():
    assert "unknown" in format_doctor({})


# ------------------------------------------------------------------ sessions


def _tiny_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def test_make_session_runs_a_tiny_model(tmp_path):
    session = make_session(_tiny_model(tmp_path / "tiny.onnx"), provider="cpu", threads=1)
    (out,) = session.run(None, {"x": np.array([[1.0, 2.0]], dtype=np.float32)})
    np.testing.assert_array_equal(out, [[2.0, 4.0]])
    assert session.get_providers() == [CPU]
    assert make_session(tmp_path / "tiny.onnx").get_providers()[-1] == CPU


def test_make_session_on_corrupt_file_is_a_one_line_bundle_error(tmp_path):
    bad = tmp_path / "visual" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00not an onnx model at all")
    with pytest.raises(BundleError) as caught:
        make_session(bad)
    message = str(caught.value)
    assert str(bad) in message
    assert "\n" not in message


def test_make_session_on_missing_external_data_names_the_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    (tmp_path / "model.onnx.data").unlink()
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
