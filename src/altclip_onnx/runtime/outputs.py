"""Embeddings to files, resumable: ``OUT.npy`` + ``OUT.paths.txt`` / ``OUT.texts.jsonl``, or Parquet.

:func:`embed_images_to_file` and :func:`embed_texts_to_file` write ``OUT.npy`` plus
``OUT.paths.txt`` (images, one path per line, same order as the rows) or ``OUT.texts.jsonl``
(texts, one JSON string per line, so texts may hold line breaks), or a single Parquet file when
OUT ends in ``.parquet`` (columns ``path`` or ``text``, and ``embedding`` as a fixed-size list
of float32; needs the ``[parquet]`` extra). :func:`read_embeddings` reads either back.

Resume. Finished rows are appended to a checkpoint folder beside the output, ``OUT.partial/``
(``x.npy.partial/`` or ``x.parquet.partial/``): numbered chunks ``000000.npy`` + ``000000.items.jsonl``, each written to a temp name, fsync'd and
renamed (the ``.npy`` rename commits the chunk), every ``checkpoint_seconds`` (or 4096 rows) and
always when the run stops on an exception such as Ctrl-C; ``meta.json`` records the settings
(bundle, precision, normalize, draft), and a rerun with other settings is refused; a ``lock``
file (``flock``, released even by ``kill -9``) keeps a second run off the same output. A rerun with
the same output loads the committed chunks, skips inputs already in them (a multiset of path or
text strings, so rerun from the same folder with the same arguments), embeds the rest in order,
then writes the final files through temp names and renames and deletes ``OUT.partial/``. So an
interrupted run leaves no OUT file at all, and ``kill -9`` loses at most the last
``checkpoint_seconds`` of work. Failed inputs are not checkpointed: a rerun tries them again.

Only numpy, tqdm and the standard library here (pyarrow when writing Parquet).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from ..bundle import TEXTUAL, VISUAL
from ..errors import InputError, Interrupted, MissingDependencyError, OutputError
from ..files import atomic_path, ensure_writable_folder, lock_file, write_bytes
from .encoder import Encoder
from .pipeline import DECODE_WORKERS, IMAGE_BATCH_SIZE, TEXT_BATCH_SIZE, Batch, Failure, embed_images, embed_texts
from .progress import Progress

log = logging.getLogger(__name__)

PARQUET = ".parquet"
PARTIAL = ".partial"
_CHUNK_ROWS = 4096  # a checkpoint chunk holds at most this many rows (bounds the buffered memory)



@dataclass(frozen=True)
class EmbedOptions:
    """How :func:`embed_images_to_file` and :func:`embed_texts_to_file` run.

    ``batch_size`` None: ``IMAGE_BATCH_SIZE`` for images, ``TEXT_BATCH_SIZE`` for texts. ``overwrite``: replace an existing output
    (otherwise refused, unless a checkpoint says the run is being resumed).
    ``checkpoint_seconds``: the most work a hard kill can lose.
    """

    batch_size: int | None = None
    workers: int = DECODE_WORKERS
    draft: bool = False
    normalize: bool = True
    progress: bool = True
    overwrite: bool = False
    checkpoint_seconds: float = 10.0


@dataclass(frozen=True)
class EmbedReport:
    """What a run wrote: ``rows`` in total, of which ``resumed`` came from an interrupted run."""

    outputs: tuple[Path, ...]
    rows: int
    resumed: int
    failures: tuple[Failure, ...]
    seconds: float

    @property
    def embedded(self) -> int:
        """Rows embedded by this run."""
        return self.rows - self.resumed

    @property
    def per_second(self) -> float:
        """Inputs (embedded or failed) handled per second by this run, start to finish."""
        done = self.embedded + len(self.failures)
        return done / self.seconds if self.seconds > 0 else 0.0


def output_files(output: str | os.PathLike[str], kind: str = "image") -> tuple[Path, ...]:
    """The files a run writes for ``output``: ``(x.parquet,)`` or ``(x.npy, x.paths.txt)``
    (``x.texts.jsonl`` for texts); ``x`` and ``x.npy`` name the same pair. Any other extension
    (``x.csv``) is an :class:`InputError`: it would silently become ``x.csv.npy``."""
    output = Path(output)
    if output.suffix.lower() == PARQUET:
        return (output,)
    if output.suffix and output.suffix.lower() != ".npy":
        raise InputError(f"{output}: unknown output format {output.suffix!r}; name it OUT.npy (or just OUT) "
                         "for .npy + a list file, or OUT.parquet")
    stem = output.with_suffix("") if output.suffix.lower() == ".npy" else output
    side = "paths.txt" if kind == "image" else "texts.jsonl"
    return stem.with_name(stem.name + ".npy"), stem.with_name(f"{stem.name}.{side}")


def checkpoint_folder(output: str | os.PathLike[str]) -> Path:
    output = Path(output)
    return output.with_name(output.name + PARTIAL)


def embed_images_to_file(
    encoder: Encoder,
    files: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: EmbedOptions = EmbedOptions(),
) -> EmbedReport:
    """Embed ``files`` (e.g. :func:`iter_image_files`) into ``output``, resuming if interrupted before.

    Failed files are in the report, not in the output. See the module docstring for formats and resume.
    """
    batch_size = options.batch_size or IMAGE_BATCH_SIZE
    meta = run_meta(encoder, "image", normalize=options.normalize, draft=options.draft)
    return _run(encoder, files, output, "image", meta, options, lambda todo, progress: embed_images(
        encoder, todo, batch_size=batch_size, workers=options.workers, draft=options.draft,
        normalize=options.normalize, progress=progress))  # fmt: skip


def embed_texts_to_file(
    encoder: Encoder,
    texts: Iterable[str],
    output: str | os.PathLike[str],
    options: EmbedOptions = EmbedOptions(),
) -> EmbedReport:
    """Embed ``texts`` into ``output`` (``OUT.npy`` + ``OUT.texts.jsonl`` or Parquet column ``text``)."""
    batch_size = options.batch_size or TEXT_BATCH_SIZE
    meta = run_meta(encoder, "text", normalize=options.normalize, draft=False)
    return _run(encoder, texts, output, "text", meta, options, lambda todo, progress: embed_texts(
        encoder, todo, batch_size=batch_size, normalize=options.normalize, progress=progress))  # fmt: skip


def read_embeddings(output: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """(paths or texts, float32 [N, D]) from a finished output of either format."""
    output = Path(output)
    if output.suffix.lower() == PARQUET:
        pq = parquet_modules("reading Parquet")[1]
        table = pq.read_table(output)
        column = "path" if "path" in table.column_names else "text"
        items = table.column(column).to_pylist()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return items, np.asarray(flat, dtype=np.float32).reshape(len(items), -1)
    npy, side = output_files(output, "image")
    if not side.exists():
        side = output_files(output, "text")[1]
        items = [json.loads(line) for line in side.read_text(encoding="utf-8").splitlines()]
    else:
        items = side.read_text(encoding="utf-8", errors="surrogateescape").split("\n")[:-1]
    return items, np.load(npy)


def run_meta(encoder: Encoder, kind: str, *, normalize: bool, draft: bool) -> dict[str, Any]:
    """What a run over ``kind`` ("image" or "text") records with its rows, and a resumed run must match:
    the model, the variant's file and checksum, and the settings that change the vectors."""
    manifest = encoder.manifest
    tower = VISUAL if kind == "image" else TEXTUAL
    variant = manifest.towers[tower][encoder.precisions[tower]]
    entry = manifest.files.get(variant.path)
    return {
        "kind": kind,
        "variant": manifest.variant,
        "source": manifest.source,
        "model": variant.path,
        "sha256": entry.sha256 if entry else None,
        "embedding_dim": manifest.embedding_dim,
        "normalize": normalize,
        "draft": draft if kind == "image" else False,
    }


