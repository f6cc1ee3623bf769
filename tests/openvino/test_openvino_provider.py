"""OpenVINO as a verified provider, with the real onnxruntime-openvino package.

onnxruntime-openvino replaces the ``onnxruntime`` module, so it lives in its own venv (.venv-openvino, made by
scripts/test.sh) and these tests, run from .venv, drive that venv's Python as subprocesses:

- ``verify --provider openvino`` passes every variant of the tiny bundle, reports the rows it ran on OpenVINO
  and records them under OpenVINOExecutionProvider;
- ``Encoder(provider="openvino")`` gives, per variant, vectors within the variant's gate of onnxruntime's CPU
  fp32 vectors, after its first-use check recorded a verdict keyed by OpenVINO; onnxruntime's profile of those
  very sessions shows which nodes OpenVINO ran and which onnxruntime's CPU provider took back;
- a swapped int8 graph fails ``verify --provider openvino`` (exit 3) naming tower and precision.

Without .venv-openvino they skip locally and fail under CI (tests/conftest.py ``missing()``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altclip_onnx import Encoder
from altclip_onnx.bundle import TEXTUAL, TOWERS, VERIFIED_RECORD, VISUAL, read_manifest
from altclip_onnx.precisions import PRECISIONS
from altclip_onnx.verification.selfcheck import SECTION

from ..cases import PARITY_TEXTS
from ..conftest import missing
from ..verification.test_verification import copy_bundle, swap_int8_graph

OPENVINO = "OpenVINOExecutionProvider"
RUNTIME = "onnxruntime-openvino"
VENV_PYTHON = Path(__file__).resolve().parents[2] / ".venv-openvino" / "bin" / "python"
JOBS_SCRIPT = Path(__file__).with_name("jobs.py")
TIMEOUT = 300  # seconds per child; one takes 2-5 s on the tiny bundle (Zen 4, 2 cores)
SUBGRAPH = "OpenVINO-EP-subgraph"  # jobs.py's name for the nodes OpenVINO compiled
# Op types onnxruntime may keep on its CPU provider, per variant. onnxruntime-openvino 1.24 does not claim the
# com.microsoft MatMulIntegerToFloat of the int8 graphs (OpenVINO's own runtime compiles it: tests/convert), so
# int8 runs its integer GEMMs on onnxruntime's CPU kernels and everything around them in OpenVINO.
CPU_OPS = {"fp32": set(), "fp16": set(), "int8": {"MatMulIntegerToFloat"}}

if not VENV_PYTHON.is_file():
    missing(f"{VENV_PYTHON} is missing: scripts/test.sh makes .venv-openvino (onnxruntime-openvino in place "
            "of onnxruntime)")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(VENV_PYTHON), *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{VENV_PYTHON} {' '.join(args)}: still running after {TIMEOUT} s", pytrace=False)


def verify(bundle: Path, *options: str) -> subprocess.CompletedProcess:
    return run("-m", "altclip_onnx.cli", "verify", str(bundle), "--provider", "openvino", *options, cwd=bundle.parent)


def verdicts(bundle: Path) -> list[dict[str, Any]]:
    """The numbers verdicts .verified.json holds (verify's and the first-use check's)."""
    return list(json.loads((bundle / VERIFIED_RECORD).read_text(encoding="utf-8"))[SECTION].values())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


GEMM_ROWS = 256  # activation rows per probe: eight tiles of 32


def gemm_model(weight: np.ndarray) -> bytes:
    """y = (a - 128) @ weight as the int8 graphs compute it (MatMulIntegerToFloat, uint8 rows around 128)."""
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(1, np.float32), "one"),
                 numpy_helper.from_array(np.array(128, np.uint8), "zero_point")]
    node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "one", "one", "zero_point"], ["y"],
                            domain="com.microsoft")
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], constants)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString()


@pytest.fixture(scope="module")
def wrong_gemm_towers(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The towers whose int8 graph has an integer GEMM shape that onnxruntime-openvino computes wrongly on this
    CPU, held against numpy's exact product. onnxruntime 1.21-1.24 (onnxruntime-openvino 1.24.1 runs the int8
    GEMMs on its kernels) gets the last row of each 32-row tile wrong on AMX CPUs at widths of 24 mod 32, such
    as the tiny text tower's transformation (docs/limits.md); elsewhere this is empty. The first-use check and
    verify must refuse exactly those towers at int8."""
    import onnx

    folder = tmp_path_factory.mktemp("gemm")
    rng = np.random.default_rng(0)
    wrong = set()
    for tower in TOWERS:
        graph = onnx.load(str(tiny_bundle / tower / "model.int8.onnx")).graph
        shapes = {tuple(i.dims) for i in graph.initializer
                  if i.name in {n.input[1] for n in graph.node if n.op_type == "MatMulIntegerToFloat"}}
        assert shapes, tower
        for k, n in sorted(shapes):
            a = rng.integers(1, 256, size=(GEMM_ROWS, k), dtype=np.uint8)
            weight = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
            name = f"{tower}-{k}x{n}"
            (folder / f"{name}.onnx").write_bytes(gemm_model(weight))
            np.savez(folder / f"{name}-in.npz", a=a)
            spec = {"model": str(folder / f"{name}.onnx"), "provider": "openvino",
                    "inputs": str(folder / f"{name}-in.npz"), "outputs": str(folder / f"{name}-out.npz")}
            (folder / f"{name}.json").write_text(json.dumps(spec), encoding="utf-8")
            result = run(str(JOBS_SCRIPT), "run", str(folder / f"{name}.json"), str(folder / f"{name}-done.json"),
                         cwd=folder)
            assert result.returncode == 0, result.stderr[-4000:]
            with np.load(folder / f"{name}-out.npz") as out:
                got = out["arr_0"]
            if np.abs(got - (a.astype(np.int64) - 128) @ weight.astype(np.int64)).max() > 0.5:
                wrong.add(tower)
    return wrong


