"""Explicit reward models: a causal LM whose value head is read at every step end, trained with cross-entropy.

These are the paper's baselines beside the implicit PRM, on the same data path and evaluation:

    v_k = σ(h_k)        the value of step k's prefix: the probability that it leads to a correct answer

with h_k read off the hidden state at the last token of step k, by a linear head ("linear") or by the LM's
own next-token logits of a positive and a negative token, h_k = logit(+) − logit(−) ("generative",
Math-Shepherd's parameterisation). Three targets:

    outcome   an ORM: −[l·log σ(h_S) + (1 − l)·log σ(−h_S)] at the last step end S, l the outcome label
    outcome_every_step   an outcome-supervised verifier as AutoPSV trains it: the same cross-entropy against
              the outcome label l at the prompt's end (k = 0) and at every step end, averaged over them, so
              σ(h_k) estimates P(correct | steps 1..k) at every k, not at the last step only (AutoPSV's
              reference code regresses every response token on l with a squared error; we keep the
              cross-entropy of the other targets and read the step ends the labeller reads)
    steps     a PRM: the mean over known steps of −[t_k·log σ(h_k) + (1 − t_k)·log σ(−h_k)], t_k the batch's
              `step_targets` (whether steps 1..k are all correct, or a labelling method's estimate in
              [0, 1]: Math-Shepherd's Monte-Carlo values, AutoPSV's, `iprm.scorers.labels`)

Its one scorer, named by `name`, reads v_k ("step"); the method scores a response by the last step's value
(the outcome targets) or the minimum over steps (PRM, as Math-Shepherd does). A run trained on a labeller's
step values logs that labelling's report (`labels/good_share`, `labels/agreement`, …,
`iprm.scorers.label_report`) with its metrics.
"""

import inspect
import json
import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoTokenizer, PreTrainedModel

from iprm.distributed import gather_rows, world
from iprm.errors import ConfigError
from iprm.flops import Forward
from iprm.results import record_scalars
from iprm.scorers.base import RewardModel, Scorer, check_settings, submodule_state

log = logging.getLogger(__name__)
HEAD_FILE, HEAD_CONFIG = "value_head.safetensors", "value_head.json"
TARGETS = ("outcome", "outcome_every_step", "steps")


