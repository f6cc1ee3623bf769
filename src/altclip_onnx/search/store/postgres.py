"""An index in PostgreSQL with pgvector: the server :class:`~altclip_onnx.search.store.base.VectorStore`.

``--db postgresql://USER[:PASSWORD]@HOST:PORT/DBNAME`` (or ``postgres://``, or a libpq URI such as
``postgresql://USER@/DBNAME?host=/run/postgresql`` for a Unix socket) keeps the index in a database that
applications can share. The tables live in their own PostgreSQL schema, ``altclip`` unless the URI says
``?schema=NAME`` (several indexes in one database); the password is best left to ``PGPASSWORD`` or
``~/.pgpass``, and is never shown in messages.

**Schema**, created on first use and upgraded by numbered migrations (table ``schema_migrations``), each
in one transaction under an advisory lock, so two runs starting at once do not both create it:

- ``images``: one row per file (``path`` unique, ``size``, ``mtime_ns``, ``digest``) and its unit-length
  ``embedding vector(D)``, with a B-tree on ``digest`` (moved and copied files) and an HNSW index with
  ``vector_cosine_ops`` for search. ``D`` is set by the first rows added (no dimension is known before a
  model has run), and the HNSW index is built over the rows there are when that first run flushes: one
  build is many times faster than inserting each row into the graph (10k rows: seconds instead of over a
  minute); from then on PostgreSQL adds every new row to it. Until it exists, searches scan exactly.
- ``model``: the one bundle that made the index (its identity: fingerprint, variant, source, dimension;
  where it was; the image tower's precision). Recording another model's identity is refused, here in the
  database, so two runs started with different bundles cannot mix vectors.
- ``info``: other key-value settings (JSON values).

**Writes.** Each :meth:`~PostgresStore.add` and :meth:`~PostgresStore.delete` is one transaction
(an interrupted ``index`` keeps every finished batch and the next run continues). Rows are upserted by
path (``INSERT ... ON CONFLICT``), in path order, so several writers at once neither duplicate nor lose
rows and do not deadlock on each other; a transaction that still loses a deadlock or serialization race
is retried. A row keeps its id while its vector is unchanged and gets a new one when it changes, as in
the embedded store. Once built, the HNSW index is maintained by PostgreSQL in the same transactions.

**Search** asks the HNSW index for candidates (``hnsw.ef_search`` at least the number asked for, since
pgvector returns no more than that), with their stored float32 vectors for exact re-ranking by the caller.

Needs ``psycopg`` 3 (the ``[postgres]`` extra); vectors go over the wire in pgvector's binary format,
converted with numpy here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from ...errors import MissingDependencyError, OutputError, StoreError
from . import describe_db
from .base import Entry, rows_to_add

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "altclip"
SCHEMA_VERSION = 1  # the newest migration below
MIN_PGVECTOR = (0, 5, 0)  # HNSW arrived in pgvector 0.5.0
_T = TypeVar("_T")
_RETRIES = 5
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MODEL_KEYS = ("model", "bundle", "precision")
HNSW_INDEX = "images_embedding_hnsw"
_ADVISORY_KEY = 0x616C7463  # "altc": serializes schema changes between processes (per schema, see _lock_key)


@dataclass(frozen=True)
class HnswOptions:
    """pgvector's HNSW settings. ``m`` links per node and ``ef_construction`` are fixed when the index is
    built; ``ef_search`` is per query (raised to the number of candidates asked for when that is larger)."""

    # Each chosen for the recall it buys against the build or query time it costs (docs/postgres.md).
    m: int = 32  # above pgvector's 16
    ef_construction: int = 128  # 256 gave no more recall
    ef_search: int = 180
    build_memory: str = "1GB"  # maintenance_work_mem while building: the graph must fit, or the build crawls


# --- migrations -------------------------------------------------------------------------------------
# Each is applied once, in order, in one transaction; {schema} is the quoted schema name. Never edit a
# released migration: add the next one (and raise SCHEMA_VERSION).
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE {schema}.info (key text PRIMARY KEY, value jsonb NOT NULL);
    CREATE TABLE {schema}.model (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        fingerprint text,
        variant text,
        source text,
        embedding_dim integer,
        bundle text,
        precision text,
        recorded_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE SEQUENCE {schema}.images_id_seq;
    CREATE TABLE {schema}.images (
        id bigint PRIMARY KEY DEFAULT nextval('{schema}.images_id_seq'),
        path text COLLATE "C" NOT NULL UNIQUE,
        size bigint NOT NULL,
        mtime_ns bigint NOT NULL,
        digest text NOT NULL,
        embedding vector NOT NULL
    );
    ALTER SEQUENCE {schema}.images_id_seq OWNED BY {schema}.images.id;
    CREATE INDEX images_digest ON {schema}.images (digest);
    """,
}


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise MissingDependencyError("a PostgreSQL index", "postgres", "psycopg") from exc
    return psycopg


