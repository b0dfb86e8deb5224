"""The LightningDataModule: records → training knobs → batches of whole instruction groups.

Training batches always hold every response of the instructions they contain, because the pairwise
objectives (DPO, NCA) pair correct with incorrect responses *within* an instruction and KTO's reference
point pairs a prompt with another instruction's response. The training-set knobs apply in a fixed order:

    deduplicate → instruction_fraction → responses_per_instruction → balance

and `summary` records the count after each. Where the files come from is not this module's business: a
data source that supplies them (the controlled world: `iprm.tasks.WorldDataModule`) subclasses it.

Every file is validated in `setup`, before any training or scoring: record by record (`iprm.data.records`)
and as a set (`iprm.validate`: a separator that never occurs, one-class training data, best-of-N sets
without answers or with ragged candidate counts).
"""

import logging
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from iprm.data.collate import Collator
from iprm.data.inspect import inspect_inputs
from iprm.data.knobs import (
    balance_dataset,
    balance_instructions,
    by_instruction,
    drop_duplicates,
    first_per_instruction,
    subsample_instructions,
)
from iprm.data.official import (
    check_official_split,
    load_official_candidates,
    looks_official,
    resplit_records,
)
from iprm.data.prompts import adds_special_tokens, format_prompt
from iprm.data.records import Record, load_records
from iprm.data.sampler import InstructionBatchSampler, ResumableDataLoader, ShardedBatchSampler
from iprm.errors import ConfigError, RecordError
from iprm.generation.manifest import read_manifest
from iprm.validate import (
    check_candidate_set,
    check_model_path,
    check_prompts,
    check_separator,
    check_two_classes,
)

log = logging.getLogger(__name__)

Balance = Literal["none", "dataset", "instruction"]


def load_data(
    path: str | Path, source: str | None = None, require_label: bool = True, separator: str | None = None
) -> list[Record]:
    """Load records from any supported file: the official JSON-list format or `load_records`' formats
    (with the step `separator`, step labels are checked against the steps). An empty file is an error."""
    if looks_official(path):
        records = load_official_candidates(path, source)
    else:
        records = load_records(path, source, require_label, separator)
    if not records:
        raise RecordError(f"{path}: no records: the file is empty")
    return records