class ExplicitPRM(RewardModel):
    """A PRM (or ORM) with a value head, trained on step targets (or outcome labels).

    Args:
        model_path: starting checkpoint (linked from `data.model_path`): the same reference policy the
            implicit PRM starts from.
        name: the scorer's name in every table and metric (`<name>_step_min`, …), e.g. "orm",
            "math_shepherd", "autopsv", "oracle".
        target: "outcome" trains an ORM on the outcome label at the last step end; "outcome_every_step" on
            the outcome label at the prompt's end and every step end (AutoPSV's verifier); "steps" a PRM on
            every known step target.
        head: "linear" (a linear layer on the last hidden state) or "generative" (logit of
            `positive_token` minus logit of `negative_token`, from the LM's own head).
        positive_token: the token read as "good step" by the generative head (one token of the tokenizer).
        negative_token: the token read as "bad step" by the generative head.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the optimisation steps spent warming the learning rate up linearly;
            cosine decay to zero follows.
        schedule_epochs: the learning-rate schedule's length in epochs; None: the trainer's `max_epochs`.
            Longer than `max_epochs`, training stops part-way down the schedule, as epoch e of a tuning
            run does (`--trainer.max_epochs 2 --model.schedule_epochs 4`: its first two epochs, exactly).
        torch_dtype: dtype the model is loaded in ("float32", "bfloat16", "float16" or "auto").
        attn_implementation: attention kernel passed to `from_pretrained`.
        trust_remote_code: allow checkpoints that ship their own modelling code (off: it runs that code).
        export_dir: where the trained model and its head are written at the end of `fit`; None writes
            `<log_dir>/policy`.
    """

    def __init__(
        self,
        model_path: str | None = None,
        name: str = "explicit",
        target: Literal["outcome", "outcome_every_step", "steps"] = "steps",
        head: Literal["linear", "generative"] = "linear",
        positive_token: str = "+",
        negative_token: str = "-",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        schedule_epochs: int | None = None,
        torch_dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        export_dir: str | None = None,
    ):
        super().__init__()
        if target not in TARGETS or head not in ("linear", "generative"):
            raise ConfigError(
                f"model: target must be one of {', '.join(TARGETS)} and head 'linear' or 'generative', got "
                f"{target!r}, {head!r}"
            )
        if not name.isidentifier():
            raise ConfigError(f"model.name must be an identifier (it names metrics), got {name!r}")
        self.save_hyperparameters()
        check_settings(self.hparams)
        self.model: PreTrainedModel | None = None
        self.value_head: nn.Linear | None = None
        self.head_tokens: tuple[int, int] | None = None

    @property
    def scorers(self) -> tuple[Scorer, ...]:
        return (Scorer(self.hparams.name, ("step",)),)

    @property
    def method_scorer(self) -> str:
        return f"{self.hparams.name}_step_{'min' if self.hparams.target == 'steps' else 'last'}"

    @property
    def table_scorers(self) -> tuple[str, ...]:
        return (self.method_scorer,)

    @property
    def figure_scorers(self) -> tuple[str, ...]:
        return (self.method_scorer,)

    @property
    def trained_model(self) -> PreTrainedModel:
        return self.model

    # --- models -----------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.hparams.model_path is None:
            raise ValueError("model.model_path is not set: give data.model_path (or a data source of it)")
        self.model = self.load_causal_lm(self.hparams.model_path).train()
        if self.hparams.head == "linear":
            self.value_head = nn.Linear(self.model.config.hidden_size, 1)
            self.value_head.to(self.model.dtype)
            head_file = Path(self.hparams.model_path) / HEAD_FILE
            if head_file.is_file():  # continuing from an exported explicit PRM
                self.value_head.load_state_dict(load_file(head_file))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        labelling = getattr(self.trainer.datamodule, "labelling_cost", None) or {}
        report = labelling.get("report")
        if report:  # the labels this PRM trains on, against the world's true ones where known
            record_scalars(self.trainer, {f"labels/{key}": value for key, value in report.items()}, step=0)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if getattr(datamodule, "layout", "padded") == "packed":  # its step logits read padded rows
            raise ConfigError(
                f"model: {self.hparams.name} (an ExplicitPRM) reads padded batches: set data.layout padded"
            )
        if self.hparams.head == "generative" and self.trainer is not None and self.trainer.datamodule:
            self.head_tokens = head_token_ids(
                self.trainer.datamodule.tokenizer, self.hparams.positive_token, self.hparams.negative_token
            )

    def export(self, directory: Path, state: dict[str, Tensor] | None = None) -> None:
        state = self.state_dict() if state is None else state
        self.model.save_pretrained(directory, state_dict=submodule_state(state, "model."))
        if self.value_head is not None:
            head = submodule_state(state, "value_head.")
            save_file({k: v.contiguous() for k, v in head.items()}, directory / HEAD_FILE)
        config = {key: value for key, value in self.hparams.items() if key in _ARGUMENTS}
        (directory / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    # --- the value at every step end ---------------------------------------------------------------

    def step_logits(self, batch: dict) -> Tensor:
        """h_k [B, S] at each step end (NaN padding)."""
        ends = batch["step_ends"]
        hidden = self.model.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        rows = torch.arange(len(ends), device=ends.device).unsqueeze(-1)
        at_ends = hidden[rows, ends.clamp(min=0)]  # [B, S, H]
        if self.value_head is not None:
            logits = self.value_head(at_ends).squeeze(-1)
        else:
            if self.head_tokens is None:
                raise RuntimeError("the generative head needs its token ids: call setup() with a datamodule")
            positive, negative = self.head_tokens
            weights = self.model.get_output_embeddings().weight[[positive, negative]]  # [2, H]
            pair = at_ends @ weights.T
            logits = pair[..., 0] - pair[..., 1]
        return logits.float().masked_fill(ends < 0, float("nan"))

    def step_scores(self, batch: dict) -> dict[str, Tensor]:
        return {f"{self.hparams.name}_step": torch.sigmoid(self.step_logits(batch))}

    # --- training ----------------------------------------------------------------------------------

    def training_forwards(self, batch: dict) -> list[Forward]:
        """One forward and backward of the backbone (the head's matmul is not counted, as no LM head is)."""
        return [Forward("policy", batch["attention_mask"], passes=3)]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        # The loss of the global batch: every rank's rows (`iprm.distributed`), flat where S differs.
        if self.hparams.target == "outcome_every_step":
            logits = self.step_logits({**batch, "step_ends": prompt_and_step_ends(batch)})
            targets = every_step_targets(logits, batch["labels"])
            known = ~logits.isnan()  # flat, as the ranks' step counts differ
            loss, accuracy = step_target_loss(gather_rows(logits[known]), gather_rows(targets[known]))
        elif self.hparams.target == "outcome":
            last = gather_rows(last_step(self.step_logits(batch)))[:, None]
            loss, accuracy = outcome_loss(last, gather_rows(batch["labels"]))
        else:
            logits = self.step_logits(batch)
            known = ~batch["step_targets"].isnan() & ~logits.isnan()
            targets = gather_rows(batch["step_targets"][known])
            loss, accuracy = step_target_loss(gather_rows(logits[known]), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}; "
                "lower model.lr, check the data, or use a float32 dtype"
            )
        size = len(batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", accuracy, batch_size=size)
        return loss * world()[0]  # DDP averages the ranks' gradients, each of which is its rows' share of ∇L


_ARGUMENTS = set(inspect.signature(ExplicitPRM.__init__).parameters) - {"self"}


def head_token_ids(tokenizer, positive: str, negative: str) -> tuple[int, int]:
    """The ids of the generative head's two tokens; each must be exactly one token of the tokenizer."""
    ids = []
    for token in (positive, negative):
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"the generative head's token {token!r} is {len(encoded)} tokens, not one")
        ids.append(encoded[0])
    return ids[0], ids[1]


