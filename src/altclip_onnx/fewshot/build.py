"""Building a Tip-Adapter cache from a folder of labelled images.

Labelled images come as a folder with one sub-folder per class (walked recursively, in the
order of :func:`~altclip_onnx.runtime.pipeline.iter_image_files`)::

    DATA_DIR/
        golden_retriever/  *.jpg ...      class name "golden_retriever", prompt label "golden retriever"
        tabby_cat/         ...
        labels.json        optional: {"tabby_cat": "tabby cat", "n02123045": "tabby"} (folder -> prompt label)

:func:`build_cache` splits each class, deterministically from ``seed``, into cached images and a
held-out validation part; it picks alpha and beta by grid search on the validation part (best
accuracy, ties broken by the lowest cross-entropy) and records both validation accuracies.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import VISUAL
from ..errors import InputError
from ..files import hash_file
from ..runtime.encoder import Encoder, Prompts
from ..runtime.pipeline import DECODE_WORKERS, IMAGE_BATCH_SIZE, Failure, embed_images, image_extensions, iter_image_files
from .adapter import CACHE, VALIDATION, LabelledImage, TipAdapter, Validation

log = logging.getLogger(__name__)

#: The grids searched by default: alpha weighs the cache against zero-shot, beta sharpens it.
DEFAULT_ALPHAS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0)
DEFAULT_BETAS = (0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 5.5, 7.0, 8.5, 10.0, 12.5, 15.0, 17.5, 20.0)
#: Used when there is no validation image to search with (the paper's ImageNet starting point).
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 5.5
DEFAULT_VAL_FRACTION = 0.2
LABELS_FILE = "labels.json"


# --------------------------------------------------------------------------------- labelled folders


@dataclass(frozen=True)
class LabelledFolder:
    """A folder with one sub-folder per class: class names, their files, and their prompt labels."""

    root: Path
    files: dict[str, list[Path]]  # class name (folder name) -> image files, in walking order
    labels: dict[str, str]  # class name -> prompt label

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.files)


def read_labelled_folder(root: str | os.PathLike[str], *, allow_empty: bool = False) -> LabelledFolder:
    """The classes of ``root`` (sorted folder names) and their images; see the module docstring.

    Prompt labels come from ``root/labels.json`` when it names the folder, else from the folder
    name with underscores as spaces. A class folder without images is an error unless
    ``allow_empty`` (then it is skipped with a warning); images directly in ``root`` are ignored
    with a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; give a folder with one sub-folder of images per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    extensions = image_extensions()
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions]
    if loose:
        log.warning("%s: %d images directly in the folder are ignored; put them in a folder per class", root,
                    len(loose))
    mapping = read_label_map(root / LABELS_FILE)
    unknown = sorted(set(mapping) - {p.name for p in folders})
    if unknown:
        raise InputError(f"{root / LABELS_FILE}: names no folder {unknown[0]!r}; it maps class folders to labels")
    files: dict[str, list[Path]] = {}
    for folder in folders:
        found = list(iter_image_files([folder], require_any=False))
        if not found:
            if not allow_empty:
                raise InputError(f"{folder}: the class folder has no images; add some or remove it")
            log.warning("%s: no images, class skipped", folder)
            continue
        files[folder.name] = found
    if not files:
        raise InputError(f"{root}: no class folders with images; give a folder with one sub-folder per class")
    labels = {name: mapping.get(name) or name.replace("_", " ").strip() or name for name in files}
    return LabelledFolder(root, files, labels)


