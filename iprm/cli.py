"""The command line: `python -m iprm {fit,validate,test,predict} --config … [--config …] [--a.b value]`.

A `LightningCLI` over `ImplicitPRM` and any `PRMDataModule` subclass, chosen by `data.class_path` (the
controlled world's is `iprm.tasks.WorldDataModule`). Configs compose left to right; any value can be
overridden with a dotted flag. `data.model_path` (the starting checkpoint and its tokenizer) is linked into
the model, so data and model can never disagree on the tokenizer. The evaluation callback and the
prediction writer are always present, configured under `evaluation.*` and `prediction.*`; so are the FLOPs
counter (`iprm.flops.FlopsCounter`) and the run's `<stage>-metrics.json` (`iprm.results.MetricsFile`,
carrying the sha256 of the resolved config that `config.yaml` holds).

With `--ckpt_path`, the checkpoint's saved hyperparameters fill in only what the configs and flags leave
unset: the command line always wins (Lightning's own CLI lets a checkpoint override it). What code runs and
where models are read from (`COMMAND_LINE_ONLY`) are never taken from a checkpoint, and every checkpoint is
loaded with `weights_only=True`: loading a checkpoint never executes code from it.
"""

import hashlib
import logging
import sys
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from iprm.data import PRMDataModule
from iprm.errors import ConfigError
from iprm.eval.callback import BestOfNEvaluation
from iprm.flops import FlopsCounter
from iprm.module import ImplicitPRM
from iprm.predict import PredictionWriter
from iprm.results import MetricsFile

log = logging.getLogger(__name__)

# Model arguments a checkpoint's hyperparameters never set: which classes and modelling code run, and
# where models are read from or written to, are for the command line to say, never for a file it loads.
COMMAND_LINE_ONLY = (
    "_class_path",
    "_instantiator",
    "model_path",
    "reference_path",
    "trust_remote_code",
    "export_dir",
    "reference_cache_dir",
)


class IPRMCLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        self._args = args  # kept to tell what the configs and flags set (`_given_model_arguments`)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Fill in model arguments the configs and flags leave unset from the checkpoint's hyperparameters,
        except `COMMAND_LINE_ONLY`."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        saved = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        given = self._given_model_arguments(subcommand)
        for key in ("reference_path", "trust_remote_code"):
            if saved.get(key) and key not in given:
                log.warning(
                    "%s was saved with model.%s=%r; not taken from a checkpoint: give it on the command "
                    "line if this run needs it",
                    ckpt_path,
                    key,
                    saved[key],
                )
        kept = {key: v for key, v in saved.items() if key not in COMMAND_LINE_ONLY and key not in given}
        if kept:
            self.config = self.parser.parse_object({subcommand: {"model": kept}}, self.config)

    def _given_model_arguments(self, subcommand: str) -> set[str]:
        """The model arguments the configs and flags set (at their defaults or not)."""
        if isinstance(self._args, dict | Namespace):
            explicit = self.parser.parse_object(self._args, defaults=False)
        else:
            explicit = self.parser.parse_args(sys.argv[1:] if self._args is None else self._args, defaults=False)
        model = explicit.get(f"{subcommand}.model")
        return {key.split(".")[0] for key in model.keys()} if isinstance(model, Namespace) else set()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            if kwargs.get("weights_only") is False:
                raise ConfigError("--weights_only false is refused: loading a checkpoint must not run code")
            kwargs["weights_only"] = True  # also for remote checkpoints, where Lightning's default is False
        return kwargs

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.model_path", "model.model_path", apply_on="instantiate")
        parser.add_lightning_class_args(BestOfNEvaluation, "evaluation")
        parser.add_lightning_class_args(PredictionWriter, "prediction")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config.get(str(self.subcommand), self.config)
        resolved = self._parser(self.subcommand).dump(config, skip_none=False)  # as config.yaml holds it
        digest = hashlib.sha256(resolved.encode()).hexdigest()
        self.trainer.callbacks.extend([FlopsCounter(), MetricsFile(config_digest=digest)])


def main(args: list[str] | None = None) -> IPRMCLI:
    return IPRMCLI(
        ImplicitPRM,
        PRMDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            # Batches hold whole instruction groups; the data module shards them across ranks itself.
            "use_distributed_sampler": False,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "iprm"},
            },
        },
    )