def last_step(values: Tensor) -> Tensor:
    """Each row's value at its last step [B] (rows are NaN-padded on the right)."""
    count = (~values.isnan()).sum(-1)
    return values.gather(-1, (count - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)


def outcome_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The ORM's loss: cross-entropy of the last step end's logit against the outcome label; and the
    accuracy of its sign."""
    last = last_step(logits)
    accuracy = ((last > 0) == labels.bool()).float().mean()
    return F.binary_cross_entropy_with_logits(last, labels.to(last.dtype)), accuracy.detach()


def every_step_targets(logits: Tensor, labels: Tensor) -> Tensor:
    """The every-step verifier's targets [B, S]: each row's outcome label at every step end it has (NaN
    padding), so `step_target_loss` on them is the mean cross-entropy over every step end of the batch."""
    targets = labels.to(logits.dtype)[:, None].expand_as(logits)
    return targets.masked_fill(logits.isnan(), float("nan"))


def prompt_and_step_ends(batch: dict) -> Tensor:
    """`step_ends` [B, S] with the prompt's last token in front [B, 1 + S]: where the value of the empty
    prefix (no step yet) is read."""
    prompt_end = batch["response_mask"].int().argmax(-1, keepdim=True) - 1
    return torch.cat([prompt_end, batch["step_ends"]], -1)


def step_target_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The PRM's loss: mean cross-entropy of every known step's logit against its target in [0, 1]; and
    the accuracy of its sign against the rounded target. A zero that keeps the graph without any."""
    known = ~targets.isnan() & ~logits.isnan()
    if not known.any():
        return logits.nan_to_num().sum() * 0.0, torch.tensor(float("nan"))
    h, t = logits[known], targets[known].to(logits.dtype)
    accuracy = ((h > 0) == (t > 0.5)).float().mean()
    return F.binary_cross_entropy_with_logits(h, t), accuracy.detach()


def load_exported(directory: str | Path, torch_dtype: str = "float32") -> ExplicitPRM:
    """An exported explicit PRM or ORM (`ExplicitPRM.export`), ready to score batches (eval mode)."""
    directory = Path(directory)
    config = directory / HEAD_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{directory} is not an exported explicit PRM: no {HEAD_CONFIG}")
    hparams = {k: v for k, v in json.loads(config.read_text()).items() if k in _ARGUMENTS}
    hparams.update(
        model_path=str(directory), torch_dtype=torch_dtype, trust_remote_code=False, export_dir=None
    )
    module = ExplicitPRM(**hparams)
    module.configure_model()
    if module.hparams.head == "generative":
        tokenizer = AutoTokenizer.from_pretrained(directory)
        module.head_tokens = head_token_ids(
            tokenizer, module.hparams.positive_token, module.hparams.negative_token
        )
    return module.eval()
