"""A real PostgreSQL 16 + pgvector server for the whole session (tests/postgres/server.py: the ``pgserver``
wheel's binaries, a private data folder, 127.0.0.1 on a free port and a socket folder), stopped at the end.

``pg_uri`` is a fresh, empty database per test; ``db`` is a ``--db`` value for each store in turn (a folder for
the embedded store, a fresh database for PostgreSQL), so behavioural tests run against both. Without psycopg
or pgserver (``pip install -e '.[postgres,test-services]'``) these tests are skipped, saying which is missing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import require_module  # noqa: E402

require_module("psycopg", "the PostgreSQL tests need psycopg: pip install -e '.[postgres]'")
require_module("pgserver", "the PostgreSQL tests need pgserver: pip install -e '.[test-services]'")

from .server import PgServer  # noqa: E402

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_uri(pg_server: PgServer) -> str:
    """A new empty database (no vector extension yet), as a TCP URI with the superuser's password."""
    return pg_server.create_database(f"test_{next(_names)}")


@pytest.fixture(params=["local", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``--db`` for the embedded store (a folder) and for PostgreSQL (a fresh database), in turn."""
    if request.param == "local":
        pytest.importorskip("usearch")
        return str(tmp_path / "index")
    return request.getfixturevalue("pg_uri")
