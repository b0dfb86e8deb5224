"""Lightning checkpoints: written atomically where they land, read only when they are what they claim to be.

Writing. Lightning's `TorchCheckpointIO` saves through an fsspec transaction, whose local file is a
`tempfile.mkstemp()` in the system's temporary directory, moved into place at the end. When that directory
sits on another file system than the checkpoint (a tmpfs `/tmp`, a scratch disk), the "move" is a copy,
and a copy that runs out of space leaves a truncated checkpoint under its final name. `AtomicCheckpointIO`
writes local checkpoints with `iprm.io.atomic_write` instead: a temporary file in the checkpoint's own
directory, flushed and renamed, so a full disk leaves the previous checkpoint intact and says which path
failed. Remote paths (`s3://…`) keep Lightning's own transaction.

Reading. `read_checkpoint` turns every way a `--ckpt_path` can be wrong into one line naming it: a
directory, a text file, exported safetensors weights, a truncated file, or a pickle holding Python objects
(refused: loading it could run code; it is never loaded with `weights_only=False`).
"""

import logging
import pickle
import struct
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem

from iprm.errors import CorruptArtifactError, MissingPathError
from iprm.io import atomic_write

log = logging.getLogger(__name__)

# `--ckpt_path` values Lightning resolves itself rather than reading a file of that name.
LIGHTNING_NAMES = ("last", "best", "hpc")


def _is_local(path: str | Path) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves go to a temporary file beside the checkpoint, renamed when
    complete (see the module docstring), and whose loads say what is wrong with a file in one line."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_write(Path(str(path).removeprefix("file://")), "wb") as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self, path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path, map_location=map_location or "cpu")


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Give the trainer's strategy an `AtomicCheckpointIO` where it would use Lightning's plain one (a
    strategy with its own, DeepSpeed's or FSDP's sharded saves, or a user's plugin, is left alone)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:  # the property gives the default when none is set
        strategy.checkpoint_io = AtomicCheckpointIO()


def _kind(path: Path) -> str:
    """What a file's first bytes say it is: "zip" (torch.save), "pickle" (torch's legacy format),
    "safetensors", "text" or "unknown"."""
    with path.open("rb") as file:
        head = file.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < path.stat().st_size:
        return "safetensors"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown"


def _unsupported_global(message: str) -> str:
    """ " (collections.Counter)" from torch's refusal of a pickled global, else "" (torch's own advice, to
    load with `weights_only=False`, is left out: that would run the file's code)."""
    for line in message.splitlines():
        if "Unsupported global:" in line:
            name = line.split("Unsupported global:")[-1].strip().removeprefix("GLOBAL ")
            return f" ({name.split(' was not')[0].split()[0]})" if name else ""
    return ""


def read_checkpoint(path: str | Path, setting: str = "--ckpt_path", map_location: Any = "cpu") -> dict:
    """Load a Lightning checkpoint with `weights_only=True`; an `IPRMError` names `setting` and the file
    when it is not one (see the module docstring)."""
    path = Path(str(path).removeprefix("file://"))
    where = f"{setting} {path}"
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*.ckpt"))[:3]
        hint = f"; it holds {', '.join(found)}" if found else ""
        raise MissingPathError(f"{where}: is a directory; name a checkpoint file (.ckpt){hint}")
    if not path.is_file():
        raise MissingPathError(f"{where}: no such file")
    kind = _kind(path)
    if kind == "safetensors":
        raise CorruptArtifactError(
            f"{where}: is a safetensors weight file (an export), not a Lightning checkpoint; to start from "
            "exported weights, set data.model_path to the directory that holds it"
        )
    if kind in ("text", "unknown"):
        raise CorruptArtifactError(f"{where}: is not a checkpoint written by Lightning (torch.save) ({kind})")
    try:
        # mmap: every rank reads the settings of an 8B checkpoint without each holding a copy in memory
        mmap = kind == "zip"
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = _unsupported_global(str(error))
        raise CorruptArtifactError(
            f"{where}: holds Python objects beyond tensors and plain containers{found}; refused, since "
            "loading it could run code. Use a checkpoint that Lightning wrote, or re-save its state_dict "
            "as plain tensors from a process you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CorruptArtifactError(
            f"{where}: cannot be read ({problem}); the file is truncated or corrupt: use an earlier "
            "checkpoint or rerun the training"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CorruptArtifactError(f"{where}: is not a Lightning checkpoint (no state_dict; holds {keys})")
    return checkpoint


def is_sharded(path: str | Path) -> bool:
    """Whether `path` is a sharded checkpoint directory that a strategy reads itself: DeepSpeed's (a
    `latest` file, a `checkpoint/` folder) or FSDP's (`meta.pt`, `.metadata`, `*.distcp`)."""
    path = Path(path)
    if not path.is_dir():
        return False
    markers = ("latest", "checkpoint", "meta.pt", ".metadata")
    return any((path / marker).exists() for marker in markers) or any(path.glob("*.distcp"))


def check_ckpt_path(ckpt_path: str | None) -> dict | None:
    """The checkpoint a command's `--ckpt_path` names, read and checked (`read_checkpoint`); None when none
    is given, or for what Lightning or the strategy resolves itself ("last", "best", a remote URL, a sharded
    DeepSpeed or FSDP checkpoint directory)."""
    if not ckpt_path or str(ckpt_path) in LIGHTNING_NAMES or not _is_local(ckpt_path):
        return None
    if str(ckpt_path).startswith("registry:") or is_sharded(ckpt_path):
        return None
    get_filesystem(ckpt_path)  # an unknown protocol fails here, as it would in Lightning
    return read_checkpoint(ckpt_path)
