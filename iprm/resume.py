"""A resume checks what it resumes: `fit --ckpt_path` compares the run's settings with the checkpoint's.

Every checkpoint `fit` writes carries the settings that shape the training trajectory (`run_settings`: the
model's and the data module's arguments, the objective and its β among them, the data knobs, the seed, and
the trainer's accumulation, clipping and precision) under `checkpoint["iprm_settings"]`. A `fit` that
resumes from it compares them with its own: a difference is refused with both values named, unless
`--resume.allow_changes true`, when each difference is logged as a warning. What only says where things
are or how fast they run (worker counts, evaluation batch sizes and sets, export and cache folders, the
world's cache root) is not compared.
"""

import json
import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from iprm.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "iprm_settings"
TRAINER_KEYS = ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "precision")
# Settings that change where things are, how fast they run, or what is evaluated; never the trajectory.
NOT_COMPARED = {
    "model.export_dir",
    "model.reference_cache",
    "model.reference_cache_dir",
    "model.offload_reference",
    "model.compile",
    "model.gradient_checkpointing",  # memory and speed only: a run that ran out of memory resumes with it
    "model.head_chunk_tokens",
    "data.layout",  # packed and padded batches give the same numbers (tests/test_packed.py)
    "data.packed_row_tokens",
    "model.attn_implementation",
    "model.model_path",  # linked from data.model_path, which is compared
    "data.num_workers",
    "data.eval_batch_size",
    "data.eval_paths",
    "data.test_paths",
    "data.predict_path",
    "data.world.root",
}


class ResumeCheck(Callback):
    """Stores the run's settings in every checkpoint, for a later resume to compare (`iprm.resume`).

    Args:
        allow_changes: Resume from `--ckpt_path` even where the objective, β, the data knobs or other
            settings that shape training differ from the checkpoint's; each difference is logged. Off: a
            difference is refused, naming the setting and both values.
    """

    def __init__(self, allow_changes: bool = False):
        self.allow_changes = allow_changes
        self.settings: dict[str, Any] = {}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.settings:
            checkpoint[KEY] = dict(self.settings)


def _plain(value: Any) -> Any:
    """A JSON value (what `torch.load(weights_only=True)` reads back), lists and dicts as JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict) and set(value) - {"class_path", "init_args", "dict_kwargs"}:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, into)
    elif isinstance(value, dict):  # a class_path/init_args block: its class, then its arguments
        if "class_path" in value:
            into[prefix] = value["class_path"]
        for key, item in {**(value.get("init_args") or {}), **(value.get("dict_kwargs") or {})}.items():
            _flatten(f"{prefix}.{key}", item, into)
    else:
        into[prefix] = _plain(value)


def run_settings(config: Any) -> dict[str, Any]:
    """The settings of a subcommand's resolved config (a jsonargparse Namespace or a dict) that shape the
    training trajectory, flattened to `model.objective.beta`-style keys."""
    config = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    settings: dict[str, Any] = {"seed_everything": _plain(config.get("seed_everything"))}
    for part in ("model", "data"):
        _flatten(part, config.get(part) or {}, settings)
    trainer = config.get("trainer") or {}
    settings |= {f"trainer.{key}": _plain(trainer.get(key)) for key in TRAINER_KEYS}
    return {key: value for key, value in settings.items() if key not in NOT_COMPARED}


def check_resume(settings: dict[str, Any], checkpoint: dict, ckpt_path: str, allow_changes: bool) -> None:
    """Refuse (or, with `allow_changes`, log) every setting in which this run differs from the checkpoint
    it resumes; a checkpoint without stored settings (older, or not written by `fit`) is warned about."""
    saved = checkpoint.get(KEY)
    if not saved:
        log.warning(
            "%s holds no run settings (written by an older iprm?): cannot check that this run resumes it "
            "with the same objective and data",
            ckpt_path,
        )
        return
    if settings.get("seed_everything") is True and isinstance(saved.get("seed_everything"), int):
        # Not yet drawn: Lightning draws `seed_everything: true` after this check, and the run then takes
        # whatever is restored; only a seed given explicitly can differ from the checkpoint's.
        settings = {**settings, "seed_everything": saved["seed_everything"]}
    differences = [
        f"{key}: {saved.get(key, '(unset)')!r} in the checkpoint, {settings.get(key, '(unset)')!r} now"
        for key in sorted(set(saved) | set(settings))
        if key not in NOT_COMPARED and saved.get(key) != settings.get(key)
    ]
    if not differences:
        return
    if not allow_changes:
        shown = "; ".join(differences[:8]) + (
            f"; and {len(differences) - 8} more" if len(differences) > 8 else ""
        )
        raise ConfigError(
            f"--ckpt_path {ckpt_path}: this run differs from the one it resumes in {shown}; give the "
            "checkpoint's values, or --resume.allow_changes true to resume with these changes"
        )
    for difference in differences:
        log.warning("resuming %s with a change (--resume.allow_changes): %s", ckpt_path, difference)