def _run(
    encoder: Encoder,
    inputs: Iterable[Any],
    output: str | os.PathLike[str],
    kind: str,
    meta: dict[str, Any],
    options: EmbedOptions,
    stream: Callable[[Iterable[Any], Progress], Iterator[Batch]],
) -> EmbedReport:
    started = time.perf_counter()
    if Path(output).is_dir():  # x would become x.npy beside the folder, not a file in it
        raise OutputError(f"{output}: is a folder; -o names the output file, e.g. -o {Path(output) / 'embeddings.npy'}")
    outputs = output_files(output, kind)
    parquet = outputs[0].suffix.lower() == PARQUET
    if parquet:
        parquet_modules("writing Parquet")  # fail before any work, not after it
    checkpoint = _Checkpoint(checkpoint_folder(outputs[0]), meta, encoder.embedding_dim, options.checkpoint_seconds)
    if not checkpoint.folder.exists() and not options.overwrite:
        existing = [str(p) for p in outputs if p.exists()]
        if existing:
            raise OutputError(
                f"{', '.join(existing)}: already exists; pass --overwrite to replace it or choose another -o"
            )
    ensure_writable_folder(outputs[0].parent)  # before the work, not after it
    done = checkpoint.open()  # locked from here on: one run per output at a time
    try:
        resumed = checkpoint.rows
        if resumed:
            log.info("%s: resuming, %d rows already done", checkpoint.folder, resumed)
        failures: list[Failure] = []
        todo = _todo(inputs, done, failures, outputs if kind == "image" else None)
        total = len(inputs) - resumed if isinstance(inputs, Sized) else None  # a list: an ETA can be shown
        progress = Progress(f"embedding {kind}s", f"{kind}s", total, enabled=options.progress)
        try:
            with progress:
                seen = _embed_into(checkpoint, stream(todo, progress), failures)
        except KeyboardInterrupt as exc:
            kept = (f"finished rows are kept in {checkpoint.folder}: rerun the same command to resume"
                    if checkpoint.rows else "nothing was written")
            raise Interrupted(f"interrupted; {kept}") from exc
        if not seen and not resumed and kind == "text":
            raise InputError("no texts to embed: the arguments, list or standard input held none")
        if parquet:
            _write_parquet(outputs[0], checkpoint, kind, meta)
        else:
            _write_npy(outputs, checkpoint, kind)
        rows = checkpoint.rows
        checkpoint.remove()
    finally:
        checkpoint.close()
    return EmbedReport(outputs, rows, resumed, tuple(failures), time.perf_counter() - started)


