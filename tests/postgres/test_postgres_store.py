"""search/store/postgres.py on a real PostgreSQL + pgvector server: schema and migrations, transactions,
concurrent writers, and one-line errors for what users get wrong (password, server, extension, rights)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from altclip_onnx.cli import main
from altclip_onnx.errors import MissingDependencyError, OutputError, StoreError, install_command
from altclip_onnx.search import Index
from altclip_onnx.search.store import Entry, VectorStore, open_store
from altclip_onnx.search.store import describe_db
from altclip_onnx.search.store.postgres import SCHEMA_VERSION, PostgresStore

from ..vectors import check_approximate_search, fill, low_rank

from ..conftest import free_port
from .server import PASSWORD, PgServer, pginstall_without_vector

skdata = pytest.importorskip("skimage.data")
SRC = Path(__file__).resolve().parents[2] / "src"


def run_cli(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------- schema


def test_schema_is_created_on_first_use_with_hnsw_and_a_model_table(pg_server: PgServer, pg_uri: str) -> None:
    database = pg_uri.rsplit("/", 1)[1]
    with pytest.raises(StoreError, match="no index here"):
        open_store(pg_uri)  # a reader creates nothing
    assert pg_server.sql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'", database) == [(0,)]
    store = open_store(pg_uri, create=True)
    assert isinstance(store, PostgresStore) and isinstance(store, VectorStore)
    paths = fill(store, low_rank(300, dim=24))
    store.close()
    tables = {row[0] for row in pg_server.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'altclip'", database)}
    assert tables == {"schema_migrations", "info", "model", "images"}
    assert pg_server.sql("SELECT max(version) FROM altclip.schema_migrations", database) == [(SCHEMA_VERSION,)]
    assert pg_server.sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                         "'altclip.images'::regclass AND attname = 'embedding'", database) == [("vector(24)",)]
    (definition,) = pg_server.sql("SELECT indexdef FROM pg_indexes WHERE indexname = 'images_embedding_hnsw'",
                                  database)[0]
    assert "USING hnsw (embedding vector_cosine_ops)" in definition
    # Opening again applies nothing; a schema from a newer altclip-onnx is refused, not guessed at.
    with Index.open(pg_uri) as index:
        assert len(index) == 300 and index.search_vector(low_rank(300, dim=24)[7], 1)[0].path == paths[7]
    pg_server.sql(f"INSERT INTO altclip.schema_migrations (version) VALUES ({SCHEMA_VERSION + 1})", database)
    with pytest.raises(StoreError, match="newer than this altclip-onnx reads"):
        open_store(pg_uri)


def test_approximate_search_rerank_matches_exact(pg_uri: str) -> None:
    vectors = low_rank(3000)
    store = open_store(pg_uri, create=True)
    paths = fill(store, vectors)
    store.close()
    with Index.open(pg_uri) as index:
        check_approximate_search(index, vectors, paths)
        ids, found, stored = index.store.search(vectors[5], 80)
        assert len(ids) == len(found) == 80  # more candidates than pgvector's default ef_search (40)


def test_several_indexes_share_a_database_by_schema(pg_uri: str) -> None:
    a = open_store(pg_uri, create=True)
    b = open_store(pg_uri + "?schema=family_photos", create=True)
    fill(a, low_rank(10, dim=8), prefix="/a/")
    fill(b, low_rank(4, dim=16), prefix="/b/")
    assert (len(a), len(b)) == (10, 4) and a.info["embedding_dim"] == 8 and b.info["embedding_dim"] == 16
    a.close()
    b.close()
    with pytest.raises(StoreError, match="not a plain lower-case SQL name"):
        open_store(pg_uri + "?schema=x;DROP")


def test_a_batch_is_all_or_nothing(pg_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(pg_uri, create=True)
    fill(store, low_rank(10))
    import psycopg

    real = psycopg.Copy.write_row
    written: list[int] = []

    def interrupted(self, row):  # type: ignore[no-untyped-def]
        written.append(1)
        if len(written) == 5:
            raise KeyboardInterrupt  # Ctrl-C halfway through a batch
        return real(self, row)

    monkeypatch.setattr(psycopg.Copy, "write_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fill(store, low_rank(20, seed=3), start=100)
    monkeypatch.undo()
    assert len(store) == 10  # none of the interrupted batch
    fill(store, low_rank(20, seed=3), start=100)  # the connection is usable again
    assert len(store) == 30
    store.close()


def test_a_hard_kill_mid_batch_keeps_every_committed_batch(pg_uri: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, numpy as np, psycopg
        from altclip_onnx.search.store import Entry, open_store
        store = open_store({pg_uri!r}, create=True)
        rows = np.eye(16, dtype=np.float32)
        store.add([Entry(f"/kept/{{i}}", i, i, f"k{{i}}") for i in range(16)], rows)
        real = psycopg.Copy.write_row
        count = [0]
        def dying(self, row):
            count[0] += 1
            if count[0] == 8:
                os._exit(9)  # as kill -9 would, halfway through the second batch
            return real(self, row)
        psycopg.Copy.write_row = dying
        store.add([Entry(f"/lost/{{i}}", i, i, f"l{{i}}") for i in range(16)], rows)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    with Index.open(pg_uri) as index:
        assert sorted(e.path for e in index.store.entries()) == sorted(f"/kept/{i}" for i in range(16))


# ------------------------------------------------------------------------------------- concurrency


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from altclip_onnx.search.store import Entry, open_store
    uri, seed = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(seed)
    store = open_store(uri, create=True)
    store.begin_writing()
    for batch in range(40):
        ids = rng.choice(300, size=25, replace=False)  # overlapping paths, in random order
        vectors = np.zeros((25, 8), dtype=np.float32)
        vectors[:, 0] = 1
        store.add([Entry(f"/shared/{i:03d}", int(i), seed, f"d{i}") for i in ids], vectors)
        if batch % 10 == 9:
            store.delete(f"/shared/{i:03d}" for i in rng.choice(300, size=10, replace=False))
    store.close()
""")


