"""altclip-onnx bench: a bundle's own variants timed side by side, with the machine named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert "about" in done.stderr and "min" in done.stderr  # an estimate of how long it takes, up front
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
