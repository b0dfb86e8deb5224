"""The step-label cache: record key → label entry, kept as JSONL shards that vouch for their own content.

A labelling run writes one shard per labelled chunk, atomically, named by the sha256 of its bytes:

    <cache>/labels-<sha256 of the file>.jsonl      one {"key": …, <entry>} object per line

Reading a shard recomputes the digest. A shard whose bytes no longer match its name (edited, truncated,
half-copied) is never used: it is moved aside to `<name>.corrupt` with a warning that names it, and its
records count as unlabelled, so the labeller computes them again. Shards written before checksums existed
(`part-*.jsonl`) carry no digest; they are read with a warning naming them (delete them to relabel).
Shards are immutable and every writer adds new ones, so several processes (DDP ranks labelling their
shares) can write into one cache directory at once.
"""

import contextlib
import hashlib
import json
import logging
from pathlib import Path

from iprm.data.records import Record
from iprm.io import atomic_write

log = logging.getLogger(__name__)
PREFIX, LEGACY = "labels-", "part-"


def record_key(record: Record) -> str:
    """The cache key of a record: its prompt and response (a repeated response is labelled once)."""
    return hashlib.sha256(json.dumps([record.prompt, record.response]).encode()).hexdigest()[:24]


class LabelCache:
    """Record key → label entry, persisted as checksummed JSONL shards (see the module docstring).

    Args:
        directory: the cache of one labelling method and its settings.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.entries: dict[str, dict] = {}
        self.rejected: list[Path] = []
        for shard in sorted(directory.glob(f"{PREFIX}*.jsonl")):
            self._read(shard, checked=True)
        legacy = sorted(directory.glob(f"{LEGACY}*.jsonl"))
        if legacy:
            log.warning(
                "%s: %d label shard(s) written before label shards carried checksums (%s, …) are used "
                "unchecked; delete them to relabel",
                directory, len(legacy), legacy[0].name,
            )  # fmt: skip
        for shard in legacy:
            self._read(shard, checked=False)

    def _read(self, shard: Path, checked: bool) -> None:
        try:
            data = shard.read_bytes()
        except FileNotFoundError:  # listed, then moved aside as corrupt by another rank: nothing to use
            log.warning("label cache shard %s went away while the cache was read (another process moved it "
                        "aside as corrupt); its records are labelled again", shard)  # fmt: skip
            return
        problem = None
        if checked and hashlib.sha256(data).hexdigest() != shard.stem.removeprefix(PREFIX):
            problem = "its content does not match the sha256 in its name"
        else:
            try:
                entries = [json.loads(line) for line in data.decode().splitlines()]
                parsed = {entry.pop("key"): entry for entry in entries}
            except (ValueError, KeyError, AttributeError) as error:
                problem = f"it is not valid JSONL label entries ({error})"
        if problem is None:
            self.entries.update(parsed)
            return
        self.rejected.append(shard)
        with contextlib.suppress(FileNotFoundError):  # another rank may have moved it already
            shard.rename(shard.with_name(shard.name + ".corrupt"))
        log.warning(
            "label cache shard %s is not used: %s; moved to %s.corrupt, its records are labelled again",
            shard, problem, shard.name,
        )  # fmt: skip

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __getitem__(self, key: str) -> dict:
        return self.entries[key]

    def add(self, entries: dict[str, dict]) -> Path:
        """Write `entries` as one new shard (named by its digest) and keep them; returns the shard's path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps({"key": key, **entry}) + "\n" for key, entry in entries.items())
        data = text.encode()
        path = self.directory / f"{PREFIX}{hashlib.sha256(data).hexdigest()}.jsonl"
        with atomic_write(path, "wb") as file:
            file.write(data)
        self.entries.update(entries)
        return path
