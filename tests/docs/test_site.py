"""The documentation: README is a front page, its links resolve, and the MkDocs site builds in strict mode.

Strict mode (mkdocs.yml) turns every warning into a failure: a link or an anchor that points nowhere, a page in
docs/ that the nav leaves out, a nav entry without its page. README.md, benchmarks/README.md and CONTRIBUTING.md
are pages of the site too (scripts/mkdocs_hooks.py), so their links are checked twice: as files here, and as
pages by the build.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import missing

ROOT = Path(__file__).resolve().parents[2]
FRONT_PAGE_LINES = 250
OUTSIDE_THE_SITE = ("README.md", "CONTRIBUTING.md", "benchmarks/README.md")
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def relative_links(markdown: str) -> list[str]:
    prose = FENCE.sub("", markdown)  # code blocks hold code, not links
    return [t for t in LINK.findall(prose) if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:|^#", t)]


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= FRONT_PAGE_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


@pytest.mark.parametrize("name", OUTSIDE_THE_SITE)
def test_relative_links_resolve_to_files(name: str) -> None:
    page = ROOT / name
    links = relative_links(page.read_text(encoding="utf-8"))
    assert links or name != "README.md"
    broken = [t for t in links if not (page.parent / t.split("#")[0]).is_file()]
    assert not broken, f"{name}: links to missing files: {broken}"


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        missing("mkdocs and mkdocs-material are not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about its successor
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    pages = {p.parent.relative_to(site).as_posix() for p in site.rglob("index.html")}
    expected = {p.stem for p in (ROOT / "docs").glob("*.md") if p.stem != "index"} | {"readme", "benchmarks",
                                                                                      "contributing"}
    assert expected <= pages, expected - pages
    readme = (site / "readme" / "index.html").read_text(encoding="utf-8")
    assert 'href="../serve/"' in readme and 'href="../benchmarks/"' in readme  # links rewritten to the site's pages
