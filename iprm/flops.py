"""Compute spent on a run, in FLOPs, counted from the model's shape and the tokens it actually processed.

A decoder with N non-embedding parameters, n_layers layers and width d_model costs, for one forward pass
over a sequence of L tokens (Kaplan et al. 2020, Table 1),

    F(L) = 2·N·L + 2·n_layers·d_model·L²

2·N per token for the weight matrix multiplies, plus the attention term 2·n_layers·d_model·L per token: its
scores against a context of L tokens (the whole sequence; no halving for the causal mask, as Kaplan et al.
count it). N is every parameter except the input embedding and the output head: the LM head is not
counted (iprm runs it on response positions only; for Llama-3.1-8B it would add ~7 %), learned position
embeddings are (Llama has none). A backward pass costs 2× the forward, so a training pass costs 3·F(L).

    training FLOPs = Σ 3·F(L) over the policy's training sequences
                   + Σ F(L) over every other forward that ran during training: the reference on records
                     not yet in its log-prob cache (once per record), and KTO's mismatched pairs
                     (policy without gradient, and reference)
    data FLOPs     = F over the rollouts the run needed sampled, with a KV cache: every prompt token and
                     every generated token passes the sampling model once; the attention context is the
                     mean sequence length, T/S for T tokens in S sequences: 2·N·T + 2·n_layers·d_model·T²/S
                   + what deriving step labels cost, for the explicit-PRM baselines (`iprm.scorers.labels`:
                     Math-Shepherd's Monte-Carlo completions, counted the same way; AutoPSV's ORM training
                     and its forward over every training response)

L is the count of real tokens (attention-mask sums); padding is not counted. The sampling model is the
starting checkpoint, as in the paper (the world samples its rollouts from its reference policy); the data
module reports the tokens of the rollouts the run needed (`sampling_tokens()`).

`FlopsCounter` counts as training batches pass, what the reward model says its training step forwards
(`RewardModel.training_forwards(batch)`: a list of `Forward`s, so a new reward model states its own cost
and this module needs no change): for the implicit PRM, each batch's policy forward and backward, each
training record's reference forward the first time the run trains on it (cached afterwards; counted even
when a cache an earlier run left on disk served it, so a run's cost does not depend on what ran before
it), and KTO's mismatched pairs. It logs `train/flops` (cumulative) while training, and
`flops/{train,data,total}` and `<log_dir>/flops.json` at the end of training, with the training loop's
wall time (`train_seconds`) and the achieved `train_flops_per_second` (divide by a device's peak for its
model-FLOPs utilisation).
The counts are checkpointed, so a run resumed after a kill reports the whole run's FLOPs, each counted
once; `train_seconds` is this process's training loop only (from its resume), and
`train_flops_per_second` divides the FLOPs this process spent by it.
"""

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from torch import Tensor, nn

from iprm.io import atomic_write
from iprm.results import record_scalars

log = logging.getLogger(__name__)


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters outside the input embedding and the output head (tied weights counted once). A parameter
    DeepSpeed ZeRO-3 has partitioned counts at its full size (`ds_numel`, as Lightning's model summary reads
    it); a DTensor (FSDP2) reports its full size itself; FSDP1's slices are summed over ranks by
    `whole_model_costs`."""
    embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    excluded = {id(p) for module in embeddings if module is not None for p in module.parameters()}
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if id(p) not in excluded)


@dataclass(frozen=True)
class ForwardCost:
    """The shape that sets a decoder's forward cost: F(L) = 2·N·L + 2·n_layers·d_model·L²."""

    parameters: int  # N, non-embedding
    layers: int
    width: int

    @classmethod
    def of(cls, model: nn.Module) -> "ForwardCost":
        config = model.config
        return cls(non_embedding_parameters(model), config.num_hidden_layers, config.hidden_size)

    def __call__(self, lengths: Tensor) -> float:
        """FLOPs of one forward pass over sequences of these lengths (real tokens each)."""
        lengths = lengths.detach().double().cpu()
        return float(
            2 * self.parameters * lengths.sum() + 2 * self.layers * self.width * lengths.square().sum()
        )

    def sampling(self, tokens: int, sequences: int) -> float:
        """FLOPs of KV-cached sampling: `tokens` prompt + generated tokens in `sequences` sequences."""
        context = tokens / max(1, sequences)
        return 2 * self.parameters * tokens + 2 * self.layers * self.width * tokens * context

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Forward:
    """One pass a training step runs over a batch: through which model (a key of the reward model's
    `flops_models()`), over which tokens, forward only (1) or forward and backward (3); with `records`
    (the batch's record indices), each record is counted once per run, for a model whose outputs are
    cached after the first time (the frozen reference)."""

    model: str
    attention_mask: Tensor
    passes: int = 1
    records: Tensor | None = None


