"""Verification on the user's own images and texts (``verify --images DIR --texts FILE``).

The stored reference covers a fixed set; deployers also want their own photos and phrasing checked. Their
reference is PyTorch when the export side is there (``--model``); otherwise the bundle's fp32 graph on this
machine, once it passed the stored PyTorch reference here: then the other precisions are held against it
under their own gates (fp32 is not compared with itself).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..bundle import TEXTUAL, TOKENIZER, TOWER_INPUTS, VISUAL, Manifest
from ..errors import InputError
from ..runtime.images import crop, load_image, normalize
from ..runtime.pipeline import batched, iter_image_files, iter_lines
from ..runtime.text import load_tokenizer, tokenize
from .check import Outputs, run_cases
from .reference import Case, StoredReference

BATCH = 8


def own_cases(bundle: Path, manifest: Manifest, images: str | os.PathLike[str] | None,
              texts: str | os.PathLike[str] | None) -> tuple[list[Case], np.ndarray]:
    """Cases of 8 from the images under ``images`` and the lines of ``texts``; the images' 8-bit crops.

    The first case of each tower also runs its rows alone (batch invariance). An unreadable image or an empty
    source is an :class:`InputError` naming it: a verification that silently skips inputs proves less.
    """
    cases: list[Case] = []
    crops: list[np.ndarray] = []
    if images is not None:
        paths = list(iter_image_files([images]))
        for path in paths:
            try:
                crops.append(crop(load_image(path), manifest.image))
            except InputError as exc:
                raise InputError(f"--images: {exc}; remove or fix it") from exc
        for number, rows in enumerate(batched(range(len(crops)), BATCH)):
            pixels = normalize(np.stack([crops[i] for i in rows]), manifest.image)
            cases.append(Case(VISUAL, f"your images {rows[0] + 1}-{rows[-1] + 1} b{len(rows)}",
                              {TOWER_INPUTS[VISUAL][0]: pixels}, alone=number == 0, zero_shot=False,
                              rows=tuple(rows)))
    if texts is not None:
        lines = [line for line in iter_lines(str(texts)) if line.strip()]
        if not lines:
            raise InputError(f"--texts {texts}: no text in it; give one text per line")
        tokenizer = load_tokenizer(bundle / TOKENIZER, manifest.text, manifest.text.max_length)
        for number, rows in enumerate(batched(range(len(lines)), BATCH)):
            chunk = [lines[i] for i in rows]
            cases.append(Case(TEXTUAL, f"your texts {rows[0] + 1}-{rows[-1] + 1} b{len(rows)}",
                              tokenize(tokenizer, chunk), alone=number == 0, zero_shot=False, texts=tuple(chunk),
                              languages=("?",) * len(chunk), max_length=manifest.text.max_length))
    shape = (0, manifest.image.size, manifest.image.size, 3)
    return cases, (np.stack(crops) if crops else np.zeros(shape, np.uint8))


def fp32_reference(sessions: dict[str, object], cases: list[Case], crops: np.ndarray, pad_id: int) -> StoredReference:
    """The bundle's fp32 graphs' outputs on ``cases``, as the reference for the other precisions."""
    outputs: Outputs = [{} for _ in cases]
    for tower, session in sessions.items():
        ran, _ = run_cases(session, tower, cases, pad_id=pad_id)
        outputs = [o or r for o, r in zip(outputs, ran)]
    return StoredReference(cases, outputs, crops)
