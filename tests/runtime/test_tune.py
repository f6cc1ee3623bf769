"""altclip-onnx tune: times the candidates that pass the bundle's check here and records the fastest per
tower; precision auto follows that profile on this machine only.

The model calls stay real; a test slows a candidate down by sleeping around its calls, which is how it
knows which one must win."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altclip_onnx import Encoder
from altclip_onnx.bundle import TEXTUAL, TOWERS, VISUAL, read_manifest, read_record
from altclip_onnx.errors import InputError
from altclip_onnx.precisions import OPENVINO_RUNTIME_BF16, PRECISIONS, gate_for
from altclip_onnx.runtime import profile, tune
from altclip_onnx.runtime.providers import available_providers, make_session, openvino_bf16_available
from altclip_onnx.runtime.tune import TUNED_BATCHES, TuneSettings, tune_bundle

from ..verification.test_verification import cli, copy_bundle, swap_int8_graph
from .test_bench import ctrl_c

SLOW_SECONDS = 0.02  # added to every call of a slowed candidate: far more than a tiny tower's call takes
CPU_ONLY = TuneSettings(repeats=3, providers=("CPUExecutionProvider",), precisions=("fp32", "int8"))


class Slowed:
    """A real session whose every call takes SLOW_SECONDS longer."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def run(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(SLOW_SECONDS)
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def slow_down(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    """Every session ``tune`` makes of a ``precision`` graph is slowed."""

    def making(path: Path, **kwargs: Any) -> Any:
        session = make_session(path, **kwargs)
        return Slowed(session) if Path(path).name == f"model.{precision}.onnx".replace(".fp32", "") else session

    monkeypatch.setattr(tune, "make_session", making)


@pytest.mark.parametrize("slowed, expected", [("int8", "fp32"), ("fp32", "int8")])
def test_tune_picks_the_faster_of_two_candidates(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 slowed: str, expected: str) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    slow_down(monkeypatch, slowed)
    result = tune_bundle(bundle, CPU_ONLY)
    assert result.chosen == {tower: {"provider": "CPUExecutionProvider", "precision": expected} for tower in TOWERS}
    rows = {(c.tower, c.precision, c.batch): c for c in result.candidates}
    assert len(rows) == sum(2 * len(TUNED_BATCHES[tower]) for tower in TOWERS)
    for tower in TOWERS:
        for batch in TUNED_BATCHES[tower]:
            assert rows[tower, expected, batch].items_per_s > rows[tower, slowed, batch].items_per_s
            assert rows[tower, slowed, batch].verified and rows[tower, expected, batch].verified
    assert result.saved == bundle / ".verified.json"
    assert read_record(bundle, profile.SECTION)  # recorded beside the bundle


def test_tune_never_chooses_a_candidate_that_fails_verification(tiny_bundle: Path, other_bundle: Path,
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another model's int8 text graph (checksums updated, so only the numbers tell) is the fastest text
    candidate once fp32 is slowed: tune refuses it and takes fp32."""
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    swap_int8_graph(bundle, other_bundle, TEXTUAL)
    slow_down(monkeypatch, "fp32")
    result = tune_bundle(bundle, CPU_ONLY)
    assert result.chosen[TEXTUAL] == {"provider": "CPUExecutionProvider", "precision": "fp32"}
    assert result.chosen[VISUAL] == {"provider": "CPUExecutionProvider", "precision": "int8"}  # its int8 is fine
    swapped = [c for c in result.candidates if (c.tower, c.precision) == (TEXTUAL, "int8")]
    assert swapped and all(not c.verified and c.items_per_s is None for c in swapped)
    (reason,) = [why for what, why in result.refused.items() if what.startswith(f"{TEXTUAL} ")]
    assert "int8" in reason and "cosine" in reason


def test_encoder_follows_the_profile_of_this_machine_only(tiny_bundle: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    assert Encoder(bundle).precisions == {VISUAL: "int8", TEXTUAL: "int8"}  # no profile: as before
    slow_down(monkeypatch, "int8")
    tune_bundle(bundle, CPU_ONLY)
    tuned = Encoder(bundle)
    assert tuned.precisions == {VISUAL: "fp32", TEXTUAL: "fp32"} and tuned.tuned == TOWERS
    assert Encoder(bundle, provider="cpu").precisions == {VISUAL: "fp32", TEXTUAL: "fp32"}  # the profile's provider
    assert Encoder(bundle, precision="int8").precisions == {VISUAL: "int8", TEXTUAL: "int8"}  # asked for: obeyed
    # Its vectors are the fp32 variant's, which matches PyTorch to the fp32 gate.
    texts = ["a photo of a cat", "一只猫的照片"]
    fp32 = Encoder(bundle, precision="fp32").encode_texts(texts)
    np.testing.assert_allclose(tuned.encode_texts(texts), fp32, atol=1e-6)

    # Another CPU (or runtime, or GPU) has another key: its profile is never read.
    cpu = dict(profile.machine()["cpu"], model="Some Other CPU")
    monkeypatch.setattr(profile, "cpu_identity", lambda: cpu)
    elsewhere = Encoder(bundle)
    assert elsewhere.precisions == {VISUAL: "int8", TEXTUAL: "int8"} and elsewhere.tuned == ()


def test_a_read_only_bundle_keeps_its_profile_in_the_user_cache(read_only_bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = read_only_bundle
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    slow_down(monkeypatch, "int8")
    result = tune_bundle(bundle, CPU_ONLY)
    assert result.saved is not None and result.saved.is_relative_to(tmp_path / "cache")
    assert Encoder(bundle).precisions == {VISUAL: "fp32", TEXTUAL: "fp32"}


def test_tune_json_names_the_choice_and_every_candidate(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    result = cli("tune", str(bundle), "--provider", "cpu", "--repeats", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["chosen"]) == set(TOWERS)
    for choice in report["chosen"].values():
        assert choice["provider"] == "CPUExecutionProvider" and choice["precision"] in ("fp32", "int8", "fp16")
    precisions = {c["precision"] for c in report["candidates"]}
    assert precisions == set(read_manifest(bundle).precisions(VISUAL))
    for row in report["candidates"]:
        assert set(row) == {"tower", "provider", "precision", "batch", "verified", "items_per_s"}
        assert row["batch"] in TUNED_BATCHES[row["tower"]] and row["verified"] and row["items_per_s"] > 0
    assert "timing" in result.stderr and "about" in result.stderr  # how long, before it starts


def test_tune_refuses_an_unknown_or_missing_provider_in_one_line(tiny_bundle: Path) -> None:
    result = cli("tune", str(tiny_bundle), "--provider", "cuda")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "CUDAExecutionProvider is not available" in result.stderr.strip().splitlines()[-1]
    with pytest.raises(InputError, match="unknown provider"):
        TuneSettings.parse(providers=("warp-drive",))


def test_ctrl_c_stops_tune_at_once_and_records_nothing(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    process = subprocess.Popen([sys.executable, "-m", "altclip_onnx.cli", "tune", str(bundle), "--provider", "cpu",
                                "--repeats", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def when_timing() -> None:
        assert process.stderr is not None
        while "verified candidates at" not in (line := process.stderr.readline()):
            assert line, "tune ended before timing"
        time.sleep(0.5)

    stopped, _, stderr = ctrl_c(process, when_timing)
    assert process.returncode == 130, stderr
    assert stopped < 2.5, f"stopped {stopped:.1f}s after Ctrl-C"
    assert not read_record(bundle, profile.SECTION)


def test_openvino_runtime_candidates_match_the_reference_within_their_gates(tiny_bundle: Path, tmp_path: Path) -> None:
    """OpenVINO's own runtime behind the Encoder: every variant passes the first-use check against the
    PyTorch reference, and tune times it beside onnxruntime."""
    pytest.importorskip("openvino")
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    texts = ["a photo of a cat", "一只猫的照片", "ein Foto eines Hundes"]
    pixels = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    for precision in ("fp32", "int8"):
        runtime = Encoder(bundle, provider="openvino-runtime", precision=precision)  # checks itself on first use
        onnxruntime = Encoder(bundle, provider="cpu", precision=precision)
        assert runtime.session(VISUAL).get_providers() == ["OpenVINORuntime"]
        for ours, theirs in ((runtime.encode_texts(texts), onnxruntime.encode_texts(texts)),
                             (runtime.encode_images(list(pixels)), onnxruntime.encode_images(list(pixels)))):
            assert np.min(np.sum(ours * theirs, axis=1)) >= PRECISIONS[precision].gate.min_cosine
    result = tune_bundle(bundle, TuneSettings(repeats=2, precisions=("int8",)), save=False)
    bf16 = [OPENVINO_RUNTIME_BF16] if openvino_bf16_available() else []
    assert {c.provider for c in result.candidates if c.verified} == {"CPUExecutionProvider", "OpenVINORuntime", *bf16}
    # The full verification (every gate, batch independence) runs under it too, and names OpenVINO's build.
    verified = cli("verify", str(bundle), "--provider", "openvino-runtime")
    assert verified.returncode == 0, verified.stderr
    assert re.search(r"checked on: OpenVINORuntime, openvino \d", verified.stdout)


def test_openvino_bf16_is_held_to_the_16_bit_gate_where_the_cpu_computes_in_bf16(tiny_bundle: Path,
                                                                                  tmp_path: Path) -> None:
    """With OpenVINO's bf16 hint the fp32 graph no longer matches fp32's own gate, so it is checked against
    fp16's (the other 16-bit float variant), and tune times it. On a CPU without bf16 instructions the provider
    is not offered and asking for it is a one-line error (OpenVINO would quietly compute in f32)."""
    pytest.importorskip("openvino")
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    if not openvino_bf16_available():
        assert OPENVINO_RUNTIME_BF16 not in available_providers()
        with pytest.raises(InputError, match="bf16 instructions"):
            Encoder(bundle, provider="openvino-runtime-bf16", precision="fp32")
        return
    texts = ["a photo of a cat", "一只猫的照片", "ein Foto eines Hundes", "une photo d'une voiture rouge"]
    pixels = list(np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8))
    runtime = Encoder(bundle, provider="openvino-runtime-bf16", precision="fp32")  # checks itself on first use
    reference = Encoder(bundle, provider="cpu", precision="fp32")
    assert runtime.session(TEXTUAL).get_providers() == [OPENVINO_RUNTIME_BF16]
    cosines = np.concatenate([np.sum(runtime.encode_texts(texts) * reference.encode_texts(texts), axis=1),
                              np.sum(runtime.encode_images(pixels) * reference.encode_images(pixels), axis=1)])
    gate = gate_for("fp32", OPENVINO_RUNTIME_BF16)
    assert gate == PRECISIONS["fp16"].gate and cosines.min() >= gate.min_cosine
    assert cosines.min() < PRECISIONS["fp32"].gate.min_cosine  # computed in bf16 indeed
    result = tune_bundle(bundle, TuneSettings(repeats=2, providers=(OPENVINO_RUNTIME_BF16,),
                                              precisions=("fp32",)), save=False)
    assert result.candidates and all(c.verified and c.items_per_s for c in result.candidates)
    assert result.chosen[VISUAL] == {"provider": OPENVINO_RUNTIME_BF16, "precision": "fp32"}
    # verify's report names the gate it held fp32 to under this provider
    verified = cli("verify", str(bundle), "--provider", "openvino-runtime-bf16", "--precision", "fp32", "--json")
    assert json.loads(verified.stdout)["gates"]["fp32"] == dataclasses.asdict(gate), verified.stderr


def test_serve_follows_the_profile(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` with its default --precision auto runs what tune chose on this machine, and says so in /health."""
    pytest.importorskip("starlette")
    from ..serve.conftest import Server

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    slow_down(monkeypatch, "int8")
    tune_bundle(bundle, CPU_ONLY)
    server = Server.start(str(bundle), log_path=tmp_path / "serve.log")
    try:
        health = server.client().get("/health").json()
    finally:
        assert server.stop() == 0, server.log()
    assert health["precision"] == {VISUAL: "fp32", TEXTUAL: "fp32"} and health["tuned"] == list(TOWERS)
    assert health["tower_providers"] == {VISUAL: "CPUExecutionProvider", TEXTUAL: "CPUExecutionProvider"}
