"""Embedding many inputs: find them, and decode in threads while the model runs.

Two layers, each usable alone:

- **Inputs**: :func:`iter_image_files` walks paths, folders (recursively) and list files lazily,
  in a fixed order; :func:`iter_lines` reads one item per line from a file or a stream.
- **Streams**: :func:`embed_images`, :func:`embed_texts` and :func:`classify_images` turn an
  iterable of inputs into :class:`Batch` es. For images, decoding and preprocessing run in a
  thread pool (Pillow releases the GIL while it decodes and resizes, onnxruntime while it runs),
  at most ``2 * batch_size + workers`` images ahead of the model, so memory stays bounded however
  large the folder. A file that cannot be used (missing, unreadable, truncated, not an image)
  becomes a :class:`Failure` with a one-line reason in its batch; it never stops the stream.

Writing the results to files, with resume: :mod:`altclip_onnx.runtime.outputs`.

Only numpy, Pillow, tqdm and the standard library here.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, Union

import numpy as np

from ..errors import InputError, one_line
from .encoder import Encoder, check_batch_size, check_labels
from .images import IMAGE_BATCH_SIZE, load_image, preprocess
from .progress import Progress
from .text import TEXT_BATCH_SIZE

log = logging.getLogger(__name__)

#: Extensions picked up when walking folders, kept only if this Pillow can open the format
#: (HEIC/HEIF need a plugin such as pillow-heif to be registered).
CANDIDATE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
    ".heic", ".heif", ".avif",
)  # fmt: skip
DECODE_WORKERS = 2  # threads that read and decode images while the model runs, unless told otherwise

_T = TypeVar("_T")
LineSource = Union[str, os.PathLike, IO[str], IO[bytes]]


# --------------------------------------------------------------------------------------- inputs


def image_extensions() -> frozenset[str]:
    """The lower-case extensions (with the dot) of :data:`CANDIDATE_EXTENSIONS` Pillow can open."""
    from PIL import Image

    Image.init()
    registered = Image.registered_extensions()
    return frozenset(ext for ext in CANDIDATE_EXTENSIONS if registered.get(ext) in Image.OPEN)


def iter_image_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    from_file: LineSource | None = None,
    extensions: Iterable[str] | None = None,
    require_any: bool = True,
) -> Iterator[Path]:
    """Every image file under ``paths``, then under the lines of ``from_file``, lazily.

    A folder is walked recursively, its entries sorted by name at each level (sub-folders in
    place, not first), hidden entries (names starting with ".") skipped, symlinked folders not
    followed, and only files with an image extension kept (see :func:`image_extensions`). A
    path that is not a folder is yielded as given, whatever its name or even if missing: it is
    then reported as a failure when it is loaded. ``from_file`` lists one path (file or
    folder) per line; blank lines are skipped, and relative paths are relative to the current
    directory. Paths keep the form they were given in (relative stays relative).

    A folder without image files is logged; when nothing at all was found and ``require_any``, the
    stream ends with :class:`InputError` naming where it looked (an empty folder, a typo in a glob).
    """
    wanted = frozenset(e.lower() for e in extensions) if extensions is not None else image_extensions()
    found = 0
    looked: list[str] = []

    def expand(path: Path) -> Iterator[Path]:
        nonlocal found
        looked.append(os.fsdecode(path))
        if path.is_dir():
            before = found
            for file in _walk(path, wanted):
                found += 1
                yield file
            if found == before:
                log.warning("%s: no image files in this folder", path)
        else:
            found += 1
            yield path

    for path in paths:
        yield from expand(Path(path))
    if from_file is not None:
        for line in _raw_lines(from_file):
            if line.strip():
                yield from expand(Path(os.fsdecode(line)))
    if require_any and not found:
        where = ", ".join(looked[:3]) + (f" and {len(looked) - 3} more" if len(looked) > 3 else "")
        kinds = ", ".join(sorted(wanted))
        raise InputError(f"no image files found under {where or 'the list'} (looked for {kinds}); "
                         "check the path")


def _walk(folder: Path, wanted: frozenset[str]) -> Iterator[Path]:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        log.warning("%s: skipped, cannot list the folder (%s)", folder, exc.strerror or exc)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(path, wanted)
        elif os.path.splitext(entry.name)[1].lower() in wanted:
            yield path


def iter_lines(source: LineSource) -> Iterator[str]:
    """The non-blank lines of a file (path) or stream, as UTF-8 text without line endings.

    A leading byte-order mark is dropped; bytes that are not UTF-8 become U+FFFD.
    """
    for line in _raw_lines(source):
        text = line.decode("utf-8", errors="replace")
        if text.strip():
            yield text


def _raw_lines(source: LineSource) -> Iterator[bytes]:
    if hasattr(source, "read"):
        stream: Any = getattr(source, "buffer", source)
        yield from _split_lines(stream)
        return
    try:
        with open(source, "rb") as stream:  # type: ignore[arg-type]
            yield from _split_lines(stream)
    except OSError as exc:
        name = os.fsdecode(source)  # type: ignore[arg-type]
        raise InputError(f"{name}: cannot read the list ({exc.strerror or exc})") from exc


def _split_lines(stream: Any) -> Iterator[bytes]:
    first = True
    for line in stream:
        if isinstance(line, str):
            line = line.encode("utf-8", errors="surrogateescape")
        if first and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        first = False
        yield line.rstrip(b"\r\n")


def split_labels(comma_separated: Iterable[str] = (), single: Iterable[str] = ()) -> list[str]:
    """Labels from comma-separated lists and single labels (which may hold commas), in order.

    Whitespace around each label is stripped and empty pieces (``a,,b``, a trailing comma) are
    dropped; a label given twice is an :class:`InputError` (see :func:`check_labels`).
    """
    labels = [part.strip() for text in comma_separated for part in text.split(",")]
    labels += [label.strip() for label in single]
    labels = [label for label in labels if label]
    return check_labels(labels) if labels else []


# -------------------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class Failure:
    """An input that could not be embedded: its path (or text) and a one-line reason."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass(frozen=True)
