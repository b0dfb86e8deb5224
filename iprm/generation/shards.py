"""Shards: the unit of work of `python -m iprm generate`, so that a killed run resumes where it stopped.

The problems are cut into consecutive shards of `problems_per_shard`; shard i holds every graded response to
its problems and is written atomically to `<parts>/shard-<i>.json` once complete, with the settings that
made it and its problems (id, instruction, reference). A rerun takes each finished shard as it is, after
checking that it was made with the same settings and for the same problems; a shard's samples depend only
on the settings and its index (`shard_seed`), so a resumed run writes what an uninterrupted one would have.
"""

import json
import shutil
from pathlib import Path

from iprm.errors import ConfigError
from iprm.io import atomic_write
from iprm.tasks.world import stream


def shard_seed(seed: int, index: int) -> int:
    """The seed of shard `index` of a run seeded `seed` (31 bits: every backend takes it)."""
    return stream(seed, f"generate/shard/{index}") % 2**31


def differences(saved: dict, settings: dict) -> str:
    """The settings that differ, as `name: saved → now`."""
    keys = sorted(set(saved) | set(settings))
    return ", ".join(
        f"{k}: {saved.get(k)!r} → {settings.get(k)!r}" for k in keys if saved.get(k) != settings.get(k)
    )


class Shards:
    """The finished shards of one run under `directory`, made with `settings`."""

    def __init__(self, directory: Path, settings: dict):
        self.directory, self.settings = Path(directory), settings

    def path(self, index: int) -> Path:
        return self.directory / f"shard-{index:05d}.json"

    def load(self, index: int, problems: list) -> list[dict] | None:
        """Shard `index`'s rows if it is finished, else None; refused when it was made otherwise."""
        path = self.path(index)
        if not path.is_file():
            return None
        shard = json.loads(path.read_text(encoding="utf-8"))
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
        shard = {"settings": self.settings, "problems": problems, "rows": rows}
        with atomic_write(self.path(index), encoding="utf-8") as file:
            json.dump(shard, file, ensure_ascii=False)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
