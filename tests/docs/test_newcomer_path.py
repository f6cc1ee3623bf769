"""The README's five-minute path, walked as a newcomer walks it.

The commands are the README's own: every ```sh block between ``<!-- newcomer-path`` and
``<!-- /newcomer-path -->``, run in order by one bash (``set -euo pipefail``) in a copy of the checkout that has
no virtual environment, so ``scripts/export.sh`` creates a fresh ``.venv`` and pip installs every package from
the package index, as on a new machine. No model hub is reachable (``HF_HUB_OFFLINE=1``, ``HF_ENDPOINT`` at a
closed local port). The path exports, verifies, installs the extras as written, indexes the sample photos,
searches them by text and by image, starts ``serve``, embeds through the ``openai`` client and stops the
service with SIGTERM, which must exit 0.

Two substitutions, and only these:

- ``m18 --random-init`` in the export command becomes the tests' tiny checkpoint (``checkpoints/AltCLIP-tiny``
  of the fixture, transformers' layout): the same export, verification and int8 code in seconds, instead of
  the full-size architecture's few minutes and 8 GB. The bundle keeps the README's path.
- port 8000 becomes a free loopback port, so a service already running here does not answer for ours.

Everything else runs exactly as the README writes it. It takes 2-3 minutes (pip, mostly).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import free_port, missing

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- newcomer-path", "<!-- /newcomer-path -->"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXPORT_SOURCE = "scripts/export.sh m18 --random-init "
PORT = "8000"
TIME_LIMIT = 900  # seconds for the whole path; it takes 2-3 minutes
# What a clone does not have: at the top, environments, build output, bundles, the site; anywhere, caches.
NOT_IN_A_CLONE_AT_THE_TOP = (".git", ".venv*", "build", "dist", "onnx", "model", "site", "bench-out", "photos.idx")
NOT_IN_A_CLONE = ("__pycache__", "*.egg-info", ".pytest_cache", "*.pyc", "node_modules")


def newcomer_commands() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(START) == 1 and readme.count(END) == 1, "README.md: one newcomer-path section"
    section = readme.split(START, 1)[1].split(END, 1)[0]
    blocks = SH_BLOCK.findall(section)
    assert blocks, "README.md: no sh block in the newcomer-path section"
    return "".join(blocks)


def copy_checkout(destination: Path) -> None:
    """The checkout's files as a clone has them (no venvs, no build output)."""
    top, anywhere = shutil.ignore_patterns(*NOT_IN_A_CLONE_AT_THE_TOP), shutil.ignore_patterns(*NOT_IN_A_CLONE)

    def ignore(folder: str, names: list[str]) -> set[str]:
        return anywhere(folder, names) | (top(folder, names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, destination, ignore=ignore)


def fresh_environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX") and not k.startswith("ALTCLIP_")}
    # No venv of this checkout on PATH: the README's commands name .venv/bin/ themselves.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not Path(p).resolve().is_relative_to(ROOT))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9",  # no model hub
               HF_HOME=str(home / "hf"), XDG_CACHE_HOME=env.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))
    return env


def test_the_readme_path_works_as_written(fixture_dir: Path, tmp_path: Path) -> None:
    for tool in ("bash", "curl", "python3"):
        if shutil.which(tool) is None:
            missing(f"the README's path needs {tool}: apt-get install -y {tool}")
    commands = newcomer_commands()
    assert commands.count(EXPORT_SOURCE) == 1 and PORT in commands, "the README's path changed: update this test"
    tiny = fixture_dir / "checkpoints" / "AltCLIP-tiny"
    port = str(free_port())
    script = "set -euo pipefail\n" + commands.replace(EXPORT_SOURCE, f"scripts/export.sh {tiny} ").replace(PORT, port)

    checkout = tmp_path / "altclip-onnx"
    copy_checkout(checkout)
    assert not (checkout / ".venv").exists()
    (tmp_path / "path.sh").write_text(script, encoding="utf-8")
    log = tmp_path / "path.log"
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(["bash", str(tmp_path / "path.sh")], cwd=checkout, env=fresh_environment(tmp_path),
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            status = process.wait(timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            status = None
        finally:  # the service, if the path stopped before stopping it
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    took = time.monotonic() - started
    output = log.read_text(encoding="utf-8", errors="replace")
    tail = "\n".join(output.splitlines()[-40:])
    if status is None:
        pytest.fail(f"the README's path did not finish in {TIME_LIMIT} s:\n{tail}")
    assert status == 0, f"the README's path failed (exit {status}) after {took:.0f} s:\n{tail}"

    assert "verification passed" in output, tail
    assert (checkout / "onnx" / "AltCLIP-m18-random" / "manifest.json").is_file()
    assert re.search(r"^photos\.idx: 4 added, ", output, re.MULTILINE), tail  # the four sample photos
    assert '"path"' in output and "chelsea.jpg" in output, tail  # search --image ... --json
    assert re.search(r"^2 embeddings of 16 numbers$", output, re.MULTILINE), tail  # the openai client's call
    assert "stopped" in output, tail  # the service shut down on SIGTERM
    print(f"the README's path took {took:.0f} s")
