"""Quiet, predictable runs: what a command prints, and where `validate`, `test` and `predict` write.

What it prints: iprm's own lines (its log, the world's progress, the metric tables) and Lightning's
(seed, devices, model summary); four third-party messages that say nothing about the run are silenced
by their exact text, never by category, so every other warning still shows:
- Lightning's advertising tips ("💡 Tip: … litlogger / litmodels");
- torch's "`isinstance(treespec, LeafSpec)` is deprecated", raised inside Lightning's own code;
- "custom batch sampler … drop_last": iprm's evaluation sampler never drops a record (`ShardedBatchSampler`);
- "Found N module(s) in eval mode at the start of training": the frozen reference is in eval mode on purpose;
and the `transformers` progress bars of loading and writing a checkpoint's shards.

Where it writes: a `test` or `predict` of a checkpoint written by a fit under the same logger
(`<save_dir>/<name>/<version>/checkpoints/*.ckpt`) logs into that fit's run directory instead of opening
a new `version_N`, so a run's fit, tests and predictions sit together (`test-metrics.json` and
`evaluation/test-*` beside `fit-metrics.json` and `evaluation/val-*`); its resolved config is saved as
`<stage>-config.yaml`, never over the fit's `config.yaml`. A logger version given in a config or a flag,
or a checkpoint from anywhere else, is left as it is (a new version, as Lightning does). `validate` keeps
its own directory: its tables are named like the fit's validation tables, which it must not overwrite.
"""

import logging
import re
import warnings
from pathlib import Path

STAGES = ("test", "predict")  # the subcommands that log beside the fit they evaluate
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"

# Messages (regular expressions, from the start of the text) that are not the run's news.
NOISE_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"You are using a custom batch sampler `\w+` for prediction\. Lightning would normally set `drop_last",
    r"Found \d+ module\(s\) in eval mode at the start of training",
)
NOISE_LOGS = (r"💡 Tip: ",)
LIGHTNING_INFO = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `patterns`."""

    def __init__(self, patterns: tuple[str, ...]):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def quiet_third_party() -> None:
    """Silence the third-party messages listed in the module docstring (idempotent)."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_INFO:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(NOISE_LOGS))
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def log_beside_fit(stage: str, config) -> Path | None:
    """For `test` and `predict`, point the TensorBoard logger of `config` (the subcommand's parsed config,
    changed in place) at the run directory of the fit that wrote its checkpoint; that directory, or None
    where the logger is left as it was."""
    logger = config["trainer"].get("logger")
    as_dict = logger.as_dict() if hasattr(logger, "as_dict") else logger
    run = fit_run_directory(config.get("ckpt_path"), as_dict) if stage in STAGES else None
    if run is not None:
        logger["init_args"]["version"] = run.name
    return run


def fit_run_directory(ckpt_path: str | None, logger: dict | None) -> Path | None:
    """The run directory of the fit that wrote `ckpt_path`, when it was written under this TensorBoard
    logger's `<save_dir>/<name>/` and the logger's version is left unset; else None."""
    if not ckpt_path or not isinstance(logger, dict) or logger.get("class_path") != TENSORBOARD:
        return None
    init = logger.get("init_args") or {}
    checkpoint = Path(ckpt_path)
    if init.get("version") is not None or checkpoint.parent.name != "checkpoints":
        return None
    run = checkpoint.resolve().parent.parent
    root = Path(init.get("save_dir") or ".") / (init.get("name") or "")
    return run if run.parent == root.resolve() else None
