"""pyproject.toml builds without setuptools' deprecation warnings, and says its licence the current way."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_metadata_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="77")  # the first to read an SPDX licence string
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src" / "altclip_onnx", project / "src" / "altclip_onnx",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    (tmp_path / "metadata").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import build_meta; "
                               "print(build_meta.prepare_metadata_for_build_wheel('../metadata'))"],
        cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Deprecat" not in done.stderr, done.stderr
    metadata = (tmp_path / "metadata" / done.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    # pip builds in isolation with what build-system asks for: a setuptools that reads the SPDX string
    assert '\nrequires = ["setuptools>=77"]\n' in (ROOT / "pyproject.toml").read_text()
