"""Step labels for the explicit-PRM baselines, derived the way each method derives them, cached and costed.

Each labeller returns the training records with `step_values` (the target of each step's prefix in [0, 1])
and without the world's true `step_labels` (a real study has none), and counts what the labelling cost
(once per distinct response: rollouts repeat, and a repeated response needs no second labelling):

    Math-Shepherd (`MonteCarloLabels`)   for each step prefix y_{≤k} (k < S) of each response, K completions
        sampled from the reference; v_k = 1[any completion reaches the right answer] ("hard") or the
        fraction that does ("soft"); the last step's value is the response's own outcome.
        Cost: sampling K·(S − 1) completions per response with a KV cache (`ForwardCost.sampling`).
    AutoPSV (`AutoPSVLabels`)   an ORM's confidence c_k = σ(h_k) at the end of the prompt (k = 0) and of
        every step; step k is bad when the confidence drops by more than `threshold` relative to the
        previous one, (c_{k−1} − c_k)/c_{k−1} > threshold; v_k = 1 until the first bad step, 0 from it on.
        Cost: the ORM's training FLOPs (its export's `flops.json`) plus one forward per response.

Labels are kept per record (keyed by prompt and response) under `<cache_dir>/<method>-<settings digest>/`,
one atomically written shard per labelled chunk: a killed labelling resumes where it stopped, runs on
subsets of one training set share their labels, and a finished run's labels are never recomputed. Costs are
cached with the labels, so a run's data FLOPs count every label it uses whether or not it computed it.
"""

import hashlib
import json
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from iprm.data.collate import STEP_CONVENTION, Collator, split_steps
from iprm.data.records import Record
from iprm.flops import ForwardCost
from iprm.io import atomic_write
from iprm.refcache import fingerprint
from iprm.scorers.explicit import load_exported

log = logging.getLogger(__name__)
Grader = Callable[[str, str], bool]  # (prompt, response) → is the final answer right?


@dataclass
class LabellingContext:
    """What a labeller needs from the data: the reference checkpoint (and its tokenizer), how steps are
    separated, how a response is graded, where labels are cached, and the device to run on."""

    model_path: str
    separator: str
    grade: Grader
    cache_dir: Path
    device: str = "cpu"


