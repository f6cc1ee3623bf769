"""Fixtures of the index tests (test_search.py and test_index_stores.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..photo_library import make_library


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A fresh copy of the photo library (tests/photo_library.py) per test: tests move and edit it."""
    return make_library(tmp_path)
