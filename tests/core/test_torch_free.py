"""Everything a user runs after export works with torch, transformers, sentencepiece and onnx absent.

A subprocess blocks those packages (as if the [export] extra were not installed), then imports
altclip_onnx, embeds images and texts, classifies, checks integrity and runs the CLI in-process.
Its numbers must equal the ones computed here, in a process that has everything installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import altclip_onnx
from altclip_onnx import Encoder
from altclip_onnx.errors import install_command

from ..blocking import BLOCK_EXPORT_SIDE, BLOCKED

skdata = pytest.importorskip("skimage.data")

TEXTS = ["A photo of a cat.", "一只猫在沙发上睡觉。", "صورة لقطة", "Ein Foto einer Rakete.", ""]
LABELS = ["cat", "rocket", "咖啡"]

# Runs in a fresh interpreter: argv = bundle, image paths as JSON, texts as JSON, labels as JSON.
SCRIPT = BLOCK_EXPORT_SIDE + r"""
import contextlib
import io
import json
import re


def run_cli(*args):
    from altclip_onnx import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(list(args), prog_name="altclip-onnx")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


bundle, images, texts, labels = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])

import altclip_onnx
from altclip_onnx import *  # noqa: F403  every public name imports without torch

encoder = altclip_onnx.Encoder(bundle)
result = {
    "all": list(altclip_onnx.__all__),
    "images": encoder.encode_images(images).tolist(),
    "texts": encoder.encode_texts(texts).tolist(),
    "probabilities": encoder.classify(images, labels).tolist(),
    "integrity": altclip_onnx.check_integrity(bundle),
    "verify": run_cli("verify", bundle, "--integrity"),
    "doctor": run_cli("doctor"),
    "export": run_cli("export", bundle, "-o", bundle + "-never-written"),
    "verify_against_pytorch": run_cli("verify", bundle, "--model", "manifest"),
}
import shutil
import tempfile

copy = shutil.copytree(bundle, tempfile.mkdtemp() + "/bundle")  # verify writes its report into the bundle
result["verify_stored"] = run_cli("verify", copy)
import importlib.util

result["blocked"] = {}
for name in ("torch", "transformers.models.altclip", "sentencepiece", "onnx.helper"):
    try:
        __import__(name)
        result["blocked"][name] = "imported"
    except ImportError as exc:
        result["blocked"][name] = type(exc).__name__