class Batch:
    """Consecutive inputs: the embedded ones with their rows, and the ones that failed.

    ``embeddings`` is float32 [len(items), D]. ``probabilities`` ([len(items), labels]) is set
    only by :func:`classify_images`. A batch may hold failures only (no items).
    """

    items: list[str]
    embeddings: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    probabilities: np.ndarray | None = None


class _Done:
    """A result computed inline, looking like a finished Future (workers=0)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def embed_images(
    encoder: Encoder,
    files: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    workers: int = DECODE_WORKERS,
    draft: bool = False,
    normalize: bool = True,
    progress: bool | Progress = True,
) -> Iterator[Batch]:
    """Stream :class:`Batch` es of image embeddings, in the order of ``files``.

    ``workers`` threads decode and preprocess (0: in the calling thread) while the model runs on
    the previous batch. ``draft`` lets JPEGs decode at a reduced scale (see
    :func:`~altclip_onnx.runtime.images.load_image`). ``normalize=False`` gives the raw
    ``get_image_features``. ``progress``: True shows progress on stderr (a bar on a terminal, with
    a total when ``files`` has a length; plain lines in logs), or pass your own
    :class:`~altclip_onnx.runtime.progress.Progress` to count into. Rows equal
    :meth:`Encoder.encode_images` on the same files.
    """
    check_batch_size(batch_size)
    if workers < 0:
        raise InputError(f"workers must be 0 or more, not {workers}")
    spec = encoder.manifest.image

    def load(name: str) -> np.ndarray | Failure:
        try:
            return preprocess(load_image(name, draft=draft, size=spec.shortest_edge), spec)
        except InputError as exc:
            return Failure(name, _strip_name(str(exc), name))
        except Exception as exc:  # one odd file must not end a run over 100k files
            log.debug("%s: unexpected error", name, exc_info=True)
            return Failure(name, f"cannot be processed ({type(exc).__name__}: {one_line(exc)})")

    def run(items: list[str], pixels: list[np.ndarray], failures: list[Failure]) -> Batch:
        if items:
            embeddings = np.asarray(encoder.encode_pixels(np.stack(pixels), normalize=normalize), dtype=np.float32)
        else:
            embeddings = np.empty((0, encoder.embedding_dim), dtype=np.float32)
        bar.update(len(items) + len(failures))
        return Batch(items, embeddings, failures)

    window = 2 * batch_size + workers
    source = iter(files)
    pending: collections.deque[tuple[str, Future[Any] | _Done]] = collections.deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="altclip-decode") if workers else None
    bar = _progress(progress, "embedding images", "images", files)

    def fill() -> None:
        while len(pending) < window:
            path = next(source, None)
            if path is None:
                return
            name = os.fsdecode(path)
            pending.append((name, pool.submit(load, name) if pool else _Done(load(name))))

    try:
        items: list[str] = []
        pixels: list[np.ndarray] = []
        failures: list[Failure] = []
        while True:
            fill()
            if not pending:
                break
            name, future = pending.popleft()
            result = future.result()
            if isinstance(result, Failure):
                failures.append(result)
            else:
                items.append(name)
                pixels.append(result)
            if len(items) == batch_size or (not items and len(failures) >= batch_size):
                fill()  # so the workers decode the next batches while the model runs
                yield run(items, pixels, failures)
                items, pixels, failures = [], [], []
        if items or failures:
            yield run(items, pixels, failures)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not progress:
            bar.close()


def embed_texts(
    encoder: Encoder,
    texts: Iterable[str],
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    normalize: bool = True,
    progress: bool | Progress = True,
) -> Iterator[Batch]:
    """Stream :class:`Batch` es of text embeddings, in the order of ``texts``.

    Texts are taken ``8 * batch_size`` at a time so :meth:`Encoder.encode_texts` can group
    texts of similar length (less padding); rows come back in the input order.
    """
    check_batch_size(batch_size)
    bar = _progress(progress, "embedding texts", "texts", texts)
    try:
        for chunk in batched(texts, 8 * batch_size):
            embeddings = encoder.encode_texts(chunk, batch_size=batch_size, normalize=normalize)
            bar.update(len(chunk))
            yield Batch(chunk, np.asarray(embeddings, dtype=np.float32))
    finally:
        if bar is not progress:
            bar.close()


def classify_images(
    encoder: Encoder,
    files: Iterable[str | os.PathLike[str]],
    classifier: np.ndarray,
    *,
    batch_size: int = IMAGE_BATCH_SIZE,
    workers: int = DECODE_WORKERS,
    draft: bool = False,
    progress: bool | Progress = True,
) -> Iterator[Batch]:
    """:func:`embed_images` (normalized) with ``probabilities`` over the classifier's rows.

    ``classifier`` is [labels, D], e.g. :meth:`Encoder.text_classifier`; probabilities are
    ``softmax(logit_scale x cosine)`` as in :meth:`Encoder.classify`.
    """
    for batch in embed_images(encoder, files, batch_size=batch_size, workers=workers, draft=draft, progress=progress):
        probabilities = (
            encoder.probabilities(batch.embeddings, classifier)
            if batch.items
            else np.empty((0, len(classifier)), dtype=np.float32)
        )
        yield dataclasses.replace(batch, probabilities=probabilities)


def _progress(progress: bool | Progress, what: str, unit: str, items: Iterable[Any]) -> Progress:
    """The caller's Progress, or a new one (with a total when ``items`` has a length)."""
    if isinstance(progress, Progress):
        return progress
    total = len(items) if isinstance(items, Sized) else None
    return Progress(what, unit, total, enabled=progress)


def batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), lazily; ``itertools.batched``
    arrives only in Python 3.12."""
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _strip_name(message: str, name: str) -> str:
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
