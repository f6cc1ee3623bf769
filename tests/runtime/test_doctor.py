"""doctor: platform probes, the recommended onnxruntime flavour, and the CPU facts benchmarks print."""

from __future__ import annotations

import pytest

from altclip_onnx.runtime import doctor as probes
from altclip_onnx.runtime.doctor import (
    cpu_summary,
    doctor,
    format_doctor,
    parse_cpu_flags,
    parse_cpuinfo,
    recommend_flavour,
)

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
    flavour, reason = recommend_flavour(os_name, machine, vendor, nvidia, has_other_gpu=other_gpu)
    assert flavour == expected and reason


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
    assert info["recommended_flavour"] in probes.FLAVOURS


def test_doctor_survives_unreadable_cpuinfo_and_missing_tools(monkeypatch):
    def unreadable() -> str:
        raise PermissionError("/proc/cpuinfo")

    def broken() -> str:
        raise OSError("no such thing")

    monkeypatch.setattr(probes, "_read_cpuinfo", unreadable)
    monkeypatch.setattr(probes.platform, "processor", broken)
    monkeypatch.setattr(probes, "_has_nvidia", broken)
    info = doctor()
    assert info["cpu_vendor"] == "unknown"
    assert info["cpu_model"] == "unknown"
    assert info["has_nvidia_gpu"] is False
    assert "CPUExecutionProvider" in format_doctor(info)


def test_doctor_on_unknown_platform(monkeypatch):
    monkeypatch.setattr(probes.platform, "system", lambda: "Plan9")
    monkeypatch.setattr(probes.platform, "machine", lambda: "")
    monkeypatch.setattr(probes.platform, "processor", lambda: "")
    info = doctor()
    assert info["os"] == "Plan9"
    assert info["machine"] == "unknown"
    assert info["recommended_flavour"] == "onnxruntime"


def test_doctor_reports_several_flavours_and_switch_commands(monkeypatch):
    both = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"}
    monkeypatch.setattr(probes, "_installed_flavours", lambda: both)
    monkeypatch.setattr(probes, "_has_nvidia", lambda: False)
    monkeypatch.setattr(probes, "_read_cpuinfo", lambda: "vendor_id : AuthenticAMD\n")
    monkeypatch.setattr(probes.platform, "system", lambda: "Linux")
    info = doctor()
    assert any("overwrite each other" in p for p in info["problems"])
    assert info["commands"] == [
        "pip uninstall -y onnxruntime onnxruntime-gpu",
        "pip install onnxruntime",
    ]
    text = format_doctor(info)
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in text


def test_doctor_no_commands_when_recommended_is_installed(monkeypatch):
    monkeypatch.setattr(probes, "_installed_flavours", lambda: {"onnxruntime": "1.32.0"})
    monkeypatch.setattr(probes, "_has_nvidia", lambda: False)
    monkeypatch.setattr(probes, "_read_cpuinfo", lambda: "vendor_id : AuthenticAMD\n")
    monkeypatch.setattr(probes.platform, "system", lambda: "Linux")
    info = doctor()
    assert info["commands"] == []
    assert info["problems"] == []


def test_format_doctor_tolerates_an_empty_dict():
    assert "unknown" in format_doctor({})




def test_cpu_flags_name_the_instruction_sets_int8_speed_depends_on():
    avx512 = "flags\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n"
    assert parse_cpu_flags(avx512) == ["AVX2", "FMA", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16"]
    amx = "flags\t: avx2 avx512f avx512_vnni amx_int8 amx_bf16 amx_tile\n"
    assert parse_cpu_flags(amx) == ["AVX2", "AVX-512", "AVX-512 VNNI", "AMX-INT8", "AMX-BF16"]
    assert parse_cpu_flags("flags\t: sse2 avx2 avx_vnni\n") == ["AVX2", "AVX-VNNI"]
    assert parse_cpu_flags("Features\t: fp asimd asimddp i8mm\n") == ["NEON dot product", "NEON int8 matmul"]
    assert parse_cpu_flags("") == []


def test_cpu_summary_on_this_machine():
    summary = cpu_summary()
    assert "[" in summary and summary.endswith("]")
