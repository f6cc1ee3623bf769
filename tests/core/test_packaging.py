"""pyproject.toml builds without setuptools' deprecation warnings, and says its licence the current way."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

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


def test_every_file_the_package_reads_at_run_time_is_package_data() -> None:
    """The served page, export's samples and the web site's sources ship in the wheel (convert --to web works
    from a pip install): each file matches a [tool.setuptools.package-data] pattern."""
    package = ROOT / "src" / "altclip_onnx"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["altclip_onnx"]
    files = [p for folder in ("serve/static", "export/samples", "web/sources") for p in (package / folder).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.parent.name == "src" and p.suffix == ".js" for p in files)
    def shipped(relative: PurePosixPath) -> bool:  # setuptools' globs: "*" stays within one folder
        return any(len(relative.parts) == len(PurePosixPath(g).parts) and relative.match(g) for g in patterns)

    unshipped = [str(p.relative_to(package)) for p in files if not shipped(PurePosixPath(p.relative_to(package).as_posix()))]
    assert unshipped == []
