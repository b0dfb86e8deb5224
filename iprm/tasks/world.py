"""The controlled arithmetic world: built deterministically from its settings, cached on disk.

`World(...).build()` writes, under `root/world-<hash of the settings>/`:
- `reference/`: the tokenizer and the reference policy (`save_pretrained`), trained from scratch on
  solutions that follow the borrowing misconception `misconception_rate` of the time;
- `generators/<name>/`: snapshots of that training run (weaker generators, as in the paper's table of
  Mistral-7B / Llama-8B / Llama-70B);
- `train.jsonl`: outcome-labelled rollouts of the reference policy, several per instruction;
- `bon-<name>.jsonl`: held-out best-of-N candidate sets, one per generator, with step labels;
- `manifest.json`: the settings and what the build measured (pass@1 per generator, timings).
Nothing is rebuilt while `manifest.json` exists, so changing any setting means a new directory.

`World.build_extra(family)` adds, on demand, `extra-<family>.jsonl`: the reference's rollouts on as many
instructions of a second task family (`EXTRA_FAMILIES`), for the "extra instructions" data factor.
"""

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from iprm.data.records import Record, write_records
from iprm.tasks.arithmetic import Problem, sample_problem, solve, verify
from iprm.tasks.pretrain import build_model, encode_examples, pretrain
from iprm.tasks.sampling import sample_responses
from iprm.tasks.tokenizer import build_char_tokenizer

log = logging.getLogger(__name__)
BUILD_VERSION = 1  # bump when the builder's output changes for the same settings
MAX_NEW_TOKENS = 96  # longest sampled response


@dataclass(frozen=True)
class Generator:
    """A candidate generator: a snapshot of the reference's training run, sampled at a temperature.

    Args:
        fraction: fraction of the reference policy's training steps at which the snapshot is taken
            (1.0 is the reference policy itself).
        temperature: sampling temperature for its candidates.
    """

    fraction: float = 1.0
    temperature: float = 1.0


# Second task families: name → `sample_problem` keyword arguments. "addmul": addition-and-multiplication
# chains, which never subtract, so the misconception the reference believes in cannot occur.
EXTRA_FAMILIES = {"addmul": {"subtract_weight": 0.0}}

# Measured on the default world (96 fresh problems × 16 samples each): the final policy fails 28 % of
# samples by the misconception and 3 % by noise at temperature 1 (at 0.5: 28 % and 1 %), so its errors are
# the systematic ones it believes in; the 0.6 snapshot solves 38 % at temperature 1, and most of its
# failures (42 % of samples) are noise. Best-of-N sets: weak 42 %, medium 69 %, strong 74 % pass@1.
DEFAULT_GENERATORS = {
    "weak": Generator(fraction=0.6, temperature=1.0),
    "medium": Generator(fraction=1.0, temperature=0.8),
    "strong": Generator(fraction=1.0, temperature=0.5),
}


