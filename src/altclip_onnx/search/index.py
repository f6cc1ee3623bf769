"""Search a photo collection by text or by example: an incremental index of image embeddings.

::

    from altclip_onnx import Encoder, Index

    encoder = Encoder("onnx/AltCLIP-m18")
    with Index.open("photos.idx", create=True) as index:
        report = index.update(encoder, "~/Pictures")      # embeds new and changed files only
        for hit in index.search_text(encoder, "海边的日落", k=10):
            print(f"{hit.score:.3f} {hit.path}")

**Update.** :meth:`Index.update` walks folders with
:func:`~altclip_onnx.runtime.pipeline.iter_image_files` and embeds what is new or changed with
:func:`~altclip_onnx.runtime.pipeline.embed_images` (decoding overlaps inference). Paths are
stored absolute. A file whose size and mtime match its row is unchanged; otherwise its bytes are
hashed (blake2b), and a file whose content is already in the index (a moved or copied photo)
takes that vector without running the model. Rows under a folder whose files are gone, or can no
longer be read, are removed. Each embedded batch is committed, so an interrupted run keeps its
work and a rerun continues; a second process writing the same index is refused.

**Model record.** The index records which bundle made it: the model's identity
(:class:`~altclip_onnx.bundle.ModelIdentity`: variant, source name, dimension, weights fingerprint),
the bundle's path and the image tower's precision. Updating or querying with another model raises
:class:`~altclip_onnx.errors.StoreError`; another precision of the same model logs a warning.

**Search.** The approximate index proposes ``max(4k, 50)`` candidates, which are re-ranked by
exact cosine against the stored float32 vectors: scores are exact, and a photo queried by itself
comes first with a score of about 1.

**Storage** sits behind :class:`~altclip_onnx.search.store.VectorStore`; the default is
:class:`~altclip_onnx.search.store.local.LocalStore` (SQLite + a usearch HNSW graph in one folder,
``[search]`` extra).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle import VISUAL, ModelIdentity, check_same_model, read_manifest
from ..errors import BundleError, InputError, Interrupted, StoreError
from ..files import hash_file
from ..hub import locate_bundle
from ..precisions import AUTO
from ..runtime.encoder import Encoder, l2_normalize
from ..runtime.images import ImageInput
from ..runtime.pipeline import DECODE_WORKERS, IMAGE_BATCH_SIZE, Failure, embed_images, iter_image_files
from ..runtime.progress import Progress
from .store import Entry, VectorStore

log = logging.getLogger(__name__)

DIGEST = "blake2b-128"
MIN_CANDIDATES = 50  # the approximate index proposes max(4 k, this) rows for exact re-ranking
CANDIDATES_PER_RESULT = 4
_MODEL_KEYS = ("bundle", "variant", "source", "embedding_dim", "precision", "fingerprint")


@dataclass(frozen=True)
class Hit:
    """One search result: an indexed path and its cosine similarity to the query (-1..1). ``id`` names the
    row in the index (e.g. for a thumbnail URL; it changes when the file's content does)."""

    path: str
    score: float
    id: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class ModelRecord:
    """Which bundle embedded an index's images: the model, where the bundle was, at which precision."""

    identity: ModelIdentity
    bundle: str  # absolute path at the last index run
    precision: str  # of the image tower

    @classmethod
    def of(cls, encoder: Encoder) -> ModelRecord:
        return cls(encoder.identity, os.path.abspath(encoder.bundle), encoder.precisions[VISUAL])

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> ModelRecord | None:
        try:
            return cls(ModelIdentity.from_json(info["model"]), str(info["bundle"]), str(info["precision"]))
        except (KeyError, TypeError, ValueError):
            return None

    def to_info(self) -> dict[str, Any]:
        return {"model": self.identity.to_json(), "bundle": self.bundle, "precision": self.precision}

    def describe(self) -> str:
        return f"{self.identity.describe()} at {self.precision}"


@dataclass(frozen=True)
class UpdateReport:
    """What :meth:`Index.update` did. ``embedded`` images ran through the model; ``reused`` took the
    vector of a file with the same content already in the index; failed files are not in the index."""

    db: str
    added: int
    changed: int
    moved: int  # indexed under a path that is gone, found again under a new one (the old row is dropped)
    removed: int
    unchanged: int
    embedded: int
    reused: int
    failures: tuple[Failure, ...]
    rows: int
    seconds: float

    def summary(self) -> str:
        failed = f", {len(self.failures)} failed" if self.failures else ""
        rate = f", {self.embedded / self.seconds:.1f} images/s" if self.embedded and self.seconds > 0 else ""
        return (f"{self.db}: {self.added} added, {self.changed} changed, {self.moved} moved, {self.removed} removed, "
                f"{self.unchanged} unchanged{failed} ({self.embedded} embedded, {self.reused} reused{rate}); "
                f"{self.rows} images in the index; {self.seconds:.1f}s")


@dataclass
class _Plan:
    """Files to look at in one update, filled while walking and while embedding."""

    known: dict[str, Entry]
    seen: set[str] = field(default_factory=set)
    pending: dict[str, Entry] = field(default_factory=dict)  # path -> entry, waiting for its embedding
    ready: list[tuple[Entry, np.ndarray]] = field(default_factory=list)  # rows that need no model run
    failures: list[Failure] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)  # rows of moved files, under their old paths
    added: int = 0
    moved: int = 0
    changed: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0


