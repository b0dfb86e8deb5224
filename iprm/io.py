"""Atomic writes: a file or a directory appears complete or not at all; an exclusive lock between processes.

Everything is written under a temporary name beside its destination (the same file system, so the rename
is atomic) and moved into place with `os.replace` only once complete: a reader, or a run that resumes
after a crash, never finds half a table, a half-written shard or a world that looks built but is not.
"""

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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
    path.parent.mkdir(parents=True, exist_ok=True)
    permissions = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, permissions)
        with os.fdopen(handle, mode, encoding=encoding, newline=newline) as file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
