"""The frozen reference: its model's log-probabilities, computed once per record and reused (in memory or on
disk), and its offloading (`FrozenReference`).

What training and scoring need from π_ref (the cumulative log-prob at each step end, then the response
total) depends only on the record's tokens and on the reference checkpoint, so it is computed once.

Keys are digests of a record's token ids, response mask and step ends: the same record hits the cache
whichever file, split or data knob brought it. On disk, entries live in `<directory>/<fingerprint>/`, where
the fingerprint hashes the reference checkpoint (its `config.json` and the sha256 of its weight files'
contents; a hub id by the commit the local Hugging Face cache resolves it to) and the dtype it runs in.
New entries are appended as shard files, written to a temporary name and renamed (a killed run never
leaves half a shard), and read back with `torch.load(weights_only=True)`. Each shard carries the SHA-256 of
its keys and values (`shard_digest`); a shard that cannot be read, or whose contents no longer match that
digest (altered on disk), is skipped with a warning: its entries are simply recomputed, never used.

Keys also hash the step convention's version (`iprm.data.collate.STEP_CONVENTION`): nothing cached under an
earlier convention is read back, even where a new convention leaves some records' tokens as they were.
"""

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from iprm import rewards
from iprm.data.collate import STEP_CONVENTION, select_rows
from iprm.distributed import any_rank
from iprm.io import atomic_write

log = logging.getLogger(__name__)

MODES = ("memory", "disk")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def record_keys(batch: dict[str, Tensor]) -> list[str]:
    """One digest per row of a right-padded batch: the step convention, its real tokens, response mask and
    step ends."""
    input_ids = batch["input_ids"].cpu()
    lengths = batch["attention_mask"].sum(-1).tolist()
    response_mask = batch["response_mask"].cpu().bool()
    step_ends = batch["step_ends"].cpu()
    keys = []
    for row, length in enumerate(lengths):
        digest = hashlib.blake2b(f"step-convention={STEP_CONVENTION}\n".encode(), digest_size=16)
        digest.update(input_ids[row, :length].numpy().tobytes())
        digest.update(response_mask[row, :length].numpy().tobytes())
        ends = step_ends[row]
        digest.update(ends[ends >= 0].numpy().tobytes())
        keys.append(digest.hexdigest())
    return keys


def fingerprint(path: str, dtype: str, digest_dir: str | Path | None = None) -> str:
    """Identify a reference checkpoint and the dtype it runs in (see the module docstring).

    A local directory: its `config.json` and the sha256 of each weight file's bytes, streamed, so two
    checkpoints with the same file names, sizes and times but other weights never share entries. Hashing
    runs near 1 GB/s (16 GB for an 8B model in bf16, on every rank), so each digest is kept in a small file
    under `digest_dir` (default `$XDG_CACHE_HOME/iprm/digests`, else `~/.cache/iprm/digests`) keyed by the
    weight file's path, inode, size, modification and change times: a file rewritten in place, even with
    its size and modification time restored, is hashed again. A hub id: the commit the local Hugging Face
    cache resolves it to; by name alone, with a warning, when the cache does not have it.
    """
    digest = hashlib.sha256(f"dtype={dtype}\n".encode())
    directory = Path(path)
    if not directory.is_dir():
        digest.update(f"hub={path}@{_hub_commit(path)}\n".encode())
        return digest.hexdigest()[:16]
    digests = Path(digest_dir) if digest_dir is not None else _default_digest_dir()
    for file in sorted(directory.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in _WEIGHT_SUFFIXES:
            digest.update(f"{file.name}:{_content_digest(file, digests)}\n".encode())
    return digest.hexdigest()[:16]


def _default_digest_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iprm" / "digests"


def _content_digest(file: Path, digests: Path) -> str:
    """sha256 of `file`'s bytes, read from `digests` when this very file (path, inode, size, times) was
    hashed before; a digest that cannot be stored is simply recomputed next time."""
    stat = file.stat()
    identity = (
        f"{file.resolve()}:{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
    )
    sidecar = digests / f"{hashlib.sha256(identity.encode()).hexdigest()}.sha256"
    try:
        known = sidecar.read_text().strip()
        if len(known) == 64:
            return known
    except OSError:
        pass
    with file.open("rb") as handle:
        value = hashlib.file_digest(handle, "sha256").hexdigest()
    try:
        with atomic_write(sidecar) as out:
            out.write(value)
    except OSError as error:
        log.debug("cannot keep the digest of %s in %s: %s", file, digests, error)
    return value


def _hub_commit(repo_id: str) -> str:
    """The commit the local Hugging Face cache resolves `repo_id` to (its default branch), or "" (with a
    warning) when the cache does not hold it."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(found, str):  # <cache>/models--org--name/snapshots/<commit>/config.json
        return Path(found).parent.name
    log.warning(
        "reference cache: %s is not in the local Hugging Face cache, so its fingerprint is its name only; "
        "another revision under the same name would reuse these entries",
        repo_id,
    )
    return ""


def shard_digest(shard: dict) -> str:
    """SHA-256 of a shard's keys, lengths and values (written into the shard, checked when it is read: an
    altered value is never used, a shard without a digest is recomputed)."""
    digest = hashlib.sha256("\n".join(shard["keys"]).encode())
    for name in ("lengths", "values"):
        tensor = shard[name].detach().cpu().contiguous()
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


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
        padded step ends, and stored; the result is on the batch's device. Under several ranks, `compute`
        runs on every rank or on none (`iprm.distributed.any_rank`), as a sharded reference needs.
        """
        keys = record_keys(batch)
        missing = [row for row, key in enumerate(keys) if key not in self]
        computed, device = {}, batch["input_ids"].device
        # Sharded (FSDP, ZeRO-3), the reference's forward is a collective: when any rank needs it, every
        # rank runs it, one with nothing missing on its first row, whose values it then discards.
        if any_rank(bool(missing), device):
            values = compute(select_rows(batch, torch.tensor(missing or [0], device=device)))
            for row, value in zip(missing, values, strict=False):
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
        shard["sha256"] = shard_digest(shard)
        path = self.directory / f"shard-{time.time_ns()}-{os.getpid()}.pt"
        with atomic_write(path, "wb") as file:
            torch.save(shard, file)
        return path

    def _load(self) -> None:
        for path in sorted(self.directory.glob("shard-*.pt")):
            try:
                shard = torch.load(path, map_location="cpu", weights_only=True)
                if shard.get("sha256") != shard_digest(shard):
                    raise ValueError("its contents do not match the digest written with them (altered?)")
                values = torch.split(shard["values"], shard["lengths"].tolist())
                if len(values) != len(shard["keys"]):
                    raise ValueError(f"{len(shard['keys'])} keys for {len(values)} values")
            except Exception as error:  # a bad shard costs a recomputation, never the run
                log.warning("skipping reference cache shard %s, its entries are recomputed: %s", path, error)
                continue
            self._values.update(zip(shard["keys"], values, strict=True))
        if self._values:
            log.info("reference cache: %d records from %s", len(self._values), self.directory)


