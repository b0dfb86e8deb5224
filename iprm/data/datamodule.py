"""The LightningDataModule: records → training knobs → batches of whole instruction groups.

Training batches always hold every response of the instructions they contain, because the pairwise
objectives (DPO, NCA) pair correct with incorrect responses *within* an instruction and KTO's reference
point pairs a prompt with another instruction's response. The training-set knobs apply in a fixed order:

    deduplicate → instruction_fraction → responses_per_instruction → balance

(`iprm.data.knobs`) and `summary` records the count after each. Where the files come from is not this
module's business: a data source that supplies them (the controlled world: `iprm.tasks.WorldDataModule`)
subclasses it. Files are read by `iprm.data.loading`; what sampling the training rollouts cost, for the
run's data FLOPs, is counted by `iprm.data.cost`.

Every file is validated in `setup`, before any training or scoring: record by record (`iprm.data.records`)
and as a set (`iprm.validate`: a separator that never occurs, one-class training data, best-of-N sets
without answers or with ragged candidate counts).
"""

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from iprm import compat
from iprm.data.collate import Collator, layout_problems
from iprm.data.cost import Rollouts, rollouts_needed
from iprm.data.cost import sampling_tokens as count_sampling_tokens
from iprm.data.inspect import inspect_inputs
from iprm.data.knobs import Balance, apply_knobs, knob_problems
from iprm.data.loading import eval_items, load_data
from iprm.data.official import check_official_split, resplit_records
from iprm.data.provenance import check_agreement
from iprm.data.records import Record
from iprm.data.sampler import (
    InstructionBatchSampler,
    ResumableDataLoader,
    ShardedBatchSampler,
    instruction_tokens,
)
from iprm.errors import ConfigError, RecordError
from iprm.validate import (
    check_candidate_set,
    check_model_path,
    check_prompts,
    check_separator,
    check_two_classes,
)

log = logging.getLogger(__name__)


