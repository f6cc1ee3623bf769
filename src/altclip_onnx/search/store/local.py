"""The embedded index store, the default :class:`~altclip_onnx.search.store.base.VectorStore`.

:class:`LocalStore` is a folder holding

- ``index.sqlite3``: the source of truth. One row per image (path, size, mtime, content digest) and
  its float32 vector (in a table of its own, so listing files does not read vectors), plus the
  ``info`` record. Every :meth:`~LocalStore.add` and
  :meth:`~LocalStore.delete` is one SQLite transaction (WAL journal), so finished work survives
  Ctrl-C and ``kill -9``.
- ``ann.usearch``: a `usearch <https://github.com/unum-cloud/usearch>`_ HNSW graph over the same
  vectors (cosine, int8-quantized; keys are the SQLite row ids). It is a derived file, rewritten
  (temp file + rename) by :meth:`~LocalStore.flush`. If a run stops before that, the rows
  committed since are still found: a reader searches them exactly, and the next writer adds them
  to the graph (and drops keys whose rows are gone) when it loads it.
- ``lock``: held (``flock``) by the one process writing, from its first write until it closes.

Search returns candidates with their stored float32 vectors, so the caller can re-rank by exact
cosine: the int8 graph only chooses which rows to look at.

Needs ``usearch`` (the ``[search]`` extra) besides numpy and the standard library.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ...errors import MissingDependencyError, OutputError, StoreError
from ...files import atomic_path, ensure_writable_folder, lock_file
from ...runtime.pipeline import batched
from .base import Entry, rows_to_add

log = logging.getLogger(__name__)

SQLITE_FILE = "index.sqlite3"
ANN_FILE = "ann.usearch"
LOCK_FILE = "lock"
STORE_FORMAT = 1
_SQL_CHUNK = 500  # ids or paths per "IN (...)" query, well under SQLite's variable limit


@dataclass(frozen=True)
class AnnOptions:
    """The HNSW graph's settings (usearch). ``dtype`` "i8" stores 1 byte per dimension; "f16", 2."""

    dtype: str = "i8"
    connectivity: int = 32  # above usearch's 16: clearly more recall for a slightly longer build
    expansion_add: int = 128
    expansion_search: int = 256  # raised to the number of candidates asked for when that is larger
    rebuild_ratio: float = 0.5  # rebuild the graph when removed slots exceed this share of live ones


def _usearch() -> Any:
    # onnxruntime first: usearch wheels from 2.26.2 on link libstdc++ statically, and loading one before
    # onnxruntime makes onnxruntime's own initialization crash (SIGSEGV in std::codecvt). In this order
    # both work. onnxruntime is a dependency of altclip-onnx, so this costs nothing extra.
    import onnxruntime  # noqa: F401

    try:
        import usearch.index
    except ImportError as exc:
        raise MissingDependencyError("search", "search", "usearch") from exc
    return usearch.index


