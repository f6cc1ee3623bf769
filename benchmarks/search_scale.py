"""Search at scale: the index's store against LanceDB, on synthetic normalized vectors.

For each size (default 10k and 100k vectors of dim 768, AltCLIP's) and each backend, measures

- **build**: inserting every row in commits of ``--commit`` rows (as ``altclip-onnx index`` does,
  with path, size, mtime and digest metadata), then building or saving the ANN index;
- **size** on disk of everything the backend wrote (old versions cleaned up where there are any);
- **query latency** (median and p95 over ``--queries`` single queries, one thread, warm cache) of
  the whole search: ANN candidates (``max(4k, 50)``), then exact re-ranking against the stored
  float32 vectors, as :meth:`Index.search_vector` does;
- **recall@10** against exact search (numpy over all vectors), of the ANN's own top 10 and of the
  re-ranked top 10 (what users get);
- the **install footprint** each backend adds to altclip-onnx's own dependencies.

Backends: ``local`` is :class:`~altclip_onnx.search.store.local.LocalStore` itself (SQLite + usearch HNSW,
int8) driven through :class:`~altclip_onnx.search.Index`; ``postgres`` is
:class:`~altclip_onnx.search.store.postgres.PostgresStore` (PostgreSQL + pgvector HNSW, float32, cosine) the same
way, in a schema of its own on ``--pg-uri`` (dropped afterwards), or on a throwaway PostgreSQL 16 + pgvector 0.6
started from the ``pgserver`` wheel (durable settings: fsync on; 1 GB shared buffers) when no URI is given;
its size is that of the table, its TOAST and its indexes; ``lancedb-hnsw-sq`` and
``lancedb-ivf-pq`` are a LanceDB table (same columns) with an IVF_HNSW_SQ or IVF_PQ index, cosine,
library defaults otherwise (HNSW queries get the same ``ef`` as the local graph); ``usearch-f16`` is
the local store with a float16 graph.

Data: ``lowrank`` (default) is random vectors with a 64-d latent structure plus isotropic noise,
normalized: spread like real embeddings, which occupy a low-dimensional part of the sphere.
Queries are fresh draws from the same distribution. ``uniform`` is uniformly random unit vectors:
the worst case for any ANN method (all points are nearly equidistant), shown for completeness.

Usage::

    python benchmarks/search_scale.py [--sizes 10000,100000] [--dim 768] [--data lowrank]
        [--backends local,postgres,lancedb-hnsw-sq] [--queries 200] [--json search_scale.json]
        [--pg-uri postgresql://USER@HOST:PORT/DB]

Needs the [search] extra; the LanceDB backends need ``pip install lancedb``; ``postgres`` needs the [postgres]
extra, and ``pgserver`` without ``--pg-uri``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from altclip_onnx.search import Index
from altclip_onnx.search.index import CANDIDATES_PER_RESULT, MIN_CANDIDATES
from altclip_onnx.search.store import Entry
from altclip_onnx.search.store.local import AnnOptions, LocalStore

K = 10
CANDIDATES = max(CANDIDATES_PER_RESULT * K, MIN_CANDIDATES)
BASE_PACKAGE = "altclip-onnx"
BACKEND_PACKAGES = {"local": "usearch", "usearch-f16": "usearch", "lancedb-hnsw-sq": "lancedb",
                    "lancedb-ivf-pq": "lancedb", "postgres": "psycopg"}
PG_SETTINGS = {"shared_buffers": "1GB", "maintenance_work_mem": "1GB", "max_wal_size": "4GB"}
PG_URI: str | None = None  # set by main()


# ------------------------------------------------------------------------------------------ data


def make_vectors(kind: str, n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
    elif kind == "lowrank":
        basis = np.random.default_rng(12345).standard_normal((64, dim), dtype=np.float32) / 8  # shared by all draws
        vectors = rng.standard_normal((n, 64), dtype=np.float32) @ basis + 0.5 * rng.standard_normal(
            (n, dim), dtype=np.float32)
    else:
        raise SystemExit(f"unknown --data {kind!r}: lowrank or uniform")
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)


def entries(start: int, stop: int) -> list[Entry]:
    return [Entry(f"/photos/{i // 1000:03d}/IMG_{i:06d}.jpg", 2_000_000 + i, 1_700_000_000_000_000_000 + i,
                  f"{i:032x}") for i in range(start, stop)]


def path_id(path: str) -> int:
    return int(path.rsplit("_", 1)[1].split(".")[0])


# -------------------------------------------------------------------------------------- backends


@dataclasses.dataclass
class Built:
    search: Callable[[np.ndarray], tuple[list[int], list[int]]]  # query -> (ANN top-10 ids, re-ranked top-10 ids)
    close: Callable[[], None]


def build_local(folder: Path, vectors: np.ndarray, commit: int, options: AnnOptions) -> Built:
    store = LocalStore(folder, create=True, options=options)
    store.set_info({"embedding_dim": vectors.shape[1]})
    for start in range(0, len(vectors), commit):
        stop = min(start + commit, len(vectors))
        store.add(entries(start, stop), vectors[start:stop])
    store.close()  # writes the graph
    index = Index(LocalStore(folder))  # a fresh reader, as `altclip-onnx search` opens it (graph memory-mapped)
    index.search_vector(vectors[0], K)  # maps the graph

    def search(query: np.ndarray) -> tuple[list[int], list[int]]:
        hits = index.search_vector(query, K)
        return [], [path_id(h.path) for h in hits]

    def ann_only(query: np.ndarray) -> list[int]:
        graph = index.store._ann_for_read()  # noqa: SLF001 (benchmark: the graph's own top 10)
        keys = graph.search(query, K, threads=1).keys.tolist()
        return [key - 1 for key in keys]  # SQLite ids start at 1 and follow insertion order here

    def both(query: np.ndarray) -> tuple[list[int], list[int]]:
        return ann_only(query), search(query)[1]

    built = Built(both, index.close)
    built.timed = search  # type: ignore[attr-defined]
    return built


def build_lancedb(folder: Path, vectors: np.ndarray, commit: int, index_type: str) -> Built:
    import lancedb
    import pyarrow as pa
    from lancedb.index import HnswSq, IvfPq

    dim = vectors.shape[1]
    schema = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                        ("digest", pa.string()), ("vector", pa.list_(pa.float32(), dim))])
    db = lancedb.connect(str(folder))
    table = db.create_table("images", schema=schema)
    for start in range(0, len(vectors), commit):
        stop = min(start + commit, len(vectors))
        rows = entries(start, stop)
        flat = pa.array(np.ascontiguousarray(vectors[start:stop]).reshape(-1))
        table.add(pa.Table.from_arrays([
            pa.array([e.path for e in rows]), pa.array([e.size for e in rows], pa.int64()),
            pa.array([e.mtime_ns for e in rows], pa.int64()), pa.array([e.digest for e in rows]),
            pa.FixedSizeListArray.from_arrays(flat, dim)], schema=schema))
    config = HnswSq(distance_type="cosine") if index_type == "hnsw-sq" else IvfPq(distance_type="cosine")
    table.create_index("vector", config=config)
    with warnings.catch_warnings():  # "removes every version except the latest": intended, nothing else is open
        warnings.simplefilter("ignore", UserWarning)
        table.optimize(cleanup_older_than=timedelta(0))
    table = lancedb.connect(str(folder)).open_table("images")  # a fresh reader

    def candidates(query: np.ndarray, limit: int) -> Any:
        builder = table.search(query, vector_column_name="vector").distance_type("cosine").limit(limit)
        if index_type == "hnsw-sq":
            builder = builder.ef(max(AnnOptions().expansion_search, limit))  # the same search effort as local
        return builder.select(["path", "vector", "_distance"]).to_arrow()

    def search(query: np.ndarray) -> tuple[list[int], list[int]]:
        found = candidates(query, CANDIDATES)
        paths = found.column("path").to_pylist()
        stored = np.asarray(found.column("vector").combine_chunks().flatten().to_numpy(), np.float32)
        scores = stored.reshape(len(paths), dim) @ query
        return [], [path_id(paths[i]) for i in np.argsort(-scores)[:K]]

    def both(query: np.ndarray) -> tuple[list[int], list[int]]:
        raw = [path_id(p) for p in candidates(query, K).column("path").to_pylist()]
        return raw, search(query)[1]

    built = Built(both, lambda: None)
    built.timed = search  # type: ignore[attr-defined]
    return built


def build_postgres(folder: Path, vectors: np.ndarray, commit: int) -> Built:
    import psycopg

    from altclip_onnx.search.store.postgres import PostgresStore

    schema = f"search_scale_{len(vectors)}"
    uri = f"{PG_URI}{'&' if '?' in PG_URI else '?'}schema={schema}"  # type: ignore[operator]
    with psycopg.connect(PG_URI, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    store = PostgresStore(uri, create=True)
    for start in range(0, len(vectors), commit):
        stop = min(start + commit, len(vectors))
        store.add(entries(start, stop), vectors[start:stop])
    store.flush()
    store.close()
    index = Index(PostgresStore(uri))  # a fresh reader, as `altclip-onnx search` opens it
    index.search_vector(vectors[0], K)
    with psycopg.connect(PG_URI, autocommit=True) as admin:
        admin.execute(f"ANALYZE {schema}.images")
        size = admin.execute(f"SELECT pg_total_relation_size('{schema}.images')").fetchone()[0]
    (folder / "size").parent.mkdir(parents=True, exist_ok=True)
    (folder / "size").write_text(str(size))  # measure() sums the folder's files; this one says the table's size

    def search(query: np.ndarray) -> tuple[list[int], list[int]]:
        return [], [path_id(h.path) for h in index.search_vector(query, K)]

    def both(query: np.ndarray) -> tuple[list[int], list[int]]:
        raw = [path_id(path) for path in index.store.search(query, K)[1]]  # the HNSW index's own top 10
        return raw, search(query)[1]

    def close() -> None:
        index.close()
        with psycopg.connect(PG_URI, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    built = Built(both, close)
    built.timed = search  # type: ignore[attr-defined]
    return built


def build(backend: str, folder: Path, vectors: np.ndarray, commit: int) -> Built:
    if backend == "local":
        return build_local(folder, vectors, commit, AnnOptions())
    if backend == "usearch-f16":
        return build_local(folder, vectors, commit, AnnOptions(dtype="f16"))
    if backend == "postgres":
        return build_postgres(folder, vectors, commit)
    if backend.startswith("lancedb-"):
        return build_lancedb(folder, vectors, commit, backend.removeprefix("lancedb-"))
    raise SystemExit(f"unknown backend {backend!r}")


# ------------------------------------------------------------------------------------- measuring


def folder_bytes(folder: Path) -> int:
    if (folder / "size").is_file():  # a server backend wrote down what it holds
        return int((folder / "size").read_text())
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def measure(backend: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path,
            commit: int) -> dict[str, Any]:
    folder = work / f"{backend}-{len(vectors)}"
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    built = build(backend, folder, vectors, commit)
    build_seconds = time.perf_counter() - started
    try:
        for query in queries[:10]:  # warm up
            built.timed(query)  # type: ignore[attr-defined]
        latencies = []
        for query in queries:
            t0 = time.perf_counter()
            built.timed(query)  # type: ignore[attr-defined]
            latencies.append(time.perf_counter() - t0)
        raw, reranked = zip(*(built.search(q) for q in queries))
    finally:
        built.close()
    latencies_ms = sorted(1000 * t for t in latencies)
    result = {
        "backend": backend,
        "rows": len(vectors),
        "build_s": round(build_seconds, 2),
        "size_mb": round(folder_bytes(folder) / 1e6, 1),
        "p50_ms": round(statistics.median(latencies_ms), 3),
        "p95_ms": round(latencies_ms[int(0.95 * (len(latencies_ms) - 1))], 3),
        "recall_ann": round(recall(list(raw), truth), 3) if any(raw) else None,
        "recall": round(recall(list(reranked), truth), 3),
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


def footprint_mb(package: str) -> float | None:
    """Installed size of ``package`` and its dependencies that altclip-onnx does not already need."""
    def closure(name: str, seen: set[str]) -> set[str]:
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            return seen
        try:
            dist = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            return seen
        seen.add(key)
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            closure(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0], seen)
        return seen

    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    base = closure(BASE_PACKAGE, set())
    extra = closure(package, set()) - base
    total = 0
    for name in extra:
        for file in importlib.metadata.distribution(name).files or []:
            path = Path(file.locate())
            if path.is_file():
                total += path.stat().st_size
    return round(total / 1e6, 1)


def machine() -> dict[str, Any]:
    from altclip_onnx.runtime.doctor import cpu_summary

    cpu = cpu_summary()
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {}
    for name in ("usearch", "lancedb", "numpy", "psycopg"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_gb": memory, "python": platform.python_version(),
            "versions": versions}


def pg_versions(uri: str) -> str:
    import psycopg

    with psycopg.connect(uri) as connection:
        server = connection.execute("SHOW server_version").fetchone()[0]
        vector = connection.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
                                    ).fetchone()
    return f"PostgreSQL {server}, pgvector {vector[0] if vector else 'missing'}"


def markdown(results: list[dict[str, Any]], footprints: dict[str, float | None]) -> str:
    lines = ["| backend | rows | build | size on disk | query p50 | query p95 | recall@10 (ANN) "
             "| recall@10 (re-ranked) | install |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ann = f"{r['recall_ann']:.3f}" if r["recall_ann"] is not None else "-"
        install = footprints.get(r["backend"])
        lines.append(f"| {r['backend']} | {r['rows']:,} | {r['build_s']:.1f} s | {r['size_mb']:.0f} MB "
                     f"| {r['p50_ms']:.2f} ms | {r['p95_ms']:.2f} ms | {ann} | {r['recall']:.3f} "
                     f"| {'-' if install is None else f'{install:.0f} MB'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--data", default="lowrank", choices=["lowrank", "uniform"])
    parser.add_argument("--backends", default="local,lancedb-hnsw-sq",
                        help="Any of local, postgres, usearch-f16, lancedb-hnsw-sq, lancedb-ivf-pq.")
    parser.add_argument("--pg-uri", help="PostgreSQL with pgvector for the postgres backend (default: a throwaway "
                                         "server from the pgserver wheel).")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--commit", type=int, default=1000, help="Rows per commit while building.")
    parser.add_argument("--work-dir", type=Path, help="Where to build (default: a temp folder).")
    parser.add_argument("--json", dest="json_path", type=Path, default=Path("search_scale.json"))
    args = parser.parse_args()

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    work = Path(tempfile.mkdtemp(prefix="search-scale-", dir=args.work_dir))
    facts = machine()
    print(f"{facts['cpu']}, {facts['logical_cpus']} logical CPUs, {facts['memory_gb']} GB; {facts['versions']}; "
          f"data: {args.data}, dim {args.dim}, {args.queries} queries, k={K}, {CANDIDATES} candidates re-ranked",
          file=sys.stderr)
    results = []
    server = None
    global PG_URI
    if "postgres" in backends:
        PG_URI = args.pg_uri
        if PG_URI is None:  # tests/postgres/server.py: the pgserver wheel's binaries, a private data folder
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.postgres.server import PgServer

            server = PgServer(settings=PG_SETTINGS, root=args.work_dir).start()
            PG_URI = server.uri()
        facts["versions"]["pgvector"] = pg_versions(PG_URI)
    try:
        for size in sizes:
            vectors = make_vectors(args.data, size, args.dim, seed=size)
            queries = make_vectors(args.data, args.queries, args.dim, seed=1)
            truth = exact_top(vectors, queries, K)
            for backend in backends:
                result = measure(backend, vectors, queries, truth, work, args.commit)
                print(f"... {result}", file=sys.stderr, flush=True)
                results.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server.stop()
    footprints = {b: footprint_mb(BACKEND_PACKAGES[b]) for b in backends}
    print(markdown(results, footprints))
    args.json_path.write_text(json.dumps({"machine": facts, "data": args.data, "dim": args.dim, "k": K,
                                          "candidates": CANDIDATES, "queries": args.queries,
                                          "install_mb": footprints, "results": results}, indent=2))
    print(f"\nwrote {args.json_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
