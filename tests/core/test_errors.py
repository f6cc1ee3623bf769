"""errors.py: the pip command in a missing-dependency error fits how altclip-onnx was installed."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import pytest

from altclip_onnx import errors
from altclip_onnx.errors import MissingDependencyError, install_command

CHECKOUT = Path(__file__).resolve().parents[2]


def installed_as(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_url: dict | None) -> None:
    """Make altclip-onnx look installed with this direct_url.json (None: from an index, no record)."""
    info = tmp_path / "site" / "altclip_onnx-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: altclip-onnx\nVersion: 0.1.0\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    monkeypatch.setattr(errors.metadata, "distributions",
                        lambda **kwargs: [metadata.PathDistribution(info)])
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)  # "pip" is this Python's (see the tests of _pip below)


def test_an_editable_checkout_gets_pip_install_e_of_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "my checkout"
    installed_as(tmp_path, monkeypatch, {"url": folder.as_uri(), "dir_info": {"editable": True}})
    assert install_command("search") == f"pip install -e '{folder}[search]'"
    assert str(MissingDependencyError("search", "search", "usearch")) == (
        f"search needs the [search] extra (usearch): pip install -e '{folder}[search]'")


def test_a_folder_installed_without_e_gets_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed_as(tmp_path, monkeypatch, {"url": (tmp_path / "src").as_uri(), "dir_info": {}})
    assert install_command("hub,convert") == f"pip install '{tmp_path / 'src'}[hub,convert]'"


def test_a_git_install_gets_its_url_and_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed_as(tmp_path, monkeypatch, {"url": "https://example.org/a.git",
                                         "vcs_info": {"vcs": "git", "commit_id": "0efd7ee", "requested_revision": "main"}})
    assert install_command("serve") == "pip install 'altclip-onnx[serve] @ git+https://example.org/a.git@0efd7ee'"


def test_a_package_from_an_index_gets_the_index_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed_as(tmp_path, monkeypatch, None)
    assert install_command("search") == "pip install 'altclip-onnx[search]'"


def test_this_checkout_names_itself_when_installed_editable() -> None:
    recorded = next((d.read_text("direct_url.json") for d in metadata.distributions(name="altclip-onnx")
                     if d.read_text("direct_url.json")), None)
    origin = json.loads(recorded) if recorded else {}
    if not (origin.get("dir_info", {}).get("editable") and origin.get("url") == CHECKOUT.as_uri()):
        pytest.skip(f"altclip-onnx is not installed with pip install -e from {CHECKOUT}")
    assert str(MissingDependencyError("search", "search", "usearch")).endswith(f"pip install -e '{CHECKOUT}[search]'")


def test_a_virtual_environment_that_is_not_activated_gets_its_own_python(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """.venv/bin/altclip-onnx run from a shell without the venv activated: a bare pip is another Python's."""
    installed_as(tmp_path, monkeypatch, None)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.delenv("VIRTUAL_ENV")
    assert install_command("search") == f"{tmp_path}/venv/bin/python -m pip install 'altclip-onnx[search]'"
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path / "venv"))  # activated: its pip comes first on PATH
    assert install_command("search") == "pip install 'altclip-onnx[search]'"
    monkeypatch.delenv("VIRTUAL_ENV")
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)  # not a virtual environment at all
    assert install_command("search") == "pip install 'altclip-onnx[search]'"