_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_digest ON images (digest);
CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
"""


class LocalStore:
    """A :class:`VectorStore` in a folder: SQLite for rows and metadata, a usearch HNSW file for search.

    ``create=False`` refuses a folder that holds no index. The graph is loaded lazily: searching
    memory-maps it read-only; the first write loads it and brings it in line with SQLite.
    """

    def __init__(self, folder: str | os.PathLike[str], *, create: bool = False,
                 options: AnnOptions = AnnOptions()) -> None:
        self._usearch = _usearch()
        self.folder = Path(folder)
        self.options = options
        self._dim: int | None = None
        sqlite_path = self.folder / SQLITE_FILE
        if not sqlite_path.is_file():
            if not create:
                raise StoreError(f"{self.folder}: no index here; build one with 'altclip-onnx index BUNDLE FOLDER "
                                 f"--db {self.folder}'")
            if self.folder.exists() and not self.folder.is_dir():
                raise StoreError(f"{self.folder}: exists and is not a folder; choose another --db")
            if self.folder.is_dir() and any(self.folder.iterdir()):
                raise StoreError(f"{self.folder}: not empty and not an index; choose another --db")
            ensure_writable_folder(self.folder, "index", "--db")
        try:
            self._db = sqlite3.connect(sqlite_path, isolation_level=None)
            self._db.execute("PRAGMA page_size=32768")  # new files only: ~10 vectors of 3 KB per page, not 1 per 4 KB
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"{sqlite_path}: not a usable index database ({exc})") from exc
        stored = self.info.get("store_format")
        if stored is None:
            self._write_info({"store_format": STORE_FORMAT})
        elif stored != STORE_FORMAT:
            raise StoreError(f"{self.folder}: index format {stored} is not supported by this altclip-onnx "
                             f"(it reads format {STORE_FORMAT}); upgrade altclip-onnx or re-index into a new --db")
        self._ann: Any = None
        self._writable = False  # the graph in memory holds every row (else: a read-only view, see _tail)
        self._tail = 0  # view mode: rows with a larger id are not in the graph and are searched exactly
        self._dirty = False
        self._lock: IO[str] | None = None

    def __repr__(self) -> str:
        return f"LocalStore({str(self.folder)!r}, rows={len(self)})"

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    @property
    def dim(self) -> int | None:
        if self._dim is None:
            dim = self.info.get("embedding_dim")
            self._dim = int(dim) if dim is not None else None
        return self._dim

    # --- metadata -----------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self._db.execute("SELECT key, value FROM info")}

    def set_info(self, values: Mapping[str, Any]) -> None:
        self._writing()
        self._write_info(values)

    def _write_info(self, values: Mapping[str, Any]) -> None:
        self._dim = None
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)",
                                 [(key, json.dumps(value, ensure_ascii=False)) for key, value in values.items()])

    # --- rows ---------------------------------------------------------------------------------

    def add(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        vectors = rows_to_add(entries, vectors)
        if not len(entries):
            return
        self._check_dim(vectors.shape[1])
        self._writing()
        removed: list[int] = []
        added: list[int] = []
        inserted: list[np.ndarray] = []
        with self._transaction():
            for entry, vector in zip(entries, vectors):
                blob = vector.tobytes()
                row = self._db.execute("SELECT id, vector FROM images JOIN vectors USING (id) WHERE path = ?",
                                       (entry.path,)).fetchone()
                if row is not None and row[1] == blob:  # same content: new metadata only
                    self._db.execute("UPDATE images SET size = ?, mtime_ns = ?, digest = ? WHERE id = ?",
                                     (entry.size, entry.mtime_ns, entry.digest, row[0]))
                    continue
                if row is not None:  # a new vector gets a new id (ids are never reused)
                    self._db.execute("DELETE FROM images WHERE id = ?", (row[0],))
                    self._db.execute("DELETE FROM vectors WHERE id = ?", (row[0],))
                    removed.append(row[0])
                cursor = self._db.execute("INSERT INTO images (path, size, mtime_ns, digest) VALUES (?, ?, ?, ?)",
                                          (entry.path, entry.size, entry.mtime_ns, entry.digest))
                added.append(int(cursor.lastrowid))  # type: ignore[arg-type]
                self._db.execute("INSERT INTO vectors (id, vector) VALUES (?, ?)", (added[-1], blob))
                inserted.append(vector)
        if removed or added:
            ann = self._ann_for_write()  # after the commit: a graph loaded now already holds these rows
            self._ann_remove(ann, removed)
            self._ann_add(ann, added, inserted)
            self._dirty = True

    def delete(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        if not paths:
            return 0
        self._writing()
        ids: list[int] = []
        with self._transaction():
            for chunk in batched(paths, _SQL_CHUNK):
                marks = ",".join("?" * len(chunk))
                found = [row[0] for row in self._db.execute(f"SELECT id FROM images WHERE path IN ({marks})", chunk)]
                for table in ("images", "vectors"):
                    self._db.execute(f"DELETE FROM {table} WHERE id IN ({','.join('?' * len(found))})", found)
                ids += found
        if ids:
            self._ann_remove(self._ann_for_write(), ids)
            self._dirty = True
        return len(ids)

    def get(self, paths: Sequence[str]) -> tuple[list[Entry], np.ndarray]:
        found: dict[str, tuple[Entry, bytes]] = {}
        for chunk in batched(list(paths), _SQL_CHUNK):
            marks = ",".join("?" * len(chunk))
            for path, size, mtime_ns, digest, blob in self._db.execute(
                    f"SELECT path, size, mtime_ns, digest, vector FROM images JOIN vectors USING (id) "
                    f"WHERE path IN ({marks})", chunk):
                found[path] = (Entry(path, size, mtime_ns, digest), blob)
        rows = [found[path] for path in paths if path in found]
        return [entry for entry, _ in rows], self._matrix([blob for _, blob in rows])

    def entries(self, under: str | None = None) -> Iterator[Entry]:
        query = "SELECT path, size, mtime_ns, digest FROM images"
        args: tuple[Any, ...] = ()
        if under:
            query += " WHERE substr(path, 1, ?) = ?"
            args = (len(under), under)
        for row in self._db.execute(query + " ORDER BY path", args).fetchall():
            yield Entry(*row)

    def find_digest(self, digest: str) -> tuple[list[str], np.ndarray]:
        rows = self._db.execute("SELECT path, vector FROM images JOIN vectors USING (id) WHERE digest = ? ORDER BY id",
                                (digest,)).fetchall()
        return [row[0] for row in rows], self._matrix([row[1] for row in rows])

    def scan(self, chunk: int = 8192) -> Iterator[tuple[list[int], list[str], np.ndarray]]:
        cursor = self._db.execute("SELECT id, path, vector FROM images JOIN vectors USING (id) ORDER BY id")
        while rows := cursor.fetchmany(chunk):
            yield [row[0] for row in rows], [row[1] for row in rows], self._matrix([row[2] for row in rows])

    def path_of(self, row_id: int) -> str | None:
        row = self._db.execute("SELECT path FROM images WHERE id = ?", (int(row_id),)).fetchone()
        return None if row is None else str(row[0])

    # --- search -------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, count: int) -> tuple[list[int], list[str], np.ndarray]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        ann = self._ann_for_read()
        ids: list[int] = []
        if ann is not None and len(ann):
            ann.expansion_search = max(self.options.expansion_search, count)
            ids = ann.search(query, count, threads=1).keys.tolist()
        if not self._writable:  # rows committed after the graph was saved: search them exactly
            tail = self._db.execute("SELECT id, vector FROM vectors WHERE id > ?", (self._tail,)).fetchall()
            if tail:
                scores = self._matrix([row[1] for row in tail]) @ query
                best = np.argsort(-scores, kind="stable")[:count]
                ids += [tail[i][0] for i in best]
        found: list[int] = []
        paths: list[str] = []
        blobs: list[bytes] = []
        for chunk in batched(list(dict.fromkeys(ids)), _SQL_CHUNK):  # rows deleted since are simply not found
            marks = ",".join("?" * len(chunk))
            for row_id, path, blob in self._db.execute(
                    f"SELECT id, path, vector FROM images JOIN vectors USING (id) WHERE id IN ({marks})", chunk):
                found.append(row_id)
                paths.append(path)
                blobs.append(blob)
        return found, paths, self._matrix(blobs)

    # --- the graph ----------------------------------------------------------------------------

    def _ann_for_read(self) -> Any:
        if self._ann is None:
            path = self.folder / ANN_FILE
            if path.is_file():
                try:
                    self._ann = self._usearch.Index.restore(str(path), view=True)
                except Exception as exc:  # a damaged graph is only slower: rows are searched exactly
                    log.warning("%s: unreadable (%s); searching without it until the next index run", path, exc)
                    self._ann = None
            if self._ann is not None and len(self._ann):
                self._tail = int(np.max(self._ann.keys[:]))
            elif not len(self):
                return None
            else:
                log.info("%s: no graph yet; searching %d rows exactly", self.folder, len(self))
        return self._ann

    def _ann_for_write(self) -> Any:
        """The graph in memory, holding exactly SQLite's rows (loaded and reconciled on first use)."""
        if self._writable:
            return self._ann
        ann = None
        path = self.folder / ANN_FILE
        if path.is_file():
            try:
                ann = self._usearch.Index.restore(str(path))
                if ann is not None and ann.ndim != self.dim:
                    ann = None
            except Exception as exc:
                log.warning("%s: unreadable (%s); rebuilding it", path, exc)
                ann = None
        if ann is None:
            ann = self._new_ann()
        self._ann, self._writable = ann, True
        self._reconcile()
        return ann

    def _new_ann(self) -> Any:
        if self.dim is None:
            raise StoreError(f"{self.folder}: the index does not record its embedding dimension; re-index into a new --db")
        o = self.options
        return self._usearch.Index(ndim=self.dim, metric="cos", dtype=o.dtype, connectivity=o.connectivity,
                                   expansion_add=o.expansion_add, expansion_search=o.expansion_search)

    def _reconcile(self) -> None:
        """Add rows the graph lacks (committed after its last save) and drop keys whose rows are gone."""
        ann = self._ann
        ids = np.array([row[0] for row in self._db.execute("SELECT id FROM images")], dtype=np.uint64)
        keys = np.asarray(ann.keys[:], dtype=np.uint64) if len(ann) else np.empty(0, dtype=np.uint64)
        stale = np.setdiff1d(keys, ids)
        missing = np.setdiff1d(ids, keys)
        if stale.size:
            ann.remove(stale)
        for chunk in batched(missing.tolist(), _SQL_CHUNK):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT id, vector FROM vectors WHERE id IN ({marks})", chunk).fetchall()
            ann.add(np.array([row[0] for row in rows], dtype=np.uint64), self._matrix([row[1] for row in rows]))
        if stale.size or missing.size:
            log.info("%s: graph brought up to date (%d rows added, %d removed)", self.folder, missing.size, stale.size)
            self._dirty = True

    @staticmethod
    def _ann_add(ann: Any, ids: list[int], vectors: list[np.ndarray]) -> None:
        """Add rows the graph does not hold yet (a graph loaded after the commit already has them)."""
        if ids:
            keys = np.array(ids, dtype=np.uint64)
            new = ~np.asarray(ann.contains(keys), dtype=bool).reshape(-1)
            if new.any():
                ann.add(keys[new], np.stack(vectors)[new])

    @staticmethod
    def _ann_remove(ann: Any, ids: list[int]) -> None:
        if ids:
            keys = np.array(ids, dtype=np.uint64)
            present = np.asarray(ann.contains(keys), dtype=bool).reshape(-1)
            if present.any():
                ann.remove(keys[present])

    def flush(self) -> None:
        """Write the graph (temp file + rename) if it changed; rebuild it first if many rows were removed."""
        if not (self._writable and self._dirty):
            return
        ann = self._ann
        removed = int(ann.stats.nodes) - len(ann)  # slots of removed rows (new rows reuse them)
        if removed > self.options.rebuild_ratio * max(len(ann), 1):
            log.info("%s: rebuilding the graph (%d removed slots, %d live rows)", self.folder, removed, len(ann))
            self._ann = self._new_ann()
            self._reconcile()
            ann = self._ann
        with atomic_path(self.folder / ANN_FILE) as tmp:
            try:
                ann.save(str(tmp))
            except RuntimeError as exc:  # usearch reports write errors (a full disk) as RuntimeError
                raise OutputError(f"{self.folder / ANN_FILE}: cannot be written ({exc})") from exc
        self._dirty = False

    def close(self) -> None:
        """Flush, then release the database, the graph and the writer's lock."""
        try:
            if getattr(self, "_db", None) is not None:
                self.flush()
        finally:
            self._ann = None
            self._writable = False
            if getattr(self, "_db", None) is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    # --- helpers ------------------------------------------------------------------------------

    def begin_writing(self) -> None:
        """Take the writer's lock now (BusyError, or OutputError for a read-only index), before long work."""
        self._writing()

    def _writing(self) -> None:
        """Take the writer's lock on first write: one writing process per index at a time."""
        if self._lock is None:
            self._lock = lock_file(self.folder / LOCK_FILE, str(self.folder))

    def _check_dim(self, dim: int) -> None:
        if self.dim is None:
            self._writing()
            self._write_info({"embedding_dim": dim})
        elif dim != self.dim:
            raise StoreError(f"{self.folder}: holds {self.dim}-d vectors, not {dim}-d")

    def _transaction(self) -> Any:
        return _Transaction(self._db, self.folder)

    def _matrix(self, blobs: Sequence[bytes]) -> np.ndarray:
        dim = self.dim or 0
        if not blobs:
            return np.empty((0, dim), dtype=np.float32)
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1).copy()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (Ctrl-C too); SQLite's own errors (a full
    disk, a read-only file) become one-line errors naming the index."""

    def __init__(self, db: sqlite3.Connection, folder: Path) -> None:
        self.db = db
        self.folder = folder

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise OutputError(f"{self.folder}: cannot write the index ({exc})") from exc

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as exc:
                self.db.execute("ROLLBACK")
                raise OutputError(f"{self.folder}: cannot write the index ({exc})") from exc
        self.db.execute("ROLLBACK")
        if isinstance(value, sqlite3.Error):
            raise OutputError(f"{self.folder}: cannot write the index ({value})") from value