def split_uri(uri: str) -> tuple[str, str]:
    """(the URI libpq gets, the schema): ``?schema=NAME`` is ours, not libpq's, so it is taken out."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _IDENTIFIER.match(schema):
        raise StoreError(f"{describe_db(uri)}: schema {schema!r} is not a plain lower-case SQL name "
                         "(letters, digits and _); choose another ?schema=")
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


class PostgresStore:
    """A :class:`VectorStore` in PostgreSQL + pgvector (see the module docstring).

    ``create=False`` refuses a database without an index (in the URI's schema). Opening creates nothing
    then, so ``search`` works with a role that may only read.
    """

    def __init__(self, uri: str | os.PathLike[str], *, create: bool = False,
                 options: HnswOptions = HnswOptions()) -> None:
        self._pg = _psycopg()
        self.uri = os.fsdecode(uri)
        self.name = describe_db(self.uri)
        self.options = options
        conninfo, self.schema = split_uri(self.uri)
        self._q = f'"{self.schema}"'  # quoted: a valid identifier by split_uri
        self._dim: int | None = None
        self._ef: int | None = None
        self._db: Any = None
        self._wrote = False
        self._db = self._connect(conninfo)
        try:
            version = self._version()
            if version is None and not create:
                raise StoreError(f"{self.name}: no index here (schema {self.schema!r}); build one with "
                                 f"'altclip-onnx index BUNDLE FOLDER --db {self.name}'")
            if version is None or version < SCHEMA_VERSION:
                self._migrate()
            elif version > SCHEMA_VERSION:
                raise StoreError(f"{self.name}: index schema version {version} is newer than this altclip-onnx "
                                 f"reads ({SCHEMA_VERSION}); upgrade altclip-onnx")
            self._register_vector()
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self.name!r}, schema={self.schema!r})"

    def __len__(self) -> int:
        return int(self._one(f"SELECT count(*) FROM {self._q}.images")[0])

    @property
    def dim(self) -> int | None:
        if self._dim is None:
            dim = self.info.get("embedding_dim")
            self._dim = int(dim) if dim is not None else None
        return self._dim

    # --- connecting and the schema -------------------------------------------------------------

    def _connect(self, conninfo: str) -> Any:
        pg = self._pg
        try:
            params = {} if "connect_timeout" in conninfo else {"connect_timeout": 10}
            db = pg.connect(conninfo, autocommit=True, application_name="altclip-onnx", **params)
        except pg.Error as exc:
            raise StoreError(f"{self.name}: {connection_problem(exc)}") from exc
        return db

    def _version(self) -> int | None:
        """The schema's migration version, None when it holds no index yet."""
        exists = self._one("SELECT to_regclass(%s)", (f"{self._q}.schema_migrations",))[0]
        if exists is None:
            return None
        return int(self._one(f"SELECT coalesce(max(version), 0) FROM {self._q}.schema_migrations")[0])

    def _migrate(self) -> None:
        """Create or upgrade the schema: the vector extension, then each pending migration."""
        pg = self._pg
        self._require_vector()
        try:
            with self._schema_lock(), self._db.transaction():
                self._db.execute(f"CREATE SCHEMA IF NOT EXISTS {self._q}")
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {self._q}.schema_migrations "
                                 "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
                done = {row[0] for row in self._db.execute(f"SELECT version FROM {self._q}.schema_migrations")}
                for version in sorted(MIGRATIONS):
                    if version in done:
                        continue
                    log.info("%s: applying schema migration %d", self.name, version)
                    self._db.execute(MIGRATIONS[version].format(schema=self._q))
                    self._db.execute(f"INSERT INTO {self._q}.schema_migrations (version) VALUES (%s)", (version,))
        except pg.errors.InsufficientPrivilege as exc:
            raise OutputError(f"{self.name}: may not create the index's tables ({first_line(exc)}); connect as a "
                              f"role that may, or ask an administrator to run 'GRANT CREATE ON DATABASE "
                              f"{self._database()} TO {self._user()};'") from exc
        except pg.errors.ReadOnlySqlTransaction as exc:
            raise OutputError(f"{self.name}: the server is read-only (a standby?); connect to the primary") from exc
        except pg.Error as exc:
            raise StoreError(f"{self.name}: cannot create the index's tables ({first_line(exc)})") from exc

    def _require_vector(self) -> None:
        """pgvector must be in the database (created here when allowed) and recent enough for HNSW."""
        pg = self._pg
        row = self._db.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if row is None:
            try:
                self._db.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except pg.errors.InsufficientPrivilege as exc:
                raise StoreError(f"{self.name}: the vector extension is not enabled in database {self._database()} "
                                 f"and {self._user()} may not enable it; ask an administrator to run "
                                 "'CREATE EXTENSION vector;' in it, then run this again") from exc
            except (pg.errors.UndefinedFile, pg.errors.FeatureNotSupported) as exc:
                raise StoreError(f"{self.name}: the server has no pgvector (the vector extension is not installed "
                                 "there); install pgvector 0.5 or later on the PostgreSQL server (e.g. apt install "
                                 "postgresql-16-pgvector), then run this again") from exc
            except pg.errors.UniqueViolation:
                pass  # another process created it at the same moment
            except pg.Error as exc:
                raise StoreError(f"{self.name}: cannot enable the vector extension ({first_line(exc)})") from exc
            row = self._db.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        version = tuple(int(part) for part in re.findall(r"\d+", row[0])[:3])
        if version < MIN_PGVECTOR:
            raise StoreError(f"{self.name}: pgvector {row[0]} has no HNSW index; upgrade it to 0.5 or later "
                             "(ALTER EXTENSION vector UPDATE; after installing the newer version)")

    def _register_vector(self) -> None:
        """Send and receive ``vector`` in pgvector's binary format, as numpy arrays."""
        row = self._db.execute("SELECT oid FROM pg_type WHERE typname = 'vector'").fetchone()
        if row is None:
            raise StoreError(f"{self.name}: the vector extension was removed from the database; "
                             "run 'CREATE EXTENSION vector;' and re-index")
        self._vector_oid = int(row[0])
        dumper, loader = _vector_adapters(self._vector_oid)
        self._db.adapters.register_dumper(np.ndarray, dumper)
        self._db.adapters.register_loader(self._vector_oid, loader)

    def _database(self) -> str:
        return str(self._db.info.dbname)

    def _user(self) -> str:
        return str(self._db.info.user)

    # --- metadata ------------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        values = {key: value for key, value in self._execute(f"SELECT key, value FROM {self._q}.info")}
        row = self._one(f"SELECT fingerprint, variant, source, embedding_dim, bundle, precision FROM {self._q}.model")
        if row is not None:
            fingerprint, variant, source, dim, bundle, precision = row
            if fingerprint is not None:
                values["model"] = {"fingerprint": fingerprint, "variant": variant, "source": source,
                                   "embedding_dim": dim}
            if bundle is not None:
                values["bundle"] = bundle
            if precision is not None:
                values["precision"] = precision
        return values

    def set_info(self, values: Mapping[str, Any]) -> None:
        model = {key: values[key] for key in _MODEL_KEYS if key in values}
        other = {key: value for key, value in values.items() if key not in _MODEL_KEYS}

        def write() -> None:
            if other:
                self._cursor().executemany(
                    f"INSERT INTO {self._q}.info (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    [(key, json.dumps(value, ensure_ascii=False)) for key, value in other.items()])
            if model:
                self._write_model(model)

        self._dim = None
        self._transaction(write)

    def _write_model(self, values: Mapping[str, Any]) -> None:
        """Record the model (inside a transaction): its identity may be set once, never changed to another."""
        self._db.execute(f"INSERT INTO {self._q}.model (singleton) VALUES (true) ON CONFLICT DO NOTHING")
        row = self._db.execute(f"SELECT fingerprint, embedding_dim, variant, source FROM {self._q}.model "
                               "FOR UPDATE").fetchone()
        sets: dict[str, Any] = {}
        if "model" in values:
            new = values["model"]
            if row[0] is not None and (row[0], row[1]) != (new["fingerprint"], int(new["embedding_dim"])):
                from ...bundle import ModelIdentity

                old = ModelIdentity(row[0], row[2], row[3], row[1])
                raise StoreError(f"{self.name}: made with {old.describe()}, but this run has "
                                 f"{ModelIdentity.from_json(new).describe()}; use the bundle that made the index, "
                                 "or index into a new --db")
            sets.update(fingerprint=new["fingerprint"], variant=new["variant"], source=new["source"],
                        embedding_dim=int(new["embedding_dim"]))
        for key in ("bundle", "precision"):
            if key in values:
                sets[key] = values[key]
        assignments = ", ".join(f"{column} = %s" for column in sets)
        self._db.execute(f"UPDATE {self._q}.model SET {assignments}, recorded_at = now()", list(sets.values()))

    # --- rows ----------------------------------------------------------------------------------

    def add(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        vectors = rows_to_add(entries, vectors)
        if not len(entries):
            return
        self._check_dim(vectors.shape[1])
        latest: dict[str, int] = {}
        for i, entry in enumerate(entries):  # one row per path (the last one wins, as repeated upserts would)
            latest[entry.path] = i
        order = sorted(latest.values(), key=lambda i: entries[i].path.encode("utf-8", "surrogateescape"))
        rows = [(entries[i].path, entries[i].size, entries[i].mtime_ns, entries[i].digest, vectors[i]) for i in order]

        def write() -> None:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS altclip_staging (path text COLLATE \"C\", "
                             "size bigint, mtime_ns bigint, digest text, embedding vector) ON COMMIT DELETE ROWS")
            cursor = self._cursor()
            with cursor.copy("COPY altclip_staging (path, size, mtime_ns, digest, embedding) FROM STDIN "
                             "WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", "int8", "int8", "text", self._vector_oid])
                for row in rows:
                    copy.write_row(row)
            # Path order: concurrent writers lock rows in the same order, so they cannot deadlock.
            cursor.execute(
                f"INSERT INTO {self._q}.images AS t (path, size, mtime_ns, digest, embedding) "
                "SELECT path, size, mtime_ns, digest, embedding FROM altclip_staging ORDER BY path "
                "ON CONFLICT (path) DO UPDATE SET "
                f"id = CASE WHEN t.embedding = EXCLUDED.embedding THEN t.id "
                f"ELSE nextval('{self._q}.images_id_seq') END, "
                "size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, digest = EXCLUDED.digest, "
                "embedding = EXCLUDED.embedding")

        self._transaction(write)
        self._wrote = True

    def delete(self, paths: Iterable[str]) -> int:
        paths = sorted(set(paths), key=lambda p: p.encode("utf-8", "surrogateescape"))
        if not paths:
            return 0

        def write() -> int:
            # Lock in path order first (as add does), then delete: no deadlock with concurrent writers.
            self._db.execute(f"SELECT id FROM {self._q}.images WHERE path = ANY(%s) ORDER BY path FOR UPDATE",
                             (paths,))
            return self._db.execute(f"DELETE FROM {self._q}.images WHERE path = ANY(%s)", (paths,)).rowcount

        return int(self._transaction(write))

    def get(self, paths: Sequence[str]) -> tuple[list[Entry], np.ndarray]:
        paths = list(paths)
        found: dict[str, tuple[Entry, bytes]] = {}
        if paths:
            for path, size, mtime_ns, digest, blob in self._rows(
                    f"SELECT path, size, mtime_ns, digest, embedding FROM {self._q}.images WHERE path = ANY(%s)",
                    (paths,)):
                found[path] = (Entry(path, size, mtime_ns, digest), blob)
        rows = [found[path] for path in paths if path in found]
        return [entry for entry, _ in rows], self._matrix([blob for _, blob in rows])

    def entries(self, under: str | None = None) -> Iterator[Entry]:
        query = f"SELECT path, size, mtime_ns, digest FROM {self._q}.images"
        args: tuple[Any, ...] = ()
        if under:
            query += " WHERE path LIKE %s"
            args = (_like_prefix(under),)
        for row in self._db.execute(query + " ORDER BY path", args).fetchall():
            yield Entry(*row)

    def find_digest(self, digest: str) -> tuple[list[str], np.ndarray]:
        rows = self._rows(f"SELECT path, embedding FROM {self._q}.images WHERE digest = %s ORDER BY id", (digest,))
        return [row[0] for row in rows], self._matrix([row[1] for row in rows])

    def scan(self, chunk: int = 8192) -> Iterator[tuple[list[int], list[str], np.ndarray]]:
        last = -1
        while True:  # by id ranges: no transaction stays open between chunks
            rows = self._rows(f"SELECT id, path, embedding FROM {self._q}.images WHERE id > %s ORDER BY id LIMIT %s",
                              (last, chunk))
            if not rows:
                return
            last = rows[-1][0]
            yield [row[0] for row in rows], [row[1] for row in rows], self._matrix([row[2] for row in rows])

    def path_of(self, row_id: int) -> str | None:
        row = self._one(f"SELECT path FROM {self._q}.images WHERE id = %s", (int(row_id),))
        return None if row is None else str(row[0])

    # --- search --------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, count: int) -> tuple[list[int], list[str], np.ndarray]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if self.dim is None:  # nothing was ever added
            return [], [], np.empty((0, query.shape[0]), dtype=np.float32)
        ef = max(self.options.ef_search, count)
        if ef != self._ef:
            self._execute(f"SET hnsw.ef_search = {int(ef)}")
            self._ef = ef
        rows = self._rows(f"SELECT id, path, embedding FROM {self._q}.images ORDER BY embedding <=> %s LIMIT %s",
                          (query, count))
        return [row[0] for row in rows], [row[1] for row in rows], self._matrix([row[2] for row in rows])

    # --- writing -------------------------------------------------------------------------------

    def begin_writing(self) -> None:
        """Check now, before long work, that this role may write here (OutputError otherwise). Other
        writers are welcome: rows are upserted by path (see the module docstring)."""
        read_only, in_recovery = self._one("SELECT current_setting('transaction_read_only') = 'on', "
                                           "pg_is_in_recovery()")
        if read_only or in_recovery:
            raise OutputError(f"{self.name}: the server or this session is read-only (a standby?); connect to "
                              "the primary to index")
        allowed = self._one("SELECT has_table_privilege(%s, 'INSERT') AND has_table_privilege(%s, 'UPDATE') "
                            "AND has_table_privilege(%s, 'DELETE')", (f"{self._q}.images",) * 3)[0]
        if not allowed:
            raise OutputError(f"{self.name}: {self._user()} may read this index but not write it; connect as a role "
                              f"that may, or ask an administrator to run 'GRANT INSERT, UPDATE, DELETE ON ALL TABLES "
                              f"IN SCHEMA {self.schema} TO {self._user()}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA "
                              f"{self.schema} TO {self._user()};'")

    def flush(self) -> None:
        """Build the HNSW index after the first rows; after that there is nothing to do here (PostgreSQL
        keeps the index in step with every committed transaction)."""
        if self._wrote:
            if isinstance(sys.exc_info()[1], KeyboardInterrupt):  # flushed on the way out of Ctrl-C: the build
                log.info("%s: the HNSW index will be built by the next run", self.name)  # can take minutes
                return
            self._build_hnsw()
            self._wrote = False

    @property
    def lost(self) -> bool:
        """The connection was lost (the server restarted, failed over or ended it): open the store again to go
        on (a long-running reader such as ``serve`` does so by itself)."""
        return self._db is not None and bool(self._db.closed)

    def close(self) -> None:
        """Flush, then close the connection."""
        if self._db is not None:
            try:
                self.flush()
            finally:
                self._db.close()
            self._db = None

    def _check_dim(self, dim: int) -> None:
        """The first rows set the vector column's dimension (the HNSW index comes with the first flush)."""
        if self.dim is not None:
            if dim != self.dim:
                raise StoreError(f"{self.name}: holds {self.dim}-d vectors, not {dim}-d")
            return

        def create() -> None:
            row = self._db.execute(f"SELECT value FROM {self._q}.info WHERE key = 'embedding_dim'").fetchone()
            if row is not None:  # another writer got here first
                return
            self._db.execute(f"ALTER TABLE {self._q}.images ALTER COLUMN embedding TYPE vector({int(dim)})")
            # Inline in the row (a 768-d vector is 3 KB, over the 2 KB at which PostgreSQL would move it to a
            # TOAST table): a search reads each candidate's vector with its row, not through a second index.
            self._db.execute(f"ALTER TABLE {self._q}.images ALTER COLUMN embedding SET STORAGE PLAIN")
            self._db.execute(f"INSERT INTO {self._q}.info (key, value) VALUES ('embedding_dim', %s)",
                             (json.dumps(dim),))

        with self._schema_lock():
            self._transaction(create)
        self._dim = None
        if self.dim != dim:
            raise StoreError(f"{self.name}: holds {self.dim}-d vectors, not {dim}-d")

    def _build_hnsw(self) -> None:
        """Build the HNSW index over the rows there are, if there is none yet. Done once, after the first
        rows (one build is many times faster than inserting the same rows into a graph one by one); from
        then on PostgreSQL adds every row to it as it is written. Until then searches are exact scans."""
        if self.dim is None or self._has_hnsw():
            return
        o = self.options

        def build() -> None:
            if self._has_hnsw():  # another writer built it while this one waited for the lock
                return
            log.info("%s: building the HNSW index over %d rows", self.name, len(self))
            self._db.execute(f"SET LOCAL maintenance_work_mem = '{o.build_memory}'")
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON {self._q}.images USING hnsw "
                             f"(embedding vector_cosine_ops) WITH (m = {int(o.m)}, "
                             f"ef_construction = {int(o.ef_construction)})")

        with self._schema_lock():
            self._transaction(build)
        self._db.execute(f"ANALYZE {self._q}.images")

    def _has_hnsw(self) -> bool:
        return self._one("SELECT to_regclass(%s)", (f"{self._q}.{HNSW_INDEX}",))[0] is not None

    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Hold this schema's advisory lock (other processes changing the schema wait). A session lock taken
        before the transaction begins: a transaction that began before the lock was granted could still
        have stale catalog entries ("no such schema" cached) and collide with what the previous holder made."""
        self._db.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (_ADVISORY_KEY, self.schema))
        try:
            yield
        finally:
            if not self._db.closed:
                self._db.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_ADVISORY_KEY, self.schema))

    def _transaction(self, work: Callable[[], _T]) -> _T:
        """``work`` in one transaction, retried when it lost a deadlock or serialization race; other
        database errors become one-line StoreError/OutputError naming the index."""
        pg = self._pg
        for attempt in range(_RETRIES):
            try:
                with self._db.transaction():
                    return work()
            except (pg.errors.DeadlockDetected, pg.errors.SerializationFailure) as exc:
                if attempt == _RETRIES - 1:
                    raise StoreError(f"{self.name}: gave up after {_RETRIES} conflicts with other writers "
                                     f"({first_line(exc)}); run it again") from exc
                log.info("%s: conflict with another writer, retrying (%s)", self.name, first_line(exc))
                time.sleep(0.05 * (attempt + 1))
            except pg.errors.InsufficientPrivilege as exc:
                raise OutputError(f"{self.name}: {self._user()} may not write this index ({first_line(exc)}); "
                                  "connect as a role that may") from exc
            except pg.errors.ReadOnlySqlTransaction as exc:
                raise OutputError(f"{self.name}: the server is read-only (a standby?); connect to the primary") from exc
            except pg.errors.DiskFull as exc:
                raise OutputError(f"{self.name}: the database server's disk is full ({first_line(exc)})") from exc
            except pg.OperationalError as exc:
                raise StoreError(f"{self.name}: {connection_problem(exc)}") from exc
        raise AssertionError("unreachable")

    # --- helpers -------------------------------------------------------------------------------

    def _cursor(self) -> Any:
        return self._db.cursor(binary=True)

    def _rows(self, query: str, args: Any = None) -> list[tuple[Any, ...]]:
        try:
            return self._cursor().execute(query, args).fetchall()
        except self._pg.OperationalError as exc:
            raise StoreError(f"{self.name}: {connection_problem(exc)}") from exc

    def _execute(self, query: str, args: Any = None) -> Any:
        try:
            return self._db.execute(query, args)
        except self._pg.OperationalError as exc:
            raise StoreError(f"{self.name}: {connection_problem(exc)}") from exc

    def _one(self, query: str, args: Any = None) -> Any:
        return self._execute(query, args).fetchone()

    def _matrix(self, blobs: Sequence[bytes]) -> np.ndarray:
        if not blobs:
            return np.empty((0, self.dim or 0), dtype=np.float32)
        # pgvector's binary form: int16 dimension, int16 unused, then big-endian float32s.
        rows = np.frombuffer(b"".join(blobs), dtype=">f4").reshape(len(blobs), -1)
        return rows[:, 1:].astype(np.float32)


def _vector_adapters(oid: int) -> tuple[type, type]:
    """psycopg adapters for pgvector's binary ``vector``: numpy float32 [D] out; bytes in, turned into a
    matrix a batch at a time (:meth:`PostgresStore._matrix`)."""
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format

    class VectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: np.ndarray) -> bytes:
            vector = np.asarray(obj, dtype=">f4").reshape(-1)  # int16 dimension, int16 unused, big-endian floats
            return struct.pack(">HH", vector.shape[0], 0) + vector.tobytes()

    VectorDumper.oid = oid

    class VectorLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> bytes:
            return bytes(data)

    return VectorDumper, VectorLoader


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with ``prefix`` (its %, _ and \\ taken literally)."""
    return re.sub(r"([\\%_])", r"\\\1", prefix) + "%"


def first_line(exc: BaseException) -> str:
    """A database error's message without its DETAIL/HINT lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def connection_problem(exc: BaseException) -> str:
    """What went wrong connecting or talking to the server, and what to do, in one line."""
    text = " ".join(str(exc).split())
    lower = text.lower()
    if "password authentication failed" in lower:
        user = re.search(r'for user "([^"]*)"', text)
        who = f" for user {user.group(1)}" if user else ""
        return (f"the server refused the password{who}; fix it (in the URI, PGPASSWORD or ~/.pgpass) or the user "
                "name")
    if "no password supplied" in lower:
        return "the server asks for a password; give it in PGPASSWORD or ~/.pgpass (or user:PASSWORD@ in the URI)"
    if re.search(r'database "[^"]*" does not exist', text):
        name = re.search(r'database "([^"]*)"', text).group(1)  # type: ignore[union-attr]
        return f"database {name} does not exist on the server; create it (createdb {name}) or fix the URI"
    if re.search(r'role "[^"]*" does not exist', text):
        name = re.search(r'role "([^"]*)"', text).group(1)  # type: ignore[union-attr]
        return f"user {name} does not exist on the server; create it or fix the user name in the URI"
    if "no pg_hba.conf entry" in lower:
        return "the server does not accept connections from this host or user (pg_hba.conf); ask its administrator"
    if "connection refused" in lower:
        return ("cannot connect: connection refused; is PostgreSQL running there? Start it, or fix the host and port "
                "in the URI")
    if "no such file or directory" in lower and "socket" in lower:
        return ("cannot connect: no server socket there; is PostgreSQL running? Start it, or fix host= (the socket "
                "folder) and the port in the URI")
    if "could not translate host name" in lower or "name or service not known" in lower:
        return "cannot connect: unknown host name; fix the host in the URI"
    if "timeout expired" in lower or "timed out" in lower:
        return "cannot connect: no answer from the server in time; check the host, port and firewall"
    if "invalid uri" in lower or "invalid connection option" in lower or "missing \"=\"" in lower:
        return f"not a valid PostgreSQL URI ({first_line(exc)}); see 'altclip-onnx index --help'"
    if "terminating connection" in lower or "server closed the connection" in lower or "consuming input failed" in lower:
        return "the server closed the connection (restarted or stopped?); run the command again"
    return f"cannot use the database ({first_line(exc)})"
