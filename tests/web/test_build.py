"""``convert --to web`` from the command line as users type it: a relative output folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import env_with_src


def test_a_relative_output_folder_gets_the_pages_javascript(tiny_bundle: Path, tmp_path: Path) -> None:
    """esbuild runs in the npm packages' folder: an output path relative to the user's folder must still land in
    the site (it once went under the packages' cache, leaving a site without assets/)."""
    done = subprocess.run([sys.executable, "-m", "altclip_onnx.cli", "convert", str(tiny_bundle), "--to", "web",
                           "-o", "site"], cwd=tmp_path, env=env_with_src(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "site" / "assets").iterdir()) == ["app.js", "worker.js"]
    assert (tmp_path / "site" / "assets" / "app.js").stat().st_size > 1000