def read_label_map(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError(f"{path}: must be a JSON object mapping folder names to prompt labels")
    return {k: v.strip() for k, v in data.items()}


def split_class(
    files: Sequence[Path], name: str, *, shots: int | None, val_per_class: int | None, val_fraction: float, seed: int
) -> tuple[list[Path], list[Path]]:
    """(cached, validation) files of one class: a shuffle seeded by ``seed`` and the class name.

    Validation takes ``val_per_class`` images, else ``max(1, round(val_fraction * n))``, always
    leaving at least one to cache; the cache then takes at most ``shots`` of the rest.
    """
    n = len(files)
    wanted = val_per_class if val_per_class is not None else max(1, round(val_fraction * n))
    if n - wanted < 1:
        need = "1 for the cache" if wanted == 0 else f"{wanted} for validation and 1 for the cache"
        raise InputError(f"class {name!r} has {n} image{'s' * (n != 1)}; it needs at least {wanted + 1} ({need}): "
                         "add images or lower --val-per-class (0: no validation)")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8", "surrogateescape"))])
    order = [files[i] for i in rng.permutation(n)]
    validation, rest = order[:wanted], order[wanted:]
    return (rest if shots is None else rest[:shots]), validation


# ---------------------------------------------------------------------------------------- building


def build_cache(
    encoder: Encoder,
    data_dir: str | os.PathLike[str],
    *,
    shots: int | None = None,
    val_per_class: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    templates: Sequence[str] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    betas: Sequence[float] = DEFAULT_BETAS,
    seed: int = 0,
    batch_size: int = IMAGE_BATCH_SIZE,
    workers: int = DECODE_WORKERS,
    progress: bool = True,
) -> TipAdapter:
    """Embed the labelled images of ``data_dir`` into a :class:`TipAdapter` and tune alpha and beta.

    Each class is split by :func:`split_class` (at most ``shots`` cached images; validation
    images are never cached). alpha and beta are the pair of ``alphas`` x ``betas`` with the best
    validation accuracy (ties: lowest validation cross-entropy). Without validation images
    (``val_per_class=0``) a single-valued grid fixes them, else they are 1.0 and 5.5. Images that
    cannot be read are an error: a few-shot set should be clean.
    """
    if shots is not None and shots < 1:
        raise InputError(f"shots must be at least 1, not {shots}")
    if val_per_class is not None and val_per_class < 0:
        raise InputError(f"val_per_class must be 0 or more, not {val_per_class}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), not {val_fraction}")
    alphas, betas = check_grid(alphas, "alphas"), check_grid(betas, "betas")
    folder = read_labelled_folder(data_dir)
    if len(folder.class_names) < 2:
        raise InputError(f"{data_dir}: holds one class ({folder.class_names[0]}); a classifier needs at least two "
                         "class folders")
    chosen: list[tuple[Path, int, str]] = []  # file, class index, split
    for index, name in enumerate(folder.class_names):
        cached, validation = split_class(folder.files[name], name, shots=shots, val_per_class=val_per_class,
                                         val_fraction=val_fraction, seed=seed)
        chosen += [(p, index, CACHE) for p in cached] + [(p, index, VALIDATION) for p in validation]
    images = [LabelledImage(relative_name(path, folder.root), content_hash(path), folder.class_names[index], split)
              for path, index, split in chosen]
    warn_duplicates(images)
    labels = tuple(folder.labels[name] for name in folder.class_names)
    prompts = Prompts.of(labels, templates or None)  # a bad label or template fails now, not after the embedding
    features = embed_all(encoder, [path for path, _, _ in chosen], batch_size=batch_size, workers=workers,
                         progress=progress)
    classes = np.array([index for _, index, _ in chosen], dtype=np.int64)
    is_cached = np.array([split == CACHE for _, _, split in chosen])
    one_hot = np.eye(len(folder.class_names), dtype=np.float32)
    keys, values = features[is_cached], one_hot[classes[is_cached]]
    classifier = encoder.text_classifier(prompts.labels, prompts.templates)
    scale = encoder.logit_scale
    val_features, truth = features[~is_cached], classes[~is_cached]
    if len(truth):
        alpha, beta, accuracy = search_alpha_beta(val_features, truth, classifier, keys, values, scale, alphas, betas)
        zero_shot = float(np.mean((val_features @ classifier.T).argmax(axis=1) == truth))
    else:
        alpha = alphas[0] if len(alphas) == 1 else DEFAULT_ALPHA
        beta = betas[0] if len(betas) == 1 else DEFAULT_BETA
        accuracy = zero_shot = None
    log.info("Tip-Adapter: %d cached, %d validation images; alpha=%g beta=%g", len(keys), len(truth), alpha, beta)
    return TipAdapter(
        keys=keys, values=values, classifier=classifier, class_names=folder.class_names, labels=labels,
        templates=prompts.templates, alpha=float(alpha), beta=float(beta), logit_scale=scale,
        model=encoder.identity, precision=encoder.precisions[VISUAL],
        validation=Validation(len(truth), zero_shot, accuracy, tuple(alphas), tuple(betas)),
        images=tuple(images), seed=seed,
    )  # fmt: skip


def check_grid(values: Iterable[float], name: str) -> tuple[float, ...]:
    grid = tuple(float(v) for v in values)
    if not grid or any(not np.isfinite(v) or v < 0 for v in grid):
        raise InputError(f"{name}: give one or more finite values >= 0, not {list(values)}")
    return grid


def search_alpha_beta(
    features: np.ndarray,
    truth: np.ndarray,
    classifier: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    logit_scale: float,
    alphas: Sequence[float],
    betas: Sequence[float],
) -> tuple[float, float, float]:
    """(alpha, beta, accuracy): the grid point with the best accuracy on (features, truth).

    Ties (common with few validation images) go to the lowest mean cross-entropy, then to the
    first pair in grid order (betas outer, alphas inner).
    """
    features, keys, values = (np.asarray(a, dtype=np.float64) for a in (features, keys, values))
    zero_shot = logit_scale * features @ np.asarray(classifier, dtype=np.float64).T
    similarity = features @ keys.T
    rows = np.arange(len(truth))
    best: tuple[float, float] | None = None
    choice = (float(alphas[0]), float(betas[0]), 0.0)
    for beta in betas:
        cache = np.exp(-beta * (1.0 - similarity)) @ values
        for alpha in alphas:
            logits = zero_shot + alpha * cache
            accuracy = float(np.mean(logits.argmax(axis=1) == truth))
            top = logits.max(axis=1)
            log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
            score = (accuracy, -float(np.mean(log_norm - logits[rows, truth])))
            if best is None or score > best:
                best, choice = score, (float(alpha), float(beta), accuracy)
    return choice


def relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def content_hash(path: Path) -> str:
    """SHA-256 of an image's bytes (what evaluation compares to refuse cached images)."""
    try:
        return hash_file(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def warn_duplicates(images: Sequence[LabelledImage]) -> None:
    seen: dict[str, LabelledImage] = {}
    for image in images:
        other = seen.setdefault(image.sha256, image)
        if other is not image and (other.class_name != image.class_name or other.split != image.split):
            log.warning("%s and %s are the same image (%s/%s and %s/%s)", other.path, image.path,
                        other.class_name, other.split, image.class_name, image.split)


def embed_all(encoder: Encoder, files: Sequence[Path], **options: Any) -> np.ndarray:
    """Normalized embeddings of every file, in order; any unreadable file is an :class:`InputError`."""
    rows: list[np.ndarray] = []
    failures: list[Failure] = []
    for batch in embed_images(encoder, files, **options):
        rows.append(batch.embeddings)
        failures.extend(batch.failures)
    if failures:
        raise InputError(f"{failures[0]}; {len(failures)} of {len(files)} images could not be used: "
                         "fix or remove them")
    return np.concatenate(rows) if rows else np.empty((0, encoder.embedding_dim), dtype=np.float32)


