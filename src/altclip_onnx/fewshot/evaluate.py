"""Using a cache: classifying files with Tip-Adapter, and scoring it beside zero-shot on a labelled test folder."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import hash_file
from ..runtime.encoder import Encoder, l2_normalize
from ..runtime.pipeline import DECODE_WORKERS, IMAGE_BATCH_SIZE, Batch, Failure, embed_images
from .adapter import CACHE, LabelledImage, TipAdapter
from .build import read_labelled_folder


def classify_with_cache(
    encoder: Encoder,
    files: Iterable[str | os.PathLike[str]],
    adapter: TipAdapter,
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    workers: int = DECODE_WORKERS,
    draft: bool = False,
    progress: bool = True,
) -> Iterator[Batch]:
    """Like :func:`~altclip_onnx.runtime.pipeline.classify_images`, with Tip-Adapter probabilities
    over ``adapter.class_names``."""
    for batch in embed_images(encoder, files, batch_size=batch_size, workers=workers, draft=draft, progress=progress):
        probabilities = (adapter.probabilities(batch.embeddings) if batch.items
                         else np.empty((0, len(adapter.class_names)), dtype=np.float32))
        yield dataclasses.replace(batch, probabilities=probabilities)


@dataclass(frozen=True)
class Evaluation:
    """Accuracy on a labelled test folder, zero-shot and (with a cache) Tip-Adapter, per class and overall."""

    classes: tuple[str, ...]
    images: dict[str, int]  # class -> test images used
    zero_shot: dict[str, int]  # class -> correct predictions
    tip_adapter: dict[str, int] | None = None
    alpha: float | None = None
    beta: float | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.images.values())

    def accuracy(self, method: str = "zero_shot", class_name: str | None = None) -> float | None:
        """Share of correct predictions of ``method`` ("zero_shot" or "tip_adapter"), overall or for one class."""
        correct = getattr(self, method)
        if correct is None:
            return None
        if class_name is not None:
            return correct[class_name] / self.images[class_name] if self.images[class_name] else None
        return sum(correct.values()) / self.total if self.total else None

    def to_json(self) -> dict[str, Any]:
        methods = ["zero_shot"] + (["tip_adapter"] if self.tip_adapter is not None else [])
        return {
            "images": self.total,
            "alpha": self.alpha,
            "beta": self.beta,
            "accuracy": {m: self.accuracy(m) for m in methods},
            "classes": {c: {"images": self.images[c], **{m: self.accuracy(m, c) for m in methods}}
                        for c in self.classes},
            "failures": [{"path": f.item, "reason": f.reason} for f in self.failures],
        }


def evaluate(
    encoder: Encoder,
    test_dir: str | os.PathLike[str],
    adapter: TipAdapter | None = None,
    *,
    labels: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    batch_size: int = IMAGE_BATCH_SIZE,
    workers: int = DECODE_WORKERS,
    progress: bool = True,
) -> Evaluation:
    """Classify every image of ``test_dir`` (one sub-folder per class) and count the correct ones.

    Without ``adapter``: zero-shot over ``labels`` (each test folder name must be one of them;
    the others are distractors) or, by default, over the folders' prompt labels (see
    :func:`read_labelled_folder`). With ``adapter``: its zero-shot part and Tip-Adapter over its
    classes; each test folder must be one of them, ``labels``/``templates`` must agree with it,
    and a test image whose content is in the cache (cached or validation) is an error, since it
    would vote for itself. Unreadable images are skipped and listed in ``failures``.
    """
    folder = read_labelled_folder(test_dir, allow_empty=True)
    if adapter is not None:
        adapter.check_encoder(encoder)
        adapter.check_labels(labels or (), templates or ())
        candidates = list(adapter.class_names)
        classifier = adapter.classifier
    else:
        candidates = list(labels) if labels else [folder.labels[name] for name in folder.class_names]
        classifier = encoder.text_classifier(candidates, templates or None)
    if labels or adapter is not None:
        truth_of = {name: candidates.index(name) for name in folder.class_names if name in candidates}
        missing = [name for name in folder.class_names if name not in truth_of]
        if missing:
            what = "the cache's classes" if adapter is not None else "the labels"
            raise InputError(f"{Path(test_dir) / missing[0]}: class {missing[0]!r} is not one of {what} "
                             f"({', '.join(candidates)})")
    else:
        truth_of = {name: i for i, name in enumerate(folder.class_names)}
    files = [(path, name) for name in folder.class_names for path in folder.files[name]]
    if adapter is not None:
        refuse_seen(files, adapter)
    class_of = {os.fsdecode(path): name for path, name in files}
    images = dict.fromkeys(folder.class_names, 0)
    zero_shot = dict.fromkeys(folder.class_names, 0)
    tip = dict.fromkeys(folder.class_names, 0) if adapter is not None else None
    failures: list[Failure] = []
    for batch in embed_images(encoder, [p for p, _ in files], batch_size=batch_size, workers=workers,
                              progress=progress):
        failures.extend(batch.failures)
        if not batch.items:
            continue
        names = [class_of[item] for item in batch.items]
        truth = np.array([truth_of[name] for name in names])
        guesses = {"zero": (l2_normalize(batch.embeddings) @ classifier.T).argmax(axis=1)}
        if adapter is not None:
            guesses["tip"] = adapter.logits(batch.embeddings).argmax(axis=1)
        for row, name in enumerate(names):
            images[name] += 1
            zero_shot[name] += int(guesses["zero"][row] == truth[row])
            if tip is not None:
                tip[name] += int(guesses["tip"][row] == truth[row])
    return Evaluation(
        classes=folder.class_names, images=images, zero_shot=zero_shot, tip_adapter=tip,
        alpha=adapter.alpha if adapter else None, beta=adapter.beta if adapter else None, failures=failures,
    )  # fmt: skip


def refuse_seen(files: Sequence[tuple[Path, str]], adapter: TipAdapter) -> None:
    """InputError naming a test file whose content the cache was built from, and how many there are."""
    known = {image.sha256: image for image in adapter.images}
    seen: list[tuple[Path, LabelledImage]] = []
    for path, _ in files:
        try:
            digest = hash_file(path)
        except OSError:
            continue  # reported as a failure when it is embedded
        if digest in known:
            seen.append((path, known[digest]))
    if seen:
        path, image = seen[0]
        raise InputError(
            f"{path}: same content as {image.path} ({'cached' if image.split == CACHE else 'validation'} image of "
            f"the few-shot cache); {len(seen)} of {len(files)} test images come from the cache and would score "
            "themselves: remove them from the test folder"
        )
