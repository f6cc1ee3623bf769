"""Retrieval recall on a captioned image set the user owns: text→image and image→text, per language and
per precision, so an exported bundle can be compared with itself across precisions (or with published figures).

The set is a folder of images and a JSON Lines file, one caption per line::

    {"image": "relative/path/in/DIR.jpg", "caption": "a dog on a beach", "language": "en"}

An image may have several captions, in several languages; ``language`` is optional ("und" when absent)
and kept as written (``en`` and ``EN`` are two languages). The images of the set are the distinct paths
the captions name; other files in the folder are ignored.

Definitions (the same for every precision):

- **score**: the float32 dot product of the L2-normalized embeddings (cosine), computed as one matrix
  product of caption rows by image columns, in blocks of captions.
- **text→image recall@k**: over captions, the share whose image is among the k best-scoring images;
  every image of the set is a candidate. Per language L: over the captions in L.
- **image→text recall@k** for language L: over the images that have at least one caption in L, the share
  for which at least one of their L-captions is among the k best-scoring of all L-captions. Overall: the
  same over all captions, whatever their language (every image is a query).
- **ties**: candidates are ranked by score, highest first; equal scores keep a fixed order, images in the
  order they first appear in the captions file, captions in file order. A caption's rank is the number of
  candidates ranked before its answer; it is a hit at k when that number is below k.

Runtime half only: numpy, the Encoder and the runtime pipeline.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..bundle import TEXTUAL, VISUAL
from ..errors import InputError, VerificationError
from ..precisions import FP32, PRECISION_NAMES, parse_precisions
from ..runtime.encoder import Encoder
from ..runtime.pipeline import DECODE_WORKERS, IMAGE_BATCH_SIZE, TEXT_BATCH_SIZE, embed_images, embed_texts

log = logging.getLogger(__name__)

UNDETERMINED = "und"  #: the language of a caption without one (BCP 47's "undetermined")
DEFAULT_KS = (1, 5, 10)
TEXT_TO_IMAGE = "text_to_image"
IMAGE_TO_TEXT = "image_to_text"
DIRECTIONS = (TEXT_TO_IMAGE, IMAGE_TO_TEXT)
EXAMPLE_LINE = '{"image": "photos/1.jpg", "caption": "a dog on a beach", "language": "en"}'
_BLOCK_ROWS = 4096  # captions scored at once: a [4096, images] float32 block

PathLike = Union[str, "os.PathLike[str]"]


# ------------------------------------------------------------------------------------------ the set


@dataclass(frozen=True)
class CaptionSet:
    """A captioned image set, checked: every image exists, every caption has text.

    ``images``: the distinct image paths relative to ``images_dir`` (normalized, "/"-separated), in the
    order they first appear; ``texts``, ``image_of`` (index into ``images``) and ``languages``: one entry
    per caption, in file order.
    """

    images_dir: Path
    images: tuple[str, ...]
    texts: tuple[str, ...]
    image_of: tuple[int, ...]
    languages: tuple[str, ...]

    @property
    def paths(self) -> list[Path]:
        return [self.images_dir / name for name in self.images]

    def language_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.languages)))


def read_captions(images_dir: PathLike, captions_path: PathLike) -> CaptionSet:
    """Read and check a captions file (JSON Lines, see the module docstring) against its image folder.

    Blank lines are skipped and a leading byte-order mark is allowed. Anything unusable is an
    :class:`InputError` of one line naming the file and line: unreadable file, a line that is not a JSON
    object, a missing or empty ``image`` or ``caption``, a ``language`` that is not text, an image path
    that is absolute, leaves the folder, or names no file in it; and a file without captions.
    """
    folder = Path(images_dir)
    source = Path(captions_path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder; --images must be the folder the captions' image paths "
                         "are relative to")
    images: dict[str, int] = {}
    texts: list[str] = []
    image_of: list[int] = []
    languages: list[str] = []
    try:
        with open(source, "rb") as stream:
            for number, raw in enumerate(stream, 1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                where = f"{source}:{number}"
                image, caption, language = _parse_line(raw, where)
                key = _image_key(image, where, folder)
                if key not in images:
                    _check_image(folder, key, where)
                    images[key] = len(images)
                texts.append(caption)
                image_of.append(images[key])
                languages.append(language)
    except OSError as exc:
        raise InputError(f"{source}: cannot read the captions ({exc.strerror or exc})") from exc
    if not texts:
        raise InputError(f"{source}: no captions; write one JSON object per line, such as {EXAMPLE_LINE}")
    return CaptionSet(folder, tuple(images), tuple(texts), tuple(image_of), tuple(languages))


def _parse_line(raw: bytes, where: str) -> tuple[str, str, str]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not UTF-8 text (byte {exc.start + 1}); save the file as UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); each line is one object "
                         f"such as {EXAMPLE_LINE}") from exc
    if not isinstance(record, dict):
        raise InputError(f"{where}: a JSON {type(record).__name__}, not an object; each line is one object "
                         f"such as {EXAMPLE_LINE}")
    image, caption, language = record.get("image"), record.get("caption"), record.get("language")
    if not isinstance(image, str) or not image:
        raise InputError(f'{where}: "image" must be a path relative to the image folder, not {image!r}')
    if not isinstance(caption, str) or not caption.strip():
        raise InputError(f'{where}: "caption" must be non-empty text, not {caption!r}')
    if language is not None and not isinstance(language, str):
        raise InputError(f'{where}: "language" must be text such as "en", not {language!r}')
    return image, caption, (language or "").strip() or UNDETERMINED


def _image_key(image: str, where: str, folder: Path) -> str:
    """The image's path relative to the folder, normalized and "/"-separated ("a/./b.jpg" is "a/b.jpg")."""
    if Path(image).is_absolute():
        raise InputError(f"{where}: image {image!r} is an absolute path; write it relative to {folder}")
    normalized = os.path.normpath(image)
    if normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
        raise InputError(f"{where}: image {image!r} is outside {folder}; write paths inside the image folder")
    return Path(normalized).as_posix()