class FrozenReference:
    """The frozen reference π_ref as training and scoring use it: its model, the cache of what it computes
    (cumulative log-probs per record, `ReferenceCache`) and its offloading to CPU memory.

    The model itself stays a submodule of the LightningModule that owns it (so strategies move, wrap and
    shard it); this object reaches it through `model()`, and computes token log-probs with `logprobs`
    (model, batch, key prefix) → [B, T], the owner's one way of turning a model and a batch into log-probs.

    Args:
        model: Returns the reference model (None when the owner has none).
        logprobs: Token log-probs of a model on a batch's `<prefix>input_ids`, ... (`iprm.rewards`).
        cache: Where computed values are kept; a fresh in-memory cache by default.
    """

    def __init__(
        self,
        model: Callable[[], nn.Module | None],
        logprobs: Callable[[nn.Module, dict, str], Tensor],
        cache: ReferenceCache | None = None,
    ):
        self.model = model
        self.logprobs = logprobs
        self.cache = cache if cache is not None else ReferenceCache("memory")

    @torch.no_grad()
    def token_logprobs(self, batch: dict[str, Tensor], prefix: str = "") -> Tensor:
        """The reference's token log-probs [B, T], brought onto the batch's device for the call when
        offloaded, and back."""
        model, device = self.model(), batch[f"{prefix}input_ids"].device
        offloaded = next(model.parameters()).device != device
        if offloaded:
            model.to(device)
        try:
            return self.logprobs(model, batch, prefix)
        finally:
            if offloaded:
                model.to("cpu")

    @torch.no_grad()
    def cumulative(self, batch: dict[str, Tensor]) -> Tensor:
        """Cumulative log-probs [B, S + 1]: each step end (NaN padding), then the response total; records
        missing from the cache are forwarded (on every rank together: `ReferenceCache.fetch`)."""

        def forward(rows: dict) -> Tensor:
            token_logps = self.token_logprobs(rows)
            ends = rewards.cumulative_at(token_logps, rows["step_ends"])
            return torch.cat([ends, token_logps.sum(-1, keepdim=True)], -1)

        return self.cache.fetch(batch, forward)

    def fill_and_offload(self, batches: Iterable[dict[str, Tensor]]) -> None:
        """Cache the values of every batch (a rank's training set), write them (disk mode), then move the
        model to CPU memory: the accelerator holds the policy alone from here."""
        for batch in batches:
            self.cumulative(batch)
        self.cache.flush()
        self.offload()

    def offload(self) -> None:
        """Move the model to CPU memory and give its accelerator memory back."""
        model = self.model()
        on_cuda = next(model.parameters()).device.type == "cuda"
        model.to("cpu")
        if on_cuda:
            torch.cuda.empty_cache()