def test_concurrent_writers_neither_duplicate_nor_lose_rows(pg_uri: str) -> None:
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, pg_uri, str(seed)], stderr=subprocess.PIPE, text=True)
               for seed in (1, 2, 3)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    # Which paths survive depends on how the adds and deletes interleave; what must hold whatever the order:
    # no writer failed (no deadlock left unretried), one row per path, every row whole and as written.
    store = open_store(pg_uri)
    entries = list(store.entries())
    assert len(entries) == len({e.path for e in entries}) == len(store) > 100
    assert all(e.path.startswith("/shared/") and e.digest == f"d{int(e.path[-3:])}" for e in entries)
    store.close()


def test_two_index_runs_at_once_neither_duplicate_nor_lose_rows(pg_uri: str, tmp_path: Path,
                                                                tiny_bundle: Path) -> None:
    """Two `altclip-onnx index` processes on the same database at the same time: one indexes a/ and b/,
    the other b/ and c/. The result is every photo once, as one run over a/, b/ and c/ would give."""
    names = ["astronaut", "camera", "chelsea", "coffee", "rocket", "horse", "coins", "moon", "page"]
    for i, name in enumerate(names):
        folder = tmp_path / "abc"[i % 3]
        folder.mkdir(exist_ok=True)
        image = getattr(skdata, name)()
        Image.fromarray(image).save(folder / f"{name}.png")
    command = [sys.executable, "-m", "altclip_onnx.cli", "index", str(tiny_bundle), "--db", pg_uri,
               "--precision", "fp32", "--batch-size", "1"]
    runs = [subprocess.Popen(command + [str(tmp_path / "a"), str(tmp_path / "b")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True),
            subprocess.Popen(command + [str(tmp_path / "b"), str(tmp_path / "c")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)]
    for run in runs:
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err
        assert "images in the index" in out
    with Index.open(pg_uri) as index:
        paths = [e.path for e in index.store.entries()]
        expected = sorted(str(p) for p in tmp_path.glob("[abc]/*.png"))
        assert sorted(paths) == expected and len(index) == len(names)
        for path in expected:
            assert index.search_vector(index.store.get([path])[1][0], 1)[0].path == path
    again = run_cli("index", tiny_bundle, tmp_path / "a", tmp_path / "b", tmp_path / "c", "--db", pg_uri,
                    "--precision", "fp32")
    assert f"0 added, 0 changed, 0 moved, 0 removed, {len(names)} unchanged" in again.stdout


def test_two_models_at_once_cannot_mix_vectors(pg_uri: str, tiny_bundle: Path, other_bundle: Path) -> None:
    """Both runs see an empty index; the database refuses the second model's record."""
    from altclip_onnx.runtime import Encoder
    from altclip_onnx.search.index import ModelRecord

    first, second = Index.open(pg_uri, create=True), Index.open(pg_uri, create=True)
    first.store.set_info(ModelRecord.of(Encoder(tiny_bundle, precision="fp32")).to_info())
    with pytest.raises(StoreError, match="made with .*use the bundle that made the index"):
        second.store.set_info(ModelRecord.of(Encoder(other_bundle, precision="fp32")).to_info())
    first.close()
    second.close()


# ------------------------------------------------------------------------------------- errors


def test_a_wrong_password_is_one_line_that_never_shows_the_password(pg_server: PgServer, pg_uri: str,
                                                                    tiny_bundle: Path, tmp_path: Path) -> None:
    wrong = pg_uri.replace(f":{PASSWORD}@", ":not-the-Pw@")
    line = one_error_line(run_cli("search", "--db", wrong, "cat"))
    assert "refused the password for user postgres" in line and "PGPASSWORD" in line
    assert "not-the-Pw" not in line and PASSWORD not in line and ":***@" in line
    line = one_error_line(run_cli("index", tiny_bundle, tmp_path, "--db", wrong.replace(
        "postgresql://postgres:not-the-Pw@", "postgres://postgres@") + "?password=not-the-Pw"))
    assert "not-the-Pw" not in line and "password=***" in line
    assert describe_db("postgresql://u:p@h/d?sslmode=require&password=p") == \
        "postgresql://u:***@h/d?sslmode=require&password=***"


def test_connection_problems_are_one_line_each(pg_server: PgServer, pg_uri: str) -> None:
    refused = one_error_line(run_cli("search", "--db", f"postgresql://me@127.0.0.1:{free_port()}/photos", "cat"))
    assert "connection refused; is PostgreSQL running there?" in refused
    no_db = one_error_line(run_cli("search", "--db", pg_server.uri("no_such_db"), "cat"))
    assert "database no_such_db does not exist on the server; create it (createdb no_such_db)" in no_db
    no_socket = one_error_line(run_cli("search", "--db", "postgresql://me@/photos?host=/nonexistent/folder", "cat"))
    assert "no server socket there" in no_socket
    no_password = one_error_line(run_cli("search", "--db", pg_server.uri("postgres", password=None), "cat"))
    assert "asks for a password" in no_password


def test_socket_uris_and_the_postgres_scheme_work(pg_server: PgServer, pg_uri: str) -> None:
    database = pg_uri.rsplit("/", 1)[1]
    store = open_store(pg_server.uri(database, tcp=False), create=True)  # libpq: host=/socket/folder
    fill(store, low_rank(5, dim=8))
    store.close()
    alias = pg_uri.replace("postgresql://", "postgres://")
    with Index.open(alias) as index:
        assert len(index) == 5 and index.name == describe_db(alias)


def test_a_server_without_pgvector_says_to_install_it(tmp_path: Path, tiny_bundle: Path) -> None:
    copy = Path(tempfile.mkdtemp(prefix="altclip-pginstall-"))  # not under pytest's private (0700) folder:
    copy.chmod(0o755)  # as root the server runs as another user, who must reach the binaries
    try:
        with PgServer(bin_dir=pginstall_without_vector(copy)) as bare:
            line = one_error_line(run_cli("index", tiny_bundle, tmp_path, "--db", bare.create_database("photos")))
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    assert "the server has no pgvector" in line and "install pgvector 0.5 or later on the PostgreSQL server" in line


def test_a_role_that_may_not_enable_vector_or_write_is_told_what_to_ask_for(pg_server: PgServer, pg_uri: str) -> None:
    database = pg_uri.rsplit("/", 1)[1]
    pg_server.sql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reader') THEN "
                  "CREATE ROLE reader LOGIN PASSWORD 'reader-pw'; END IF; END $$")
    pg_server.sql(f'GRANT CREATE ON DATABASE "{database}" TO reader')
    reader = pg_server.uri(database, user="reader", password="reader-pw")
    with pytest.raises(StoreError, match="may not enable it; ask an administrator to run 'CREATE EXTENSION vector;'"):
        open_store(reader, create=True)
    store = open_store(pg_uri, create=True)  # the owner creates the index
    fill(store, low_rank(5, dim=8))
    store.close()
    pg_server.sql("GRANT USAGE ON SCHEMA altclip TO reader; GRANT SELECT ON ALL TABLES IN SCHEMA altclip TO reader",
                  database)
    with Index.open(reader) as index:  # reading is enough to search
        assert index.search_vector(low_rank(5, dim=8)[2], 1)[0].path == "/v/00002"
        with pytest.raises(OutputError, match="may read this index but not write it.*GRANT INSERT, UPDATE, DELETE"):
            index.store.begin_writing()


def test_without_the_postgres_extra_the_error_says_how_to_install_it(pg_uri: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependencyError, match=re.escape(install_command("postgres"))):
        Index.open(pg_uri, create=True)


def test_the_hnsw_index_is_built_by_a_finished_run_not_on_the_way_out_of_ctrl_c(pg_server: PgServer,
                                                                                pg_uri: str) -> None:
    database = pg_uri.rsplit("/", 1)[1]

    def hnsw() -> list:
        return pg_server.sql("SELECT indexname FROM pg_indexes WHERE indexname = 'images_embedding_hnsw'", database)

    store = open_store(pg_uri, create=True)
    fill(store, low_rank(50, dim=8))
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt
        finally:
            store.flush()  # as Index.update flushes on Ctrl-C: building could take minutes, so it waits
    assert hnsw() == []
    with Index(store) as index:  # meanwhile searches scan exactly
        assert index.search_vector(low_rank(50, dim=8)[3], 1)[0].path == "/v/00003"
    assert hnsw() == [("images_embedding_hnsw",)]  # closing (a finished run) built it
