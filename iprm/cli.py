"""The command line: `python -m iprm {fit,validate,test,predict} --config … [--config …] [--a.b value]`.

A `LightningCLI` over any reward model (`iprm.scorers.RewardModel`; the implicit PRM, `ImplicitPRM`, unless
`model.class_path` names another, e.g. `iprm.scorers.ExplicitPRM` for the baselines) and any
`PRMDataModule` subclass, chosen by `data.class_path` (the controlled world's is
`iprm.tasks.WorldDataModule`). A `model:` block without `class_path` configures the implicit PRM, or
whichever model an earlier config chose. Configs compose left to right; any value can be
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

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Checkpoint

from iprm.checkpoints import check_ckpt_path, use_atomic_checkpoints
from iprm.compat import CheckpointHooks
from iprm.data import PRMDataModule
from iprm.errors import ConfigError, IPRMError, MissingPathError
from iprm.eval.callback import BestOfNEvaluation
from iprm.flops import FlopsCounter
from iprm.predict import PredictionWriter
from iprm.results import MetricsFile
from iprm.resume import ResumeCheck, check_resume, run_settings
from iprm.runlog import STAGES, log_beside_fit, quiet_third_party
from iprm.scorers import ImplicitPRM, RewardModel
from iprm.validate import check_config_content, check_export_dir, check_training_length

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


class IPRMCLI(CheckpointHooks):
    def parse_arguments(self, parser, args) -> None:
        self._args = args  # kept to tell what the configs and flags set (`_given_model_arguments`)
        if not isinstance(args, dict | Namespace):
            check_config_files(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)

    def fill_from_checkpoint(self) -> None:
        """Fill in model arguments the configs and flags leave unset from the checkpoint's hyperparameters,
        except `COMMAND_LINE_ONLY`."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        checkpoint = check_ckpt_path(ckpt_path)  # a one-line error for anything that is not a checkpoint
        if checkpoint is None:
            return
        saved = checkpoint.get("hyper_parameters", {})
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
        # The model class is the configs' (never the checkpoint's); only its own arguments are filled.
        model = self.config[subcommand]["model"]
        init_args = model.get("init_args")
        accepted = {key.split(".")[0] for key in init_args.keys()} if init_args is not None else set()  # noqa: SIM118
        kept = {
            key: v
            for key, v in saved.items()
            if key in accepted and key not in COMMAND_LINE_ONLY and key not in given
        }
        if kept:
            update = {"model": {"class_path": model["class_path"], "init_args": kept}}
            self.config = self.parser.parse_object({subcommand: update}, self.config)
        if subcommand == "fit":
            config = self.config[subcommand]
            check_resume(run_settings(config), checkpoint, ckpt_path, config["resume"]["allow_changes"])

    def _given_model_arguments(self, subcommand: str) -> set[str]:
        """The model arguments the configs and flags set (at their defaults or not)."""
        if isinstance(self._args, dict | Namespace):
            explicit = self.parser.parse_object(self._args, defaults=False)
        else:
            explicit = self.parser.parse_args(
                sys.argv[1:] if self._args is None else self._args, defaults=False
            )
        model = explicit.get(f"{subcommand}.model")
        if not isinstance(model, Namespace):
            return set()
        # keys() flattens nested keys: `init_args.objective.init_args.beta` → `objective`
        keys = [key.removeprefix("init_args.") for key in model.keys() if key != "class_path"]  # noqa: SIM118
        return {key.split(".")[0] for key in keys}

    def subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super().subcommand_kwargs(subcommand)
        if self.subcommand_accepts(subcommand, "weights_only"):
            if kwargs.get("weights_only") is False:
                raise ConfigError("--weights_only false is refused: loading a checkpoint must not run code")
            kwargs["weights_only"] = True  # also for remote checkpoints, where Lightning's default is False
        return kwargs

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": f"{ImplicitPRM.__module__}.{ImplicitPRM.__name__}"}})
        parser.link_arguments("data.model_path", "model.init_args.model_path", apply_on="instantiate")
        parser.add_lightning_class_args(BestOfNEvaluation, "evaluation")
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.add_lightning_class_args(ResumeCheck, "resume")

    def before_instantiate_classes(self) -> None:
        # `test` and `predict` of a fit's checkpoint log into that fit's directory (`iprm.runlog`)
        if self.subcommand in STAGES:
            name = f"{self.subcommand}-config.yaml"
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}
            log_beside_fit(self.subcommand, self.config[self.subcommand])

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # jsonargparse wraps what an __init__ raises; show ours as it is
            cause = _user_error(error)
            if cause is None:
                raise
            raise cause from None
        config = self.config.get(str(self.subcommand), self.config)
        resolved = self._parser(self.subcommand).dump(config, skip_none=False)  # as config.yaml holds it
        digest = hashlib.sha256(resolved.encode()).hexdigest()
        # Before the checkpoint callbacks, as Lightning orders its own: a checkpoint written after a
        # training step holds the FLOPs of that step.
        callbacks = self.trainer.callbacks
        first = next((i for i, c in enumerate(callbacks) if isinstance(c, Checkpoint)), len(callbacks))
        callbacks[first:first] = [FlopsCounter(), MetricsFile(config_digest=digest)]
        for callback in callbacks:
            if isinstance(callback, ResumeCheck):
                callback.settings = run_settings(config)  # stored in each checkpoint, for a resume to check
        use_atomic_checkpoints(self.trainer)

    def _check_inputs(self, stage: str) -> None:
        """Load and check the data before the trainer starts: Lightning creates the log directory before
        the data module's `setup`, and a refused input must leave nothing behind. Several processes check
        in `setup` instead, after Lightning's barrier (rank 0 prepares the data)."""
        if self.trainer.world_size > 1:
            return
        self.datamodule.trainer = self.trainer  # as Lightning will: setup labels steps on the run's device
        self.datamodule.prepare_data()
        self.datamodule.setup(stage)
        objective = getattr(self.model, "objective", None)  # explicit PRMs have none
        if stage == "fit" and objective is not None:
            labels, groups = self.datamodule.train_labels_and_groups()
            objective.check_dataset(labels, groups, self.datamodule.train_path)
        for callback in self.trainer.callbacks:
            if isinstance(callback, BestOfNEvaluation):
                callback.check_scorers(self.model)
                callback.check_sets(self.datamodule, stage)

    def before_fit(self) -> None:
        check_training_length(self.trainer.max_epochs, self.trainer.max_steps)
        check_export_dir(self.model.hparams.get("export_dir"))  # before training, not after it
        self._check_inputs("fit")

    def before_validate(self) -> None:
        self._check_inputs("validate")

    def before_test(self) -> None:
        self._check_inputs("test")

    def before_predict(self) -> None:
        self._check_inputs("predict")


def check_config_files(args: list[str]) -> None:
    """Refuse a `--config` file that is missing or not YAML, naming it (jsonargparse's message does not)."""
    paths = [value for flag, value in zip(args, args[1:], strict=False) if flag in ("--config", "-c")]
    paths += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for path in paths:
        if path.lstrip().startswith("{") or "\n" in path:  # YAML given inline, not a file
            continue
        if not Path(path).is_file():
            problem = "a directory, not a file" if Path(path).is_dir() else "no such file"
            raise MissingPathError(f"--config {path}: {problem}")
        try:
            check_config_content(path, yaml.safe_load(Path(path).read_text(encoding="utf-8")))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            problem = getattr(error, "problem", None) or error
            raise ConfigError(f"{where}: not valid YAML: {problem}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None


def _user_error(error: BaseException) -> IPRMError | None:
    """The `IPRMError` an exception was raised from, if any."""
    seen = 0
    while error is not None and seen < 32:
        if isinstance(error, IPRMError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def main(args: list[str] | None = None) -> IPRMCLI:
    """Run `iprm fit|validate|test|predict` with `args` (None: the command line's)."""
    quiet_third_party()
    return IPRMCLI(
        RewardModel,
        PRMDataModule,
        subclass_mode_model=True,
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