class World:
    """Settings of the controlled arithmetic world, and its builder.

    Args:
        root: directory under which built worlds are cached (one sub-directory per settings hash).
        seed: seed for problems, solutions, model initialisation and sampling.
        min_steps: fewest operations in a problem.
        max_steps: most operations in a problem.
        max_value: true running values stay in [0, max_value].
        misconception_rate: probability that a training solution subtracts a borrowing step digit by
            digit without borrowing (the systematic error the reference policy comes to believe).
        pretrain_problems: worked solutions the reference policy is trained on.
        pretrain_epochs: passes over them.
        pretrain_batch_size: sequences per optimisation step.
        pretrain_lr: peak AdamW learning rate.
        hidden_size: width of the tiny Llama.
        num_layers: its depth.
        num_heads: its attention heads.
        train_instructions: instructions for which rollouts are sampled (the implicit PRM's training set).
        rollouts_per_instruction: responses sampled from the reference policy per instruction.
        rollout_temperature: temperature for those rollouts.
        eval_problems: held-out problems in each best-of-N set.
        candidates_per_problem: candidates per problem in each best-of-N set.
        generators: name → snapshot and temperature of each best-of-N generator.
    """

    def __init__(
        self,
        root: str = ".cache/iprm/worlds",
        seed: int = 0,
        min_steps: int = 3,
        max_steps: int = 5,
        max_value: int = 99,
        misconception_rate: float = 0.4,
        pretrain_problems: int = 20000,
        pretrain_epochs: int = 4,
        pretrain_batch_size: int = 64,
        pretrain_lr: float = 3e-3,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        train_instructions: int = 1000,
        rollouts_per_instruction: int = 8,
        rollout_temperature: float = 0.7,
        eval_problems: int = 256,
        candidates_per_problem: int = 64,
        generators: dict[str, Generator] | None = None,
    ):
        self.root = root
        self.settings = {
            "seed": seed,
            "min_steps": min_steps,
            "max_steps": max_steps,
            "max_value": max_value,
            "misconception_rate": misconception_rate,
            "pretrain_problems": pretrain_problems,
            "pretrain_epochs": pretrain_epochs,
            "pretrain_batch_size": pretrain_batch_size,
            "pretrain_lr": pretrain_lr,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "train_instructions": train_instructions,
            "rollouts_per_instruction": rollouts_per_instruction,
            "rollout_temperature": rollout_temperature,
            "eval_problems": eval_problems,
            "candidates_per_problem": candidates_per_problem,
            "generators": {
                name: dataclasses.asdict(g) for name, g in (generators or DEFAULT_GENERATORS).items()
            },
            "build_version": BUILD_VERSION,
        }
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        self.directory = Path(root) / f"world-{digest}"

    @property
    def model_path(self) -> str:
        return str(self.directory / "reference")

    @property
    def train_path(self) -> str:
        return str(self.directory / "train.jsonl")

    @property
    def eval_paths(self) -> dict[str, str]:
        return {name: str(self.directory / f"bon-{name}.jsonl") for name in self.settings["generators"]}

    @property
    def val_paths(self) -> dict[str, str]:
        return self.eval_paths

    @property
    def test_paths(self) -> dict[str, str]:
        return self.eval_paths

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def extra_train_path(self, family: str) -> str:
        if family not in EXTRA_FAMILIES:
            raise ValueError(f"unknown task family {family!r}; expected one of {sorted(EXTRA_FAMILIES)}")
        return str(self.directory / f"extra-{family}.jsonl")

    def build_extra(self, family: str) -> str:
        """Sample the reference's rollouts on `train_instructions` new problems of `family` (as many per
        instruction, at the same temperature, as the world's own rollouts), unless already there."""
        path = Path(self.extra_train_path(family))
        if path.exists():
            return str(path)
        self.build()
        settings = self.settings
        # Every prompt of the build, by replaying its draws (held-out, rollouts, pretraining problems).
        seen: set[str] = set()
        replay = random.Random(settings["seed"])
        for count in ("eval_problems", "train_instructions", "pretrain_problems"):
            _problems(settings, replay, settings[count], seen)
        rng = random.Random(f"{settings['seed']}-{family}")
        family_settings = {**settings, **EXTRA_FAMILIES[family]}
        problems = _problems(family_settings, rng, settings["train_instructions"], seen)
        model = AutoModelForCausalLM.from_pretrained(self.model_path).eval()
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        per = settings["rollouts_per_instruction"]
        responses = _sample(
            model, tokenizer, problems, per, settings["rollout_temperature"], settings["seed"] + 100,
            f"world: sampling rollouts of the {family} family",
        )  # fmt: skip
        scratch = path.with_name(f"{path.name}.building-{os.getpid()}")
        write_records(graded_records(problems, responses, per, f"extra-{family}"), scratch)
        os.replace(scratch, path)
        return str(path)

    def build(self) -> dict:
        """Build the world unless a finished build of the same settings exists; return its manifest."""
        if self.manifest_path.exists():
            log.info("reusing the world in %s", self.directory)
            return self.manifest()
        # Build into a scratch directory and rename at the end: a killed build never looks finished.
        scratch = self.directory.with_name(self.directory.name + f".building-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        manifest = _build(self.settings, scratch)
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(self.directory, ignore_errors=True)
        os.replace(scratch, self.directory)
        return manifest


def _problems(settings: dict, rng: random.Random, count: int, exclude: set[str]) -> list[Problem]:
    problems, attempts = [], 0
    while len(problems) < count:
        attempts += 1
        if attempts > 100 * count + 10_000:
            raise ValueError(
                f"could not draw {count} distinct problems: the settings allow too few "
                "(raise max_value or max_steps, or ask for fewer problems)"
            )
        problem = sample_problem(
            rng,
            settings["min_steps"],
            settings["max_steps"],
            settings["max_value"],
            settings.get("subtract_weight", 2.0),
        )
        if problem.prompt not in exclude:
            exclude.add(problem.prompt)
            problems.append(problem)
    return problems


def graded_records(
    problems: list[Problem], responses: list[str], per_problem: int, source: str
) -> list[Record]:
    """Records of `per_problem` consecutive responses to each problem, graded by the exact verifier
    (outcome, answer, step labels and tags); the instruction id is the prompt."""
    records = []
    for i, response in enumerate(responses):
        problem = problems[i // per_problem]
        # An immediate EOS is a (wrong) answer too; records need a non-empty response to score.
        response = response if response.strip() else "A:"
        verdict = verify(problem, response)
        records.append(
            Record(
                instruction_id=problem.prompt.strip(),
                prompt=problem.prompt,
                response=response,
                label=verdict.label,
                answer=verdict.answer,
                source=source,
                step_labels=verdict.step_labels,
                step_tags=verdict.step_tags,
            )
        )
    return records


def _sample(model, tokenizer, problems, per_problem, temperature, seed, desc) -> list[str]:
    prompts = [p.prompt for p in problems for _ in range(per_problem)]
    return sample_responses(
        model,
        tokenizer,
        prompts,
        temperature=temperature,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=seed,
        desc=desc,
    )


def _sampled_token_counts(tokenizer, problems: list[Problem], per_problem: int, responses: list[str]) -> dict:
    """Tokens the sampler processed (for data FLOPs): prompts with <bos>; generated tokens with the <eos>
    that stopped them (none at MAX_NEW_TOKENS). Padding of rows that finished early is not counted."""
    prompts = tokenizer([p.prompt for p in problems])["input_ids"]
    generated = [len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    return {
        "prompt_tokens": per_problem * sum(map(len, prompts)),
        "sampled_tokens": sum(n + (n < MAX_NEW_TOKENS) for n in generated),
    }


def _build(settings: dict, directory: Path) -> dict:
    started = time.perf_counter()
    seed = settings["seed"]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tokenizer = build_char_tokenizer()
    seen: set[str] = set()
    # Held-out problems are drawn first so that training never sees them.
    eval_problems = _problems(settings, rng, settings["eval_problems"], seen)
    rollout_problems = _problems(settings, rng, settings["train_instructions"], seen)
    pretrain_problems = _problems(settings, rng, settings["pretrain_problems"], seen)
    solutions = [(p.prompt, solve(p, rng, settings["misconception_rate"])) for p in pretrain_problems]

    model = build_model(
        tokenizer, settings["hidden_size"], settings["num_layers"], settings["num_heads"], max_length=256
    )
    generators = settings["generators"]

    def save_snapshot(fraction: float, snapshot) -> None:
        for name, generator in generators.items():
            if generator["fraction"] == fraction and fraction < 1.0:
                snapshot.save_pretrained(directory / "generators" / name)
                tokenizer.save_pretrained(directory / "generators" / name)

    pretrain(
        model,
        encode_examples(tokenizer, solutions),
        epochs=settings["pretrain_epochs"],
        batch_size=settings["pretrain_batch_size"],
        lr=settings["pretrain_lr"],
        seed=seed,
        pad_id=tokenizer.pad_token_id,
        snapshot_at=sorted({g["fraction"] for g in generators.values()}),
        on_snapshot=save_snapshot,
    )
    model.save_pretrained(directory / "reference")
    tokenizer.save_pretrained(directory / "reference")
    pretrain_seconds = time.perf_counter() - started

    per_rollout = settings["rollouts_per_instruction"]
    responses = _sample(
        model,
        tokenizer,
        rollout_problems,
        per_rollout,
        settings["rollout_temperature"],
        seed + 1,
        "world: sampling training rollouts",
    )
    train = graded_records(rollout_problems, responses, per_rollout, "arithmetic")
    write_records(train, directory / "train.jsonl")

    stats = {"train": {"records": len(train), "pass@1": sum(r.label for r in train) / len(train)}}
    stats["train"] |= _sampled_token_counts(tokenizer, rollout_problems, per_rollout, responses)
    per_candidate = settings["candidates_per_problem"]
    for offset, (name, generator) in enumerate(generators.items()):
        # The final policy is still in memory; only snapshots are read back from disk.
        snapshot = directory / "generators" / name
        policy = model if generator["fraction"] >= 1.0 else type(model).from_pretrained(snapshot).eval()
        responses = _sample(
            policy,
            tokenizer,
            eval_problems,
            per_candidate,
            generator["temperature"],
            seed + 2 + offset,
            f"world: sampling best-of-N candidates ({name})",
        )
        records = graded_records(eval_problems, responses, per_candidate, name)
        write_records(records, directory / f"bon-{name}.jsonl")
        stats[name] = {"records": len(records), "pass@1": sum(r.label for r in records) / len(records)}
    return {
        "settings": settings,
        "stats": stats,
        "seconds": {"pretrain": round(pretrain_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
