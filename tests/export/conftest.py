"""Fixtures of the export tests (these may import torch): the fixture's checkpoints, by layout."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def spm_model(fixture_dir: Path) -> Path:
    return fixture_dir / "spm" / "sentencepiece.bpe.model"


@pytest.fixture(scope="session")
def transformers_checkpoint(fixture_dir: Path) -> Path:
    """transformers' AltCLIP layout (do not modify: copy it first)."""
    return fixture_dir / "checkpoints" / "AltCLIP-tiny"


@pytest.fixture(scope="session")
def flagai_checkpoint(fixture_dir: Path) -> Path:
    """FlagAI's layout (do not modify: copy it first)."""
    return fixture_dir / "checkpoints" / "AltCLIP-m18-flagai-tiny"
