"""Every Lightning private API iprm relies on, in one place, with the check that they are all still there.

Lightning's public surface cannot say three things iprm needs, so this module reaches past it:
- the LightningCLI's checkpoint-hyperparameter step (`_parse_ckpt_path`), which iprm replaces so the command
  line always wins over a checkpoint, and its per-subcommand keyword arguments
  (`_prepare_subcommand_kwargs`, `_subcommand_method_arguments`), where iprm forces `weights_only=True`;
- the fit loop's training loader (`_FitLoop._combined_loader`), dropped after counting the steps so that a
  resumed run restores the loader's position (lightning#20550);
- the fit loop's epoch counter (`_FitLoop.epoch_progress`), which the batch sampler needs before Lightning
  sets the epoch on it.

Nothing else in `iprm/` names a private Lightning attribute (`tests/test_compat.py` checks that), and
`pyproject.toml` pins Lightning to the minor version CI tests. When an upgrade removes one of them,
`check_private_apis()` (run by the test suite) names the attribute that went missing.
"""

import inspect
import re
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loops.fit_loop import _FitLoop

from iprm.errors import IPRMError

# (owner, attribute, how it is found): "class" looks on the class, "instance" on a fresh instance.
PRIVATE_APIS: tuple[tuple[type, str, str], ...] = (
    (LightningCLI, "_parse_ckpt_path", "class"),
    (LightningCLI, "_prepare_subcommand_kwargs", "class"),
    (LightningCLI, "_subcommand_method_arguments", "instance"),
    (_FitLoop, "_combined_loader", "instance"),
    (_FitLoop, "epoch_progress", "instance"),
)


class LightningAPIError(IPRMError):
    """A private Lightning attribute iprm relies on is gone (an upgrade past the pinned range)."""


def check_private_apis() -> None:
    """Raise `LightningAPIError` naming every private attribute `PRIVATE_APIS` lists that this Lightning
    lacks."""
    import lightning

    fit_loop = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False).fit_loop
    instances = {_FitLoop: fit_loop, LightningCLI: _cli_attributes()}
    missing = []
    for owner, name, where in PRIVATE_APIS:
        target = owner if where == "class" else instances[owner]
        if not (name in target if isinstance(target, set) else hasattr(target, name)):
            missing.append(f"{owner.__name__}.{name}")
    if missing:
        raise LightningAPIError(
            f"lightning {lightning.__version__} lacks {', '.join(missing)}, which iprm.compat relies on: "
            "install the version pyproject.toml pins, or port iprm/compat.py"
        )


def _cli_attributes() -> set[str]:
    """The attributes a LightningCLI assigns to itself (`self.x = …`, `self.x: T = …`), read from its source:
    building one to look would parse sys.argv and run a subcommand."""
    source = inspect.getsource(LightningCLI)
    return set(re.findall(r"self\.(\w+)\s*(?::[^=\n]+)?=(?!=)", source))


class CheckpointHooks(LightningCLI):
    """A LightningCLI whose private steps are renamed public hooks for iprm's CLI to override:
    `fill_from_checkpoint` (Lightning's `_parse_ckpt_path`) and `subcommand_kwargs` (the keyword arguments
    of the trainer method a subcommand calls, e.g. `trainer.test(**kwargs)`)."""

    def fill_from_checkpoint(self) -> None:
        """Take what a `--ckpt_path` checkpoint says into the parsed config (Lightning: its hparams win)."""
        super()._parse_ckpt_path()

    def subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """The keyword arguments the trainer method of `subcommand` is called with."""
        return super()._prepare_subcommand_kwargs(subcommand)

    def subcommand_accepts(self, subcommand: str, argument: str) -> bool:
        """Whether the trainer method of `subcommand` takes `argument` (e.g. `weights_only`)."""
        return argument in self._subcommand_method_arguments[subcommand]

    def _parse_ckpt_path(self) -> None:
        self.fill_from_checkpoint()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        return self.subcommand_kwargs(subcommand)


def training_loader_built(trainer: Trainer) -> bool:
    """Whether the fit loop has built (and drawn from) its training loader."""
    return trainer.fit_loop._combined_loader is not None


def drop_training_loader(trainer: Trainer) -> None:
    """Make the fit loop build its training loader afresh, after a resume restored its state."""
    trainer.fit_loop._combined_loader = None


def epochs_processed(trainer: Trainer | None) -> int | None:
    """The epochs the fit loop has finished (the epoch it will set next), or None without a trainer."""
    fit_loop = getattr(trainer, "fit_loop", None)
    return None if fit_loop is None else fit_loop.epoch_progress.current.processed
