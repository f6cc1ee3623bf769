"""Few-shot classification with Tip-Adapter: a cache of labelled image embeddings, no training.

Tip-Adapter (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022) keeps the L2-normalized embeddings of a few labelled images as
*keys* F [N, D] and their one-hot classes as *values* L [N, C]. For a normalized image
embedding f, with W [C, D] the zero-shot classifier built from the class names and templates::

    logits = logit_scale * f W^T  +  alpha * exp(-beta * (1 - f F^T)) L

The first term is zero-shot CLIP; the second lets every cached image vote for its class with a
weight that falls off with its distance to f (beta: how sharply; alpha: how much the cache counts
against the text prior). The paper multiplies by 100; here ``logit_scale`` is the bundle's.

Labelled images come as a folder with one sub-folder per class (walked recursively, in the
order of :func:`~altclip_onnx.runtime.pipeline.iter_image_files`)::

    DATA_DIR/
        golden_retriever/  *.jpg ...      class name "golden_retriever", prompt label "golden retriever"
        tabby_cat/         ...
        labels.json        optional: {"tabby_cat": "tabby cat", "n02123045": "tabby"} (folder -> prompt label)

:func:`build_cache` splits each class, deterministically from ``seed``, into cached images and a
held-out validation part; it picks alpha and beta by grid search on the validation part (best
accuracy, ties broken by the lowest cross-entropy) and records both validation accuracies.
:meth:`TipAdapter.save` writes one zip file (``.npz``: ``metadata.json`` plus ``.npy`` arrays,
readable with ``numpy.load``) that records the bundle it was built with; :meth:`TipAdapter.load`
refuses another bundle. The SHA-256 of every cached and validation image is stored too, so that
:func:`evaluate` can refuse test images the cache has already seen.

Only numpy, Pillow and the standard library here (plus the Encoder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import TOWERS, VISUAL, Manifest, atomic_path, sha256_file
from ..errors import BundleError, InputError
from .encoder import DEFAULT_TEMPLATES, Encoder, l2_normalize, softmax
from .pipeline import Batch, Failure, embed_images, image_extensions, iter_image_files

log = logging.getLogger(__name__)

#: The grids searched by default: alpha weighs the cache against zero-shot, beta sharpens it.
DEFAULT_ALPHAS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0)
DEFAULT_BETAS = (0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 5.5, 7.0, 8.5, 10.0, 12.5, 15.0, 17.5, 20.0)
#: Used when there is no validation image to search with (the paper's ImageNet starting point).
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 5.5
DEFAULT_VAL_FRACTION = 0.2
LABELS_FILE = "labels.json"
CACHE_FORMAT = "altclip-onnx/tip-adapter"
CACHE_VERSION = 1
CACHE = "cache"
VALIDATION = "validation"


# ------------------------------------------------------------------------------------ the formula


def tip_adapter_logits(
    features: np.ndarray,
    classifier: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    alpha: float,
    beta: float,
    logit_scale: float,
) -> np.ndarray:
    """``logit_scale * f W^T + alpha * exp(-beta * (1 - f F^T)) L`` for rows f of ``features``.

    ``features`` [M, D], ``classifier`` W [C, D] and ``keys`` F [N, D] should be L2-normalized
    (this function does not normalize); ``values`` L is [N, C] (one-hot rows). Returns [M, C].
    """
    features = np.atleast_2d(np.asarray(features, dtype=np.float32))
    zero_shot = logit_scale * features @ np.asarray(classifier, dtype=np.float32).T
    affinity = np.exp(-beta * (1.0 - features @ np.asarray(keys, dtype=np.float32).T))
    return (zero_shot + alpha * affinity @ np.asarray(values, dtype=np.float32)).astype(np.float32)


# ------------------------------------------------------------------------------- what is stored


@dataclass(frozen=True)
class BundleStamp:
    """Which model a cache was built with. ``fingerprint`` hashes the fp32 graphs' checksums."""

    fingerprint: str
    variant: str
    source: str
    embedding_dim: int
    precision: str  # the image tower's precision the keys were computed with

    @classmethod
    def of(cls, encoder: Encoder) -> BundleStamp:
        manifest = encoder.manifest
        return cls(
            fingerprint=bundle_fingerprint(manifest),
            variant=manifest.variant,
            source=str(manifest.source.get("name") or manifest.source.get("path") or "?"),
            embedding_dim=manifest.embedding_dim,
            precision=encoder.precisions[VISUAL],
        )

    def describe(self) -> str:
        return f"{self.variant} from {self.source}, {self.embedding_dim}-d, fingerprint {self.fingerprint[:12]}"