@pytest.fixture(scope="module")
def variants(tiny_bundle: Path) -> list[str]:
    manifest = read_manifest(tiny_bundle)
    return [p for p in PRECISIONS if all(p in manifest.towers[tower] for tower in TOWERS)]


@pytest.fixture(scope="module")
def cpu_fp32(tiny_bundle: Path, fixture_photos: list[Path], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, np.ndarray]:
    """What OpenVINO is held against: onnxruntime's CPU provider at fp32 in this (.venv) process."""
    encoder = Encoder(copy_bundle(tiny_bundle, tmp_path_factory.mktemp("cpu") / "bundle"), provider="cpu",
                      precision="fp32")
    return {TEXTUAL: encoder.encode_texts(PARITY_TEXTS), VISUAL: encoder.encode_images(fixture_photos)}


def test_the_bundle_has_every_variant(variants: list[str]) -> None:
    assert variants == list(PRECISIONS)  # else the tests below check fewer variants than they claim


def refused_here(precision: str, wrong_gemm_towers: set[str]) -> list[str]:
    """The towers whose ``precision`` variant this machine's onnxruntime-openvino computes wrongly."""
    return sorted(wrong_gemm_towers) if precision == "int8" else []


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_verify_passes_on_openvino_and_records_it(precision: str, tiny_bundle: Path, tmp_path: Path,
                                                  wrong_gemm_towers: set[str]) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    result = verify(bundle, "--precision", precision, "--json")
    refused = refused_here(precision, wrong_gemm_towers)
    if refused:  # a wrong GEMM here: refused in one line naming the tower (exit 3)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 3 and last.startswith("error: "), result.stderr[-4000:]
        assert {tower for tower in TOWERS if f"{tower} {precision}" in last} == set(refused), last
        return
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["passed"] and not report["failures"]
    assert report["where"].startswith(f"{OPENVINO}, {RUNTIME} ")
    rows = report["rows"]
    assert {row["precision"] for row in rows} == {precision}
    assert {row["tower"] for row in rows} == set(TOWERS) and all(row["passed"] for row in rows)
    recorded = {(v["tower"], v["precision"]): v for v in verdicts(bundle)}
    assert set(recorded) == {(tower, precision) for tower in TOWERS}
    for verdict in recorded.values():
        assert verdict["by"] == "verify" and verdict["where"]["provider"] == OPENVINO
        assert verdict["where"]["runtime"].startswith(f"{RUNTIME} ")


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_encoder_on_openvino_is_within_the_gate_of_cpu_fp32(precision: str, tiny_bundle: Path,
                                                            fixture_photos: list[Path], cpu_fp32: dict[str, np.ndarray],
                                                            tmp_path: Path, wrong_gemm_towers: set[str]) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    spec, out = tmp_path / "spec.json", tmp_path / "out.json"
    spec.write_text(json.dumps({"bundle": str(bundle), "precision": precision, "texts": PARITY_TEXTS,
                                "images": [str(p) for p in fixture_photos]}), encoding="utf-8")
    result = run(str(JOBS_SCRIPT), "encode", str(spec), str(out), cwd=tmp_path)
    refused = refused_here(precision, wrong_gemm_towers)
    if refused:  # the first-use check refuses the first tower it meets (texts come first) instead of wrong vectors
        assert result.returncode != 0 and not out.exists()
        assert f"VerificationError: {bundle}: the {refused[0]} tower at {precision} on {OPENVINO}" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-4000:]
    done = json.loads(out.read_text(encoding="utf-8"))

    # OpenVINO ran the graphs: it compiled subgraphs, and onnxruntime's CPU provider took back only what it may.
    for tower, info in done["towers"].items():
        assert info["providers"][0] == OPENVINO, (tower, info["providers"])
        assert info["nodes"].get(OPENVINO, {}).get(SUBGRAPH, 0) >= 1, (tower, info["nodes"])
        on_cpu = set(info["nodes"].get("CPUExecutionProvider", {}))
        assert on_cpu <= CPU_OPS[precision], f"{tower} {precision}: onnxruntime's CPU provider ran {info['nodes']}"

    gate = PRECISIONS[precision].gate
    for tower, key in ((TEXTUAL, "texts"), (VISUAL, "images")):
        got, expected = np.asarray(done[key], dtype=np.float32), cpu_fp32[tower]
        assert got.shape == expected.shape
        cos = cosines(got, expected)
        assert cos.min() >= gate.min_cosine, f"{tower} {precision}: min cosine {cos.min():.7f}"
        if gate.mean_cosine is not None:
            assert cos.mean() >= gate.mean_cosine, f"{tower} {precision}: mean cosine {cos.mean():.7f}"
        if gate.max_abs_rel is not None:
            limit = gate.max_abs_rel * max(1.0, float(np.abs(expected).max()))
            assert np.abs(got - expected).max() <= limit, f"{tower} {precision}: max |diff| over {limit}"

    # The first-use check ran on OpenVINO (verify never ran on this copy) and recorded its pass.
    checked = [v for v in verdicts(bundle) if v["where"]["provider"] == OPENVINO]
    assert {(v["tower"], v["precision"]) for v in checked} == {(tower, precision) for tower in TOWERS}
    assert all(v.get("by") != "verify" and v["where"]["runtime"].startswith(f"{RUNTIME} ") for v in checked)


def test_verify_on_openvino_refuses_a_swapped_int8_graph(tiny_bundle: Path, other_bundle: Path,
                                                          tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    swap_int8_graph(bundle, other_bundle, VISUAL)
    integrity = run("-m", "altclip_onnx.cli", "verify", str(bundle), "--integrity", cwd=tmp_path)
    assert integrity.returncode == 0, integrity.stderr  # the checksums agree: only the numbers can tell
    result = verify(bundle)
    assert result.returncode == 3, result.stderr[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "visual int8" in last and "cosine" in last
    assert "Traceback" not in result.stderr