def _todo(
    inputs: Iterable[Any], done: collections.Counter[str], failures: list[Failure], listed: tuple[Path, ...] | None
) -> Iterator[Any]:
    """``inputs`` less those already done; names with line breaks fail when ``listed`` is a paths.txt pair."""
    for item in inputs:
        name = item if isinstance(item, str) else os.fsdecode(item)
        if done.get(name):
            done[name] -= 1
            continue
        if listed and listed[0].suffix.lower() != PARQUET and ("\n" in name or "\r" in name):
            failures.append(Failure(name, f"its name holds a line break, which {listed[1].name} cannot list; "
                                          "write a .parquet output instead"))
            continue
        yield item


def _embed_into(checkpoint: _Checkpoint, batches: Iterator[Batch], failures: list[Failure]) -> int:
    """Checkpoint every batch; on any exception (Ctrl-C too) keep what was finished, then re-raise.
    Returns how many inputs the batches held (embedded or failed)."""
    seen = 0
    try:
        for batch in batches:
            seen += len(batch.items) + len(batch.failures)
            failures.extend(batch.failures)
            checkpoint.add(batch.items, batch.embeddings)
    except BaseException:
        checkpoint.flush()  # on Ctrl-C too: nothing finished is lost
        if not checkpoint.rows:
            checkpoint.remove()  # nothing to resume: leave no trace
        raise
    checkpoint.flush()
    return seen