result["find_spec"] = [importlib.util.find_spec(name) is None for name in BLOCKED]
result["loaded"] = sorted(
    m for m, module in sys.modules.items() if module is not None and m.split(".")[0] in BLOCKED
)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("torch-free-photos")
    paths = []
    for name in ("astronaut", "chelsea", "camera"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def blocked_run(tiny_bundle: Path, photos: list[str]) -> dict:
    src = Path(altclip_onnx.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle), json.dumps(photos), json.dumps(TEXTS), json.dumps(LABELS)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_runtime_needs_no_export_packages(blocked_run: dict, tiny_bundle: Path, photos: list[str]) -> None:
    assert blocked_run["loaded"] == []  # not torch, transformers, sentencepiece or onnx (onnxruntime is fine)
    # The block itself works: each package is unimportable and looks uninstalled.
    assert set(blocked_run["blocked"].values()) == {"ModuleNotFoundError"}
    assert blocked_run["find_spec"] == [True] * len(BLOCKED)
    encoder = Encoder(tiny_bundle)
    np.testing.assert_allclose(np.array(blocked_run["images"]), encoder.encode_images(photos), atol=1e-6)
    np.testing.assert_allclose(np.array(blocked_run["texts"]), encoder.encode_texts(TEXTS), atol=1e-6)
    np.testing.assert_allclose(np.array(blocked_run["probabilities"]), encoder.classify(photos, LABELS), atol=1e-6)
    assert np.array(blocked_run["images"]).shape == (len(photos), encoder.embedding_dim)
    assert blocked_run["integrity"] == []
    assert blocked_run["all"] == list(altclip_onnx.__all__)


def test_cli_verify_integrity_and_doctor_run_without_torch(blocked_run: dict) -> None:
    verify = blocked_run["verify"]
    assert verify["code"] == 0, verify["stderr"]
    assert "files match the manifest" in verify["stdout"]
    stored = blocked_run["verify_stored"]  # the PyTorch reference the bundle carries: no torch needed
    assert stored["code"] == 0, stored["stderr"]
    assert "verification passed" in stored["stdout"]
    doctor = blocked_run["doctor"]
    assert doctor["code"] == 0, doctor["stderr"]
    assert "onnxruntime" in doctor["stdout"].lower()


@pytest.mark.parametrize(
    ("command", "feature"), [("export", "export"), ("verify_against_pytorch", "verify against PyTorch afresh")]
)
def test_export_features_say_how_to_install_them_in_one_line(blocked_run: dict, command: str, feature: str) -> None:
    run = blocked_run[command]
    assert run["code"] != 0
    lines = [line for line in run["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1, run["stderr"]
    assert install_command("export") in lines[0] and feature in lines[0]
    assert "Traceback" not in run["stderr"] and run["stdout"] == ""


def test_export_refusal_writes_nothing(blocked_run: dict, tiny_bundle: Path) -> None:
    assert blocked_run["export"]["code"] != 0
    assert not Path(str(tiny_bundle) + "-never-written").exists()


EXPECTED_ALL = [
    "AltclipOnnxError",
    "BundleError",
    "BusyError",
    "CacheError",
    "DEFAULT_TEMPLATES",
    "EmbedOptions",
    "Encoder",
    "Evaluation",
    "ExportError",
    "FORMAT_VERSION",
    "Hit",
    "Index",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "Manifest",
    "MissingDependencyError",
    "ModelIdentity",
    "OutputError",
    "PRECISION_NAMES",
    "SourceError",
    "StoreError",
    "TipAdapter",
    "VerificationError",
    "VerifyReport",
    "__version__",
    "build_cache",
    "check_integrity",
    "embed_images_to_file",
    "embed_texts_to_file",
    "evaluate",
    "iter_image_files",
    "read_embeddings",
    "read_manifest",
    "require_integrity",
    "verify_bundle",
]
ERRORS = ["BundleError", "BusyError", "CacheError", "ExportError", "InputError", "IntegrityError", "OutputError",
          "SourceError", "StoreError", "VerificationError", "MissingDependencyError"]


def test_public_surface() -> None:
    assert sorted(altclip_onnx.__all__) == sorted(EXPECTED_ALL)
    assert len(set(altclip_onnx.__all__)) == len(altclip_onnx.__all__)
    for name in altclip_onnx.__all__:
        assert getattr(altclip_onnx, name) is not None, name
    for name in ERRORS:  # one tree: a caller can catch everything the library raises on purpose
        assert issubclass(getattr(altclip_onnx, name), altclip_onnx.AltclipOnnxError), name
    assert issubclass(altclip_onnx.IntegrityError, altclip_onnx.BundleError)
    assert issubclass(altclip_onnx.Interrupted, KeyboardInterrupt)  # Ctrl-C stays Ctrl-C
    assert callable(altclip_onnx.check_integrity) and isinstance(altclip_onnx.DEFAULT_TEMPLATES, tuple)


@pytest.mark.skipif(os.environ.get("ALTCLIP_RUNTIME_ONLY") != "1", reason="only in the runtime-only environment")
def test_this_environment_really_lacks_the_export_packages() -> None:
    """scripts/test.sh runs the runtime-side tests in .venv-runtime: prove torch & co. are really absent there."""
    import importlib.util

    assert [m for m in BLOCKED if importlib.util.find_spec(m) is not None] == []


# Test folders that scripts/test.sh does not run in .venv-runtime, and what they need that it lacks.
NOT_RUNTIME_ONLY = {
    "export": "torch, transformers, onnx, sentencepiece ([export])",
    "convert": "onnx ([convert]) and Node",
    "isa": "onnx, to build its graphs ([export]) and qemu-user",
    "serve": "starlette and uvicorn ([serve])",
    "distributed": "Ray ([distributed])",
    "postgres": "psycopg and pgserver ([postgres], [test-services])",
    "openvino": "onnxruntime-openvino (.venv-openvino)",
    "docs": "mkdocs ([docs]) and a fresh checkout with the package index",
    "web": "onnx ([convert]) to write the site's model, Node and npm to bundle its page, chromium and playwright",
}


def test_every_test_folder_runs_torch_free_or_says_what_it_needs() -> None:
    """A new test folder is run in the runtime-only environment (RUNTIME_TESTS in scripts/test.sh) or named
    above: torch-free coverage does not shrink because a folder was forgotten."""
    tests = Path(__file__).resolve().parents[1]
    script = (tests.parent / "scripts" / "test.sh").read_text(encoding="utf-8")
    listed = re.search(r"^RUNTIME_TESTS=\(([^)]*)\)$", script, re.MULTILINE)
    assert listed, "scripts/test.sh: no RUNTIME_TESTS=(...) line"
    runtime = [Path(entry).name for entry in listed.group(1).split()]
    folders = {path.parent.name for path in tests.glob("*/test_*.py")}
    assert set(runtime) <= folders, "RUNTIME_TESTS names a folder without tests"
    assert not set(runtime) & set(NOT_RUNTIME_ONLY)
    assert sorted(folders - set(NOT_RUNTIME_ONLY)) == sorted(runtime)
