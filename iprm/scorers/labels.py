"""Step labels for the explicit-PRM baselines, derived the way each method derives them, cached and costed.

Each labeller returns the training records with `step_values` (the target of each step's prefix in [0, 1])
and without the world's true `step_labels` (a real study has none), and counts what the labelling cost
(once per distinct response: rollouts repeat, and a repeated response needs no second labelling):

    Math-Shepherd (`MonteCarloLabels`)   for each step prefix y_{≤k} (k < S) of each response, K completions
        sampled from the reference; v_k = 1[any completion reaches the right answer] ("hard") or the
        fraction that does ("soft"); the last step's value is the response's own outcome.
        Cost: sampling K·(S − 1) completions per response with a KV cache (`ForwardCost.sampling`).
    AutoPSV (`AutoPSVLabels`, Lu et al. 2024)   an outcome-supervised verifier, trained on the outcome label
        at the prompt's end and every step end (`ExplicitPRM(target="outcome_every_step")`), so its
        confidence c_k = σ(h_k) estimates P(correct | y_{≤k}); step k is bad when the relative change
        (c_k − c_{k−1})/c_{k−1} < −θ, and v_k = 1 until the first bad step, 0 from it on.
        Cost: the verifier's training FLOPs (its export's `flops.json`) plus one forward per response.

Before the labels are used, the run reports them (`iprm.scorers.label_report`: the share of prefixes labelled
good and, where the records carry true step labels, agreement, precision and recall against them; logged,
and returned with the cost for the run's metrics), and refuses labels of one class.

Labels are kept per record (keyed by prompt and response) under `<cache_dir>/<method>-<settings digest>/`,
one checksummed shard per labelled chunk (`iprm.scorers.label_cache`): a killed labelling resumes where it
stopped, runs on subsets of one training set share their labels, a finished run's labels are never
recomputed, and a shard altered on disk is labelled again, not used. Costs are cached with the labels, so a
run's data FLOPs count every label it uses whether or not it computed it.

Under DDP (`torch.distributed` running) the records still unlabelled are cut into the same chunks as in one
process, chunk c goes to rank c mod R, each rank writes its shards into the shared cache, and every rank
then holds every entry (gathered), so R ranks label exactly what one process would, each about 1/R of it.
"""

import hashlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from iprm.data.collate import STEP_CONVENTION, Collator, split_steps
from iprm.data.records import Record
from iprm.distributed import gather_objects, world
from iprm.errors import ConfigError
from iprm.flops import ForwardCost
from iprm.generation.backend import Sampling
from iprm.generation.transformers_backend import TransformersBackend
from iprm.refcache import fingerprint
from iprm.sampling import untouched_random_state
from iprm.scorers.explicit import load_exported, prompt_and_step_ends
from iprm.scorers.label_cache import LabelCache, record_key
from iprm.scorers.label_report import check_two_classes, format_report, label_report