def _check_image(folder: Path, key: str, where: str) -> None:
    path = folder / key
    if path.is_file():
        return
    what = "is a folder, not an image file" if path.is_dir() else "does not exist"
    raise InputError(f"{where}: image {key!r} {what} in {folder}; fix the path or remove the line")


# ------------------------------------------------------------------------------------------ scoring


def count_hits(
    texts: np.ndarray,
    images: np.ndarray,
    image_of: Sequence[int],
    languages: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    block_rows: int = _BLOCK_ROWS,
) -> dict[str, dict[str | None, dict[int, int]]]:
    """Hits per direction, language (None: overall) and k, from normalized embeddings (see the definitions).

    ``texts`` [captions, D] and ``images`` [images, D] are float32 rows; ``image_of`` gives each caption's
    image (a row of ``images``), ``languages`` its language. Scores are computed once per block of
    ``block_rows`` captions for text→image and again, block by block, for image→text.
    """
    texts = np.asarray(texts, dtype=np.float32)
    images = np.asarray(images, dtype=np.float32)
    answer = np.asarray(image_of, dtype=np.int64)
    n_captions, n_images = len(texts), len(images)
    groups = _groups(languages)
    columns = np.arange(n_images)
    blocks = [(start, min(start + block_rows, n_captions)) for start in range(0, n_captions, block_rows)]
    kept: dict[int, np.ndarray] = {}

    def scores(index: int) -> np.ndarray:
        if index in kept:
            return kept[index]
        start, stop = blocks[index]
        block = texts[start:stop] @ images.T
        if len(blocks) == 1:
            kept[index] = block  # computed once when it all fits in one block
        return block

    # text→image: the rank of each caption's image among all images.
    own = np.empty(n_captions, dtype=np.float32)  # score of each caption with its own image
    text_rank = np.empty(n_captions, dtype=np.int64)
    for index, (start, stop) in enumerate(blocks):
        block = scores(index)
        truth = answer[start:stop]
        own[start:stop] = block[np.arange(stop - start), truth]
        above = (block > own[start:stop, None]).sum(axis=1)
        tied_before = ((block == own[start:stop, None]) & (columns[None, :] < truth[:, None])).sum(axis=1)
        text_rank[start:stop] = above + tied_before

    # image→text: per group, each image's best caption (highest score, then first in the file) and the
    # number of the group's captions ranked before it.
    best_score: dict[str | None, np.ndarray] = {}
    best_position: dict[str | None, np.ndarray] = {}
    for name, rows in groups.items():
        ranked = rows[np.lexsort((rows, -own[rows]))]  # the group's captions, best first
        images_seen, first = np.unique(answer[ranked], return_index=True)
        score = np.full(n_images, np.inf, dtype=np.float32)  # +inf: no caption in the group, not a query
        position = np.full(n_images, -1, dtype=np.int64)
        score[images_seen] = own[ranked[first]]
        position[images_seen] = ranked[first]
        best_score[name], best_position[name] = score, position
    image_rank = {name: np.zeros(n_images, dtype=np.int64) for name in groups}
    for index, (start, stop) in enumerate(blocks):
        block = scores(index)
        for name, rows in groups.items():
            inside = rows[(rows >= start) & (rows < stop)]
            if not len(inside):
                continue
            part = block[inside - start]
            best = best_score[name][None, :]
            before = (part > best) | ((part == best) & (inside[:, None] < best_position[name][None, :]))
            image_rank[name] += before.sum(axis=0)

    hits: dict[str, dict[str | None, dict[int, int]]] = {TEXT_TO_IMAGE: {}, IMAGE_TO_TEXT: {}}
    for name, rows in groups.items():
        queried = best_position[name] >= 0
        hits[TEXT_TO_IMAGE][name] = {k: int((text_rank[rows] < k).sum()) for k in ks}
        hits[IMAGE_TO_TEXT][name] = {k: int((image_rank[name][queried] < k).sum()) for k in ks}
    return hits