def whole_model_costs(costs: dict[str, ForwardCost], strategy: Strategy) -> dict[str, ForwardCost]:
    """`costs` counted from each rank's parameters, made the whole models' under Lightning's `FSDPStrategy`:
    it wraps the whole module, so with `use_orig_params` (its default) each rank holds a slice of every
    parameter (empty where the parameter lies on other ranks) and the slices sum, over the ranks, to the full
    parameter once per replica (`HYBRID_SHARD` replicates across nodes, or as its `device_mesh` or
    `process_group` pair says; `NO_SHARD` holds it whole). A collective: every rank calls it. Untested on
    GPUs (FSDP1 needs one)."""
    if not isinstance(strategy, FSDPStrategy) or strategy.world_size < 2:
        return costs
    kind = strategy.sharding_strategy.name
    if kind == "NO_SHARD":
        return costs
    replicas = 1
    if "HYBRID" in kind:  # sharded within a group, replicated across: by default a node each
        mesh, groups = strategy.kwargs.get("device_mesh"), strategy.kwargs.get("process_group")
        if mesh is not None:
            replicas = mesh[0] if isinstance(mesh, tuple) else mesh.size(0)
        elif isinstance(groups, tuple):  # (sharding group, replication group)
            replicas = groups[1].size()
        else:
            replicas = strategy.num_nodes
    local = torch.tensor(
        [c.parameters for c in costs.values()], dtype=torch.float64, device=strategy.root_device
    )
    total = (strategy.reduce(local, reduce_op="sum") / replicas).tolist()
    return {name: replace(c, parameters=round(n)) for (name, c), n in zip(costs.items(), total, strict=True)}


def data_flops(tokens: dict[str, float | str], cost: ForwardCost) -> dict[str, float | str]:
    """Data FLOPs (see the module docstring) from the sampling token counts a data module reports."""
    total = tokens["prompt_tokens"] + tokens["sampled_tokens"]
    return {**tokens, "flops": cost.sampling(total, tokens["records"])}


def zero_counts() -> dict[str, float]:
    """Running totals of a run's training cost: tokens and FLOPs per model."""
    return dict.fromkeys(("policy_tokens", "policy_flops", "reference_tokens", "reference_flops"), 0.0)


def count(
    counts: dict[str, float], name: str, cost: ForwardCost, attention_mask: Tensor, passes: int
) -> None:
    """Add one forward (passes=1) or forward + backward (passes=3) of `name` over a batch to `counts`."""
    lengths = attention_mask.sum(-1)
    counts[f"{name}_tokens"] = counts.get(f"{name}_tokens", 0.0) + float(lengths.sum())
    counts[f"{name}_flops"] = counts.get(f"{name}_flops", 0.0) + passes * cost(lengths)


def spent(counts: dict[str, float]) -> float:
    """The training FLOPs of these counts: every model's."""
    return sum(value for key, value in counts.items() if key.endswith("_flops"))


def totals(counts: dict[str, float], data: dict) -> dict:
    """The run's cost as written to `flops.json`: training, data and their sum, and their parts."""
    train = spent(counts)
    return {
        "train": train,
        "data": data["flops"],
        "total": train + data["flops"],
        **counts,
        "data_tokens": data,
    }


