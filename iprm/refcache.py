"""The frozen reference's log-probabilities, computed once per record and reused: in memory or on disk.

What training and scoring need from π_ref (the cumulative log-prob at each step end, then the response
total) depends only on the record's tokens and on the reference checkpoint, so it is computed once.

Keys are digests of a record's token ids, response mask and step ends: the same record hits the cache
whichever file, split or data knob brought it. On disk, entries live in `<directory>/<fingerprint>/`, where
the fingerprint hashes the reference checkpoint (its `config.json`, the names, sizes and modification times
of its weight files; a hub id by name) and the dtype it runs in. New entries are appended as shard files,
written to a temporary name and renamed (a killed run never leaves half a shard), and read back with
`torch.load(weights_only=True)`. A shard that cannot be read is skipped with a warning: its entries are
simply recomputed.
"""

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from iprm.data.collate import select_rows
from iprm.io import atomic_write

log = logging.getLogger(__name__)

MODES = ("memory", "disk")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def record_keys(batch: dict[str, Tensor]) -> list[str]:
    """One digest per row of a right-padded batch: its real tokens, response mask and step ends."""
    input_ids = batch["input_ids"].cpu()
    lengths = batch["attention_mask"].sum(-1).tolist()
    response_mask = batch["response_mask"].cpu().bool()
    step_ends = batch["step_ends"].cpu()
    keys = []
    for row, length in enumerate(lengths):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(input_ids[row, :length].numpy().tobytes())
        digest.update(response_mask[row, :length].numpy().tobytes())
        ends = step_ends[row]
        digest.update(ends[ends >= 0].numpy().tobytes())
        keys.append(digest.hexdigest())
    return keys


def fingerprint(path: str, dtype: str) -> str:
    """Identify a reference checkpoint and the dtype it runs in (see the module docstring)."""
    digest = hashlib.sha256(f"dtype={dtype}\n".encode())
    directory = Path(path)
    if not directory.is_dir():
        digest.update(f"hub={path}\n".encode())
        return digest.hexdigest()[:16]
    for file in sorted(directory.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in _WEIGHT_SUFFIXES:
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class ReferenceCache:
    """Record digest → reference cumulative log-probs [S + 1] (each step end, then the total), on the CPU.

    Args:
        mode: "memory" keeps entries for the life of the process; "disk" also persists them under
            `directory/fingerprint` and loads what earlier runs wrote.
        directory: root of the on-disk cache (mode "disk").
        fingerprint: identifies the reference checkpoint (`fingerprint()`; mode "disk").
    """

    def __init__(self, mode: str = "memory", directory: str | Path | None = None, fingerprint: str = ""):
        if mode not in MODES:
            raise ValueError(f"unknown reference cache mode {mode!r}; expected one of {MODES}")
        if mode == "disk" and (directory is None or not fingerprint):
            raise ValueError("a disk reference cache needs a directory and a reference fingerprint")
        self.mode = mode
        self.directory = Path(directory) / fingerprint if mode == "disk" else None
        self._values: dict[str, Tensor] = {}
        self._unsaved: list[str] = []
        if self.directory is not None:
            self._load()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __getitem__(self, key: str) -> Tensor:
        return self._values[key]

    def put(self, key: str, value: Tensor) -> None:
        if key in self._values:
            return
        self._values[key] = value.detach().cpu()
        if self.directory is not None:
            self._unsaved.append(key)

    def fetch(self, batch: dict[str, Tensor], compute: Callable[[dict], Tensor]) -> Tensor:
        """Cumulative log-probs [B, S + 1] of a batch's rows: each step end (NaN padding), then the total.

        Rows missing from the cache are computed together, `compute(sub_batch)` → [b, S + 1] with NaN at
        padded step ends, and stored; the result is on the batch's device.
        """
        keys = record_keys(batch)
        missing = [row for row, key in enumerate(keys) if key not in self]
        computed = {}
        if missing:
            values = compute(select_rows(batch, torch.tensor(missing, device=batch["input_ids"].device)))
            for row, value in zip(missing, values, strict=True):
                computed[keys[row]] = value[~value.isnan()].cpu()
                self.put(keys[row], computed[keys[row]])
        out = torch.full((len(keys), batch["step_ends"].shape[1] + 1), float("nan"))
        for row, key in enumerate(keys):
            value = computed[key] if key in computed else self[key]
            out[row, : len(value) - 1] = value[:-1]
            out[row, -1] = value[-1]
        return out.to(batch["input_ids"].device)

    def clear(self) -> None:
        """Forget every entry in memory (files on disk stay)."""
        self._values.clear()
        self._unsaved.clear()

    def flush(self) -> Path | None:
        """Write the entries added since the last flush as one new shard (mode "disk"); return its path."""
        if self.directory is None or not self._unsaved:
            return None
        keys, self._unsaved = self._unsaved, []
        values = [self._values[key] for key in keys]
        shard = {
            "keys": keys,
            "lengths": torch.tensor([len(v) for v in values], dtype=torch.long),
            "values": torch.cat(values),
        }
        path = self.directory / f"shard-{time.time_ns()}-{os.getpid()}.pt"
        with atomic_write(path, "wb") as file:
            torch.save(shard, file)
        return path

    def _load(self) -> None:
        for path in sorted(self.directory.glob("shard-*.pt")):
            try:
                shard = torch.load(path, map_location="cpu", weights_only=True)
                values = torch.split(shard["values"], shard["lengths"].tolist())
                if len(values) != len(shard["keys"]):
                    raise ValueError(f"{len(shard['keys'])} keys for {len(values)} values")
            except Exception as error:  # a bad shard costs a recomputation, never the run
                log.warning("skipping unreadable reference cache shard %s: %s", path, error)
                continue
            self._values.update(zip(shard["keys"], values, strict=True))
        if self._values:
            log.info("reference cache: %d records from %s", len(self._values), self.directory)
