"""Atomic writes: a file or a directory appears complete or not at all; an exclusive lock between processes.

Everything is written under a temporary name beside its destination (the same file system, so the rename
is atomic, never a copy) and moved into place with `os.replace` only once complete and flushed to disk: a
reader, or a run that resumes after a crash, never finds half a table, a half-written shard or a world that
looks built but is not. A write that fails for want of space or permission is a `WriteError` naming the
destination; the file that was there before stays as it was. `check_writable` refuses a destination before
any work is spent on what would be written there.
"""

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from iprm.errors import WriteError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", encoding: str | None = None, newline: str | None = None
) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`, on an error it is
    deleted and `path` is left as it was. Creates the parent directory. The file gets the permissions
    `open` would give it (those of the file it replaces, else 0o666 less the umask), not the temporary
    file's owner-only 0o600."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"cannot write {path}: it is a directory; name a file")
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        permissions = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(temporary, permissions)
        with os.fdopen(handle, mode, encoding=encoding, newline=newline) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename: a crash never leaves the name on no data
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if _is_write_failure(error, path, temporary):
            raise _write_error(error, path) from error
        raise


# Errors that say the destination cannot take the file (as opposed to a bug, or a failed read elsewhere).
_WRITE_ERRNOS = frozenset(
    (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR)
)


def _is_write_failure(error: BaseException, path: Path, temporary: str | None) -> bool:
    if not isinstance(error, OSError) or isinstance(error, WriteError) or error.errno not in _WRITE_ERRNOS:
        return False
    # A write to an open file names no file; an open, mkdir or rename names one of ours.
    return (
        error.filename in (None, temporary, str(path), str(path.parent))
        or Path(str(error.filename)) in path.parents
    )


def _write_error(error: OSError, path: Path) -> WriteError:
    kept = "the previous file was left as it was" if path.exists() else "nothing was written there"
    return WriteError(error.errno, f"cannot write {path}: {error.strerror or error}; {kept}")


def check_writable(path: str | Path, setting: str) -> None:
    """Refuse, before any work, a file destination that cannot be written: a directory, a path under a
    file, or a folder where no file can be created (no permission, read-only). Creates missing parents."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"{setting}: {path} is a directory; name the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise WriteError(error.errno, f"{setting}: cannot write {path}: {error.strerror or error}") from None


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty scratch directory beside `path`; on a clean exit it replaces `path` (and whatever was
    there), on an error it is deleted."""
    path = Path(path)
    scratch = path.with_name(f"{path.name}.building-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(scratch, path)


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) while the block runs: a second process that
    asks for the same lock waits until the first one leaves it. The operating system releases it however
    the holder ends (a kill included); the lock file stays, harmless and empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
