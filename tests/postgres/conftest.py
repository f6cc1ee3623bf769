"""The PostgreSQL store's own tests (tests/postgres/server.py starts the server: the ``pgserver`` wheel's
binaries, a private data folder, 127.0.0.1 on a free port and a socket folder). The fixtures ``pg_server``,
``pg_uri`` (a fresh, empty database per test) and ``db`` (each store in turn) live in tests/conftest.py: the
index behaviour tests in tests/search run on both stores with them. Without psycopg or pgserver
(``pip install -e '.[postgres,test-services]'``) these tests are skipped, saying which is missing (under CI,
they fail).
"""

from __future__ import annotations

from ..conftest import require_postgres

require_postgres()
