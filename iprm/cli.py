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
"""

import hashlib

from lightning.pytorch.cli import LightningCLI

from iprm.data import PRMDataModule
from iprm.eval.callback import BestOfNEvaluation
from iprm.flops import FlopsCounter
from iprm.module import ImplicitPRM
from iprm.predict import PredictionWriter
from iprm.results import MetricsFile
from iprm.scorers import RewardModel


class IPRMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": f"{ImplicitPRM.__module__}.{ImplicitPRM.__name__}"}})
        parser.link_arguments("data.model_path", "model.init_args.model_path", apply_on="instantiate")
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
