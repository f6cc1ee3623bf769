"""A throwaway PostgreSQL 16 + pgvector server from the ``pgserver`` wheel, for tests and benchmarks.

pgserver's own ``get_server`` listens on a Unix socket only and trusts everyone; the tests also need TCP on
127.0.0.1 with password authentication (to test a wrong password), so this runs the wheel's ``initdb`` and
``pg_ctl`` itself: a private data folder, ``127.0.0.1`` on a free port plus a socket folder, ``trust`` on the
socket and ``scram-sha-256`` over TCP. PostgreSQL refuses to run as root, so as root the server runs as the
``pgserver`` system user (created if missing, as pgserver itself does).

Used by tests/postgres/conftest.py and benchmarks/search_scale.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..conftest import free_port

SUPERUSER = "postgres"
PASSWORD = "s3cret-Pw"  # the superuser's password over TCP (tests check it is never printed)
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}  # tests: durability not needed


def pgserver_bin() -> Path:
    with warnings.catch_warnings():  # pgserver's import asks platformdirs for XDG_RUNTIME_DIR, unset in CI
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class PgServer:
    """``start()`` / ``stop()`` a server in a fresh temp folder; ``uri(db)`` names a database on it."""

    def __init__(self, *, bin_dir: Path | None = None, settings: dict[str, str] | None = None,
                 root: Path | None = None) -> None:
        self.bin_dir = bin_dir or pgserver_bin()
        self.settings = dict(FAST if settings is None else settings)
        self.root = Path(tempfile.mkdtemp(prefix="altclip-pg-", dir=root))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.user: str | None = None
        self.running = False

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> PgServer:
        if os.geteuid() == 0:
            self._as_unprivileged_user()
        self.sockets.mkdir(mode=0o777)
        self.sockets.chmod(0o777)
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        self._own(self.root)
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--no-instructions")
        pwfile.unlink()
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets}" + "".join(
            f" -c {key}={value}" for key, value in self.settings.items())
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, "start")
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", "-m", "fast", "stop", check=False)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- names ----------------------------------------------------------------------------------

    def uri(self, database: str = "postgres", *, user: str = SUPERUSER, password: str | None = PASSWORD,
            tcp: bool = True) -> str:
        """A TCP URI with the password in it, or (``tcp=False``) a libpq URI for the socket folder."""
        if tcp:
            secret = f":{password}" if password is not None else ""
            return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"
        return f"postgresql://{user}@/{database}?host={self.sockets}&port={self.port}"

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser over the socket (autocommit: CREATE DATABASE works)."""
        import psycopg

        with psycopg.connect(self.uri(database, tcp=False), autocommit=True) as connection:
            cursor = connection.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    # --- helpers --------------------------------------------------------------------------------

    def _as_unprivileged_user(self) -> None:
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists("pgserver")
        self.user = "pgserver"
        ensure_prefix_permissions(self.bin_dir)  # others may traverse the folders down to the binaries
        ensure_folder_permissions(self.bin_dir, 0o055)
        ensure_folder_permissions(self.bin_dir.parent / "lib", 0o044)
        ensure_folder_permissions(self.bin_dir.parent / "share", 0o044)
        ensure_prefix_permissions(self.root)

    def _own(self, folder: Path) -> None:
        if self.user is None:
            return
        import pwd

        entry = pwd.getpwnam(self.user)
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, program: str, *args: object, check: bool = True) -> None:
        command = [str(self.bin_dir / program), *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, user=self.user,
                              cwd=self.root, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{log}")


def pginstall_without_vector(target: Path) -> Path:
    """A copy of the wheel's PostgreSQL without pgvector in ``target`` (hard links where possible), laid out
    as in the wheel so the binaries find their libraries (RPATH $ORIGIN/../../../pgserver.libs); returns its
    bin folder."""
    source = pgserver_bin().parent  # .../pgserver/pginstall

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    def no_vector(folder: str, names: list[str]) -> list[str]:
        return [name for name in names if name.startswith("vector")]

    install = target / "pgserver" / "pginstall"
    shutil.copytree(source, install, copy_function=link_or_copy, ignore=no_vector, symlinks=True)
    libs = source.parent.parent / "pgserver.libs"
    if libs.is_dir():
        (target / "pgserver.libs").symlink_to(libs)
    return install / "bin"
