"""The PyTorch reference a bundle carries: its verification cases, their inputs and PyTorch's outputs.

Export computes PyTorch's outputs for a fixed set of inputs and stores them with the bundle
(``reference/cases.json`` and ``reference/arrays.npz``, covered by the manifest's checksums), so any machine
can check its own numbers without torch: the verify command, and ``Encoder`` the first time a variant runs
with a provider on a CPU or GPU (:mod:`.selfcheck`).

Inputs are stored as the towers see them before any float arithmetic: images as the 8-bit square left after
resize and center crop (rescale and normalization are exact lookups, :func:`~altclip_onnx.runtime.images.normalize`),
texts as token ids together with their sentences (re-tokenizing the sentences checks the tokenizer too).
``cases.json`` also says how each image was made (which shipped photo, which transform) for people.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import (REFERENCE_ARRAYS, REFERENCE_CASES, REFERENCE_FILES, TEXTUAL, TOWER_INPUTS, TOWER_OUTPUTS, VISUAL,
                      Manifest)
from ..errors import BundleError, install_command
from ..files import write_bytes, write_json

FORMAT = 1
IMAGES = "images"  # the arrays entry with every image case's 8-bit crops, [N, S, S, 3]


@dataclass
class Case:
    """One model call of the verification: a batch of inputs for one tower.

    ``quick``: part of the first-use check (:mod:`.selfcheck`). ``alone``: its rows also run one at a time,
    for the batch-invariance gate. ``zero_shot``: its images, or its sentences as labels, make the zero-shot
    agreement check. ``rows``: visual cases: which stored images; ``texts``: textual cases: the
    sentences, tokenized with ``max_length``.
    """

    tower: str
    name: str
    inputs: dict[str, np.ndarray]
    quick: bool = False
    alone: bool = False
    zero_shot: bool = True  # its inputs take part in the zero-shot check (images, and sentences as labels)
    rows: tuple[int, ...] = ()
    texts: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    max_length: int = 0

    @property
    def shape(self) -> str:
        """batch for images, batch x sequence for text."""
        first = next(iter(self.inputs.values()))
        return "x".join(str(d) for d in first.shape[: 1 if self.tower == VISUAL else 2])

    @property
    def size(self) -> int:
        return int(len(next(iter(self.inputs.values()))))

    def describe(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tower": self.tower, "name": self.name, "quick": self.quick, "alone": self.alone,
                                "zero_shot": self.zero_shot}
        if self.tower == VISUAL:
            data["rows"] = list(self.rows)
        else:
            data.update(texts=list(self.texts), languages=list(self.languages), max_length=self.max_length)
        return data


@dataclass
class StoredReference:
    """Cases, PyTorch's outputs for each (same order), and what the images are."""

    cases: list[Case]
    outputs: list[dict[str, np.ndarray]]
    images: np.ndarray  # uint8 [N, S, S, 3]
    image_notes: list[str] = field(default_factory=list)  # how each image was made
    distinct_images: tuple[int, ...] = ()  # images unrelated to each other (for the input-sensitivity figure)


def has_reference(manifest: Manifest) -> bool:
    return set(REFERENCE_FILES) <= set(manifest.reference)


def write_reference(bundle: Path, reference: StoredReference) -> list[str]:
    """Write ``reference/`` into a bundle folder being built; returns the files' bundle-relative names."""
    arrays: dict[str, np.ndarray] = {IMAGES: reference.images}
    for i, (case, outputs) in enumerate(zip(reference.cases, reference.outputs)):
        if case.tower == TEXTUAL:
            arrays.update({f"{i}/{name}": value for name, value in case.inputs.items()})
        arrays.update({f"{i}/{name}": np.asarray(value, dtype=np.float32) for name, value in outputs.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    (bundle / REFERENCE_ARRAYS).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(bundle / REFERENCE_ARRAYS, buffer.getvalue())
    write_json(bundle / REFERENCE_CASES, {
        "format": FORMAT,
        "images": {"count": int(len(reference.images)), "made_from": reference.image_notes,
                   "distinct": list(reference.distinct_images)},
        "cases": [case.describe() for case in reference.cases],
    })
    return list(REFERENCE_FILES)


def read_reference(bundle: str | os.PathLike[str], manifest: Manifest, *, towers: tuple[str, ...] = (VISUAL, TEXTUAL),
                   quick_only: bool = False) -> StoredReference:
    """The reference stored in ``bundle``; :class:`BundleError` in one line for a bundle without one.

    ``towers`` and ``quick_only`` keep only those cases: the first-use check reads just its own, so it does not
    unpack and normalize all the images for two cases of one tower."""
    from ..runtime.images import normalize

    folder = Path(bundle)
    if not has_reference(manifest):
        raise BundleError(
            f"{folder}: made before bundles carried their PyTorch reference (format {manifest.format_version}); "
            "re-export it with this altclip-onnx, or verify it against PyTorch with 'altclip-onnx verify "
            f"{folder} --model SOURCE' (the [export] extra: {install_command('export')})")
    try:
        described = json.loads((folder / REFERENCE_CASES).read_text(encoding="utf-8"))
        if described.get("format") != FORMAT:
            raise ValueError(f"reference format {described.get('format')!r}, this altclip-onnx reads {FORMAT}")
        wanted = [(i, data) for i, data in enumerate(described["cases"])
                  if data["tower"] in towers and (data["quick"] or not quick_only)]
        with np.load(folder / REFERENCE_ARRAYS, allow_pickle=False) as stored:  # a zip: only what is asked is read
            arrays = {name: stored[name] for name in stored.files
                      if name == IMAGES or name.split("/")[0] in {str(i) for i, _ in wanted}}
        images = arrays[IMAGES]
        cases, outputs = [], []
        for i, data in wanted:
            tower = data["tower"]
            if tower == VISUAL:
                rows = tuple(int(r) for r in data["rows"])
                inputs = {TOWER_INPUTS[VISUAL][0]: normalize(images[list(rows)], manifest.image)}
                case = Case(VISUAL, data["name"], inputs, bool(data["quick"]), bool(data["alone"]),
                            bool(data["zero_shot"]), rows=rows)
            else:
                inputs = {name: arrays[f"{i}/{name}"] for name in TOWER_INPUTS[TEXTUAL]}
                case = Case(TEXTUAL, data["name"], inputs, bool(data["quick"]), bool(data["alone"]),
                            bool(data["zero_shot"]), texts=tuple(data["texts"]), languages=tuple(data["languages"]),
                            max_length=int(data["max_length"]))
            cases.append(case)
            outputs.append({name: arrays[f"{i}/{name}"] for name in TOWER_OUTPUTS[tower]})
        return StoredReference(cases, outputs, images, list(described["images"]["made_from"]),
                               tuple(int(i) for i in described["images"]["distinct"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise BundleError(f"{folder / 'reference'}: unreadable ({exc}); re-export or re-download the bundle") from exc
