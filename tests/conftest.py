"""The fixture every test shares: tiny checkpoints, a tiny bundle and the PyTorch reference (tests/fixture.py).

With ``ALTCLIP_TEST_FIXTURE=FOLDER`` the tests use a fixture built beforehand (``python -m tests.fixture
FOLDER``, with the export extra); that is how the runtime tests run in an environment without torch.
Without it, the fixture is built once per session in a temporary folder, which needs torch.

This file imports neither torch nor transformers: the runtime-side tests (scripts/test.sh lists their folders)
must run where they are not installed.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime  # noqa: F401  before any test module imports usearch, whose wheels (2.26.2+) crash
import pytest  # onnxruntime's initialization when loaded first (see altclip_onnx.search.store.local)

from altclip_onnx.bundle import VERIFIED_RECORD
from altclip_onnx.runtime import Encoder

from .reference import Reference

FIXTURE_ENV = "ALTCLIP_TEST_FIXTURE"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> None:
    """Skip the calling test module; under CI (CI=true) fail instead: a skip there hides a missing install.
    The runtime-only environment (ALTCLIP_RUNTIME_ONLY=1) lacks every optional package by design: it skips."""
    if under_ci() and os.environ.get("ALTCLIP_RUNTIME_ONLY") != "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def free_port() -> int:
    """A port nothing listens on now, on loopback (the servers the tests start bind 127.0.0.1 only)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_module(name: str, message: str) -> None:
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        found = False
    if not found:
        missing(message)


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(FIXTURE_ENV)
    if given:
        folder = Path(given).resolve()  # tests change directories; the fixture must still be found
        if not (folder / "COMPLETE").is_file():
            pytest.exit(f"{FIXTURE_ENV}={given}: not a complete fixture; build it with "
                        f"'python -m tests.fixture {given}' (needs the [export] extra)", returncode=2)
        return folder
    if importlib.util.find_spec("torch") is None:
        pytest.exit(f"torch is not installed: build the fixture elsewhere ('python -m tests.fixture DIR') "
                    f"and set {FIXTURE_ENV}=DIR", returncode=2)
    from .fixture import build

    return build(tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="session")
def tiny_bundle(fixture_dir: Path) -> Path:
    """The tiny transformers-layout checkpoint exported (fp32, int8, fp16; verified). Do not modify it:
    copy it first (shutil.copytree) to corrupt or edit it."""
    return fixture_dir / "bundle"


@pytest.fixture(scope="session")
def other_bundle(fixture_dir: Path) -> Path:
    """The same tiny architecture with other weights: another model, as far as indexes and caches care."""
    return fixture_dir / "other-bundle"


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Path) -> Encoder:
    """An fp32 Encoder of the tiny bundle on the CPU (a module may define its own ``encoder`` instead)."""
    return Encoder(tiny_bundle, provider="cpu", precision="fp32")


@pytest.fixture(scope="session")
def ref(fixture_dir: Path) -> Reference:
    return Reference(fixture_dir)


@pytest.fixture(scope="session")
def fixture_photos(fixture_dir: Path) -> list[Path]:
    """tests/cases.py PHOTOS as files, in that order (the reference's photo_* arrays follow it)."""
    from .cases import PHOTOS

    return [fixture_dir / "photos" / name for name in PHOTOS]


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nothing can be written into. Root ignores permission bits, so as root it is a read-only
    tmpfs mount (EROFS, as on a read-only disk); otherwise a folder with mode 0555 (EACCES)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"running as root without permission to mount a read-only folder: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def read_only_bundle(tiny_bundle: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the tiny bundle nothing can be written into: a read-only bind mount as root (root ignores
    permission bits), mode 0555 folders otherwise."""
    source = tmp_path / "source"
    shutil.copytree(tiny_bundle, source, ignore=shutil.ignore_patterns(VERIFIED_RECORD))
    folders = [source, *(p for p in source.rglob("*") if p.is_dir())]
    if os.geteuid() != 0:
        for folder in folders:
            folder.chmod(0o555)
        yield source
        for folder in folders:
            folder.chmod(0o755)
        return
    target = tmp_path / "read-only"
    target.mkdir()
    for command in (["mount", "--bind", str(source), str(target)], ["mount", "-o", "remount,ro,bind", str(target)]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True)
            pytest.skip(f"running as root without permission to mount a read-only folder: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


# ---------------------------------------------------------------- PostgreSQL, for the index behaviour tests

_database_names = itertools.count()


def require_postgres() -> None:
    require_module("psycopg", "the PostgreSQL tests need psycopg: pip install -e '.[postgres]'")
    require_module("pgserver", "the PostgreSQL tests need pgserver: pip install -e '.[test-services]'")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A real PostgreSQL 16 + pgvector server for the session (tests/postgres/server.py), on 127.0.0.1."""
    require_postgres()
    from .postgres.server import PgServer

    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_uri(pg_server: Any) -> str:
    """A new empty database (no vector extension yet), as a TCP URI with the superuser's password."""
    return pg_server.create_database(f"test_{next(_database_names)}")


@pytest.fixture(params=["local", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``--db`` for the embedded store (a folder) and for PostgreSQL (a fresh database), in turn."""
    if request.param == "local":
        pytest.importorskip("usearch")
        return str(tmp_path / "index")
    return request.getfixturevalue("pg_uri")
