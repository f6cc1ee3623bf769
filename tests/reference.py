"""The PyTorch/transformers reference, read back without torch.

``tests/fixture.py`` computes every reference value the runtime tests need (with torch, transformers and
sentencepiece, from a model loaded afresh) and stores it in the fixture folder; runtime tests read it here,
so they run where only the runtime is installed and still compare with the real reference, not with the
code under test.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from altclip_onnx.bundle import ImageSpec

REFERENCE_JSON = "reference.json"
REFERENCE_NPZ = "reference.npz"
PIXELS_NPZ = "pixels.npz"


def image_key(image: Image.Image, spec: ImageSpec) -> str:
    """Identifies an image by its decoded content and the preprocessing settings."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}|{image.size}|{image.info.get('transparency')!r}|{spec!r}|".encode())
    if image.mode == "P":
        digest.update(bytes(image.getpalette() or []))
    digest.update(image.tobytes())
    return digest.hexdigest()[:32]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Reference:
    """Lookups into a fixture folder's stored reference values."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @cached_property
    def data(self) -> dict[str, Any]:
        return json.loads((self.folder / REFERENCE_JSON).read_text(encoding="utf-8"))

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / REFERENCE_NPZ) as stored:
            return {name: stored[name] for name in stored.files}

    @cached_property
    def _pixels(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / PIXELS_NPZ) as stored:
            return {name: stored[name] for name in stored.files}

    def pixels(self, image: Image.Image, spec: ImageSpec) -> np.ndarray:
        """transformers' CLIPImageProcessorPil pixel_values [3, S, S] for ``image``."""
        key = image_key(image, spec)
        if key not in self._pixels:
            raise KeyError(f"no reference pixels for this {image.mode} {image.size} image; add it to "
                           "tests/cases.py reference_images() so the fixture computes them")
        return self._pixels[key]

    def sentencepiece_ids(self, text: str) -> list[int]:
        """XLM-R ids from sentencepiece itself with the fairseq offset (<s>=0, pieces + 1, unk -> 3, </s>=2)."""
        return self.data["sentencepiece_ids"][text_key(text)]

    def transformers_ids(self, text: str) -> list[int]:
        """transformers' XLMRobertaTokenizer ids (converted from sentencepiece.bpe.model alone)."""
        return self.data["transformers_ids"][text_key(text)]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]
