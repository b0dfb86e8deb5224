"""Worlds that ship with iprm: built once, packed, checksummed, and unpacked instead of rebuilt.

PyTorch's CPU kernels round differently on different instruction sets (AVX-512, AVX2, ARM), and a few
epochs of training turn those last bits into a different policy, so "deterministic from the seed" holds on
one machine only. The worlds the README's numbers come from are therefore shipped as data, bit for bit:
`iprm/tasks/worlds/world-<digest>.tar.xz`, listed with their SHA-256 in `iprm/tasks/worlds/index.json`.
`World.build()` unpacks one whose settings digest matches; any other settings build anew on the user's
machine.

    python -m iprm.tasks.shipped pack  .cache/iprm/worlds/world-<digest>   # add a built world
    python -m iprm.tasks.shipped check                                    # verify every shipped archive
"""

import argparse
import hashlib
import io
import json
import lzma
import sys
import tarfile
from pathlib import Path

from iprm.io import atomic_dir, atomic_write

SHIPPED = Path(__file__).parent / "worlds"
INDEX = SHIPPED / "index.json"


class ShippedWorldError(RuntimeError):
    """A shipped archive is missing or does not match its recorded checksum."""


def index() -> dict[str, dict]:
    return json.loads(INDEX.read_text()) if INDEX.exists() else {}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_archive(digest: str) -> Path | None:
    """The shipped archive of the world with settings `digest`, checked against its SHA-256; None when
    no such world ships."""
    entry = index().get(digest)
    if entry is None:
        return None
    archive = SHIPPED / entry["file"]
    if not archive.exists():
        raise ShippedWorldError(f"{archive}: listed in {INDEX} but missing (a partial checkout?)")
    if (actual := sha256(archive)) != entry["sha256"]:
        raise ShippedWorldError(
            f"{archive}: SHA-256 {actual} does not match {entry['sha256']} recorded in {INDEX}; "
            "the file is corrupt or was changed: restore it from the repository"
        )
    return archive


def unpack_shipped(digest: str, directory: Path) -> bool:
    """Unpack the shipped world `digest` into `directory` (atomically); False when none ships."""
    archive = verified_archive(digest)
    if archive is None:
        return False
    with atomic_dir(directory) as scratch, tarfile.open(archive, "r:xz") as tar:
        tar.extractall(scratch, filter="data")
        if not (scratch / "manifest.json").exists():
            raise ShippedWorldError(f"{archive}: no manifest.json inside")
    return True


def pack(directory: Path, destination: Path = SHIPPED) -> dict:
    """Pack a built world deterministically (sorted names, no times or owners) and record it in the
    index; returns the index entry."""
    manifest = json.loads((directory / "manifest.json").read_text())
    digest = manifest["digest"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(str(path.relative_to(directory)))
            info.size, info.mode = path.stat().st_size, 0o644
            with path.open("rb") as file:
                tar.addfile(info, file)
    destination.mkdir(parents=True, exist_ok=True)
    archive = destination / f"world-{digest}.tar.xz"
    with atomic_write(archive, "wb") as file:
        file.write(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    entry = {
        "file": archive.name,
        "sha256": sha256(archive),
        "seed": manifest["settings"]["seed"],
        "bytes": archive.stat().st_size,
        "built_on": {k: manifest.get(k) for k in ("device", "torch")},
    }
    entries = (
        json.loads((destination / "index.json").read_text()) if (destination / "index.json").exists() else {}
    )
    entries[digest] = entry
    with atomic_write(destination / "index.json") as file:
        file.write(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.tasks.shipped", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("pack", help="pack a built world and add it to an index")
    packer.add_argument("directory", type=Path)
    packer.add_argument("--destination", type=Path, default=SHIPPED, help="folder of the archives and index")
    commands.add_parser("check", help="verify every shipped archive against its checksum")
    args = parser.parse_args(argv)
    if args.command == "pack":
        print(json.dumps(pack(args.directory, args.destination), indent=2))
        return 0
    for digest in index():
        verified_archive(digest)
        print(f"ok  world-{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
