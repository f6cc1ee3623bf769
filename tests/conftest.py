"""The fixture every test shares: tiny checkpoints, a tiny bundle and the PyTorch reference (tests/fixture.py).

With ``ALTCLIP_TEST_FIXTURE=FOLDER`` the tests use a fixture built beforehand (``python -m tests.fixture
FOLDER``, with the export extra); that is how the runtime tests run in an environment without torch.
Without it, the fixture is built once per session in a temporary folder, which needs torch.

This file imports neither torch nor transformers: tests/runtime must run where they are not installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import onnxruntime  # noqa: F401  before any test module imports usearch, whose wheels (2.26.2+) crash
import pytest  # onnxruntime's initialization when loaded first (see altclip_onnx.search.store.local)

from .reference import Reference

FIXTURE_ENV = "ALTCLIP_TEST_FIXTURE"


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(FIXTURE_ENV)
    if given:
        folder = Path(given).resolve()  # tests change directories; the fixture must still be found
        if not (folder / "COMPLETE").is_file():
            pytest.exit(f"{FIXTURE_ENV}={given}: not a complete fixture; build it with "
                        f"'python -m tests.fixture {given}' (needs the [export] extra)", returncode=2)
        return folder
    if importlib.util.find_spec("torch") is None:
        pytest.exit(f"torch is not installed: build the fixture elsewhere ('python -m tests.fixture DIR') "
                    f"and set {FIXTURE_ENV}=DIR", returncode=2)
    from .fixture import build

    return build(tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="session")
def tiny_bundle(fixture_dir: Path) -> Path:
    """The tiny transformers-layout checkpoint exported (fp32, int8, fp16; verified). Do not modify it:
    copy it first (shutil.copytree) to corrupt or edit it."""
    return fixture_dir / "bundle"


@pytest.fixture(scope="session")
def ref(fixture_dir: Path) -> Reference:
    return Reference(fixture_dir)


@pytest.fixture(scope="session")
def fixture_photos(fixture_dir: Path) -> list[Path]:
    """tests/cases.py PHOTOS as files, in that order (the reference's photo_* arrays follow it)."""
    from .cases import PHOTOS

    return [fixture_dir / "photos" / name for name in PHOTOS]