def eval_items(records: list[Record]) -> list[dict[str, Any]]:
    """Dataset items for a best-of-N candidate set: problem, candidate and per-problem answer ids."""
    problems: dict[str, int] = {}
    candidates: dict[int, int] = defaultdict(int)
    answers: dict[int, dict[str, int]] = defaultdict(dict)
    items = []
    for index, record in enumerate(records):
        problem = problems.setdefault(record.instruction_id, len(problems))
        answer = (record.answer or "").strip()
        # A missing or empty answer gets −1 so it never wins a vote.
        answer_id = answers[problem].setdefault(answer, len(answers[problem])) if answer else -1
        items.append(
            {
                "record": record,
                "index": index,
                "group": problem,
                "problem": problem,
                "candidate": candidates[problem],
                "answer_id": answer_id,
            }
        )
        candidates[problem] += 1
    return items


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
        self._sampled: tuple[int, list[Record]] | None = None  # records loaded, and those needed sampled
        self._predict: list[Record] | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._check_settings()

    def _check_settings(self) -> None:
        """Reject settings that could only fail later, deep inside a run."""
        problems = []
        if not 0 < self.instruction_fraction <= 1:
            problems.append(f"instruction_fraction must be in (0, 1], got {self.instruction_fraction}")
        if self.responses_per_instruction is not None and self.responses_per_instruction < 1:
            problems.append(
                f"responses_per_instruction must be at least 1, got {self.responses_per_instruction}"
            )
        if self.balance not in ("none", "dataset", "instruction"):
            problems.append(f"balance must be 'none', 'dataset' or 'instruction', got {self.balance!r}")
        if self.instructions_per_batch < 1 or self.eval_batch_size < 1:
            problems.append("instructions_per_batch and eval_batch_size must be positive")
        if self.max_length is not None and self.max_length < 2:
            problems.append(f"max_length must be at least 2 tokens, got {self.max_length}")
        if self.mismatched_pairs and self.instructions_per_batch < 2:
            problems.append("mismatched_pairs needs instructions_per_batch >= 2 (pairs cross instructions)")
        if not self.step_separator:
            problems.append("step_separator must be a non-empty string")
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
        """Records of one file; `scored` files (best-of-N sets, prediction inputs) follow `official_steps`."""
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
        self._sampled = (len(records), self._rollouts_needed(records))
        records = self._apply_knobs(records)
        if not records:
            raise RecordError(
                f"{self.train_path}: the training set is empty after the data knobs: {self.summary}"
            )
        check_two_classes(records, self.train_path, self.allow_one_class)
        return records

    def _knobs(self) -> list[tuple[str, Callable[[list[Record]], list[Record]] | None]]:
        """The training-set knobs in the order they apply; None where a knob is off."""
        fraction, k, seed = self.instruction_fraction, self.responses_per_instruction, self.seed
        balance = {"dataset": balance_dataset, "instruction": balance_instructions}.get(self.balance)
        return [
            ("deduplicate", drop_duplicates if self.deduplicate else None),
            (
                "instruction_fraction",
                partial(subsample_instructions, fraction=fraction, seed=seed) if fraction < 1 else None,
            ),
            ("responses_per_instruction", partial(first_per_instruction, k=k) if k is not None else None),
            ("balance", partial(balance, seed=seed) if balance else None),
        ]

    def _rollouts_needed(self, records: list[Record]) -> list[Record]:
        """The loaded records a run needed sampled: those its instruction fraction and responses per
        instruction keep (fewer would simply be sampled). Deduplication and balancing discard rollouts after
        sampling, so they save nothing."""
        if self.instruction_fraction < 1:
            records = subsample_instructions(records, self.instruction_fraction, self.seed)
        if self.responses_per_instruction is not None:
            records = first_per_instruction(records, self.responses_per_instruction)
        return records

    def sampling_tokens(self) -> dict[str, float | str]:
        """Prompt and generated tokens of sampling the rollouts this run trains on (for data FLOPs), and
        where the counts come from: when `python -m iprm generate` wrote the training file (and it is the
        only one), its manifest's exact counts, scaled by the share of its responses the run needed; else
        estimated from the needed records (`_rollouts_needed`) with the tokenizer, the prompt as the model
        read it (its chat template, its special tokens) and each response with the <eos> that ended it."""
        if self._sampled is None:
            raise RuntimeError("call setup('fit') first: the training records are loaded there")
        loaded, needed = self._sampled
        manifest = None if self.extra_train_paths else read_manifest(self.train_path)
        if manifest is not None and manifest["responses"] == loaded:
            return self.needed_share(manifest, "generate manifest")
        texts = [format_prompt(self.tokenizer, r.prompt, self.chat_template) for r in needed]
        prompts = [
            self.tokenizer(t, add_special_tokens=adds_special_tokens(self.tokenizer, t))["input_ids"]
            for t in texts
        ]
        responses = self.tokenizer([r.response for r in needed], add_special_tokens=False)["input_ids"]
        return {
            "prompt_tokens": sum(map(len, prompts)),
            "sampled_tokens": sum(len(ids) + 1 for ids in responses),
            "records": len(needed),
            "source": "records",
        }

    def needed_share(self, counts: dict, source: str) -> dict[str, float | str]:
        """Exact `counts` of sampling every loaded rollout, scaled by the share of them the run needed."""
        loaded, needed = self._sampled
        share = len(needed) / loaded
        return {
            "prompt_tokens": counts["prompt_tokens"] * share,
            "sampled_tokens": counts["sampled_tokens"] * share,
            "records": len(needed),
            "source": source,
        }

    def _apply_knobs(self, records: list[Record]) -> list[Record]:
        self.summary = {"loaded": len(records)}
        for name, knob in self._knobs():
            if knob is not None:
                records = knob(records)
            self.summary[f"after_{name}"] = len(records)
        self.summary["instructions"] = len(by_instruction(records))
        self.summary["correct"] = sum(record.label for record in records)
        self.summary["incorrect"] = len(records) - self.summary["correct"]
        log.info("training data: %s", ", ".join(f"{key}={value}" for key, value in self.summary.items()))
        return records

    # -- public views -------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise RuntimeError("call setup() first: the tokenizer is loaded there")
        return self._tokenizer

    @property
    def train_records(self) -> list[Record]:
        if self._train is None:
            raise RuntimeError("call setup('fit') first: the training records are loaded there")
        return self._train

    @property
    def predict_records(self) -> list[Record]:
        if self._predict is None:
            raise RuntimeError("call setup('predict') with data.predict_path set first")
        return self._predict

    @property
    def eval_records(self) -> dict[str, list[Record]]:
        """The validation best-of-N sets (`eval_paths`)."""
        if self._eval is None:
            raise RuntimeError("call setup() first: the evaluation records are loaded there")
        return self._eval

    @property
    def test_records(self) -> dict[str, list[Record]]:
        """The test best-of-N sets (`test_paths`)."""
        if self._test is None:
            raise RuntimeError("call setup('test') first: the test records are loaded there")
        return self._test

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
        return Collator(
            self.tokenizer, self.step_separator, self.max_length, mismatched_pairs, self.chat_template
        )

    def _ranks(self) -> tuple[int, int]:
        # Lightning leaves our batch sampler alone (use_distributed_sampler=False), so it shards itself.
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

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
        )
        fit_loop = getattr(self.trainer, "fit_loop", None)
        if fit_loop is not None:
            # Lightning draws the first batch before it sets the epoch (`FitLoop.setup_data`), and after a
            # resume from an epoch's end it keeps that iterator: start at the epoch Lightning will set.
            sampler.set_epoch(fit_loop.epoch_progress.current.processed)
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