class StepLabeller:
    """Base of the labellers: subclasses define `method`, `settings()` and `_label(records, context)`."""

    method = ""

    def settings(self) -> dict:
        raise NotImplementedError

    def _label(self, records: list[Record], context: LabellingContext) -> list[dict]:
        """For each record: {"values": [v_1, …, v_S], "flops": …, "tokens": …}."""
        raise NotImplementedError

    def label(self, records: list[Record], context: LabellingContext) -> tuple[list[Record], dict]:
        """The records with their step values (and no true step labels), and the labelling's cost."""
        cache = LabelCache(context.cache_dir / f"{self.method}-{self._digest(context)}")
        missing = [r for r in dict.fromkeys(records) if record_key(r) not in cache]
        if missing:
            log.info("%s: labelling %d of %d training records", self.method, len(missing), len(records))
            chunk = 256
            with tqdm(total=len(missing), desc=f"{self.method}: labelling", unit="response") as progress:
                for begin in range(0, len(missing), chunk):
                    part = missing[begin : begin + chunk]
                    cache.add(
                        {
                            record_key(r): entry
                            for r, entry in zip(part, self._label(part, context), strict=True)
                        }
                    )
                    progress.update(len(part))
        entries = [cache[record_key(r)] for r in records]
        labelled = [
            replace(r, step_values=tuple(e["values"]), step_labels=None, step_tags=None)
            for r, e in zip(records, entries, strict=True)
        ]
        # A response sampled twice (rollouts repeat) is labelled once: the cost counts distinct responses.
        distinct = {record_key(r): e for r, e in zip(records, entries, strict=True)}
        cost = {
            "method": self.method,
            "records": len(records),
            "distinct_records": len(distinct),
            "tokens": sum(e["tokens"] for e in distinct.values()),
            "flops": sum(e["flops"] for e in distinct.values()) + self.fixed_flops(),
        }
        return labelled, cost

    def fixed_flops(self) -> float:
        """FLOPs the labelling spent once, whatever the records (e.g. training the ORM AutoPSV reads)."""
        return 0.0

    def _digest(self, context: LabellingContext) -> str:
        key = {"settings": self.settings(), "model": fingerprint(context.model_path, "float32"),
               "separator": context.separator}  # fmt: skip
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class LabelCache:
    """Record key → label entry, persisted as JSONL shards written atomically (see the module docstring)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.entries: dict[str, dict] = {}
        for shard in sorted(directory.glob("part-*.jsonl")):
            for line in shard.read_text().splitlines():
                entry = json.loads(line)
                self.entries[entry.pop("key")] = entry

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __getitem__(self, key: str) -> dict:
        return self.entries[key]

    def add(self, entries: dict[str, dict]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.directory / f"part-{uuid.uuid4().hex}.jsonl") as file:
            for key, entry in entries.items():
                file.write(json.dumps({"key": key, **entry}) + "\n")
        self.entries.update(entries)


def record_key(record: Record) -> str:
    return hashlib.sha256(json.dumps([record.prompt, record.response]).encode()).hexdigest()[:24]


def step_texts(response: str, separator: str) -> list[str]:
    return [response[start:end] for start, end in split_steps(response, separator)]


class MonteCarloLabels(StepLabeller):
    """Math-Shepherd's step labels: K completions from each step prefix, sampled from the reference.

    Args:
        completions: K, completions sampled from each step prefix.
        rule: "hard": a prefix is good (1) if any completion reaches the right answer, else 0; "soft": the
            fraction of completions that do.
        temperature: sampling temperature of the completions.
        max_new_tokens: the longest completion sampled.
        batch_size: completions sampled at once.
        seed: seed of the completions' sampling (each chunk of records draws from its own derived seed).
    """

    method = "math_shepherd"

    def __init__(
        self,
        completions: int = 8,
        rule: Literal["hard", "soft"] = "hard",
        temperature: float = 1.0,
        max_new_tokens: int = 96,
        batch_size: int = 512,
        seed: int = 0,
    ):
        if completions < 1 or rule not in ("hard", "soft") or temperature <= 0:
            raise ValueError(f"need completions >= 1, rule 'hard' or 'soft', temperature > 0; got "
                             f"{completions}, {rule!r}, {temperature}")  # fmt: skip
        self.completions, self.rule, self.temperature = completions, rule, temperature
        self.max_new_tokens, self.batch_size, self.seed = max_new_tokens, batch_size, seed
        self._model = None

    def settings(self) -> dict:
        return {"completions": self.completions, "rule": self.rule, "temperature": self.temperature,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}  # fmt: skip

    def _load(self, context: LabellingContext):
        if self._model is None:
            model = AutoModelForCausalLM.from_pretrained(context.model_path, dtype=torch.float32)
            self._model = model.to(context.device).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(context.model_path)
            self._cost = ForwardCost.of(self._model)
        return self._model, self._tokenizer

    def sample(self, prompts: list[str], seed: int, context: LabellingContext) -> list[str]:
        """One completion per prompt from the reference (prompts repeat K times)."""
        from iprm.tasks.sampling import sample_responses  # iprm.tasks imports the data modules, and so this

        model, tokenizer = self._load(context)
        return sample_responses(
            model, tokenizer, prompts, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
            seed=seed, batch_size=self.batch_size, desc=f"{self.method}: sampling",
        )  # fmt: skip

    def _label(self, records: list[Record], context: LabellingContext) -> list[dict]:
        prefixes = []  # (record index, step k, prefix text) for every step but the last
        for i, record in enumerate(records):
            steps = step_texts(record.response, context.separator)
            for k in range(1, len(steps)):
                prefixes.append((i, k, context.separator.join(steps[:k]) + context.separator))
        prompts = [records[i].prompt + prefix for i, _, prefix in prefixes for _ in range(self.completions)]
        seed = random.Random(f"{self.seed}/{record_key(records[0])}").randrange(2**31)
        completions = self.sample(prompts, seed, context) if prompts else []
        _, tokenizer = self._load(context)
        # Every prompt token and every sampled token (with the EOS that ended it) passes the model once.
        prompt_tokens = [len(ids) for ids in tokenizer(prompts)["input_ids"]] if prompts else []
        sampled = tokenizer(completions, add_special_tokens=False)["input_ids"] if completions else []
        new_tokens = [len(ids) + 1 for ids in sampled]
        entries = []
        for record in records:  # the last step's value is the response's own outcome
            steps = len(step_texts(record.response, context.separator))
            entries.append({"values": [float(bool(record.label))] * steps, "flops": 0.0, "tokens": 0})
        for p, (i, k, prefix) in enumerate(prefixes):
            span = slice(p * self.completions, (p + 1) * self.completions)
            correct = [context.grade(records[i].prompt, prefix + c) for c in completions[span]]
            value = sum(correct) / len(correct)
            entries[i]["values"][k - 1] = value if self.rule == "soft" else float(value > 0)
            tokens = sum(prompt_tokens[span]) + sum(new_tokens[span])
            entries[i]["tokens"] += tokens
            entries[i]["flops"] += self._cost.sampling(tokens, self.completions)
        return entries


class AutoPSVLabels(StepLabeller):
    """AutoPSV's step labels: where a trained ORM's confidence drops, relative to the step before.

    Args:
        orm: the exported ORM (`python -m iprm fit … --config configs/baselines/orm.yaml`, its
            `model.export_dir`): a checkpoint directory with `value_head.json`.
        threshold: a step is bad where (c_{k−1} − c_k)/c_{k−1} exceeds this.
        batch_size: responses scored at once.
    """

    method = "autopsv"

    def __init__(self, orm: str, threshold: float = 0.5, batch_size: int = 64):
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.orm, self.threshold, self.batch_size = orm, threshold, batch_size

    def settings(self) -> dict:
        # The ORM is read at the step ends, so labels cached under another step convention are not reused.
        return {
            "orm": fingerprint(self.orm, "float32"),
            "threshold": self.threshold,
            "step_convention": STEP_CONVENTION,
        }

    def fixed_flops(self) -> float:
        flops = Path(self.orm) / "flops.json"
        if not flops.is_file():
            log.warning("%s has no flops.json: AutoPSV's cost leaves out training the ORM", self.orm)
            return 0.0
        return float(json.loads(flops.read_text())["train"])

    def _label(self, records: list[Record], context: LabellingContext) -> list[dict]:
        orm = load_exported(self.orm).to(context.device)
        collate = Collator(AutoTokenizer.from_pretrained(self.orm), context.separator)
        cost = ForwardCost.of(orm.model)
        entries = []
        for begin in range(0, len(records), self.batch_size):
            part = records[begin : begin + self.batch_size]
            batch = collate([{"record": r, "index": i, "group": 0} for i, r in enumerate(part)])
            batch = {k: v.to(context.device) for k, v in batch.items()}
            prompt_end = batch["response_mask"].int().argmax(-1, keepdim=True) - 1
            batch["step_ends"] = torch.cat([prompt_end, batch["step_ends"]], -1)
            with torch.no_grad():
                confidence = torch.sigmoid(orm.step_logits(batch)).cpu()
            lengths = batch["attention_mask"].sum(-1)
            for row in range(len(part)):
                c = confidence[row][~confidence[row].isnan()].tolist()
                entries.append({
                    "values": autopsv_values(c, self.threshold),
                    "flops": cost(lengths[row : row + 1]),
                    "tokens": int(lengths[row]),
                })  # fmt: skip
        return entries


def autopsv_values(confidence: list[float], threshold: float) -> list[float]:
    """Prefix values from an ORM's confidences [c_0 (prompt end), c_1, …, c_S]: 1 until the first step
    whose relative drop exceeds `threshold`, 0 from it on."""
    values, good = [], True
    for before, after in zip(confidence, confidence[1:], strict=False):
        good = good and not (before > 0 and (before - after) / before > threshold)
        values.append(float(good))
    return values
