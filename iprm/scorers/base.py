"""What every reward model shares: its scorers, scoring a batch, loading checkpoints, optimising, exporting.

A reward model is a LightningModule that owns one or more *scorers*. A scorer has a name and one or more
step readings (`modes`); for a batch, the model returns every scorer's step scores [B, S] (NaN padding)
under the key `<scorer>_<mode>`, in one pass, since scorers of one model usually share its forwards
(the implicit PRM's "prm", "reference" and "policy" scorers all read the same two log-prob passes). Each
step reading becomes response scorers by aggregation, `<scorer>_<mode>_<min|sum|mean|last>`:

    implicit PRM   prm_{single,accumulative}_*, reference_{…}_*, policy_{…}_*   (`iprm.scorers.ImplicitPRM`)
    explicit PRM   <name>_step_*: the value head's probability at each step end (`iprm.scorers.ExplicitPRM`)

The evaluation callback and the prediction writer read only this interface (`scorer_names`,
`step_scorer_names`, `score`), so a new baseline is a new `RewardModel` with its scorers, and the best-of-N
tables, step-level metrics, prediction files, sweeps and figures report it as they report the others. Each
model names its `method_scorer`, the response scorer reported for the method as a whole (`…/method`).
"""

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from iprm import compat, refcache, rewards
from iprm.artifacts import export_directory
from iprm.data.collate import select_rows
from iprm.errors import ConfigError
from iprm.flops import Forward
from iprm.results import record_scalars
from iprm.validate import check_model_path

log = logging.getLogger(__name__)


DTYPES = ("float32", "bfloat16", "float16", "auto")


