"""Writing files so that nothing is left half-written, hashing them, and locking them.

Every output of altclip-onnx goes through here: a temp file (or folder) beside the target, renamed
over it only when complete, with the usual permissions (``0666``/``0777`` less the umask; the temp
helpers of the standard library make private ``0600``/``0700`` files). Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import BusyError, OutputError

_READ_BLOCK = 1 << 20
# Errors that mean "the destination cannot take this file" rather than a problem with what is read.
_WRITE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO})


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have: readable by others, as outputs are."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())


def ensure_writable_folder(folder: Path, what: str = "output", option: str = "-o") -> None:
    """Create ``folder`` if needed and prove a file can be created in it, before any long work.

    Raises :class:`OutputError` naming the folder (read-only, missing permission, not a folder) and the
    ``option`` that chose it.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".altclip-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write the {what} there ({describe_os_error(exc)}); "
                          f"choose another {option} or fix the folder's permissions") from exc


def describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError, without Python's ``[Errno N]`` decoration."""
    reasons = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.ENOTDIR: "a part of the path is not a folder", errno.EDQUOT: "disk quota exceeded"}
    return reasons.get(exc.errno or 0) or exc.strerror or str(exc) or type(exc).__name__


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only if the block succeeds.

    A failure to create or rename (read-only folder, full disk) is an :class:`OutputError` naming the
    target; the temp file never survives.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot be written ({describe_os_error(exc)})") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                raise
            raise OutputError(f"{target}: cannot be written ({describe_os_error(exc)})") from exc
        try:
            usual_mode(tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputError(f"{target}: cannot be written ({describe_os_error(exc)})") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` atomically; ``durable`` also fsyncs the file and its folder (survives a power cut)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(data)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
    if durable:
        fsync_folder(path.parent)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (UTF-8, indented, non-ASCII kept)."""
    write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json_object(path: Path, error: type[Exception], hint: str = "") -> dict[str, Any]:
    """A JSON object from ``path``, or ``error`` with one line naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not readable JSON ({exc}){hint}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: not a JSON object{hint}")
    return data


def hash_file(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes. ``"sha256"`` for checksums others can check; ``"blake2b-128"``
    (blake2b with a 16-byte digest, several times faster) for content identity inside an index."""
    digest = hashlib.blake2b(digest_size=16) if algorithm == "blake2b-128" else hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def refuse_non_empty(target: Path, overwrite: bool) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise OutputError(f"{target}: exists and is not empty; pass --overwrite to replace it or choose another -o")


@contextlib.contextmanager
def staging_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """Build a folder in a temp sibling of ``target`` and move it into place only on success.

    A failed or interrupted build leaves ``target`` as it was (and no half-written folder). The
    destination is checked for writability before the block runs, so long work is not lost to a
    read-only folder at the end.
    """
    target = Path(target)
    refuse_non_empty(target, overwrite)
    ensure_writable_folder(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".building", dir=target.parent))
    try:
        yield staging
        try:
            # Libraries write some files privately (onnx's external weights: 0600); a bundle copied to a
            # server is read by another user, so every file gets the usual mode.
            for path in (staging, *staging.rglob("*")):
                usual_mode(path)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
            else:
                os.replace(staging, target)
        except OSError as exc:
            raise OutputError(f"{target}: cannot be written ({describe_os_error(exc)})") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_file(path: Path, what: str) -> IO[str]:
    """An exclusive lock on ``path``, held while the returned file is open (a crashed process releases
    it too), or :class:`BusyError` naming ``what`` and the holder's pid."""
    try:
        stream = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({describe_os_error(exc)})") from exc
    try:
        if sys.platform == "win32":
            import msvcrt

            stream.seek(0)
            msvcrt.locking(stream.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            stream.seek(0)
            holder = stream.read().strip()
        except OSError:
            holder = ""
        stream.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise BusyError(f"{what}: another run{who} is writing it; wait for it to finish or stop it") from exc
    stream.seek(0)
    stream.truncate()
    stream.write(str(os.getpid()))
    stream.flush()
    return stream
