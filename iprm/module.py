"""The implicit PRM as a LightningModule: a trainable policy π_θ and a frozen reference π_ref.

Training minimises an outcome objective on ℓ = Σ_t log π_θ(y_t|·) − log π_ref(y_t|·) per response;
evaluation and prediction read step scores off the same log-ratio (`iprm.rewards`), q_k = β·ℓ_{≤k}.
The reference's log-probabilities depend on nothing that trains, so they are computed once per record
(cumulative values at every step end, plus the response total) and reused in every later epoch, in memory
or on disk across runs (`iprm.refcache`).
Every forward and backward that runs in training is counted in FLOPs (`iprm.flops`): `train/flops`
(cumulative) while training, `flops/{train,data,total}` and `<log_dir>/flops.json` at its end.
"""

import json
import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedModel

from iprm import flops, refcache, rewards
from iprm.objectives import CE, Objective, pair_mask

log = logging.getLogger(__name__)


def scorer_names() -> list[str]:
    """Every response scorer evaluation reports: the implicit PRM and the reference-only baseline."""
    return [
        f"{kind}_{mode}_{how}"
        for kind in ("prm", "reference")
        for mode in rewards.SCORE_MODES
        for how in rewards.AGGREGATIONS
    ]


class ImplicitPRM(L.LightningModule):
    """Policy + frozen reference, trained with an outcome objective, read out as a process reward model.

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
        torch_dtype: dtype the models are loaded in ("float32", "bfloat16", "float16" or "auto").
        attn_implementation: attention kernel passed to `from_pretrained` ("sdpa", "eager", ...).
        trust_remote_code: allow checkpoints that ship their own modelling code (off: it runs that code).
        export_dir: where the trained policy is written with `save_pretrained` at the end of `fit`;
            None writes `<log_dir>/policy`.
        reference_cache: where the reference's log-probs are kept once computed: "memory" (this
            process), "disk" (also across runs, under `reference_cache_dir`), or "none" (the reference
            runs on every batch; for measuring what the cache saves).
        reference_cache_dir: root of the disk cache; entries are keyed by the reference checkpoint's
            fingerprint and each record's tokens.
        offload_reference: keep the reference in CPU memory during training: its log-probs for the
            training set are computed before the first step and the accelerator holds only the policy;
            a record missing from the cache later brings the reference back for that batch.
        response_only_logprobs: run the LM head on response positions only (False: the model's full
            forward, float32 log-softmax over every position; same numbers, for measuring).
        forward_each_pair: for pairwise objectives (DPO, NCA), forward each (correct, incorrect) pair's
            two responses separately, as the official DPO code does, so a response is forwarded once per
            pair it joins; the loss and gradients are the same as forming the pairs inside the objective
            (the default, one forward per response). For measuring.
        compile: `torch.compile` the policy's and the reference's decoders.
        step_label_weight: add this weight × a cross-entropy of every labelled step's accumulative
            reward against its prefix's correctness (records' `step_labels`): the "added step labels"
            data factor; 0 trains on outcome labels only, as the paper's method does.
        deduplicate_scoring: score each distinct record of an evaluation or prediction batch once (same
            numbers; off: forward every row, for measuring).
    """

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
        torch_dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        export_dir: str | None = None,
        reference_cache: str = "memory",
        reference_cache_dir: str = ".cache/iprm/reference",
        offload_reference: bool = False,
        response_only_logprobs: bool = True,
        forward_each_pair: bool = False,
        compile: bool = False,
        deduplicate_scoring: bool = True,
        step_label_weight: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["objective"])
        self.objective = objective if objective is not None else CE()
        self.policy: PreTrainedModel | None = None
        self.reference: PreTrainedModel | None = None
        if reference_cache not in refcache.MODES:
            raise ValueError(f"reference_cache must be one of {refcache.MODES}, got {reference_cache!r}")
        # Record digest → reference cumulative log-prob at each step end, then the total (set up with the
        # reference in `configure_model`, where its checkpoint is known).
        in_memory = "memory" if reference_cache == "disk" else reference_cache
        self._reference_cache = refcache.ReferenceCache(in_memory)
        # Training cost (`iprm.flops`): tokens and FLOPs of every forward/backward that ran, this rank.
        self._costs: dict[str, flops.ForwardCost] = {}
        self._counts = flops.zero_counts()
        self._reference_counted: set[int] = set()  # training records whose reference forward is counted
        self._data_cost: dict = {"flops": float("nan")}
        # The reference is reloadable from its path; checkpoints carry the policy only.
        self.strict_loading = False

    # --- models -----------------------------------------------------------------------------------

    def _load(self, path: str) -> PreTrainedModel:
        dtype = self.hparams.torch_dtype
        return AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            attn_implementation=self.hparams.attn_implementation,
            trust_remote_code=self.hparams.trust_remote_code,
        )

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        if self.hparams.model_path is None:
            raise ValueError("model.model_path is not set: give data.model_path (or a data.world)")
        self.policy = self._load(self.hparams.model_path).train()
        self._costs["policy"] = flops.ForwardCost.of(self.policy)
        needs_reference = not (self.hparams.reference_free and self.hparams.reference_free_inference)
        if needs_reference:
            self.reference = self._load(self.hparams.reference_path or self.hparams.model_path)
            self.reference.eval().requires_grad_(False)
            self._costs["reference"] = flops.ForwardCost.of(self.reference)
            if self.hparams.reference_cache == "disk":
                path = self.hparams.reference_path or self.hparams.model_path
                self._reference_cache = refcache.ReferenceCache(
                    "disk",
                    self.hparams.reference_cache_dir,
                    refcache.fingerprint(path, self.hparams.torch_dtype),
                )
        if self.hparams.compile:
            for model in (self.policy, self.reference):
                if model is not None:
                    model.get_decoder().compile()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        checkpoint["flops"] = dict(self._counts)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        expected = {f"policy.{k}" for k in self.policy.state_dict()} if self.policy is not None else set()
        missing = expected - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} policy weights, e.g. {sorted(missing)[:3]}")
        self._counts.update(checkpoint.get("flops", {}))

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        labels, groups = datamodule.train_labels_and_groups()
        self.objective.observe_dataset(labels, groups)
        stats = {f"data/{key}": float(value) for key, value in datamodule.summary.items()}
        # The rollouts were sampled by the starting checkpoint, which is the policy before training.
        self._data_cost = flops.data_flops(datamodule, self._costs["policy"])
        stats["flops/data"] = self._data_cost["flops"]
        if self.objective.pairwise:
            positives = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, labels.float())
            sizes = torch.bincount(groups, minlength=len(positives)).float()
            unpaired = int((((positives == 0) | (positives == sizes)) & (sizes > 0)).sum())
            stats["data/unpaired_instructions"] = float(unpaired)
            log.warning(
                "%d of %d training instructions have no (correct, incorrect) pair and contribute nothing "
                "under %s",
                unpaired,
                int((sizes > 0).sum()),
                type(self.objective).__name__,
            )
        if self.logger is not None:
            self.logger.log_metrics(stats, step=0)

    def on_train_end(self) -> None:
        # Summed over ranks here, not in on_fit_end: the strategy has torn down its process group by then.
        summed = dict(self._counts)
        if self.trainer.world_size > 1:
            values = torch.tensor(list(summed.values()), dtype=torch.float64, device=self.device)
            summed = dict(
                zip(summed, self.trainer.strategy.reduce(values, reduce_op="sum").tolist(), strict=True)
            )
        cost = flops.totals(summed, self._data_cost)
        if not self.trainer.is_global_zero:
            return
        if self.logger is not None:
            names = ("train", "data", "total")
            self.logger.log_metrics({f"flops/{name}": cost[name] for name in names}, step=self.global_step)
        path = Path(self.trainer.log_dir or ".") / "flops.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        models = {name: c.as_dict() for name, c in self._costs.items()}
        path.write_text(json.dumps({**cost, "models": models}, indent=2) + "\n")
        log.info("training %.3g FLOPs, data %.3g FLOPs (written to %s)", cost["train"], cost["data"], path)

    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        export = Path(self.hparams.export_dir or Path(self.trainer.log_dir or ".") / "policy")
        self.policy.save_pretrained(export)
        self.trainer.datamodule.tokenizer.save_pretrained(export)
        log.info("trained policy written to %s", export)

    # --- log-probabilities ---------------------------------------------------------------------------

    def _logprobs(self, model: PreTrainedModel, batch: dict, prefix: str = "") -> torch.Tensor:
        return rewards.token_logprobs(
            model,
            batch[f"{prefix}input_ids"],
            batch[f"{prefix}attention_mask"],
            batch[f"{prefix}response_mask"],
            response_only=self.hparams.response_only_logprobs,
        )

    @torch.no_grad()
    def _reference_cumulative(self, batch: dict, count: bool = False) -> torch.Tensor:
        """Reference cumulative log-probs [B, S+1]: each step end (NaN padding), then the response total.

        Records missing from the cache are forwarded. With `count` (training), each training record's
        reference forward is counted in FLOPs the first time this run uses it, whether it ran now or came
        from a cache an earlier run left on disk: the cost of a run does not depend on what ran before it.
        """
        if count:
            fresh = [row for row, i in enumerate(batch["index"].tolist()) if i not in self._reference_counted]
            self._reference_counted.update(batch["index"][fresh].tolist())
            mask = batch["attention_mask"][fresh]
            flops.count(self._counts, "reference", self._costs["reference"], mask, 1)
        keys = refcache.record_keys(batch)
        missing = [row for row, key in enumerate(keys) if key not in self._reference_cache]
        computed = {}
        if missing:
            sub = select_rows(batch, torch.tensor(missing, device=batch["input_ids"].device))
            token_logps = self._reference_logprobs(sub)
            values = torch.cat(
                [rewards.cumulative_at(token_logps, sub["step_ends"]), token_logps.sum(-1, keepdim=True)], -1
            )
            for row, value in zip(missing, values, strict=True):
                computed[keys[row]] = value[~value.isnan()].cpu()
                self._reference_cache.put(keys[row], computed[keys[row]])
        width = batch["step_ends"].shape[1] + 1
        out = torch.full((len(keys), width), float("nan"))
        for row, key in enumerate(keys):
            value = computed[key] if key in computed else self._reference_cache[key]
            out[row, : len(value) - 1] = value[:-1]
            out[row, -1] = value[-1]
        return out.to(batch["input_ids"].device)

    def _reference_logprobs(self, batch: dict, prefix: str = "") -> torch.Tensor:
        """The reference's token log-probs, bringing it onto the batch's device for the call if offloaded."""
        device = batch[f"{prefix}input_ids"].device
        offloaded = self.reference.device != device
        if offloaded:
            self.reference.to(device)
        try:
            return self._logprobs(self.reference, batch, prefix)
        finally:
            if offloaded:
                self.reference.to("cpu")

    def on_train_start(self) -> None:
        if not (self.hparams.offload_reference and self.reference is not None):
            return
        if self.hparams.reference_free:
            self.reference.to("cpu")
            return
        # Fill the cache for this rank's training records, then free the accelerator of the reference.
        for batch in self.trainer.datamodule.train_dataloader():
            batch = self.trainer.strategy.batch_to_device(batch, self.device)
            self._reference_cumulative(batch, count=True)
        self._reference_cache.flush()
        self.reference.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _flush_reference_cache(self) -> None:
        self._reference_cache.flush()

    on_train_epoch_end = _flush_reference_cache
    on_validation_epoch_end = _flush_reference_cache
    on_test_epoch_end = _flush_reference_cache
    on_predict_epoch_end = _flush_reference_cache

    # --- training ----------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.hparams.forward_each_pair and self.objective.pairwise:
            batch = pair_by_pair(batch)
        policy_logps = self._logprobs(self.policy, batch)
        flops.count(self._counts, "policy", self._costs["policy"], batch["attention_mask"], passes=3)
        reference = None
        if not self.hparams.reference_free:
            reference = self._reference_cumulative(batch, count=True)
        logratio = rewards.logratio(policy_logps.sum(-1), None if reference is None else reference[:, -1])
        kl_logratio = self._mismatched_logratio(batch) if self.objective.requires_kl else None
        loss, metrics = self.objective(logratio, batch["labels"], batch["groups"], kl_logratio=kl_logratio)
        if self.hparams.step_label_weight > 0:
            step_loss = self._step_label_loss(batch, policy_logps, reference)
            loss = loss + self.hparams.step_label_weight * step_loss
            metrics["step_label_loss"] = step_loss.detach()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}, "
                f"batch {batch_idx}; "
                "lower model.lr, check the data, or use a float32 dtype"
            )
        size = len(batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        spent = self._counts["policy_flops"] + self._counts["reference_flops"]
        self.log("train/flops", spent, batch_size=size, reduce_fx="sum", sync_dist=True)  # cumulative
        for name, value in metrics.items():
            summed = name in ("pairs", "unpaired_groups")
            self.log(
                f"train/{name}",
                value,
                batch_size=size,
                reduce_fx="sum" if summed else "mean",
                on_step=not summed,
                on_epoch=summed,
            )
        return loss

    def _step_label_loss(
        self, batch: dict, policy_logps: torch.Tensor, reference: torch.Tensor | None
    ) -> torch.Tensor:
        """Cross-entropy of each labelled step's accumulative reward q_k = β·ℓ_{≤k} against whether steps
        1..k are all correct (the process label of a prefix); the mean over labelled steps, 0 without any."""
        cumulative = rewards.cumulative_at(policy_logps, batch["step_ends"])
        cumulative = rewards.logratio(cumulative, None if reference is None else reference[:, :-1])
        labels = batch["step_labels"]
        known = (labels >= 0) & (batch["step_ends"] >= 0)
        prefix_correct = (labels == 1).long().cumprod(-1).float()
        if not known.any():
            return cumulative.nan_to_num().sum() * 0.0
        q = self.objective.beta * cumulative[known]
        return F.binary_cross_entropy_with_logits(q, prefix_correct[known])

    @torch.no_grad()
    def _mismatched_logratio(self, batch: dict) -> torch.Tensor:
        if "kl_input_ids" not in batch:
            raise ValueError(
                f"{type(self.objective).__name__} needs mismatched pairs: set data.mismatched_pairs"
            )
        policy = self._logprobs(self.policy, batch, "kl_").sum(-1)
        flops.count(self._counts, "policy", self._costs["policy"], batch["kl_attention_mask"], passes=1)
        if self.hparams.reference_free:
            return rewards.logratio(policy, None)
        reference = self._reference_logprobs(batch, "kl_").sum(-1)
        flops.count(self._counts, "reference", self._costs["reference"], batch["kl_attention_mask"], passes=1)
        return rewards.logratio(policy, reference)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            (p for p in self.policy.parameters() if p.requires_grad),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * min(1.0, progress))).item())

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- scoring -----------------------------------------------------------------------------------

    @property
    def inference_beta(self) -> float:
        beta = self.hparams.inference_beta
        return self.objective.beta if beta is None else beta

    @torch.no_grad()
    def score(self, batch: dict) -> dict[str, torch.Tensor]:
        """Step scores of every record in the batch and its response score under every scorer.

        Returns `step_scores/{mode}` [B, S] (NaN padding) for the implicit PRM and for the
        reference-only baseline (`reference_step_scores/{mode}`), and `scores` [B, K] in the order of
        `scorer_names()`. With `deduplicate_scoring`, identical records of the batch (best-of-N
        candidates often repeat) are forwarded once and their scores copied.
        """
        if self.hparams.deduplicate_scoring:
            first: dict[str, int] = {}
            keys = refcache.record_keys(batch)
            for row, key in enumerate(keys):
                first.setdefault(key, row)
            if len(first) < len(keys):
                position = {key: i for i, key in enumerate(first)}
                inverse = torch.tensor([position[key] for key in keys], device=batch["input_ids"].device)
                unique = self._score(
                    select_rows(batch, torch.tensor(list(first.values()), device=inverse.device))
                )
                return {name: value[inverse] for name, value in unique.items()}
        return self._score(batch)

    def _score(self, batch: dict) -> dict[str, torch.Tensor]:
        policy_cumulative = rewards.cumulative_at(self._logprobs(self.policy, batch), batch["step_ends"])
        reference_cumulative = None
        if self.reference is not None:
            reference_cumulative = self._reference_cumulative(batch)[:, :-1]
        prm_reference = None if self.hparams.reference_free_inference else reference_cumulative
        cumulative = {"prm": rewards.logratio(policy_cumulative, prm_reference)}
        # Reference-only baseline: the reference log-likelihood itself, i.e. π_ref against a uniform π.
        cumulative["reference"] = (
            reference_cumulative
            if reference_cumulative is not None
            else torch.full_like(policy_cumulative, float("nan"))
        )
        out, columns = {}, []
        for kind_name, values in cumulative.items():
            prefix = "" if kind_name == "prm" else "reference_"
            for mode in rewards.SCORE_MODES:
                steps = rewards.step_scores(values, self.inference_beta, mode)
                out[f"{prefix}step_scores/{mode}"] = steps
                columns += [rewards.aggregate(steps, how) for how in rewards.AGGREGATIONS]
        out["scores"] = torch.stack(columns, -1)
        return out

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.score(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.score(batch)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"index": batch["index"], **self.score(batch)}


def pair_by_pair(batch: dict) -> dict:
    """The batch as the official DPO code forwards it: for each (correct, incorrect) pair of an instruction,
    its chosen and its rejected response, each pair its own group. A response appears once per pair it
    joins; the pairwise losses over the result equal those over the original batch."""
    pairs = pair_mask(batch["labels"], batch["groups"]).nonzero()
    out = select_rows(batch, torch.cat([pairs[:, 0], pairs[:, 1]]))
    count = len(pairs)
    out["labels"] = torch.cat([torch.ones(count), torch.zeros(count)]).to(batch["labels"])
    out["groups"] = torch.arange(count, device=pairs.device).repeat(2)
    return out


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The batch restricted to (or repeating) the given rows: every per-row tensor indexed by `rows`."""
    size = len(batch["input_ids"])
    per_row = {k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == size}
    return {key: value[rows] if key in per_row else value for key, value in batch.items()}
