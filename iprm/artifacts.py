"""Directories that vouch for themselves: each file's size and SHA-256, recorded on write, checked on read.

A world (`manifest.json`'s "files") and an exported model (`iprm-files.json` beside its weights) list each
of their files with its size and digest. `verify_files` compares them before anything is read: a file that
is missing, shorter or longer, or altered is one line naming the file and how to rebuild it, never a
safetensors traceback or a run on half a data set. Hashing reads every byte (about 1 GB/s); a file already
verified in this process, unchanged since (same inode, size and times), is not hashed again.

`export_directory` writes an export atomically where it lands: into a scratch folder beside the
destination, then each file renamed into place (the same file system) and the manifest last, with the
permissions the umask gives (safetensors and `save_pretrained` write their files owner-only, 0600).

`check_safetensors` catches a truncated weight file even where no manifest was written (an export of
another tool): the header records where each tensor ends, so the file's size must match it.
"""

import json
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iprm.errors import CorruptArtifactError, WriteError
from iprm.io import _UMASK, atomic_write, sha256_file

EXPORT_MANIFEST = "iprm-files.json"
_verified: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) → sha256 seen in this process


def _digest(path: Path) -> str:
    stat = path.stat()
    identity = (
        str(path.resolve()),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
    )
    if identity not in _verified:
        _verified[identity] = sha256_file(path)
    return _verified[identity]


def file_entries(directory: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """Relative path → {"bytes", "sha256"} of every file under `directory` except those named in
    `exclude` (relative paths or top-level folder names)."""
    directory = Path(directory)
    entries = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative in exclude or relative.split("/")[0] in exclude:
            continue
        entries[relative] = {"bytes": path.stat().st_size, "sha256": _digest(path)}
    return entries


def verify_files(directory: str | Path, entries: dict[str, dict], rebuild: str) -> None:
    """Refuse a directory whose listed files are missing, of another size or altered; `rebuild` says how
    to get a good copy (it ends the one-line message)."""
    directory = Path(directory)
    for relative, entry in entries.items():
        path = directory / relative
        if not path.is_file():
            raise CorruptArtifactError(f"{path}: missing (listed in the manifest); {rebuild}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            state = "truncated" if size < entry["bytes"] else "longer than written"
            raise CorruptArtifactError(
                f"{path}: {size} bytes where the manifest records {entry['bytes']} ({state}); {rebuild}"
            )
        if _digest(path) != entry["sha256"]:
            raise CorruptArtifactError(
                f"{path}: its SHA-256 does not match the manifest (changed since it was written); {rebuild}"
            )


def check_safetensors(path: str | Path, rebuild: str) -> None:
    """Refuse a safetensors file whose size does not match what its header says it holds."""
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            problem = f"{size} bytes, shorter than a safetensors header"
        else:
            length = struct.unpack("<Q", head)[0]
            try:
                header = json.loads(file.read(length)) if 8 + length <= size else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                header = None
            if header is None:
                problem = "its header is cut off or not JSON (truncated, or not a safetensors file)"
            else:
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
                expected = 8 + length + max(ends, default=0)
                if expected != size:
                    problem = f"{size} bytes where its header describes {expected} (truncated or corrupt)"
    if problem:
        raise CorruptArtifactError(f"{path}: {problem}; {rebuild}")


def check_export(directory: str | Path, setting: str) -> None:
    """Verify a model directory before it is loaded: against its `iprm-files.json` where iprm exported it,
    else each safetensors file's size against its header."""
    directory = Path(directory)
    manifest = directory / EXPORT_MANIFEST
    rebuild = f"{setting}: rebuild it (rerun the fit or export that wrote {directory})"
    if manifest.is_file():
        rebuild += f", or delete {manifest} if you changed the directory on purpose"
        try:
            entries = json.loads(manifest.read_text())["files"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CorruptArtifactError(f"{manifest}: not a valid file manifest; {rebuild}") from None
        verify_files(directory, entries, rebuild)
        return
    for path in sorted(directory.glob("*.safetensors")):
        check_safetensors(path, rebuild)


def _follow_umask(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)


@contextmanager
def export_directory(path: str | Path) -> Iterator[Path]:
    """Yield a scratch folder beside `path` to write an export into; on a clean exit its files move into
    `path` (replacing those of the same name, and removing those only a previous export listed), then the
    manifest. On an error `path` is left as it was; a failed write is a `WriteError` naming `path`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(20, f"cannot export to {path}: it is a file; name a directory")
    scratch = path.parent / f".{path.name}.export-{os.getpid()}"
    try:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        yield scratch
        entries = file_entries(scratch, exclude=(EXPORT_MANIFEST,))
        _follow_umask(scratch)
        previous = _listed(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / EXPORT_MANIFEST).unlink(missing_ok=True)  # while files move, no manifest vouches for them
        for relative in entries:
            (path / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / relative, path / relative)
        for relative in previous - set(entries):  # within `path` only, whatever the old manifest says
            if (path / relative).resolve().is_relative_to(path.resolve()):
                (path / relative).unlink(missing_ok=True)
        with atomic_write(path / EXPORT_MANIFEST) as file:
            file.write(json.dumps({"files": entries}, indent=1, sort_keys=True) + "\n")
    except OSError as error:
        if isinstance(error, WriteError):
            raise
        raise WriteError(error.errno, f"cannot export to {path}: {error.strerror or error}") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _listed(directory: Path) -> set[str]:
    try:
        return set(json.loads((directory / EXPORT_MANIFEST).read_text())["files"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return set()