def submodule_state(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a module's state dict under `prefix` ("policy."), the prefix removed."""
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def check_settings(hparams, problems: Iterable[str] = ()) -> None:
    """Refuse a reward model's settings that could only fail later, or silently mislead: the settings every
    reward model takes, and `problems` the model found in its own (`ImplicitPRM.settings_problems`), all
    in one `model: …` error."""
    problems = list(problems)
    if not 0 < hparams.lr < math.inf:
        problems.append(f"lr must be {'finite' if hparams.lr > 0 else 'positive'}, got {hparams.lr}")
    if not 0 <= hparams.warmup_ratio < 1:
        problems.append(f"warmup_ratio must be in [0, 1), got {hparams.warmup_ratio}")
    schedule_epochs = hparams.get("schedule_epochs")
    if schedule_epochs is not None and not (isinstance(schedule_epochs, int) and schedule_epochs >= 1):
        problems.append(f"schedule_epochs must be a positive integer or null, got {schedule_epochs!r}")
    if hparams.torch_dtype not in DTYPES:
        problems.append(f"torch_dtype must be one of {', '.join(DTYPES)}, got {hparams.torch_dtype!r}")
    if problems:
        raise ConfigError("model: " + "; ".join(problems))


def disable_dropout(model: nn.Module) -> nn.Module:
    """Switch off every dropout of `model`, in place, and return it.

    As TRL does by default (`disable_dropout_in_model`): in training mode dropout would make the policy's
    log-probs, hence the log-ratio, noisy where the reference's (in eval mode, or cached) are not, and a
    log-ratio of 0 at the start would not be 0. TRL zeroes `nn.Dropout` modules only; attention dropout in
    most `transformers` decoders (Llama, Qwen2, Mistral, ...) is a float attribute handed to the attention
    kernel, so float attributes named `*dropout*` are zeroed too. The config is left as it was, so an
    exported checkpoint keeps its own settings.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float) and value > 0:
                setattr(module, name, 0.0)
    return model


@dataclass(frozen=True)
class Scorer:
    """A scorer: its name and the step readings it offers (each aggregated into response scores)."""

    name: str
    modes: tuple[str, ...]

    def step_names(self) -> list[str]:
        return [f"{self.name}_{mode}" for mode in self.modes]


def response_scorer_names(scorers: tuple[Scorer, ...]) -> list[str]:
    """Every response scorer of these scorers, `<scorer>_<mode>_<aggregation>`, in `scores` column order."""
    return [f"{step}_{how}" for s in scorers for step in s.step_names() for how in rewards.AGGREGATIONS]


class RewardModel(L.LightningModule):
    """Base of every reward model: subclasses set `scorers` and `method_scorer` and define `step_scores`
    (and training). The hyperparameters every subclass takes (`model_path`, `lr`, `weight_decay`,
    `warmup_ratio`, `torch_dtype`, `attn_implementation`, `trust_remote_code`, `export_dir`) are read from
    `self.hparams`."""

    scorers: tuple[Scorer, ...] = ()
    method_scorer: str = ""
    table_scorers: tuple[str, ...] = ()  # given rows in Table 1 unless `evaluation.table_scorers` says
    figure_scorers: tuple[str, ...] = ()  # drawn in the best-of-N figure unless `evaluation.figure_scorers`

    @property
    def trained_model(self) -> PreTrainedModel:
        """The decoder that training updates (its shape sets the FLOPs of a training pass)."""
        raise NotImplementedError

    def flops_models(self) -> dict[str, nn.Module]:
        """The decoders a training step runs, by the name their FLOPs are counted under (`iprm.flops`)."""
        return {"policy": self.trained_model}

    def training_forwards(self, batch: dict) -> list[Forward]:
        """What `training_step` runs over `batch`, pass by pass, for `iprm.flops.FlopsCounter` to count:
        each reward model states its own cost."""
        raise NotImplementedError

    def scorer_names(self) -> list[str]:
        return response_scorer_names(self.scorers)

    def step_scorer_names(self) -> list[str]:
        return [name for s in self.scorers for name in s.step_names()]

    def method(self) -> tuple[Scorer, str]:
        """The scorer and the step reading that `method_scorer` aggregates."""
        for scorer in self.scorers:
            for mode in scorer.modes:
                aggregation = self.method_scorer.removeprefix(f"{scorer.name}_{mode}_")
                if aggregation in rewards.AGGREGATIONS:
                    return scorer, mode
        raise ValueError(f"method_scorer {self.method_scorer!r} is none of {self.scorer_names()}")

    def step_scores(self, batch: dict) -> dict[str, Tensor]:
        """Every scorer's step scores [B, S] (NaN padding), keyed `<scorer>_<mode>`."""
        raise NotImplementedError

    # --- models -----------------------------------------------------------------------------------

    def load_causal_lm(self, path: str) -> PreTrainedModel:
        """A checkpoint as policy, reference or backbone, with every dropout off (`disable_dropout`)."""
        setting = "model.reference_path" if path == self.hparams.get("reference_path") else "data.model_path"
        check_model_path(path, setting)
        dtype = self.hparams.torch_dtype
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            attn_implementation=self.hparams.attn_implementation,
            trust_remote_code=self.hparams.trust_remote_code,
        )
        return disable_dropout(model)

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        stats = {f"data/{key}": float(value) for key, value in datamodule.summary.items()}
        record_scalars(self.trainer, stats, step=0)
        # `trainer.log_dir` is a collective under DDP: every rank asks, rank 0 writes (in on_fit_end, when
        # the process group is gone).
        self.export_path = Path(self.hparams.export_dir or Path(self.trainer.log_dir or ".") / "policy")

    def on_train_end(self) -> None:
        # Every rank takes part: under FSDP each holds a shard, and the full weights are gathered (onto rank
        # 0's CPU) by a collective; elsewhere this is the module's own state dict, no copy.
        self._trained_state = self.trainer.strategy.lightning_module_state_dict()

    def on_fit_end(self) -> None:
        if not hasattr(self, "_trained_state"):  # a resume of a finished run: no training step ran
            log.warning("no training step ran (the checkpoint had reached max_epochs/max_steps): no export")
        elif self.trainer.is_global_zero:
            with export_directory(self.export_path) as scratch:  # atomic, with a manifest of digests
                self.export(scratch, self._trained_state)
                self.trainer.datamodule.tokenizer.save_pretrained(scratch)
            log.info("trained model written to %s", self.export_path)

    def export(self, directory: Path, state: dict[str, Tensor] | None = None) -> None:
        """Write the trained model so that `from_pretrained` (and `load_exported`) read it back.

        Args:
            directory: Where to write it.
            state: The module's full state dict (as gathered at the end of training, also from FSDP
                shards); None takes the module's own.
        """
        raise NotImplementedError

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            (p for p in self.parameters() if p.requires_grad),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        loaded = compat.training_loader_built(self.trainer)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.hparams.get("schedule_epochs") and (self.trainer.max_epochs or 0) > 0:
            # The schedule of a `schedule_epochs` run, of which this one trains the first `max_epochs`.
            total = max(1, round(total * self.hparams.schedule_epochs / self.trainer.max_epochs))
        if not loaded:
            # Counting the steps built the fit loop's training loader and drew its first batch, before a
            # resumed run restores its loops; Lightning would then never restore the loader's position
            # (lightning#20550). Dropped, the fit loop builds it afresh after the restore.
            compat.drop_training_loader(self.trainer)
        warmup = int(self.hparams.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * min(1.0, progress))).item())

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- scoring -----------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, batch: dict) -> dict:
        """`steps`: every scorer's step scores [B, S] by `<scorer>_<mode>`; `scores` [B, K]: the response
        scores in the order of `scorer_names()`. Identical records of the batch (best-of-N candidates often
        repeat) are forwarded once and their scores copied."""
        first: dict[str, int] = {}
        keys = refcache.record_keys(batch)
        for row, key in enumerate(keys):
            first.setdefault(key, row)
        if len(first) == len(keys):
            return self._aggregate(self.step_scores(batch))
        position = {key: i for i, key in enumerate(first)}
        device = batch["input_ids"].device
        inverse = torch.tensor([position[key] for key in keys], device=device)
        unique = self.step_scores(select_rows(batch, torch.tensor(list(first.values()), device=device)))
        return self._aggregate({name: value[inverse] for name, value in unique.items()})

    def _aggregate(self, steps: dict[str, Tensor]) -> dict:
        names = self.step_scorer_names()
        columns = [rewards.aggregate(steps[name], how) for name in names for how in rewards.AGGREGATIONS]
        return {"steps": steps, "scores": torch.stack(columns, -1)}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.score(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.score(batch)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"index": batch["index"], **self.score(batch)}
