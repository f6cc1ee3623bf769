"""A small photo library for the index tests (tests/search/test_search.py and, on both stores,
tests/search/test_index_stores.py): scikit-image's photos in nested folders, and helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from altclip_onnx.cli import main
from altclip_onnx.runtime import Encoder

QUERY = "海边的日落"


def photo(name: str) -> np.ndarray:
    import skimage.data as skdata

    image = getattr(skdata, name)()
    return (image * 255).astype(np.uint8) if image.dtype == bool else image


def make_library(tmp_path: Path) -> Path:
    """photos/{astronaut.jpg, camera.png, chelsea.png, b/coffee.jpg, b/c/rocket.jpg, horse.png}, plus notes.txt."""
    root = tmp_path / "photos"
    (root / "b" / "c").mkdir(parents=True)
    Image.fromarray(photo("astronaut")).save(root / "astronaut.jpg", quality=90)
    Image.fromarray(photo("camera")).save(root / "camera.png")
    Image.fromarray(photo("chelsea")).save(root / "chelsea.png")
    Image.fromarray(photo("coffee")).save(root / "b" / "coffee.jpg", quality=90)
    Image.fromarray(photo("rocket")).save(root / "b" / "c" / "rocket.jpg", quality=90)
    Image.fromarray(photo("horse")).save(root / "horse.png")
    (root / "notes.txt").write_text("not an image")
    return root


def images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))


def count_calls(encoder: Encoder, monkeypatch: pytest.MonkeyPatch, fail_on: int | None = None) -> list[int]:
    """Record the batch size of every model run on ``encoder``; raise KeyboardInterrupt on run ``fail_on``."""
    calls: list[int] = []
    real = Encoder.encode_pixels

    def counted(pixels: np.ndarray, normalize: bool = True) -> np.ndarray:
        calls.append(len(pixels))
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt
        return real(encoder, pixels, normalize=normalize)

    monkeypatch.setattr(encoder, "encode_pixels", counted)
    return calls


def run_cli(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def edited_bundle(tiny_bundle: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of the tiny bundle whose manifest says it is another model (its files are intact)."""
    copy = tmp_path / "other-bundle"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy
