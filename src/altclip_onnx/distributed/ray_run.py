"""Embedding on a Ray cluster with Ray Data: inputs in, Parquet shards out (see the package docstring).

The pipeline is ``ray.data.from_arrow(blocks of (shard, row, item))`` -> ``map_batches(<embedder class>,
compute=ActorPoolStrategy(size=actors), num_cpus=threads)`` -> the driver, which gathers each shard's rows and
writes the shard (:class:`~altclip_onnx.distributed.shards.ShardFolder`) as soon as it is complete. Each actor
builds one :class:`~altclip_onnx.runtime.encoder.Encoder` when it starts (sessions loaded once) and, for images,
reads, decodes and preprocesses its block in ``workers`` threads while the model runs, as the single-process
:func:`~altclip_onnx.runtime.pipeline.embed_images` does: only paths travel to the actors and only embeddings
travel back.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import MANIFEST, TEXTUAL, VISUAL, needed_files, read_manifest, verify_files
from ..errors import AltclipOnnxError, BundleError, InputError, Interrupted, MissingDependencyError, one_line
from ..precisions import AUTO
from ..runtime.encoder import Encoder
from ..runtime.outputs import run_meta
from ..runtime.pipeline import DECODE_WORKERS, IMAGE_BATCH_SIZE, TEXT_BATCH_SIZE, Failure
from ..runtime.progress import Progress
from .shards import ShardFolder, inputs_digest, pyarrow

log = logging.getLogger(__name__)

SHIPPED_CACHE = "altclip-onnx-bundles"  # under each node's temp folder: bundles shipped through the object store


@dataclass(frozen=True)
class RayOptions:
    """How a distributed run uses the cluster.

    ``address``: "auto" (``ray.init()``'s own choice: ``RAY_ADDRESS``, else a cluster already running on this
    machine, else a new local one) or a cluster's address (``HOST:PORT`` of its head, ``ray://HOST:10001``).
    ``actors``: model replicas (None: the cluster's CPUs / ``threads``). ``threads``: onnxruntime threads per
    actor (each actor reserves that many CPUs). ``workers``: decoding threads per actor (images).
    ``ship_bundle``: send the bundle's files to the workers through Ray's object store (cached per node)
    instead of having every worker read it from the same path. ``shard_rows``: inputs per Parquet shard,
    the unit of resuming.
    """

    address: str = AUTO
    actors: int | None = None
    threads: int = 1
    workers: int = DECODE_WORKERS
    batch_size: int | None = None
    shard_rows: int = 1000
    ship_bundle: bool = False
    provider: str | None = None
    precision: str = AUTO
    draft: bool = False
    normalize: bool = True
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class ShardReport:
    """What a distributed run did: ``rows`` inputs in ``shards`` shards in ``output``, of which ``resumed``
    shards were already there; ``failures`` of this run (failed inputs are rows with an ``error``)."""

    output: Path
    rows: int
    shards: int
    resumed: int
    embedded: int
    failures: tuple[Failure, ...]
    actors: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Inputs (embedded or failed) handled per second by this run, start to finish."""
        done = self.embedded + len(self.failures)
        return done / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------- the actors


class _Embedder:
    """One model replica (a Ray actor): an Encoder built once, then block after block of inputs."""

    def __init__(self, kind: str, bundle: str, shipped: Any, precision: str, provider: str | None, threads: int,
                 workers: int, batch_size: int, draft: bool, normalize: bool) -> None:
        folder, check = (_materialize(shipped), False) if shipped is not None else (bundle, True)
        self.encoder = Encoder(folder, provider=provider, precision=precision, threads=threads, check_files=check)
        self.kind = kind
        self.workers = workers
        self.batch_size = batch_size
        self.draft = draft
        self.normalize = normalize

    def __call__(self, batch: Any) -> Any:
        pa = pyarrow()[0]
        items = [str(item) for item in batch.column("item").to_pylist()]
        dim = self.encoder.embedding_dim
        errors: list[str | None] = [None] * len(items)
        if self.kind == "image":
            rows = self._images(items, errors)
        else:
            rows = np.asarray(self.encoder.encode_texts(items, batch_size=self.batch_size, normalize=self.normalize),
                              dtype=np.float32)
        flat = pa.array(np.ascontiguousarray(rows, dtype=np.float32).reshape(-1))
        return pa.table({"shard": batch.column("shard"), "row": batch.column("row"), "item": batch.column("item"),
                         "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                         "error": pa.array(errors, pa.string())})

    def _images(self, items: list[str], errors: list[str | None]) -> np.ndarray:
        """Read, decode and preprocess in ``workers`` threads while the model runs on the previous batch."""
        from concurrent.futures import ThreadPoolExecutor

        rows = np.zeros((len(items), self.encoder.embedding_dim), dtype=np.float32)
        waiting: list[int] = []
        pixels: list[np.ndarray] = []

        def run() -> None:
            rows[waiting] = self.encoder.encode_pixels(np.stack(pixels), normalize=self.normalize)
            waiting.clear()
            pixels.clear()

        pool = ThreadPoolExecutor(self.workers) if self.workers else None
        try:
            results = pool.map(self._load, items) if pool else map(self._load, items)
            for i, result in enumerate(results):
                if isinstance(result, Failure):
                    errors[i] = result.reason
                    continue
                waiting.append(i)
                pixels.append(result)
                if len(waiting) == self.batch_size:
                    run()
            if waiting:
                run()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return rows

    def _load(self, item: str) -> np.ndarray | Failure:
        from ..runtime.images import load_image, preprocess

        spec = self.encoder.manifest.image
        try:
            source: Any = _read_uri(item) if _is_uri(item) else item
            return preprocess(load_image(source, draft=self.draft, size=spec.shortest_edge), spec)
        except InputError as exc:
            message = str(exc)
            for prefix in (f"{item}: ", "<bytes>: "):
                message = message.removeprefix(prefix)
            return Failure(item, message)
        except OSError as exc:  # a URI that cannot be read
            return Failure(item, f"cannot read it ({exc.strerror or one_line(exc)})")
        except Exception as exc:  # one odd file must not end a run over millions
            return Failure(item, f"cannot be processed ({type(exc).__name__}: {one_line(exc)})")


def _is_uri(item: str) -> bool:
    """``scheme://...`` (s3, gs, hdfs, file, ...): read through pyarrow's filesystems, not as a local path."""
    head, sep, _ = item.partition("://")
    return bool(sep) and head.isalnum()


def _read_uri(uri: str) -> bytes:
    """The bytes behind a URI every node can read (s3://, gs://, hdfs://, ...), through pyarrow's filesystems."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return bytes(stream.read())


# --------------------------------------------------------------------------------------- the bundle


def _ship(encoder: Encoder, tower: str) -> dict[str, Any]:
    """What an actor needs to run ``tower`` at the encoder's precision (the manifest and the files that
    variant needs) as one object for Ray's object store (read once, on the driver)."""
    names = [MANIFEST, *needed_files(encoder.manifest, [(tower, encoder.precisions[tower])])]
    return {"key": f"{encoder.identity.fingerprint[:16]}-{tower}-{encoder.precisions[tower]}",
            "checked": [n for n in names if n != MANIFEST],
            "files": {name: (encoder.bundle / name).read_bytes() for name in names}}


def _materialize(shipped: Any) -> str:
    """Write a shipped bundle into this node's temp folder once (atomically: a rename), check it, return it."""
    ray = _ray()
    if isinstance(shipped, ray.ObjectRef):  # nested in Ray Data's own constructor arguments: not resolved for us
        shipped = ray.get(shipped)
    root = Path(tempfile.gettempdir()) / SHIPPED_CACHE
    folder = root / shipped["key"]
    if not (folder / MANIFEST).is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{shipped['key']}.", dir=root))
        for name, data in shipped["files"].items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        try:
            os.rename(staging, folder)
        except OSError:  # another actor on this node got there first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    verify_files(folder, read_manifest(folder), shipped["checked"])
    return str(folder)


# --------------------------------------------------------------------------------------- the driver


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("--ray", "distributed", "ray[data]") from exc
    return ray


def connect(address: str = AUTO) -> Any:
    """``ray`` connected to the cluster at ``address`` ("auto": see :class:`RayOptions`)."""
    ray = _ray()
    for name in ("ray.data", "ray.data._internal"):  # Ray Data's execution plans and progress lines: our own
        logging.getLogger(name).setLevel(logging.WARNING)  # progress line says how far the run is
    if not ray.is_initialized():
        _probe(address)
        try:
            ray.init(address=None if address == AUTO else address, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=True)
        except ConnectionError as exc:
            raise AltclipOnnxError(f"--ray {address}: cannot connect to a Ray cluster there ({one_line(exc)}); start "
                                   "one ('ray start --head') or fix the address") from exc
        except Exception as exc:
            raise AltclipOnnxError(f"--ray {address}: cannot start or join Ray ({one_line(exc)})") from exc
    return ray


def _probe(address: str) -> None:
    """Fail in seconds, not minutes (Ray retries for long), when nothing listens at a HOST:PORT address."""
    import socket

    if address == AUTO or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
            return
    except ValueError:
        return  # not HOST:PORT: Ray says what is wrong with it
    except OSError as exc:
        raise AltclipOnnxError(f"--ray {address}: nothing answers there ({exc.strerror or one_line(exc)}); start a "
                               "cluster with 'ray start --head' and give its HOST:PORT, or use --ray auto") from exc


def run(kind: str, items: Sequence[str], bundle: str | os.PathLike[str], output: str | os.PathLike[str],
        options: RayOptions) -> ShardReport:
    started = time.perf_counter()
    tower = VISUAL if kind == "image" else TEXTUAL
    if options.threads < 1 or options.workers < 0 or (options.actors is not None and options.actors < 1):
        raise InputError("threads and actors must be at least 1, workers at least 0")
    if options.shard_rows < 1:
        raise InputError(f"shard_rows must be at least 1, not {options.shard_rows}")
    if not items:
        raise InputError(f"no {kind}s to embed")
    # The driver resolves the bundle and the precision, so every actor runs the same variant.
    encoder = Encoder(bundle, provider=options.provider, precision=options.precision, threads=1)
    batch_size = options.batch_size or (IMAGE_BATCH_SIZE if kind == "image" else TEXT_BATCH_SIZE)
    meta = run_meta(encoder, kind, normalize=options.normalize, draft=options.draft)
    out = ShardFolder(Path(output), kind, meta, len(items), options.shard_rows, inputs_digest(items),
                      encoder.embedding_dim)
    todo = out.open(overwrite=options.overwrite)
    failures: list[Failure] = []
    embedded = 0
    actors = 0
    try:
        if todo:
            ray = connect(options.address)
            actors = options.actors or max(1, int(ray.cluster_resources().get("CPU", 1) // options.threads))
            shipped = ray.put(_ship(encoder, tower)) if options.ship_bundle else None
            total = sum(out.shard_range(i)[1] - out.shard_range(i)[0] for i in todo)
            progress = Progress(f"embedding {kind}s on Ray ({actors} actors)", f"{kind}s", total,
                                enabled=options.progress)
            dataset = _dataset(ray, out, todo, items, actors, batch_size)
            embedder = dict(kind=kind, bundle=str(bundle if _is_uri(os.fsdecode(bundle)) else encoder.bundle),
                            shipped=shipped, precision=encoder.precisions[tower], provider=options.provider,
                            threads=options.threads, workers=options.workers, batch_size=batch_size,
                            draft=options.draft, normalize=options.normalize)
            results = dataset.map_batches(
                _Embedder, fn_constructor_kwargs=embedder, batch_size=None, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=options.threads)
            with progress:
                embedded = _gather(out, results, failures, progress)
        out.finish()
    except KeyboardInterrupt as exc:
        done = out.shards - len([i for i in range(out.shards) if not out.finished(i)])
        raise Interrupted(f"interrupted; {done} of {out.shards} shards are finished in {out.folder}: rerun the same "
                          "command to continue") from exc
    except AltclipOnnxError:
        raise
    except Exception as exc:
        raise _translate(exc, bundle, options) from exc
    finally:
        out.close()
    return ShardReport(out.folder, out.rows, out.shards, out.shards - len(todo), embedded, tuple(failures), actors,
                       time.perf_counter() - started)


def _dataset(ray: Any, out: ShardFolder, todo: list[int], items: Sequence[str], actors: int, batch_size: int) -> Any:
    """The inputs still to do as Ray Data blocks of (shard, row, item): enough blocks to keep every actor
    busy, none longer than 16 batches."""
    pa = pyarrow()[0]
    rows = [(shard, row) for shard in todo for row in range(*out.shard_range(shard))]
    size = max(1, min(16 * batch_size, -(-len(rows) // (2 * actors))))
    blocks = []
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        blocks.append(pa.table({"shard": pa.array([s for s, _ in chunk], pa.int64()),
                                "row": pa.array([r for _, r in chunk], pa.int64()),
                                "item": pa.array([items[r] for _, r in chunk], pa.string())}))
    return ray.data.from_arrow(blocks)


def _gather(out: ShardFolder, results: Any, failures: list[Failure], progress: Progress) -> int:
    """Collect rows per shard as blocks come back; write each shard once it is complete."""
    import pyarrow.compute as pc

    ray = _ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    pending: dict[int, list[Any]] = {}
    counts: dict[int, int] = {}
    embedded = 0
    for table in results.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        errors = table.column("error").to_pylist()
        items = table.column("item").to_pylist()
        failures.extend(Failure(item, error) for item, error in zip(items, errors) if error is not None)
        embedded += sum(error is None for error in errors)
        progress.update(len(items))
        shards = np.asarray(table.column("shard").to_numpy())
        for shard in np.unique(shards):
            part = table.filter(pc.equal(table.column("shard"), int(shard)))
            pending.setdefault(int(shard), []).append(part)
            counts[int(shard)] = counts.get(int(shard), 0) + part.num_rows
            start, stop = out.shard_range(int(shard))
            if counts[int(shard)] == stop - start:
                _write_shard(out, int(shard), pending.pop(int(shard)))
    if pending:
        raise RuntimeError(f"shards {sorted(pending)} came back incomplete")  # a bug, not input
    return embedded


def _write_shard(out: ShardFolder, shard: int, parts: list[Any]) -> None:
    pa = pyarrow()[0]
    table = pa.concat_tables(parts).sort_by("row")
    embedding = table.column("embedding").combine_chunks()
    rows = np.asarray(embedding.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(table.num_rows, -1)
    out.write(shard, table.column("item").to_pylist(), rows, table.column("error").to_pylist())


def _translate(exc: Exception, bundle: str | os.PathLike[str], options: RayOptions) -> Exception:
    """An error from inside Ray as one line: our own errors as they are, a bundle a worker cannot find with
    what to do about it, anything else with its cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BundleError) and not options.ship_bundle:
            return BundleError(f"a Ray worker cannot use the bundle: {current}; put the bundle on a path every node "
                               "can read, or pass --ship-bundle to send it through Ray's object store")
        if isinstance(current, AltclipOnnxError):
            return current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return AltclipOnnxError(f"the Ray job failed ({type(exc).__name__}: {one_line(exc).splitlines()[0][:500]})")
