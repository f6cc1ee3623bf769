"""The embedded store (search/store/local.py) on its own: SQLite + a usearch graph, one writer, crash safety."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from altclip_onnx.errors import BusyError, MissingDependencyError, StoreError, install_command
from altclip_onnx.search import Hit, Index
from altclip_onnx.search.store import Entry, VectorStore
from altclip_onnx.search.store.local import ANN_FILE, SQLITE_FILE, LocalStore

from ..vectors import check_approximate_search, fill, low_rank

pytest.importorskip("usearch")


def test_store_approximate_search_rerank_matches_exact(tmp_path: Path) -> None:
    vectors = low_rank(3000)
    store = LocalStore(tmp_path / "db", create=True)
    assert isinstance(store, VectorStore)
    store.set_info({"embedding_dim": 64})
    paths = fill(store, vectors)
    store.close()
    with Index(LocalStore(tmp_path / "db")) as index:  # read-only: the graph is memory-mapped
        check_approximate_search(index, vectors, paths)


def test_store_survives_a_crash_before_the_graph_is_written(tmp_path: Path) -> None:
    db = tmp_path / "db"
    store = LocalStore(db, create=True)
    store.set_info({"embedding_dim": 64})
    first = fill(store, low_rank(200))
    store.close()
    graph = (db / ANN_FILE).stat().st_mtime_ns
    # Another process commits more rows and deletes some, then dies without writing the graph.
    script = textwrap.dedent(f"""
        import os, numpy as np
        from altclip_onnx.search.store import Entry
        from altclip_onnx.search.store.local import LocalStore
        store = LocalStore({str(db)!r})
        vectors = np.load({str(tmp_path / "more.npy")!r})
        store.add([Entry(f"/late/{{i}}", i, i, f"late{{i}}") for i in range(len(vectors))], vectors)
        store.delete([{first[0]!r}, {first[1]!r}])
        os._exit(0)
    """)
    more = low_rank(100, seed=5)
    np.save(tmp_path / "more.npy", more)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert (db / ANN_FILE).stat().st_mtime_ns == graph  # the graph is stale
    reader = LocalStore(db)
    assert len(reader) == 298
    with Index(reader) as index:
        assert index.search_vector(more[7], 1)[0] == Hit("/late/7", pytest.approx(1.0, abs=1e-6))
        assert first[0] not in {h.path for h in index.search_vector(low_rank(200)[0], 20)}
    writer = LocalStore(db)
    writer.add([Entry("/new", 1, 1, "new")], low_rank(1, seed=9))  # loads the graph and reconciles it
    writer.close()
    from usearch.index import Index as Graph

    graph = Graph.restore(str(db / ANN_FILE))
    assert len(graph) == 299
    with sqlite3.connect(db / SQLITE_FILE) as connection:
        ids = {row[0] for row in connection.execute("SELECT id FROM images")}
    assert set(np.asarray(graph.keys[:]).tolist()) == ids


def test_store_refuses_a_second_writer_and_a_foreign_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "db", create=True)
    store.set_info({"embedding_dim": 64})
    other = LocalStore(tmp_path / "db")
    with pytest.raises(BusyError, match="another run"):
        other.set_info({"x": 1})
    store.close()
    other.set_info({"x": 1})  # free again
    other.close()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        LocalStore(tmp_path / "busy", create=True)
    with pytest.raises(StoreError, match="no index here"):
        LocalStore(tmp_path / "nothing")


def test_without_the_search_extra_the_error_says_how_to_install_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "usearch", None)
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(MissingDependencyError, match=re.escape(install_command("search"))):
        Index.open(tmp_path / "db", create=True)
    assert not (tmp_path / "db").exists()