class _Checkpoint:
    """The ``OUT.partial/`` folder: committed chunks of finished rows (see the module docstring)."""

    def __init__(self, folder: Path, meta: dict[str, Any], dim: int, seconds: float) -> None:
        self.folder = folder
        self.meta = meta
        self.dim = dim
        self.seconds = seconds
        self.chunks = 0
        self.rows = 0
        self._items: list[str] = []
        self._rows: list[np.ndarray] = []
        self._last = time.monotonic()
        self._lock: IO[str] | None = None

    def open(self) -> collections.Counter[str]:
        """Create and lock the folder, or lock and load it: the counts of inputs already done."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = lock_file(self.folder / "lock", str(self.folder))
        try:
            return self._load()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (a crashed process releases it too)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _load(self) -> collections.Counter[str]:
        done: collections.Counter[str] = collections.Counter()
        meta_path = self.folder / "meta.json"
        if meta_path.exists():
            try:
                stored = json.loads(meta_path.read_text(encoding="utf-8"))
            except ValueError:
                stored = None
            if stored != json.loads(json.dumps(self.meta)):
                differs = sorted(k for k in self.meta if not isinstance(stored, dict) or stored.get(k) != self.meta[k])
                raise OutputError(
                    f"{self.folder}: holds an interrupted run with other settings "
                    f"({', '.join(differs) or 'unreadable'}); "
                    "rerun with the same bundle and options, or delete the folder to start over"
                )
            for items, _ in self.read():
                done.update(items)
                self.chunks += 1
                self.rows += len(items)
            for stale in self.folder.iterdir():  # temp files, and anything after the last committed chunk
                number = stale.name.split(".")[0]
                if stale.name.endswith(".part") or (number.isdigit() and int(number) >= self.chunks):
                    stale.unlink()
        else:
            self._write(meta_path, json.dumps(self.meta, indent=2).encode())
        return done

    def read(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """The committed chunks in order (embeddings memory-mapped), stopping at the first gap."""
        index = 0
        while (npy := self.folder / f"{index:06d}.npy").exists():
            try:
                lines = (self.folder / f"{index:06d}.items.jsonl").read_text(encoding="utf-8").splitlines()
                items = [json.loads(line) for line in lines]
                rows = np.load(npy, mmap_mode="r")
            except (OSError, ValueError) as exc:
                log.warning("%s: chunk %d unreadable (%s); it will be redone", self.folder, index, exc)
                return
            if rows.shape != (len(items), self.dim) or rows.dtype != np.float32:
                log.warning("%s: chunk %d does not match its list; it will be redone", self.folder, index)
                return
            yield items, rows
            index += 1

    def add(self, items: Sequence[str], rows: np.ndarray) -> None:
        if items:
            self._items.extend(items)
            self._rows.append(rows)
        if len(self._items) >= _CHUNK_ROWS or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._items:
            return
        rows = np.concatenate(self._rows).astype(np.float32, copy=False)
        buffer = io.BytesIO()
        np.save(buffer, rows)
        name = f"{self.chunks:06d}"
        lines = "".join(json.dumps(item) + "\n" for item in self._items)  # ASCII: any string survives
        self._write(self.folder / f"{name}.items.jsonl", lines.encode())
        self._write(self.folder / f"{name}.npy", buffer.getvalue())  # this rename commits the chunk
        self.chunks += 1
        self.rows += len(self._items)
        self._items, self._rows = [], []

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _write(self, path: Path, data: bytes) -> None:
        write_bytes(path, data, durable=True)


def _write_npy(outputs: tuple[Path, ...], checkpoint: _Checkpoint, kind: str) -> None:
    """Stream the chunks into ``OUT.npy`` and the side file; both appear only when both are complete."""
    npy, side = outputs
    with atomic_path(npy) as tmp_npy, atomic_path(side) as tmp_side:
        header = {"descr": "<f4", "fortran_order": False, "shape": (checkpoint.rows, checkpoint.dim)}
        with open(tmp_npy, "wb") as rows_out, open(tmp_side, "w", encoding="utf-8", errors="surrogateescape",
                                                   newline="\n") as side_out:  # fmt: skip
            np.lib.format.write_array_header_1_0(rows_out, header)
            for items, rows in checkpoint.read():
                rows_out.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
                if kind == "image":
                    side_out.writelines(item + "\n" for item in items)
                else:
                    side_out.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def _write_parquet(path: Path, checkpoint: _Checkpoint, kind: str, meta: dict[str, Any]) -> None:
    pa, pq = parquet_modules("writing Parquet")
    column = "path" if kind == "image" else "text"
    schema = pa.schema(
        [(column, pa.string()), ("embedding", pa.list_(pa.float32(), checkpoint.dim))],
        metadata={"altclip_onnx": json.dumps(meta)},
    )
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for items, rows in checkpoint.read():
                names = [parquet_string(item) for item in items]
                flat = pa.array(np.ascontiguousarray(rows, dtype=np.float32).reshape(-1))
                embeddings = pa.FixedSizeListArray.from_arrays(flat, checkpoint.dim)
                writer.write_table(pa.Table.from_arrays([pa.array(names, pa.string()), embeddings], schema=schema))


def parquet_string(item: str) -> str:
    """Parquet strings are UTF-8: undecodable bytes of a file name become U+FFFD."""
    return item.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def parquet_modules(feature: str, extra: str = "parquet") -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet``, or :class:`MissingDependencyError` naming ``feature`` and the extra
    that brings them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise MissingDependencyError(feature, extra, "pyarrow") from exc
    return pyarrow, pyarrow.parquet
