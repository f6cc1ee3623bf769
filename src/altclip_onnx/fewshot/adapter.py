"""Few-shot classification with Tip-Adapter: a cache of labelled image embeddings, no training.

Tip-Adapter (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022) keeps the L2-normalized embeddings of a few labelled images as
*keys* F [N, D] and their one-hot classes as *values* L [N, C]. For a normalized image
embedding f, with W [C, D] the zero-shot classifier built from the class names and templates::

    logits = logit_scale * f W^T  +  alpha * exp(-beta * (1 - f F^T)) L

The first term is zero-shot CLIP; the second lets every cached image vote for its class with a
weight that falls off with its distance to f (beta: how sharply; alpha: how much the cache counts
against the text prior). The paper multiplies by 100; here ``logit_scale`` is the bundle's.

This module holds the formula and the cache (:class:`TipAdapter`, saved as one ``.npz`` zip:
``metadata.json`` plus ``.npy`` arrays, readable with ``numpy.load``). The cache records the model it
was built with (:class:`~altclip_onnx.bundle.ModelIdentity`) and :meth:`TipAdapter.load` refuses
another one; it also keeps the SHA-256 of every cached and validation image, so that evaluation can
refuse test images the cache has already seen. Building a cache: :mod:`.build`; scoring one:
:mod:`.evaluate`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import VISUAL, ModelIdentity, check_same_model
from ..errors import CacheError, InputError, OutputError
from ..files import atomic_path, ensure_writable_folder
from ..runtime.encoder import Encoder, l2_normalize, softmax

log = logging.getLogger(__name__)

CACHE_FORMAT = "altclip-onnx/tip-adapter"
CACHE_VERSION = 2  # 2: the model is recorded as a ModelIdentity
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
    model: ModelIdentity  # the model the keys and classifier were computed with
    precision: str  # of the image tower, for the keys
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
        """Raise :class:`CacheError` unless ``encoder`` runs the model the cache was built with."""
        check_same_model(
            f"{where} was built with {self.model.describe()}", self.model, self.precision,
            f"{encoder.bundle} is", encoder.identity, encoder.precisions[VISUAL], error=CacheError,
            fix="use that bundle or rebuild the cache with 'altclip-onnx fewshot build'",
        )

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
            "model": self.model.to_json(),
            "precision": self.precision,
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
        check_cache_destination(target, overwrite=overwrite)
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
            raise CacheError(f"{source}: no such cache file; build one with 'altclip-onnx fewshot build'")
        try:
            with zipfile.ZipFile(source) as archive:
                meta = json.loads(archive.read("metadata.json"))
                arrays = {name: np.lib.format.read_array(io.BytesIO(archive.read(f"{name}.npy")), allow_pickle=False)
                          for name in ("keys", "classes", "classifier")}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            reason = f"not a Tip-Adapter cache ({exc})"
            raise CacheError(f"{source}: {reason}; build one with 'altclip-onnx fewshot build'") from exc
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise CacheError(f"{source}: not a Tip-Adapter cache; build one with 'altclip-onnx fewshot build'")
        if meta.get("version") != CACHE_VERSION:
            raise CacheError(f"{source}: cache format {meta.get('version')} is not supported by this altclip-onnx "
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
                model=ModelIdentity.from_json(meta["model"]),
                precision=str(meta["precision"]),
                validation=Validation(**{**meta["validation"], "alphas": tuple(meta["validation"]["alphas"]),
                                         "betas": tuple(meta["validation"]["betas"])}),
                images=tuple(LabelledImage(**image) for image in meta["images"]),
                seed=int(meta.get("seed", 0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CacheError(f"{source}: the cache is incomplete or malformed ({exc!r}); rebuild it") from exc
        n, dim = adapter.keys.shape if adapter.keys.ndim == 2 else (-1, -1)
        if adapter.classifier.shape != (len(class_names), dim) or len(arrays["classes"]) != n:
            raise CacheError(f"{source}: the cache's arrays do not fit together; rebuild it")
        if encoder is not None:
            adapter.check_encoder(encoder, where=str(source))
        return adapter


def check_cache_destination(target: Path, *, overwrite: bool) -> None:
    """Refuse an existing file (unless ``overwrite``), a folder, or an unwritable place, before any work."""
    if target.is_dir():
        raise OutputError(f"{target}: is a folder; give a file name such as cache.npz")
    if target.exists() and not overwrite:
        raise OutputError(f"{target}: already exists; pass --overwrite to replace it or choose another -o")
    ensure_writable_folder(target.parent if str(target.parent) else Path("."))