class Index:
    """An image search index over a :class:`~altclip_onnx.runtime.store.VectorStore`.

    Open one with :meth:`open` (a folder, created by ``create=True``), or wrap any store:
    ``Index(store)``. Close it (or use ``with``) to write the approximate index and release the lock.
    """

    def __init__(self, store: VectorStore, name: str = "index") -> None:
        self.store = store
        self.name = name
        self._warned: set[tuple[str, str]] = set()

    @classmethod
    def open(cls, db: str | os.PathLike[str], *, create: bool = False) -> Index:
        """The index at ``db`` (a folder, or a database URI: see :func:`~altclip_onnx.search.store.open_store`);
        ``create=True`` makes an empty one if there is none."""
        from .store import describe_db, open_store

        return cls(open_store(db, create=create), name=describe_db(db))

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        model = self.model.describe() if self.model else "empty"
        return f"Index({self.name!r}, rows={len(self)}, model={model})"

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    @property
    def model(self) -> ModelRecord | None:
        """The bundle that made the index (None while it is empty and unused)."""
        return ModelRecord.from_info(self.store.info)

    def encoder(self, bundle: str | os.PathLike[str] | None = None, *, provider: str | None = None,
                precision: str | None = None, threads: int | None = None, **settings: bool) -> Encoder:
        """An Encoder for queries: ``bundle`` or else the one recorded in the index, at the index's
        precision when the bundle has it (else "auto") unless ``precision`` says otherwise. ``settings``:
        Encoder's ``self_check`` and ``spinning``."""
        model = self._require_model()
        try:
            folder = locate_bundle(bundle or model.bundle)  # hf://OWNER/REPO: the Hub snapshot
            if precision is None:
                manifest = read_manifest(folder)
                precision = model.precision if model.precision in manifest.precisions(VISUAL) else AUTO
            return Encoder(folder, provider=provider, precision=precision, threads=threads, **settings)
        except BundleError as exc:
            if bundle is not None:
                raise
            raise StoreError(f"{self.name}: cannot load the bundle it was made with ({exc}); "
                             "pass the bundle explicitly (--bundle)") from exc

    def check(self, encoder: Encoder) -> None:
        """Raise StoreError if ``encoder`` is another model than the index's; warn once on another precision."""
        model = self.model
        if model is None:
            return
        precision = encoder.precisions[VISUAL]
        check_same_model(
            f"{self.name}: made with {model.describe()} from {model.bundle}", model.identity, model.precision,
            f"{encoder.bundle} is", encoder.identity, precision, error=StoreError,
            fix="use the bundle that made the index, or index into a new --db",
            warned=self._warned,
        )

    # --- update -------------------------------------------------------------------------------

    def update(
        self,
        encoder: Encoder,
        folders: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        prune: bool = False,
        batch_size: int = IMAGE_BATCH_SIZE,
        workers: int = DECODE_WORKERS,
        progress: bool = True,
    ) -> UpdateReport:
        """Bring the index in line with the image files under ``folders`` (see the module docstring).

        ``prune``: also drop every row whose file no longer exists, wherever it is (a library moved or
        deleted outside ``folders``); folders that no longer exist are then allowed (their rows go).
        """
        started = time.perf_counter()
        roots = _folders(folders, allow_missing=prune)
        self.check(encoder)
        self.store.begin_writing()  # a busy or read-only index fails now, not after the embedding
        self._record(encoder)
        known: dict[str, Entry] = {}
        for root in roots:
            known.update((e.path, e) for e in self.store.entries(under=os.path.join(root, "")))
        plan = _Plan(known)
        try:
            candidates = self._survey(plan, roots)  # stat only: fast, and it gives the progress a total
            shown = Progress(f"indexing {self.name}", "images", len(candidates), enabled=progress)
            with shown:
                todo = self._todo(plan, candidates, shown)
                for batch in embed_images(encoder, todo, batch_size=batch_size, workers=workers, progress=shown):
                    entries = [plan.pending.pop(path) for path in batch.items]
                    plan.embedded += len(entries)
                    plan.failures.extend(batch.failures)
                    self._commit(plan, entries, batch.embeddings)
                self._commit(plan, [], np.empty((0, encoder.embedding_dim), dtype=np.float32))
            # Files gone from the folders, and files that can no longer be read (their rows are stale).
            failed = {failure.item for failure in plan.failures}
            stale = {path for path in plan.known if path not in plan.seen or path in failed}
            removed = self.store.delete(stale | plan.gone) - len(plan.gone)  # a moved file is not a removal
            if prune:
                removed += self.store.delete(e.path for e in self.store.entries() if not os.path.lexists(e.path))
        except KeyboardInterrupt as exc:
            raise Interrupted(f"interrupted; {len(self)} images are indexed in {self.name}: rerun the same command "
                              "to continue") from exc
        finally:
            self.store.flush()  # on Ctrl-C too: the approximate index keeps up with what was committed
        failures = tuple(plan.failures)
        return UpdateReport(self.name, plan.added, plan.changed, plan.moved, removed, plan.unchanged, plan.embedded,
                            plan.reused, failures, len(self), time.perf_counter() - started)

    def _record(self, encoder: Encoder) -> None:
        """Record the bundle on first use, and again when the same model is now elsewhere (a moved bundle):
        ``search`` loads the recorded one, so it must stay findable. The recorded precision stays that of
        the vectors already stored."""
        model = self.model
        current = ModelRecord.of(encoder)
        if model is None:
            self.store.set_info({**current.to_info(), "digest": DIGEST})
        elif model.bundle != current.bundle:
            log.info("%s: the bundle is now at %s (was %s)", self.name, current.bundle, model.bundle)
            self.store.set_info(ModelRecord(model.identity, current.bundle, model.precision).to_info())

    def _survey(self, plan: _Plan, roots: list[str]) -> list[tuple[str, os.stat_result]]:
        """Walk the folders: unchanged files (same size and mtime as their row) are decided here; the
        others, which need hashing and maybe the model, are returned with their stat."""
        candidates = []
        present = [root for root in roots if os.path.isdir(root)]  # a vanished root (with prune) has no files
        for path in iter_image_files(present, require_any=False):
            name = os.fsdecode(path)
            plan.seen.add(name)
            try:
                name.encode("utf-8")
                stat = os.stat(name)
            except UnicodeEncodeError:
                plan.failures.append(Failure(name, "its name is not valid UTF-8, which the index cannot store"))
                continue
            except OSError as exc:
                plan.failures.append(Failure(name, f"cannot read it ({exc.strerror or exc})"))
                continue
            old = plan.known.get(name)
            if old is not None and old.size == stat.st_size and old.mtime_ns == stat.st_mtime_ns:
                plan.unchanged += 1
            else:
                candidates.append((name, stat))
        return candidates

    def _todo(self, plan: _Plan, candidates: list[tuple[str, os.stat_result]], progress: Progress) -> Iterator[str]:
        """The paths that need the model, in walk order; decides every other candidate on the way."""
        for name, stat in candidates:
            old = plan.known.get(name)
            try:
                digest = hash_file(name, DIGEST)
            except OSError as exc:
                plan.failures.append(Failure(name, f"cannot read it ({exc.strerror or exc})"))
                progress.update()
                continue
            entry = Entry(name, stat.st_size, stat.st_mtime_ns, digest)
            if old is not None and old.digest == digest:  # touched, not changed: new metadata only
                plan.unchanged += 1
                plan.ready.append((entry, self.store.get([name])[1][0]))
                progress.update()
                continue
            paths, vectors = self.store.find_digest(digest)
            if paths:  # the same bytes are indexed under another path: a copy, or a move if that path is gone
                plan.reused += 1
                plan.ready.append((entry, vectors[0]))
                gone = [p for p in paths if p not in plan.seen and p != name and not os.path.lexists(p)]
                if gone and old is None:
                    plan.gone.update(gone)
                    plan.moved += 1
                else:
                    self._count(plan, old)
                progress.update()
                continue
            plan.pending[name] = entry
            yield name

    def _commit(self, plan: _Plan, entries: list[Entry], vectors: np.ndarray) -> None:
        """One transaction: a batch's embeddings and the rows decided without the model since the last one."""
        for entry in entries:
            self._count(plan, plan.known.get(entry.path))
        if plan.ready:
            entries = entries + [entry for entry, _ in plan.ready]
            vectors = np.concatenate([vectors, np.stack([vector for _, vector in plan.ready])])
            plan.ready = []
        if entries:
            self.store.add(entries, vectors)

    @staticmethod
    def _count(plan: _Plan, old: Entry | None) -> None:
        if old is None:
            plan.added += 1
        else:
            plan.changed += 1

    # --- search -------------------------------------------------------------------------------

    def search_vector(self, vector: np.ndarray, k: int = 10, *, exact: bool = False) -> list[Hit]:
        """The ``k`` rows most similar to ``vector`` (normalized here), best first, with exact cosines.

        ``exact=True`` compares with every stored vector instead of asking the approximate index.
        """
        if k < 1:
            raise InputError(f"k must be at least 1, not {k}")
        query = l2_normalize(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        model = self.model
        if model is not None and query.shape[0] != model.identity.embedding_dim:
            raise InputError(f"{self.name}: holds {model.identity.embedding_dim}-d vectors; "
                             f"the query is {query.shape[0]}-d")
        if exact:
            ids: list[int] = []
            paths: list[str] = []
            scores: list[np.ndarray] = []
            for chunk_ids, chunk_paths, chunk in self.store.scan():
                ids += chunk_ids
                paths += chunk_paths
                scores.append(chunk @ query)
            return _top(ids, paths, np.concatenate(scores) if scores else np.empty(0, np.float32), k)
        ids, paths, vectors = self.store.search(query, max(CANDIDATES_PER_RESULT * k, MIN_CANDIDATES))
        return _top(ids, paths, vectors @ query, k)

    def path_of(self, row_id: int) -> str | None:
        """The indexed path of a row id from a :class:`Hit` (None when no such row exists any more)."""
        return self.store.path_of(row_id)

    def search_text(self, encoder: Encoder, text: str, k: int = 10) -> list[Hit]:
        """Images matching a text in any of the model's languages."""
        self.check(encoder)
        if not isinstance(text, str) or not text.strip():
            raise InputError("the query text is empty")
        return self.search_vector(encoder.encode_texts([text])[0], k)

    def search_image(self, encoder: Encoder, image: ImageInput, k: int = 10) -> list[Hit]:
        """Images similar to ``image`` (a path, bytes, PIL image or array)."""
        self.check(encoder)
        return self.search_vector(encoder.encode_images([image])[0], k)

    def _require_model(self) -> ModelRecord:
        model = self.model
        if model is None:
            raise StoreError(f"{self.name}: the index is empty; build it with 'altclip-onnx index BUNDLE FOLDER "
                             f"--db {self.name}'")
        return model


def _folders(folders: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
             allow_missing: bool = False) -> list[str]:
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    roots = [os.path.abspath(os.path.expanduser(os.fsdecode(f))) for f in folders]
    if not roots and not allow_missing:
        raise InputError("no folder to index")
    for root in roots:
        if os.path.exists(root) and not os.path.isdir(root):
            raise InputError(f"{root}: not a folder")
        if not os.path.exists(root) and not allow_missing:
            raise InputError(f"{root}: no such folder; if it was moved or deleted, index its new place, or pass "
                             "--prune to drop its rows")
    return roots


def _top(ids: Sequence[int], paths: Sequence[str], scores: np.ndarray, k: int) -> list[Hit]:
    order = np.argsort(-scores, kind="stable")[:k]
    # cosines of unit vectors: float32 rounding can give 1.0000001, which no cosine is
    cosines = np.clip(scores[order], -1.0, 1.0)
    return [Hit(paths[i], float(cosine), int(ids[i])) for i, cosine in zip(order, cosines)]