class PRMDataModule(L.LightningDataModule):
    """Outcome-labelled responses for training an implicit PRM, and best-of-N candidate sets to evaluate it.

    Args:
        model_path: Directory or hub id of the starting checkpoint and its tokenizer.
        train_path: Training records (JSON lines, parquet, or the official JSON list).
        extra_train_paths: More training files, concatenated after `train_path`; records without a
            `source` take the file's stem.
        eval_paths: Name → best-of-N candidate file; one validation dataloader per entry, in this order.
        test_paths: Name → best-of-N candidate file for `test`; None tests on `eval_paths`.
        predict_path: Records to score with `predict`.
        instruction_fraction: Fraction of training instructions kept (seeded; smaller fractions are subsets
            of larger ones).
        responses_per_instruction: Keep the first k responses of each instruction (all when None).
        balance: "dataset": subsample the majority label to the minority's count; "instruction": keep
            min(#correct, #incorrect) of each label per instruction, dropping one-label instructions.
        deduplicate: Drop responses identical to an earlier response to the same instruction.
        instructions_per_batch: Instructions per training batch on each device; a batch holds all of their
            responses. Several devices train on global batches of this many times their number
            (`iprm.distributed`).
        group_by_length: Batch instructions of similar length together (their longest prompt + response,
            in characters), so batches waste little on padding; the batches' order stays shuffled.
        max_tokens_per_batch: Form training batches by a token budget instead of `instructions_per_batch`:
            about this many tokens (prompts and responses, whole instructions) per device and batch
            (`iprm.data.sampler.InstructionBatchSampler`); None counts instructions.
        layout: "padded": the model reads right-padded [B, T] batches; "packed": each batch's records are
            packed into rows with position ids restarting at every record, attended block-diagonally
            (`iprm.data.collate.pack`), so no compute goes to padding. The same numbers either way.
        packed_row_tokens: Tokens per packed row; None: the batch's longest record (the attention of a row
            then costs what a padded row's does). With flash-attention, one row per batch is cheapest.
        eval_batch_size: Responses per evaluation and prediction batch (the batches are shared among
            devices).
        step_separator: The string between consecutive steps of a response.
        official_steps: Re-split the responses of best-of-N and prediction files as the official
            implicit-PRM evaluation does (`iprm.data.official.official_steps`: on "Step <n>:" markers,
            joined by a blank line) and refuse a `step_separator` that does not recover those steps;
            training files are read as written, as the official training reads them.
        max_length: Truncate sequences to this many tokens, dropping steps that no longer fit.
        chat_template: Format every prompt with the tokenizer's chat template (a user turn, then the
            assistant's header) before tokenising, as an instruct model was prompted when it generated the
            responses; a tokenizer without a template is a ConfigError. Leave false for base models and for
            files whose prompts are already formatted.
        mismatched_pairs: Also collate each prompt with another instruction's response (KTO's reference
            point).
        num_workers: DataLoader worker processes.
        seed: Seed of the knobs' subsampling and of the instruction order.
        allow_one_class: Train even when every training response carries the same label (refused by
            default: a reward model learns nothing from one class).
        allow_no_separator: Accept files in which `step_separator` never occurs, every response then
            being one step (refused by default: usually the separator does not match the data).
    """

    def __init__(
        self,
        model_path: str | None = None,
        train_path: str | None = None,
        extra_train_paths: list[str] | None = None,
        eval_paths: dict[str, str] | None = None,
        test_paths: dict[str, str] | None = None,
        predict_path: str | None = None,
        instruction_fraction: float = 1.0,
        responses_per_instruction: int | None = None,
        balance: Balance = "none",
        deduplicate: bool = False,
        instructions_per_batch: int = 8,
        group_by_length: bool = False,
        max_tokens_per_batch: int | None = None,
        layout: Literal["padded", "packed"] = "padded",
        packed_row_tokens: int | None = None,
        eval_batch_size: int = 64,
        step_separator: str = "\n",
        official_steps: bool = False,
        max_length: int | None = None,
        chat_template: bool = False,
        mismatched_pairs: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        allow_one_class: bool = False,
        allow_no_separator: bool = False,
    ):
        super().__init__()
        self.model_path = model_path
        self.train_path = train_path
        self.extra_train_paths = list(extra_train_paths or [])
        self.eval_paths = dict(eval_paths or {})
        self.test_paths = dict(test_paths) if test_paths is not None else dict(self.eval_paths)
        self.predict_path = predict_path
        self.instruction_fraction = instruction_fraction
        self.responses_per_instruction = responses_per_instruction
        self.balance = balance
        self.deduplicate = deduplicate
        self.instructions_per_batch = instructions_per_batch
        self.group_by_length = group_by_length
        self.eval_batch_size = eval_batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.layout = layout
        self.packed_row_tokens = packed_row_tokens
        self.step_separator = step_separator
        self.official_steps = official_steps
        self.max_length = max_length
        self.chat_template = chat_template
        self.mismatched_pairs = mismatched_pairs
        self.num_workers = num_workers
        self.seed = seed
        self.allow_one_class = allow_one_class
        self.allow_no_separator = allow_no_separator
        self.summary: dict[str, int] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._train: list[Record] | None = None
        self._eval: dict[str, list[Record]] | None = None
        self._test: dict[str, list[Record]] | None = None
        self._sampled: Rollouts | None = None  # rollouts loaded, and those the run needed sampled
        self._predict: list[Record] | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._check_settings()

    def _check_settings(self) -> None:
        """Reject settings that could only fail later, deep inside a run."""
        problems = knob_problems(self.instruction_fraction, self.responses_per_instruction, self.balance)
        if self.instructions_per_batch < 1 or self.eval_batch_size < 1:
            problems.append("instructions_per_batch and eval_batch_size must be positive")
        if self.max_length is not None and self.max_length < 2:
            problems.append(f"max_length must be at least 2 tokens, got {self.max_length}")
        if self.mismatched_pairs and self.instructions_per_batch < 2:
            problems.append("mismatched_pairs needs instructions_per_batch >= 2 (pairs cross instructions)")
        if not self.step_separator:
            problems.append("step_separator must be a non-empty string")
        problems += layout_problems(self.layout, self.max_tokens_per_batch, self.packed_row_tokens)
        if problems:
            raise ConfigError("data: " + "; ".join(problems))

    # -- loading ------------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self._tokenizer is None:
            if self.model_path is None:
                raise ConfigError("data.model_path is required")
            check_model_path(self.model_path, "data.model_path")
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if stage in (None, "fit") and self._train is None:
            self._train = self._load_train()
        if stage in (None, "fit", "validate") and self._eval is None:
            self._eval = self._load_sets(self.eval_paths)
        if stage in (None, "test") and self._test is None:
            same = self.test_paths == self.eval_paths and self._eval is not None
            self._test = self._eval if same else self._load_sets(self.test_paths)
        if stage in (None, "predict") and self._predict is None and self.predict_path is not None:
            self._predict = self._load(self.predict_path, require_label=False, scored=True)
        inspect_inputs(self)  # what the model cannot see as written: reported or refused

    def _load(
        self, path: str, source: str | None = None, require_label: bool = True, scored: bool = False
    ) -> list[Record]:
        """Records of one file; `scored` files (best-of-N sets, prediction inputs) follow `official_steps`.
        A file `generate` wrote must be read with the separator and chat template it was generated with."""
        resplit = scored and self.official_steps  # the official steps replace the generated ones
        agreed = {"chat_template": self.chat_template}
        check_agreement(path, agreed if resplit else agreed | {"separator": self.step_separator})
        records = load_data(path, source, require_label, self.step_separator)
        if scored and self.official_steps:
            records = resplit_records(records, path)
            check_official_split(records, self.step_separator, path)
        check_separator(records, path, self.step_separator, self.allow_no_separator)
        return records

    def _load_sets(self, paths: dict[str, str]) -> dict[str, list[Record]]:
        """Best-of-N sets, each checked for what would make its numbers mislead (`iprm.validate`)."""
        sets = {}
        for name, path in paths.items():
            sets[name] = self._load(path, scored=True)
            check_prompts(sets[name], path)
            check_candidate_set(sets[name], f"best-of-N set {name!r} ({path})")
        return sets

    def _load_train(self) -> list[Record]:
        if self.train_path is None:
            raise ConfigError("data.train_path is required to fit")
        records = self._load(self.train_path)
        for path in self.extra_train_paths:
            records += self._load(path, source=Path(path).stem)
        check_prompts(records, self.train_path)
        self._sampled = rollouts_needed(
            records, self.instruction_fraction, self.responses_per_instruction, self.seed
        )
        records = self._apply_knobs(records)
        if not records:
            raise RecordError(
                f"{self.train_path}: the training set is empty after the data knobs: {self.summary}"
            )
        check_two_classes(records, self.train_path, self.allow_one_class)
        return records

    def sampling_tokens(self) -> dict[str, float | str]:
        """Prompt and generated tokens of sampling the rollouts this run trains on, for its data FLOPs, and
        where the counts come from (`iprm.data.cost.sampling_tokens`)."""
        paths = [self.train_path, *self.extra_train_paths]
        return count_sampling_tokens(self.rollouts, paths, self.tokenizer, self.chat_template)

    def needed_share(self, counts: dict, source: str) -> dict[str, float | str]:
        """Exact `counts` of sampling every loaded rollout, scaled by the share of them the run needed."""
        return self.rollouts.share(counts, source)

    @property
    def rollouts(self) -> Rollouts:
        """The training rollouts loaded and those the run needed sampled (`iprm.data.cost`)."""
        if self._sampled is None:
            raise RuntimeError("call setup('fit') first: the training records are loaded there")
        return self._sampled

    def _apply_knobs(self, records: list[Record]) -> list[Record]:
        records, self.summary = apply_knobs(
            records,
            deduplicate=self.deduplicate,
            instruction_fraction=self.instruction_fraction,
            responses_per_instruction=self.responses_per_instruction,
            balance=self.balance,
            seed=self.seed,
        )
        log.info("training data: %s", ", ".join(f"{key}={value}" for key, value in self.summary.items()))
        return records

    # -- public views -------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return _loaded(self._tokenizer, "setup() first: the tokenizer is loaded there")

    @property
    def train_records(self) -> list[Record]:
        return _loaded(self._train, "setup('fit') first: the training records are loaded there")

    @property
    def predict_records(self) -> list[Record]:
        return _loaded(self._predict, "setup('predict') with data.predict_path set first")

    @property
    def eval_records(self) -> dict[str, list[Record]]:
        """The validation best-of-N sets (`eval_paths`)."""
        return _loaded(self._eval, "setup() first: the evaluation records are loaded there")

    @property
    def test_records(self) -> dict[str, list[Record]]:
        """The test best-of-N sets (`test_paths`)."""
        return _loaded(self._test, "setup('test') first: the test records are loaded there")

    def train_items(self) -> list[dict[str, Any]]:
        """Training dataset items: the record, its index and its integer instruction id (`group`)."""
        instructions: dict[str, int] = {}
        return [
            {"record": r, "index": i, "group": instructions.setdefault(r.instruction_id, len(instructions))}
            for i, r in enumerate(self.train_records)
        ]

    def train_labels_and_groups(self) -> tuple[Tensor, Tensor]:
        """Outcome labels (float) and integer instruction ids of the whole training set, by index."""
        items = self.train_items()
        labels = torch.tensor([float(item["record"].label) for item in items])
        return labels, torch.tensor([item["group"] for item in items], dtype=torch.long)

    # -- dataloaders --------------------------------------------------------------------------------------

    def _collator(self, mismatched_pairs: bool = False) -> Collator:
        settings = (
            self.max_length,
            mismatched_pairs,
            self.chat_template,
            self.layout,
            self.packed_row_tokens,
        )
        return Collator(self.tokenizer, self.step_separator, *settings)

    def _ranks(self) -> tuple[int, int]:
        # Lightning leaves our batch sampler alone (use_distributed_sampler=False), so it shards itself.
        return (1, 0) if self.trainer is None else (self.trainer.world_size, self.trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        items = self.train_items()
        groups: dict[int, list[int]] = defaultdict(list)
        lengths: dict[int, int] = defaultdict(int)
        for item in items:
            groups[item["group"]].append(item["index"])
            record = item["record"]
            lengths[item["group"]] = max(lengths[item["group"]], len(record.prompt) + len(record.response))
        num_replicas, rank = self._ranks()
        sampler = InstructionBatchSampler(
            list(groups.values()),
            self.instructions_per_batch,
            True,
            self.seed,
            num_replicas,
            rank,
            lengths=[lengths[group] for group in groups] if self.group_by_length else None,
            min_instructions=2 if self.mismatched_pairs else 1,
            tokens=instruction_tokens(items, list(groups), self._collator(), self.max_length)
            if self.max_tokens_per_batch
            else None,
            max_tokens=self.max_tokens_per_batch,
        )
        epoch = compat.epochs_processed(self.trainer)
        if epoch is not None:
            # Lightning draws the first batch before it sets the epoch (`FitLoop.setup_data`), and after a
            # resume from an epoch's end it keeps that iterator: start at the epoch Lightning will set.
            sampler.set_epoch(epoch)
        self._train_loader = ResumableDataLoader(
            items, batch_sampler=sampler, collate_fn=self._collator(self.mismatched_pairs), **self._workers()
        )
        return self._train_loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called for each batch the fit loop takes to train on, not for the one it fetched ahead: the
        # training loader's count of batches trained on, which a mid-epoch checkpoint saves.
        if self.trainer is not None and self.trainer.training and self._train_loader is not None:
            self._train_loader.taken()
        return batch

    def _workers(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def _sequential(self, records: list[Record]) -> DataLoader:
        """A set in file order, in batches of `eval_batch_size`, each rank scoring its share of them."""
        num_replicas, rank = self._ranks()
        sampler = ShardedBatchSampler(len(records), self.eval_batch_size, num_replicas, rank)
        return DataLoader(
            eval_items(records), batch_sampler=sampler, collate_fn=self._collator(), **self._workers()
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self._sequential(records) for records in self.eval_records.values()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._sequential(records) for records in self.test_records.values()]

    def predict_dataloader(self) -> DataLoader:
        if self._predict is None:
            raise ValueError("data.predict_path is required to predict")
        return self._sequential(self._predict)


def _loaded(value: Any, when: str) -> Any:
    if value is None:
        raise RuntimeError(f"call {when}")
    return value