class FlopsCounter(Callback):
    """Counts the FLOPs of every forward and backward that runs in training (see the module docstring).

    The counts and the training records whose reference forward is counted are the callback's state, saved
    in checkpoints: a resumed run goes on counting, and never counts a record's reference twice.
    """

    def __init__(self):
        self.counts = zero_counts()
        self.counted_once: dict[str, set[int]] = {}  # model → records whose (cached) forward is counted
        self.costs: dict[str, ForwardCost] = {}
        self.data: dict = {"flops": math.nan}
        self._log_dir: Path | None = None
        self._started = math.nan
        self._spent_before = 0.0

    def state_dict(self) -> dict:
        return {
            "counts": dict(self.counts),
            "counted_once": {model: sorted(records) for model, records in self.counted_once.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.counts.update(state_dict["counts"])
        if "reference_counted" in state_dict:  # checkpoints written before `counted_once`
            self.counted_once = {"reference": set(state_dict["reference_counted"])}
        else:
            self.counted_once = {model: set(ids) for model, ids in state_dict["counted_once"].items()}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # `trainer.log_dir` is a collective under DDP: every rank asks here, rank 0 writes at the end.
        self._log_dir = Path(trainer.log_dir or ".")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        costs = {name: ForwardCost.of(model) for name, model in pl_module.flops_models().items()}
        self.costs = whole_model_costs(costs, trainer.strategy)
        sampling = getattr(trainer.datamodule, "sampling_tokens", None)
        # The rollouts were sampled by the starting checkpoint, which is the policy before training.
        self.data = data_flops(sampling(), self.costs["policy"]) if sampling else {"flops": math.nan}
        labelling = getattr(trainer.datamodule, "labelling_cost", None)
        if labelling:  # step labels derived for the baselines: Monte-Carlo completions, ORM passes
            self.data = {**self.data, "rollout_flops": self.data["flops"], "labelling": labelling}
            self.data["flops"] = self.data["rollout_flops"] + labelling["flops"]
        record_scalars(trainer, {"flops/data": self.data["flops"]}, step=0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the checkpoint's counts are restored: what this process spends is counted from here.
        self._started = time.perf_counter()
        self._spent_before = spent(self.counts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int) -> None:
        self.count_batch(pl_module, batch)
        size = len(batch["labels"])
        pl_module.log("train/flops", spent(self.counts), batch_size=size, reduce_fx="sum", sync_dist=True)

    def count_batch(self, pl_module: L.LightningModule, batch: dict) -> None:
        """Add what `pl_module.training_step` forwards for this batch (`pl_module.training_forwards`)."""
        for forward in pl_module.training_forwards(batch):
            mask = forward.attention_mask
            if forward.records is not None:
                seen = self.counted_once.setdefault(forward.model, set())
                rows = [row for row, i in enumerate(forward.records.tolist()) if i not in seen]
                seen.update(forward.records[rows].tolist())
                mask = mask[rows]
            count(self.counts, forward.model, self.costs[forward.model], mask, forward.passes)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Summed over ranks here, not in on_fit_end: the strategy has torn down its process group by then.
        summed = dict(self.counts)
        summed["spent_here"] = spent(summed) - self._spent_before
        if trainer.world_size > 1:
            values = torch.tensor(list(summed.values()), dtype=torch.float64, device=pl_module.device)
            reduced = trainer.strategy.reduce(values, reduce_op="sum").tolist()
            summed = dict(zip(summed, reduced, strict=True))
        spent_here = summed.pop("spent_here")
        cost = totals(summed, self.data)
        # Wall time of this process's training loop (validation inside it included; a resumed run counts
        # from its resume, and divides only the FLOPs spent since): achieved FLOP/s, and MFU against a
        # device's peak.
        cost["train_seconds"] = time.perf_counter() - self._started
        cost["train_flops_per_second"] = spent_here / cost["train_seconds"]
        names = ("train", "data", "total")
        record_scalars(trainer, {f"flops/{name}": cost[name] for name in names}, trainer.global_step)
        if not trainer.is_global_zero:
            return
        path = self._log_dir / "flops.json"
        models = {name: c.as_dict() for name, c in self.costs.items()}
        # Also beside the exported model: what it cost travels with it (AutoPSV adds its ORM's to its own).
        export = getattr(pl_module, "export_path", None)
        for target in (path, *([export / "flops.json"] if export is not None else [])):
            with atomic_write(target) as file:
                file.write(json.dumps({**cost, "models": models}, indent=2) + "\n")
        log.info("training %.3g FLOPs, data %.3g FLOPs (written to %s)", cost["train"], cost["data"], path)
