"""altclip-onnx bench: a bundle's own variants timed side by side, with the machine named."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from altclip_onnx.bundle import VISUAL, read_manifest
from altclip_onnx.runtime.doctor import cpu_features, cpu_summary


def test_bench_runs_on_the_tiny_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "altclip_onnx.cli", "bench", str(tiny_bundle), "--repeats", "2",
         "--batch-sizes", "8", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for name in ("fp32", "int8", "fp16", "visual tower", "textual tower", "peak RSS"):
        assert name in done.stdout
    # The header names the CPU and the instruction sets int8 speed depends on.
    assert cpu_summary() in done.stdout.splitlines()[0]
    # Up front: what is loaded, then an estimate of the whole run (peak memory included), in seconds here
    steps = [line.split("] ", 1)[1] for line in done.stderr.splitlines() if line.startswith("[")]
    assert steps[0] == "loading 6 graphs (2 MB); how long the run takes follows one call of each"
    assert re.fullmatch(r"timing 6 graphs at batch 1 and 8, then their peak memory in fresh processes: "
                        r"about \d+ s \(Ctrl-C stops\)", steps[1]), steps[1]
    data = json.loads(out.read_text())
    assert data["machine"]["cpu_features"] == cpu_features()
    assert {r["name"] for r in data["results"]} == {"fp32", "int8", "fp16"}
    assert all(r["latency_ms"] > 0 and r["peak_rss_mb"] > 0 for r in data["results"])
    assert data["machine"]["logical_cpus"] >= 1


def test_bench_json_flag_prints_json(tiny_bundle: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "altclip_onnx.cli", "bench", str(tiny_bundle), "--repeats", "1", "--batch-sizes", "2",
         "--precision", "fp32,int8", "--json"], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert {r["name"] for r in json.loads(done.stdout)["results"]} == {"fp32", "int8"}


def slow_visual_graph(path: Path, side: int = 2048, steps: int = 40) -> None:
    """A stand-in image graph that takes seconds per call whatever the batch: ``steps`` products of two
    side x side matrices made from the input (so nothing is folded away when the session loads)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["pixel_values"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Add", ["nothing", "entry"], ["value"]),
             helper.make_node("Expand", ["value", "shape"], ["y0"])]
    nodes += [helper.make_node("MatMul", [f"y{i}", "y0"], [f"y{i + 1}"]) for i in range(steps)]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info(f"y{steps}", TensorProto.FLOAT, [side, side])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("entry", TensorProto.FLOAT, [], [1.0 / side]),
         helper.make_tensor("shape", TensorProto.INT64, [2], [side, side])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_ctrl_c_stops_bench_within_a_call(tiny_bundle: Path, tmp_path: Path) -> None:
    """SIGINT while onnxruntime is inside a call of many seconds: bench stops within a second or two (it used
    to wait for the call to return: tens of seconds for a full-size batch of 32), one line, exit 130."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    slow_visual_graph(bundle / read_manifest(bundle).towers[VISUAL]["fp32"].path)
    process = subprocess.Popen([sys.executable, "-m", "altclip_onnx.cli", "bench", str(bundle), "--precision", "fp32"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def when_loaded() -> None:
        assert process.stderr is not None
        assert "loading 2 graphs" in process.stderr.readline()  # said before anything slow
        time.sleep(2)  # the graphs are loaded; the slow one is in its first call

    stopped, stdout, stderr = ctrl_c(process, when_loaded)
    assert process.returncode == 130, stderr
    assert stopped < 2.5, f"stopped {stopped:.1f}s after Ctrl-C"
    assert stderr.strip().splitlines() == ["interrupted; nothing half-written was left behind"] and stdout == ""


def ctrl_c(process: subprocess.Popen, wait: Callable[[], None]) -> tuple[float, str, str]:
    """After ``wait()``, Ctrl-C (SIGINT) the running ``process``: seconds until it ended, its stdout and stderr."""
    try:
        wait()
        assert process.poll() is None, "it ended before Ctrl-C"
        process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        stdout, stderr = process.communicate(timeout=120)
        return time.monotonic() - signalled, stdout, stderr
    finally:
        process.kill()
