"""Shards: the unit of work of `python -m iprm generate`, so that a killed run resumes where it stopped and
several workers can share a run.

The problems are cut into consecutive shards of `problems_per_shard`; shard i holds every graded response to
its problems and is written atomically to `<parts>/shard-<i>.json` once complete, with the settings that
made it and its problems (id, instruction, reference), then its checksum `<parts>/shard-<i>.sha256` (the
file's size and SHA-256). A rerun takes each finished shard as it is, after checking its checksum (a shard
without one, or whose bytes changed, is sampled again, with a warning: never used) and that it was made with
the same settings and for the same problems. A shard's samples depend only on the settings and its index
(`shard_seed`), never on the process that made it, so a resumed run, or one split across workers, writes what
one uninterrupted process would have.
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path

from iprm.errors import ConfigError
from iprm.io import atomic_write
from iprm.tasks.world import stream

log = logging.getLogger(__name__)


def shard_seed(seed: int, index: int) -> int:
    """The seed of shard `index` of a run seeded `seed` (31 bits: every backend takes it)."""
    return stream(seed, f"generate/shard/{index}") % 2**31


def differences(saved: dict, settings: dict) -> str:
    """The settings that differ, as `name: saved → now`."""
    keys = sorted(set(saved) | set(settings))
    return ", ".join(
        f"{k}: {saved.get(k)!r} → {settings.get(k)!r}" for k in keys if saved.get(k) != settings.get(k)
    )


def checksum(data: bytes) -> str:
    """A file's checksum line: its size in bytes and its SHA-256."""
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


class Shards:
    """The finished shards of one run under `directory`, made with `settings`."""

    def __init__(self, directory: Path, settings: dict):
        self.directory, self.settings = Path(directory), settings

    def path(self, index: int) -> Path:
        return self.directory / f"shard-{index:05d}.json"

    def checksum_path(self, index: int) -> Path:
        return self.directory / f"shard-{index:05d}.sha256"

    def finished(self, index: int) -> bool:
        """Whether shard `index` and its checksum are written (not yet whether they agree)."""
        return self.path(index).is_file() and self.checksum_path(index).is_file()

    def load(self, index: int, problems: list) -> list[dict] | None:
        """Shard `index`'s rows if it is finished and intact, else None (to be sampled again); refused when
        it was made with other settings or for other problems."""
        path = self.path(index)
        if not path.is_file():
            return None
        data = path.read_bytes()
        expected = self.checksum_path(index)
        recorded = expected.read_text(encoding="utf-8").strip() if expected.is_file() else None
        if recorded != checksum(data):
            found = "has no checksum" if recorded is None else f"does not match its checksum {expected.name}"
            log.warning("generate: %s %s (changed or cut short); sampling it again", path, found)
            return None
        shard = json.loads(data)
        if shard["settings"] != self.settings:
            raise ConfigError(
                f"{path} was made with other settings ({differences(shard['settings'], self.settings)}); "
                f"rerun with those settings to resume, or remove {self.directory} to start over"
            )
        if shard["problems"] != problems:
            raise ConfigError(
                f"{path} holds other problems than shard {index} of this task; the task's problems changed: "
                f"remove {self.directory} to start over"
            )
        return shard["rows"]

    def write(self, index: int, problems: list, rows: list[dict]) -> None:
        """Write the shard, then its checksum (a shard without one is never trusted)."""
        shard = {"settings": self.settings, "problems": problems, "rows": rows}
        data = json.dumps(shard, ensure_ascii=False).encode("utf-8")
        self.checksum_path(index).unlink(missing_ok=True)
        with atomic_write(self.path(index), "wb") as file:
            file.write(data)
        with atomic_write(self.checksum_path(index), encoding="utf-8") as file:
            file.write(checksum(data) + "\n")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