log = logging.getLogger(__name__)
Grader = Callable[[str, str], bool]  # (prompt, response) → is the final answer right?
__all__ = ["AutoPSVLabels", "LabelCache", "LabellingContext", "MonteCarloLabels", "StepLabeller",
           "record_key"]  # fmt: skip


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
    """Base of the labellers: subclasses define `method`, `settings()`, `describe()` and
    `_label(records, context)`, and may derive the values from what they cache (`values`)."""

    method = ""
    last_is_outcome = False  # whether the last step's value is the response's outcome, not an estimate
    chunk_records = 256  # records labelled per shard; under DDP the unit dealt to the ranks
    min_class_share = 0.0  # labels whose smaller class is at most this share are refused

    def settings(self) -> dict:
        raise NotImplementedError

    def describe(self) -> str:
        """The method and its setting, as messages name it ("math_shepherd (K = 8, hard)")."""
        return self.method

    def _label(self, records: list[Record], context: LabellingContext) -> list[dict]:
        """For each record: {"values": [v_1, …, v_S] (or what `values` derives them from), "flops": …,
        "tokens": …}."""
        raise NotImplementedError

    def values(self, entry: dict) -> list[float]:
        """The step values of a cached entry."""
        return entry["values"]

    def label(self, records: list[Record], context: LabellingContext) -> tuple[list[Record], dict]:
        """The records with their step values (and no true step labels), and the labelling's cost with its
        report (`cost["report"]`, `iprm.scorers.label_report`)."""
        cache = LabelCache(context.cache_dir / f"{self.method}-{self._digest(context)}")
        with untouched_random_state(context.device):  # a run trains alike with its labels cached or not
            self._fill(cache, records, context)
        entries = [cache[record_key(r)] for r in records]
        labelled = [
            replace(r, step_values=tuple(self.values(e)), step_labels=None, step_tags=None)
            for r, e in zip(records, entries, strict=True)
        ]
        # A response sampled twice (rollouts repeat) is labelled once: cost and report count distinct ones.
        distinct = {record_key(r): (r, e) for r, e in zip(records, entries, strict=True)}
        report = label_report(
            [self.values(e) for _, e in distinct.values()],
            [r.step_labels for r, _ in distinct.values()],
            self.last_is_outcome,
        )
        log.info("%s: %s", self.describe(), format_report(report))
        check_two_classes(report, self.describe(), self.min_class_share, self.hint(list(distinct.values())))
        cost = {
            "method": self.method,
            "records": len(records),
            "distinct_records": len(distinct),
            "tokens": sum(e["tokens"] for _, e in distinct.values()),
            "flops": sum(e["flops"] for _, e in distinct.values()) + self.fixed_flops(),
            "report": report,
        }
        return labelled, cost

    def hint(self, labelled: list[tuple[Record, dict]]) -> str:
        """What to try when the labels are one class (the refusal's last sentence)."""
        return ""

    def _fill(self, cache: LabelCache, records: list[Record], context: LabellingContext) -> None:
        """Label the records the cache lacks, this rank's chunks of them, and gather every rank's entries."""
        size, rank = world()
        missing = [r for r in dict.fromkeys(records) if record_key(r) not in cache]
        if size > 1:  # one plan on every rank: what any rank lacks, in the records' order
            lacking = set().union(*gather_objects({record_key(r) for r in missing}))
            missing = [r for r in dict.fromkeys(records) if record_key(r) in lacking]
        if not missing:
            return
        chunks = [missing[b : b + self.chunk_records] for b in range(0, len(missing), self.chunk_records)]
        mine = chunks[rank::size]
        log.info("%s: labelling %d of %d training records (%d on this rank of %d)", self.method,
                 len(missing), len(records), sum(map(len, mine)), size)  # fmt: skip
        added: dict[str, dict] = {}
        with tqdm(total=sum(map(len, mine)), desc=f"{self.method}: labelling", unit="response") as progress:
            for part in mine:
                entries = {record_key(r): e for r, e in zip(part, self._label(part, context), strict=True)}
                cache.add(entries)
                added.update(entries)
                progress.update(len(part))
        if size > 1:
            for entries in gather_objects(added):
                cache.entries.update(entries)

    def fixed_flops(self) -> float:
        """FLOPs the labelling spent once, whatever the records (e.g. training the verifier AutoPSV reads)."""
        return 0.0

    def _digest(self, context: LabellingContext) -> str:
        key = {"settings": self.settings(), "model": fingerprint(context.model_path, "float32"),
               "separator": context.separator}  # fmt: skip
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


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
        chunk_records: records labelled per cache shard, each chunk with its own seed; under DDP the unit
            dealt to the ranks (lower it when there are few chunks per rank).
        min_class_share: labels whose good or bad step prefixes are at most this share are refused (0:
            refused only when all are one class).
    """

    method = "math_shepherd"
    last_is_outcome = True

    def __init__(
        self,
        completions: int = 8,
        rule: Literal["hard", "soft"] = "hard",
        temperature: float = 1.0,
        max_new_tokens: int = 96,
        batch_size: int = 512,
        seed: int = 0,
        chunk_records: int = 256,
        min_class_share: float = 0.0,
    ):
        if completions < 1 or rule not in ("hard", "soft") or temperature <= 0 or chunk_records < 1:
            raise ConfigError(f"step_labels: need completions >= 1, rule 'hard' or 'soft', temperature > 0, "
                              f"chunk_records >= 1; got {completions}, {rule!r}, {temperature}, "
                              f"{chunk_records}")  # fmt: skip
        self.completions, self.rule, self.temperature = completions, rule, temperature
        self.max_new_tokens, self.batch_size, self.seed = max_new_tokens, batch_size, seed
        self.chunk_records, self.min_class_share = chunk_records, _class_share(min_class_share)
        self._model = None
        self.sampled_count = 0  # completions this process sampled (DDP: this rank's share)

    def settings(self) -> dict:
        return {"completions": self.completions, "rule": self.rule, "temperature": self.temperature,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}  # fmt: skip

    def describe(self) -> str:
        return f"{self.method} (K = {self.completions}, {self.rule})"

    def hint(self, labelled: list[tuple[Record, dict]]) -> str:
        return "Try more completions (K) or the soft rule, or check the reference can solve these problems."

    def _load(self, context: LabellingContext):
        if self._model is None:
            model = AutoModelForCausalLM.from_pretrained(context.model_path, dtype=torch.float32)
            self._model = model.to(context.device).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(context.model_path)
            self._cost = ForwardCost.of(self._model)
        return self._model, self._tokenizer

    def sample(self, prompts: list[str], seed: int, context: LabellingContext) -> list[str]:
        """One completion per prompt from the reference (prompts repeat K times), sampled in exact length
        buckets (no padding), so each is what the reference gives that prompt alone under the batch's seed."""
        model, tokenizer = self._load(context)
        backend = TransformersBackend(model, tokenizer, batch_size=self.batch_size, bucketed=True)
        sampling = Sampling(temperature=self.temperature, max_new_tokens=self.max_new_tokens)
        with tqdm(total=len(prompts), desc=f"{self.method}: sampling", unit="response") as progress:
            completions = backend.generate(prompts, sampling, seed, progress.update)
        self.sampled_count += len(prompts)
        return [completion.text for completion in completions]

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
    """AutoPSV's step labels: where an outcome-supervised verifier's confidence drops, relative to the step
    before (Lu et al. 2024, "AutoPSV: Automated Process-Supervised Verifier").

    The confidences c_0 (prompt end), c_1, …, c_S are cached, not the labels, so every θ reuses one pass of
    the verifier; the labels of each θ are derived from them (`autopsv_values`).

    Args:
        orm: the exported outcome-supervised verifier, trained on the outcome label at every step end
            (`python -m iprm fit … --config configs/baselines/osv.yaml --model.export_dir runs/osv`): a
            checkpoint directory with `value_head.json` whose target is "outcome_every_step".
        threshold: θ; step k is bad where the relative change (c_k − c_{k−1})/c_{k−1} is below −θ.
        batch_size: responses scored at once.
        chunk_records: records labelled per cache shard; under DDP the unit dealt to the ranks.
        min_class_share: labels whose good or bad step prefixes are at most this share are refused (0:
            refused only when all are one class).
    """

    method = "autopsv"

    def __init__(
        self,
        orm: str,
        threshold: float = 0.5,
        batch_size: int = 64,
        chunk_records: int = 256,
        min_class_share: float = 0.0,
    ):
        if not 0 < threshold < 1 or chunk_records < 1:
            raise ConfigError(f"step_labels: threshold must be in (0, 1) and chunk_records >= 1, got "
                              f"{threshold}, {chunk_records}")  # fmt: skip
        self.orm, self.threshold, self.batch_size = orm, threshold, batch_size
        self.chunk_records, self.min_class_share = chunk_records, _class_share(min_class_share)

    def settings(self) -> dict:
        # The verifier is read at the step ends, so confidences cached under another step convention are not
        # reused; θ is applied on reading, so it is no part of the cache's key.
        return {"orm": fingerprint(self.orm, "float32"), "step_convention": STEP_CONVENTION,
                "cached": "confidence"}  # fmt: skip

    def describe(self) -> str:
        return f"{self.method} (θ = {self.threshold})"

    def values(self, entry: dict) -> list[float]:
        return autopsv_values(entry["confidence"], self.threshold)

    def hint(self, labelled: list[tuple[Record, dict]]) -> str:
        shares = threshold_shares([e["confidence"] for _, e in labelled], THRESHOLDS)
        usable = [f"{t} ({share:.0%} good)" for t, share in shares.items() if 0.05 <= share <= 0.95]
        listed = ", ".join(f"{t}: {share:.1%}" for t, share in shares.items())
        return f"Share labelled good by θ on these records: {listed}. " + (
            f"θ with 5–95 % good: {', '.join(usable)}." if usable else "No θ gives 5–95 % good."
        )

    def fixed_flops(self) -> float:
        flops = Path(self.orm) / "flops.json"
        if not flops.is_file():
            log.warning("%s has no flops.json: AutoPSV's cost leaves out training its verifier", self.orm)
            return 0.0
        return float(json.loads(flops.read_text())["train"])

    def _label(self, records: list[Record], context: LabellingContext) -> list[dict]:
        verifier = load_exported(self.orm).to(context.device)
        if verifier.hparams.target != "outcome_every_step":
            raise ConfigError(
                f"step_labels.orm: {self.orm} was trained with target {verifier.hparams.target!r}; AutoPSV "
                "reads a verifier trained on the outcome label at every step end (target "
                "'outcome_every_step', configs/baselines/osv.yaml), whose confidence at step k estimates "
                "P(correct | steps 1..k)"
            )
        collate = Collator(AutoTokenizer.from_pretrained(self.orm), context.separator)
        cost = ForwardCost.of(verifier.model)
        entries = []
        for begin in range(0, len(records), self.batch_size):
            part = records[begin : begin + self.batch_size]
            batch = collate([{"record": r, "index": i, "group": 0} for i, r in enumerate(part)])
            batch = {k: v.to(context.device) for k, v in batch.items()}
            batch["step_ends"] = prompt_and_step_ends(batch)
            with torch.no_grad():
                confidence = torch.sigmoid(verifier.step_logits(batch)).cpu()
            lengths = batch["attention_mask"].sum(-1)
            for row in range(len(part)):
                c = confidence[row][~confidence[row].isnan()].tolist()
                entries.append({
                    "confidence": c,
                    "flops": cost(lengths[row : row + 1]),
                    "tokens": int(lengths[row]),
                })  # fmt: skip
        return entries


THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def autopsv_values(confidence: list[float], threshold: float) -> list[float]:
    """Prefix values from a verifier's confidences [c_0 (prompt end), c_1, …, c_S]: step k is bad where the
    relative change Δ_k = (c_k − c_{k−1})/c_{k−1} < −θ; v_k is 1 until the first bad step, 0 from it on."""
    values, good = [], True
    for before, after in zip(confidence, confidence[1:], strict=False):
        good = good and not (before > 0 and (after - before) / before < -threshold)
        values.append(float(good))
    return values


def threshold_shares(confidences: list[list[float]], thresholds: tuple[float, ...]) -> dict[float, float]:
    """The share of step prefixes AutoPSV labels good at each θ, from the verifier's confidences."""
    shares = {}
    for threshold in thresholds:
        values = [v for c in confidences for v in autopsv_values(c, threshold)]
        shares[threshold] = sum(values) / len(values) if values else float("nan")
    return shares


def _class_share(share: float) -> float:
    if not 0 <= share < 0.5:
        raise ConfigError(f"step_labels.min_class_share must be in [0, 0.5), got {share}")
    return share