def bundle_fingerprint(manifest: Manifest) -> str:
    """SHA-256 over the checksums of both towers' fp32 files: same weights, same fingerprint.

    Precision variants of one bundle share it (they are the same model); a moved or copied
    bundle keeps it.
    """
    files: list[str] = []
    for tower in TOWERS:
        variants = manifest.towers.get(tower, {})
        variant = variants.get("fp32") or next(iter(variants.values()), None)
        files.extend(variant.files if variant else ())
    lines = [f"{name} {manifest.files[name].sha256 if name in manifest.files else '-'}" for name in sorted(files)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class LabelledImage:
    """One image of the few-shot set: its path relative to DATA_DIR, content hash, class and split."""

    path: str
    sha256: str
    class_name: str
    split: str  # CACHE or VALIDATION


@dataclass(frozen=True)
class Validation:
    """How alpha and beta were chosen: the grids and both accuracies on the validation images."""

    images: int
    zero_shot: float | None  # accuracy of zero-shot alone; None without validation images
    tip_adapter: float | None  # accuracy of Tip-Adapter with the chosen alpha and beta
    alphas: tuple[float, ...]
    betas: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class TipAdapter:
    """A Tip-Adapter cache: the few-shot classifier. Built by :func:`build_cache`, kept with :meth:`save`.

    ``keys`` [N, D] normalized image embeddings, ``values`` [N, C] one-hot, ``classifier`` [C, D]
    the zero-shot text classifier from ``labels`` (the prompt label of each of ``class_names``)
    and ``templates``.
    """

    keys: np.ndarray
    values: np.ndarray
    classifier: np.ndarray
    class_names: tuple[str, ...]
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    alpha: float
    beta: float
    logit_scale: float
    bundle: BundleStamp
    validation: Validation
    images: tuple[LabelledImage, ...] = ()
    seed: int = 0

    # --- predicting -------------------------------------------------------------------------------

    def logits(self, features: np.ndarray) -> np.ndarray:
        """[M, C] Tip-Adapter logits for image embeddings [M, D] (normalized here)."""
        return tip_adapter_logits(l2_normalize(np.atleast_2d(features)), self.classifier, self.keys, self.values,
                                  self.alpha, self.beta, self.logit_scale)

    def zero_shot_logits(self, features: np.ndarray) -> np.ndarray:
        """[M, C] zero-shot logits alone (alpha = 0), for comparison."""
        return (self.logit_scale * l2_normalize(np.atleast_2d(features)) @ self.classifier.T).astype(np.float32)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """[M, C] softmax of :meth:`logits`."""
        return softmax(self.logits(features))

    def predict(self, features: np.ndarray) -> list[str]:
        """The best class name per row of ``features``."""
        return [self.class_names[i] for i in self.logits(features).argmax(axis=1)]

    # --- facts ------------------------------------------------------------------------------------

    @property
    def content_hashes(self) -> frozenset[str]:
        """SHA-256 of every image the cache was built from (cached and validation)."""
        return frozenset(image.sha256 for image in self.images)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per class: how many images are cached and how many were used for validation."""
        table = {name: {CACHE: 0, VALIDATION: 0} for name in self.class_names}
        for image in self.images:
            table[image.class_name][image.split] += 1
        return table

    def check_encoder(self, encoder: Encoder, where: str = "the cache") -> None:
        """Raise :class:`BundleError` unless ``encoder`` runs the model the cache was built with."""
        current = BundleStamp.of(encoder)
        if current.fingerprint != self.bundle.fingerprint or current.embedding_dim != self.bundle.embedding_dim:
            raise BundleError(
                f"{where} was built with another bundle ({self.bundle.describe()}), not {encoder.bundle} "
                f"({current.describe()}); use that bundle or rebuild the cache with 'altclip-onnx fewshot build'"
            )
        if current.precision != self.bundle.precision:
            log.warning("%s holds %s image embeddings, this encoder computes %s ones: scores differ slightly",
                        where, self.bundle.precision, current.precision)

    def check_labels(self, labels: Sequence[str] = (), templates: Sequence[str] = ()) -> None:
        """Refuse labels or templates given alongside the cache that disagree with it (empty: fine)."""
        if labels and set(labels) not in (set(self.class_names), set(self.labels)):
            raise InputError(
                f"the labels given ({', '.join(labels)}) are not the cache's classes "
                f"({', '.join(self.class_names)}); leave them out, the cache brings its own"
            )
        if templates and tuple(templates) != self.templates:
            raise InputError("the cache was built with other templates; leave --template out or rebuild "
                             "the cache with the templates you want")

    # --- files ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The metadata stored beside the arrays (everything but keys, values and classifier)."""
        return {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "bundle": dataclasses.asdict(self.bundle),
            "class_names": list(self.class_names),
            "labels": list(self.labels),
            "templates": list(self.templates),
            "alpha": self.alpha,
            "beta": self.beta,
            "logit_scale": self.logit_scale,
            "seed": self.seed,
            "validation": dataclasses.asdict(self.validation),
            "counts": self.counts(),
            "images": [dataclasses.asdict(image) for image in self.images],
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write one zip file (``metadata.json``, ``keys.npy``, ``classes.npy``, ``classifier.npy``) atomically."""
        target = Path(path)
        if target.exists() and not overwrite:
            raise InputError(f"{target}: already exists; choose another name or allow overwriting")
        if target.is_dir():
            raise InputError(f"{target}: is a folder; give a file name such as cache.npz")
        arrays = {
            "keys": self.keys.astype(np.float32),
            "classes": self.values.argmax(axis=1).astype(np.int32),
            "classifier": self.classifier.astype(np.float32),
        }
        with atomic_path(target) as tmp:
            with zipfile.ZipFile(tmp, "w") as archive:
                # ASCII JSON: any file name (even undecodable bytes) survives the round trip.
                archive.writestr("metadata.json", json.dumps(self.to_json(), indent=1), zipfile.ZIP_DEFLATED)
                for name, array in arrays.items():
                    buffer = io.BytesIO()
                    np.lib.format.write_array(buffer, array, allow_pickle=False)
                    archive.writestr(f"{name}.npy", buffer.getvalue())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: Encoder | None = None) -> TipAdapter:
        """Read a cache written by :meth:`save`; with ``encoder``, refuse it if another bundle made it."""
        source = Path(path)
        if not source.is_file():
            raise InputError(f"{source}: no such cache file; build one with 'altclip-onnx fewshot build'")
        try:
            with zipfile.ZipFile(source) as archive:
                meta = json.loads(archive.read("metadata.json"))
                arrays = {name: np.lib.format.read_array(io.BytesIO(archive.read(f"{name}.npy")), allow_pickle=False)
                          for name in ("keys", "classes", "classifier")}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            reason = f"not a Tip-Adapter cache ({exc})"
            raise InputError(f"{source}: {reason}; build one with 'altclip-onnx fewshot build'") from None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise InputError(f"{source}: not a Tip-Adapter cache; build one with 'altclip-onnx fewshot build'")
        if meta.get("version") != CACHE_VERSION:
            raise InputError(f"{source}: cache format {meta.get('version')} is not supported by this altclip-onnx "
                             f"(it reads {CACHE_VERSION}); rebuild the cache")
        try:
            class_names = tuple(meta["class_names"])
            adapter = cls(
                keys=arrays["keys"].astype(np.float32),
                values=np.eye(len(class_names), dtype=np.float32)[arrays["classes"]],
                classifier=arrays["classifier"].astype(np.float32),
                class_names=class_names,
                labels=tuple(meta["labels"]),
                templates=tuple(meta["templates"]),
                alpha=float(meta["alpha"]),
                beta=float(meta["beta"]),
                logit_scale=float(meta["logit_scale"]),
                bundle=BundleStamp(**meta["bundle"]),
                validation=Validation(**{**meta["validation"], "alphas": tuple(meta["validation"]["alphas"]),
                                         "betas": tuple(meta["validation"]["betas"])}),
                images=tuple(LabelledImage(**image) for image in meta["images"]),
                seed=int(meta.get("seed", 0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"{source}: the cache is incomplete or malformed ({exc!r}); rebuild it") from None
        n, dim = adapter.keys.shape if adapter.keys.ndim == 2 else (-1, -1)
        if adapter.classifier.shape != (len(class_names), dim) or len(arrays["classes"]) != n:
            raise InputError(f"{source}: the cache's arrays do not fit together; rebuild it")
        if encoder is not None:
            adapter.check_encoder(encoder, where=str(source))
        return adapter


def load_cache(path: str | os.PathLike[str], encoder: Encoder | None = None) -> TipAdapter:
    """Same as :meth:`TipAdapter.load`."""
    return TipAdapter.load(path, encoder)


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
        found = list(iter_image_files([folder]))
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
        raise InputError(f"{path}: not readable JSON ({exc})") from None
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
    batch_size: int = 8,
    workers: int = 2,
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
    templates = tuple([templates] if isinstance(templates, str) else templates or DEFAULT_TEMPLATES)
    chosen: list[tuple[Path, int, str]] = []  # file, class index, split
    for index, name in enumerate(folder.class_names):
        cached, validation = split_class(folder.files[name], name, shots=shots, val_per_class=val_per_class,
                                         val_fraction=val_fraction, seed=seed)
        chosen += [(p, index, CACHE) for p in cached] + [(p, index, VALIDATION) for p in validation]
    images = [LabelledImage(relative_name(path, folder.root), hash_file(path), folder.class_names[index], split)
              for path, index, split in chosen]
    warn_duplicates(images)
    features = embed_all(encoder, [path for path, _, _ in chosen], batch_size=batch_size, workers=workers,
                         progress=progress)
    classes = np.array([index for _, index, _ in chosen], dtype=np.int64)
    is_cached = np.array([split == CACHE for _, _, split in chosen])
    one_hot = np.eye(len(folder.class_names), dtype=np.float32)
    keys, values = features[is_cached], one_hot[classes[is_cached]]
    labels = tuple(folder.labels[name] for name in folder.class_names)
    classifier = encoder.text_classifier(labels, templates)
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
        templates=templates, alpha=float(alpha), beta=float(beta), logit_scale=scale,
        bundle=BundleStamp.of(encoder),
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


def hash_file(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None


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


# ------------------------------------------------------------------------------------------- using


def classify_with_cache(
    encoder: Encoder,
    files: Iterable[str | os.PathLike[str]],
    adapter: TipAdapter,
    *,
    batch_size: int = 8,
    workers: int = 2,
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
    batch_size: int = 8,
    workers: int = 2,
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
            digest = sha256_file(path)
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
