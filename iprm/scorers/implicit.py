"""The implicit PRM as a LightningModule: a trainable policy π_θ and a frozen reference π_ref.

Training minimises an outcome objective on ℓ = Σ_t log π_θ(y_t|·) − log π_ref(y_t|·) per response;
evaluation and prediction read step scores off the same log-ratio (`iprm.rewards`), q_k = β·ℓ_{≤k}.
The reference's log-probabilities depend on nothing that trains, so they are computed once per record
(cumulative values at every step end, plus the response total) and reused in every later epoch, in memory
or on disk across runs (`iprm.refcache`). What a run costs is counted beside it, by a callback
(`iprm.flops.FlopsCounter`). Under DDP the objective sees the whole global batch, so R ranks train as one
process with R times the instructions per batch does (`iprm.distributed`).
"""

import logging
import math
from pathlib import Path

import torch
from transformers import PreTrainedModel

from iprm import refcache, rewards
from iprm.distributed import gather_rows, world
from iprm.errors import ConfigError
from iprm.flops import Forward
from iprm.objectives import CE, Objective, step_label_loss
from iprm.results import record_scalars
from iprm.scorers.base import RewardModel, Scorer, check_settings, submodule_state

log = logging.getLogger(__name__)


class ImplicitPRM(RewardModel):
    """Policy + frozen reference, trained with an outcome objective, read out as a process reward model.

    Scorers (`iprm.scorers.base`): "prm", the implicit PRM (q_k = β·ℓ_{≤k}, or its reference-free form);
    "reference", the reference-only baseline (β·Σ log π_ref, against a uniform π); and "policy", the trained
    policy's own log-likelihood (the PRM with reference-free inference, paper Table 5); each read
    "single" (r_k) and "accumulative" (q_k).

    Args:
        model_path: starting checkpoint of the policy (a local directory or a hub id); linked from
            `data.model_path`, so data and model always share one tokenizer.
        objective: the training objective (CE, CEDatasetBalanced, CEInstructionBalanced, DPO, NCA, KTO);
            it owns β.
        reference_path: the frozen reference policy; None means the starting checkpoint, as in the paper.
        reference_free: train with a uniform reference, ℓ = Σ log π_θ (the paper's Table 5).
        reference_free_inference: score steps with a uniform reference.
        inference_beta: β for step scores at evaluation and prediction; None uses the objective's β.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the optimisation steps spent warming the learning rate up linearly;
            cosine decay to zero follows.
        schedule_epochs: the learning-rate schedule's length in epochs; None: the trainer's `max_epochs`.
            Longer than `max_epochs`, training stops part-way down the schedule, as epoch e of a tuning
            run does (`--trainer.max_epochs 2 --model.schedule_epochs 4`: its first two epochs, exactly).
        torch_dtype: dtype the models are loaded in ("float32", "bfloat16", "float16" or "auto").
        attn_implementation: attention kernel passed to `from_pretrained` ("sdpa", "eager", ...).
        trust_remote_code: allow checkpoints that ship their own modelling code (off: it runs that code).
        export_dir: where the trained policy is written with `save_pretrained` at the end of `fit`;
            None writes `<log_dir>/policy`.
        reference_cache: where the reference's log-probs are kept once computed: "memory" (this
            process) or "disk" (also across runs, under `reference_cache_dir`).
        reference_cache_dir: root of the disk cache; entries are keyed by the reference checkpoint's
            fingerprint and each record's tokens.
        offload_reference: keep the reference in CPU memory during training: its log-probs for the
            training set are computed before the first step and the accelerator holds only the policy;
            a record missing from the cache later brings the reference back for that batch.
        compile: `torch.compile` the policy's and the reference's decoders. Off by default: not yet
            measured to help on an accelerator (docs/speed.md); on a CPU it only costs compilation time.
        gradient_checkpointing: recompute the policy's decoder layers in the backward pass instead of keeping
            their activations (transformers' own, non-reentrant); FSDP users may instead set the
            strategy's `activation_checkpointing_policy`, DeepSpeed users need this.
        head_chunk_tokens: response tokens per pass of the output head (`iprm.rewards.head_logprobs`):
            bounds the head's memory by this many rows of logits, forward and backward; None: one pass.
        step_label_weight: add this weight × a cross-entropy of every labelled step's accumulative
            reward against its prefix's correctness (records' `step_labels`): the "added step labels"
            data factor; 0 trains on outcome labels only, as the paper's method does.
        outcome_weight: weight of the objective's (outcome-label) loss; 0, with `step_label_weight` > 0,
            trains the log-ratio on step labels alone: the implicit parameterisation given the labels an
            explicit PRM gets (the parameterisation check beside the oracle-label PRM, README "Baselines").
    """

    scorers = tuple(Scorer(kind, rewards.SCORE_MODES) for kind in ("prm", "reference", "policy"))
    method_scorer = "prm_accumulative_min"
    table_scorers = ("prm_accumulative_min", "prm_single_min")
    figure_scorers = ("prm_accumulative_min", "prm_single_min", "reference_accumulative_last")

    def __init__(
        self,
        model_path: str | None = None,
        objective: Objective | None = None,
        reference_path: str | None = None,
        reference_free: bool = False,
        reference_free_inference: bool = False,
        inference_beta: float | None = None,
        lr: float = 5e-7,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        schedule_epochs: int | None = None,
        torch_dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        export_dir: str | None = None,
        reference_cache: str = "memory",
        reference_cache_dir: str = ".cache/iprm/reference",
        offload_reference: bool = False,
        compile: bool = False,
        gradient_checkpointing: bool = False,
        head_chunk_tokens: int | None = rewards.HEAD_CHUNK_TOKENS,
        step_label_weight: float = 0.0,
        outcome_weight: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["objective"])
        self.objective = objective if objective is not None else CE()
        self.policy: PreTrainedModel | None = None
        self.reference: PreTrainedModel | None = None
        if reference_cache not in refcache.MODES:
            raise ConfigError(f"reference_cache must be one of {refcache.MODES}, got {reference_cache!r}")
        check_settings(self.hparams, self.settings_problems())
        if head_chunk_tokens is not None and head_chunk_tokens < 1:
            raise ConfigError(f"model: head_chunk_tokens must be positive or null, got {head_chunk_tokens}")
        # The reference's cache and offloading (record digest → cumulative log-prob at each step end, then
        # the total; on disk once the reference's checkpoint is known, in `configure_model`).
        self.frozen_reference = refcache.FrozenReference(self._reference_model, self._logprobs)
        # The reference is reloadable from its path; checkpoints carry the policy only.
        self.strict_loading = False

    # --- models -----------------------------------------------------------------------------------

    def _reference_model(self) -> PreTrainedModel | None:
        return self.reference

    @property
    def _reference_cache(self) -> refcache.ReferenceCache:
        return self.frozen_reference.cache

    @property
    def trained_model(self) -> PreTrainedModel:
        return self.policy

    def flops_models(self) -> dict[str, torch.nn.Module]:
        models = {"policy": self.policy}
        return models if self.reference is None else {**models, "reference": self.reference}

    def training_forwards(self, batch: dict) -> list[Forward]:
        """The policy forward and backward; the reference's forward once per record (its log-probs are
        cached); and KTO's mismatched pairs through both, without gradient."""
        forwards = [Forward("policy", batch["attention_mask"], passes=3)]
        with_reference = not self.hparams.reference_free
        if with_reference:
            forwards.append(Forward("reference", batch["attention_mask"], records=batch["index"]))
        if self.objective.requires_kl:
            forwards.append(Forward("policy", batch["kl_attention_mask"]))
            if with_reference:
                forwards.append(Forward("reference", batch["kl_attention_mask"]))
        return forwards

    def settings_problems(self) -> list[str]:
        """What is wrong with the implicit PRM's own settings (`check_settings` adds the shared ones)."""
        problems = []
        beta = self.hparams.inference_beta
        if beta is not None and not 0 < beta < math.inf:  # a negative β flips every ranking
            problems.append(f"inference_beta must be {'finite' if beta > 0 else 'positive'}, got {beta}")
        steps, outcome = self.hparams.step_label_weight, self.hparams.outcome_weight
        if steps < 0 or outcome < 0 or steps + outcome == 0:
            problems.append(
                "step_label_weight and outcome_weight must be non-negative and not both 0, got "
                f"{steps} and {outcome}"
            )
        return problems

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        if self.hparams.model_path is None:
            raise ValueError("model.model_path is not set: give data.model_path (or a data source of it)")
        self._tell_transformers_about_zero3()
        self.policy = self.load_causal_lm(self.hparams.model_path).train()
        if self.hparams.gradient_checkpointing:
            enable = getattr(self.policy, "activation_checkpointing_enable", None)  # transformers >= 5.x
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.policy.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        needs_reference = not (self.hparams.reference_free and self.hparams.reference_free_inference)
        if needs_reference:
            self.reference = self.load_causal_lm(self.hparams.reference_path or self.hparams.model_path)
            self.reference.eval().requires_grad_(False)
            if self.hparams.reference_cache == "disk":
                path = self.hparams.reference_path or self.hparams.model_path
                self.frozen_reference.cache = refcache.ReferenceCache(
                    "disk",
                    self.hparams.reference_cache_dir,
                    refcache.fingerprint(path, self.hparams.torch_dtype),
                )
        if self.hparams.compile:
            for model in (self.policy, self.reference):
                if model is not None:
                    model.get_decoder().compile()

    def _tell_transformers_about_zero3(self) -> None:
        """Under DeepSpeed ZeRO-3, Lightning builds the models inside `deepspeed.zero.Init`, where parameters
        are partitioned as they are made; transformers must know (`HfDeepSpeedConfig`, held while the
        module lives), or `from_pretrained` loads the weights into empty partitions. Untested on GPUs."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        config = getattr(strategy, "config", None)
        if type(strategy).__name__ != "DeepSpeedStrategy" or not isinstance(config, dict):
            return
        if config.get("zero_optimization", {}).get("stage") == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_deepspeed_config = HfDeepSpeedConfig(config)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        expected = {f"policy.{k}" for k in self.policy.state_dict()} if self.policy is not None else set()
        missing = expected - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} policy weights, e.g. {sorted(missing)[:3]}")

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if stage == "fit" and datamodule is not None:  # before the models load: refuse useless data
            self.objective.check_dataset(*datamodule.train_labels_and_groups(), datamodule.train_path)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        labels, groups = self.trainer.datamodule.train_labels_and_groups()
        self.objective.observe_dataset(labels, groups)
        stats = self.objective.dataset_statistics(labels, groups)
        record_scalars(self.trainer, {f"data/{key}": float(value) for key, value in stats.items()}, step=0)

    def export(self, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        state = self.state_dict() if state is None else state
        self.policy.save_pretrained(directory, state_dict=submodule_state(state, "policy."))

    # --- log-probabilities ---------------------------------------------------------------------------

    def _logprobs(self, model: PreTrainedModel, batch: dict, prefix: str = "") -> torch.Tensor:
        ids, mask, response = (
            batch[f"{prefix}{key}"] for key in ("input_ids", "attention_mask", "response_mask")
        )
        packed = rewards.Packed.of(batch, prefix)
        return rewards.token_logprobs(
            model, ids, mask, response, packed=packed, head_chunk_tokens=self.hparams.head_chunk_tokens
        )

    def _reference_cumulative(self, batch: dict) -> torch.Tensor:
        """Reference cumulative log-probs [B, S+1]: each step end (NaN padding), then the response total."""
        return self.frozen_reference.cumulative(batch)

    def on_train_start(self) -> None:
        if not (self.hparams.offload_reference and self.reference is not None):
            return
        if self.hparams.reference_free:
            self.frozen_reference.offload()
            return
        # Fill the cache for this rank's training records, then free the accelerator of the reference. The
        # fill reads a loader of its own: the data module's is the one mid-epoch checkpoints save the position
        # of, and must stay the fit loop's.
        datamodule = self.trainer.datamodule
        kept = getattr(datamodule, "_train_loader", None)
        loader = datamodule.train_dataloader()
        datamodule._train_loader = kept
        to_device = self.trainer.strategy.batch_to_device
        self.frozen_reference.fill_and_offload(to_device(batch, self.device) for batch in loader)

    def _flush_reference_cache(self) -> None:
        self._reference_cache.flush()

    on_train_epoch_end = _flush_reference_cache
    on_validation_epoch_end = _flush_reference_cache
    on_test_epoch_end = _flush_reference_cache
    on_predict_epoch_end = _flush_reference_cache

    # --- training ----------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """The objective on the global batch: this rank's responses and, under DDP, every other rank's
        (`gather_rows`); the loss returned for backward is R·L (see `iprm.distributed`)."""
        reference = None
        if (
            not self.hparams.reference_free
        ):  # first: its transient memory never meets the policy's activations
            reference = self._reference_cumulative(batch)
        policy_logps = self._logprobs(self.policy, batch)
        logratio = rewards.logratio(policy_logps.sum(-1), None if reference is None else reference[:, -1])
        kl_logratio = self._mismatched_logratio(batch) if self.objective.requires_kl else None
        labels, groups = gather_rows(batch["labels"]), gather_rows(batch["groups"])
        kl_logratio = None if kl_logratio is None else gather_rows(kl_logratio)
        loss, metrics = self.objective(gather_rows(logratio), labels, groups, kl_logratio=kl_logratio)
        if self.hparams.outcome_weight != 1:
            metrics["outcome_loss"], loss = loss.detach(), self.hparams.outcome_weight * loss
        if self.hparams.step_label_weight > 0:
            cumulative = rewards.cumulative_at(policy_logps, batch["step_ends"])
            cumulative = rewards.logratio(cumulative, None if reference is None else reference[:, :-1])
            q, targets = self.objective.beta * cumulative, batch["step_targets"]
            known = ~targets.isnan() & ~q.isnan()  # the labelled steps, flat: S differs between ranks
            step_loss = step_label_loss(gather_rows(q[known]), gather_rows(targets[known]))
            loss = loss + self.hparams.step_label_weight * step_loss
            metrics["step_label_loss"] = step_loss.detach()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}, "
                f"batch {batch_idx}; "
                "lower model.lr, check the data, or use a float32 dtype"
            )
        size = len(labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in metrics.items():
            summed = name in self.objective.summed_metrics
            self.log(
                f"train/{name}",
                value,
                batch_size=size,
                reduce_fx="sum" if summed else "mean",
                on_step=not summed,
                on_epoch=summed,
            )
        return loss * world()[0]  # DDP averages the ranks' gradients, each of which is its rows' share of ∇L

    @torch.no_grad()
    def _mismatched_logratio(self, batch: dict) -> torch.Tensor:
        if "kl_input_ids" not in batch:
            raise ValueError(
                f"{type(self.objective).__name__} needs mismatched pairs: set data.mismatched_pairs"
            )
        policy = self._logprobs(self.policy, batch, "kl_").sum(-1)
        if self.hparams.reference_free:
            return rewards.logratio(policy, None)
        reference = self.frozen_reference.token_logprobs(batch, "kl_").sum(-1)
        return rewards.logratio(policy, reference)

    # --- scoring -----------------------------------------------------------------------------------

    @property
    def inference_beta(self) -> float:
        beta = self.hparams.inference_beta
        return self.objective.beta if beta is None else beta

    def step_scores(self, batch: dict) -> dict[str, torch.Tensor]:
        policy_cumulative = rewards.cumulative_at(self._logprobs(self.policy, batch), batch["step_ends"])
        reference_cumulative = None
        if self.reference is not None:
            reference_cumulative = self._reference_cumulative(batch)[:, :-1]
        prm_reference = None if self.hparams.reference_free_inference else reference_cumulative
        if reference_cumulative is None:  # nothing for the reference-only baseline to score
            reference_cumulative = torch.full_like(policy_cumulative, float("nan"))
        prm_cumulative = rewards.logratio(policy_cumulative, prm_reference)
        kinds = {"prm": prm_cumulative, "reference": reference_cumulative, "policy": policy_cumulative}
        return rewards.step_readings(kinds, self.inference_beta)