def _groups(languages: Sequence[str]) -> dict[str | None, np.ndarray]:
    """Caption rows of the whole set (None) and of each language, in file order."""
    by_language: dict[str | None, list[int]] = {None: list(range(len(languages)))}
    for row, language in enumerate(languages):
        by_language.setdefault(language, []).append(row)
    return {name: np.asarray(rows, dtype=np.int64) for name, rows in by_language.items()}


def count_queries(caption_set: CaptionSet) -> dict[str, dict[str | None, int]]:
    """Queries per direction and language (None: overall): captions for text→image, captioned images for
    image→text."""
    image_of = np.asarray(caption_set.image_of, dtype=np.int64)
    groups = _groups(caption_set.languages)
    return {
        TEXT_TO_IMAGE: {name: len(rows) for name, rows in groups.items()},
        IMAGE_TO_TEXT: {name: len(np.unique(image_of[rows])) for name, rows in groups.items()},
    }


# ------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class RetrievalReport:
    """Recall of one captioned set under one or more precisions (see the module docstring's definitions).

    ``queries[direction][language]`` and ``hits[precision][direction][language][k]``; the language None
    is the whole set. ``providers[precision]`` is the onnxruntime provider that ran it.
    """

    images_dir: str
    captions_path: str
    images: int
    captions: int
    ks: tuple[int, ...]
    languages: tuple[str, ...]
    queries: dict[str, dict[str | None, int]]
    hits: dict[str, dict[str, dict[str | None, dict[int, int]]]]
    providers: dict[str, str] = field(default_factory=dict)

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.hits)

    def recall(self, precision: str, direction: str, language: str | None = None, k: int = 1) -> float | None:
        """Share of queries with a hit in the top ``k`` (None: no queries in that language)."""
        queries = self.queries[direction][language]
        return self.hits[precision][direction][language][k] / queries if queries else None

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: recall values are fractions (0..1), k keys are strings::

            {"images_dir": ..., "captions": FILE, "images": N, "caption_count": N, "ks": [1, 5, 10],
             "languages": ["de", "en"],
             "queries": {"text_to_image": {"overall": N, "by_language": {"de": N, ...}}, "image_to_text": ...},
             "providers": {"fp32": "CPUExecutionProvider", ...},
             "recall": {"fp32": {"text_to_image": {"overall": {"1": r, "5": r, "10": r},
                                                   "by_language": {"de": {"1": r, ...}, ...}},
                                 "image_to_text": {...}}, ...}}
        """

        def split(value: Callable[[str | None], Any]) -> dict[str, Any]:
            return {"overall": value(None), "by_language": {name: value(name) for name in self.languages}}

        def recalls(precision: str, direction: str) -> dict[str, Any]:
            return split(lambda name: {str(k): self.recall(precision, direction, name, k) for k in self.ks})

        return {
            "images_dir": self.images_dir,
            "captions": self.captions_path,
            "images": self.images,
            "caption_count": self.captions,
            "ks": list(self.ks),
            "languages": list(self.languages),
            "queries": {d: split(self.queries[d].__getitem__) for d in DIRECTIONS},
            "providers": dict(self.providers),
            "recall": {p: {d: recalls(p, d) for d in DIRECTIONS} for p in self.precisions},
        }


# ------------------------------------------------------------------------------------------ running


def evaluate_retrieval(
    encoder_or_bundle: Encoder | PathLike,
    images_dir: PathLike,
    captions_path: PathLike,
    *,
    precisions: str | Iterable[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    provider: str | None = None,
    threads: int | None = None,
    batch_size: int = IMAGE_BATCH_SIZE,
    workers: int = DECODE_WORKERS,
    progress: bool = True,
    load: Callable[[str], Encoder] | None = None,
) -> RetrievalReport:
    """Recall@k text→image and image→text on a captioned set, per language and per precision.

    ``encoder_or_bundle``: an :class:`Encoder` (run as it is when ``precisions`` is None) or a bundle
    (folder or ``hf://``; then ``provider`` and ``threads`` apply). ``precisions``: names such as
    ``"fp32,int8"`` or ``["fp32", "int8"]``, run in the canonical order; default: every precision the
    bundle has for both towers (for an Encoder: its own). ``load``: how to make the Encoder of one
    precision, when one is needed (default: ``Encoder(bundle, provider=, precision=, threads=)``, or the
    given Encoder's settings). ``batch_size`` and ``workers``: images per model call and decoding threads.

    The set is read and checked first (:func:`read_captions`), then each precision embeds every image and
    caption; an image that cannot be decoded is an :class:`InputError` naming it, since a missing
    candidate would change every rank. A precision whose embeddings are not finite (NaN or infinity) is a
    :class:`VerificationError`. Definitions: the module docstring.
    """
    ks = _check_ks(ks)
    caption_set = read_captions(images_dir, captions_path)
    encoders = _encoders(encoder_or_bundle, precisions, provider, threads, load)
    hits: dict[str, dict[str, dict[str | None, dict[int, int]]]] = {}
    providers: dict[str, str] = {}
    while encoders:
        label, encoder = encoders.pop(0)  # dropped when done: one precision's sessions in memory at a time
        log.info("retrieval: %s on %d images and %d captions", label, len(caption_set.images), len(caption_set.texts))
        image_rows = _embed_images(encoder, caption_set, batch_size, workers, progress)
        text_rows = np.concatenate([batch.embeddings for batch in embed_texts(
            encoder, list(caption_set.texts), batch_size=TEXT_BATCH_SIZE, progress=progress)])
        _check_finite(label, encoder, image_rows, text_rows)
        hits[label] = count_hits(text_rows, image_rows, caption_set.image_of, caption_set.languages, ks)
        providers[label] = encoder.providers[0]
    return RetrievalReport(
        images_dir=os.fsdecode(images_dir), captions_path=os.fsdecode(captions_path),
        images=len(caption_set.images), captions=len(caption_set.texts), ks=ks,
        languages=caption_set.language_names(), queries=count_queries(caption_set), hits=hits, providers=providers,
    )  # fmt: skip


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = list(ks)
    if not values or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in values):
        raise InputError(f"ks must be whole numbers of 1 or more, not {values!r}")
    return tuple(sorted({int(k) for k in values}))


def _label(encoder: Encoder) -> str:
    """A precision name, or "int8/fp32" (image/text) for an Encoder that runs the towers differently."""
    visual, textual = encoder.precisions[VISUAL], encoder.precisions[TEXTUAL]
    return visual if visual == textual else f"{visual}/{textual}"


def _encoders(source: Encoder | PathLike, precisions: str | Iterable[str] | None, provider: str | None,
              threads: int | None, load: Callable[[str], Encoder] | None) -> list[tuple[str, Encoder]]:
    """One Encoder per precision, all made (so all checked) before any work; sessions load lazily."""
    wanted = parse_precisions(precisions) if precisions is not None else None
    if wanted == ():
        raise InputError(f"no precision given; choose from {', '.join(PRECISION_NAMES)}")
    if isinstance(source, Encoder):
        if wanted is None:
            return [(_label(source), source)]
        first = source
        if load is None:
            def load(name: str) -> Encoder:
                return Encoder(source.bundle, provider=source.provider, precision=name, threads=source.threads,
                               max_length=source.max_length)
    else:
        if load is None:
            def load(name: str) -> Encoder:
                return Encoder(source, provider=provider, precision=name, threads=threads)
        first = load(wanted[0] if wanted else FP32.name)
    if wanted is None:
        has = set(first.manifest.precisions(VISUAL)) & set(first.manifest.precisions(TEXTUAL))
        wanted = tuple(name for name in PRECISION_NAMES if name in has)
    return [(name, first if first.precisions == {VISUAL: name, TEXTUAL: name} else load(name)) for name in wanted]


def _check_finite(label: str, encoder: Encoder, image_rows: np.ndarray, text_rows: np.ndarray) -> None:
    """A variant that yields NaN or infinity here cannot be ranked (a NaN compares false with everything,
    so it would count as a hit): refuse it, as a failed verification."""
    images = int((~np.isfinite(image_rows).all(axis=1)).sum())
    texts = int((~np.isfinite(text_rows).all(axis=1)).sum())
    if images or texts:
        raise VerificationError(
            f"{label} on {encoder.providers[0]}: {images} image and {texts} caption embeddings are not finite "
            "(NaN or infinity); this variant does not work on this machine and provider, so it cannot be "
            "ranked: leave it out with --precision, or try another --provider")


def _embed_images(encoder: Encoder, caption_set: CaptionSet, batch_size: int, workers: int,
                  progress: bool) -> np.ndarray:
    """Rows in the set's image order, or InputError naming the first image that could not be read."""
    parts = [np.empty((0, encoder.embedding_dim), dtype=np.float32)]
    failures = []
    for batch in embed_images(encoder, caption_set.paths, batch_size=batch_size, workers=workers, progress=progress):
        parts.append(batch.embeddings)
        failures.extend(batch.failures)
    if failures:
        others = f" (and {len(failures) - 1} more of {len(caption_set.images)} images)" if len(failures) > 1 else ""
        raise InputError(f"{failures[0]}{others}; every image of the set is a candidate: fix or replace it, "
                         "or remove its captions")
    return np.concatenate(parts)
