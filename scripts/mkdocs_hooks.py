"""MkDocs hook (mkdocs.yml, ``hooks:``): three Markdown files that live outside docs/ join the site.

README.md (the front page), benchmarks/README.md (measured figures) and CONTRIBUTING.md (development notes)
stay where a reader of the repository expects them, and the site shows them as pages too. Each file's links are
written for where it lies in the repository (README links ``docs/serve.md``, a page in docs/ links
``../benchmarks/README.md``); this hook rewrites those links to the site's page names, so the same text works in
both places. Any other link is left as it is, and ``mkdocs build --strict`` fails on one that points nowhere.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
DOCS = "docs/"
# repository path -> page name in the site
OUTSIDE = {"README.md": "readme.md", "benchmarks/README.md": "benchmarks.md", "CONTRIBUTING.md": "contributing.md"}
LINK = re.compile(r"(\]\()([^)\s]+)(\))")  # the target of an inline link or image: [text](target)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def on_files(files: Files, config: Any) -> Files:
    for source, page in OUTSIDE.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files


def repository_path(page_uri: str) -> str:
    """Where the page's Markdown lies in the repository."""
    for source, page in OUTSIDE.items():
        if page == page_uri:
            return source
    return DOCS + page_uri


def site_link(target: str, page_uri: str) -> str | None:
    """The link ``target`` (written for the file's place in the repository) as the site needs it, or None to
    leave it alone (an external link, an anchor on the same page, or a file that is not part of the site)."""
    if SCHEME.match(target) or target.startswith(("#", "/")):
        return None
    path, hash_, anchor = target.partition("#")
    here = posixpath.dirname(repository_path(page_uri))
    resolved = posixpath.normpath(posixpath.join(here, path))
    if resolved in OUTSIDE:
        name = OUTSIDE[resolved]
    elif resolved.startswith(DOCS):
        name = resolved[len(DOCS):]
    else:
        return None
    return posixpath.relpath(name, posixpath.dirname(page_uri) or ".") + hash_ + anchor


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    def rewrite(match: re.Match[str]) -> str:
        new = site_link(match.group(2), page.file.src_uri)
        return match.group(0) if new is None else match.group(1) + new + match.group(3)

    return LINK.sub(rewrite, markdown)
