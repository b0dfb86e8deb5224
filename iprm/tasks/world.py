"""The controlled arithmetic world: typed settings, a build in named phases, cached on disk.

`World(...).build()` writes, under `root/world-<digest of the settings>/`:
- `reference/`: the tokenizer and the reference policy (`save_pretrained`), trained from scratch on
  solutions that follow the borrowing misconception at the reference's `misconception_rate`;
- `generators/<name>/`: each best-of-N generator that is a model of its own (a `Policy` trained the same
  way with its own size, data and misconception rate, as the paper's generators are three different LLMs);
- `train.jsonl`: outcome-labelled rollouts of the reference policy, several per instruction;
- `dev-<name>.jsonl`: a small best-of-N set per generator on development problems, for validation and for
  every choice made by looking at numbers;
- `test-<name>.jsonl`: the reported best-of-N set per generator, on problems disjoint from all others;
- `manifest.json`: the settings and what the build measured (pass@1 and first-error kinds per set, timings).
Nothing is rebuilt while `manifest.json` exists; the world of the default settings ships with the project
(`iprm.tasks.shipped`) and is unpacked, checksum-verified, instead of built.

Every phase draws from its own named random stream (`stream(seed, name)`), so adding a generator, a policy
or a task family cannot shift another phase's draws.

`World.build_extra(family)` adds, on demand, `extra-<family>.jsonl`: the reference's rollouts on as many
instructions of a second task family (`EXTRA_FAMILIES`), for the "extra instructions" data factor.
"""

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from iprm.data.records import Record, write_records
from iprm.errors import IPRMError, WriteError
from iprm.io import atomic_dir, exclusive
from iprm.tasks.arithmetic import Problem, sample_problem, solve
from iprm.tasks.policies import DEFAULT_GENERATORS, EXTRA_FAMILIES, Generator, Policy
from iprm.tasks.pretrain import build_model, encode_examples, pretrain
from iprm.tasks.sampling import sample_responses
from iprm.tasks.tokenizer import build_char_tokenizer
from iprm.tasks.world_files import (
    error_profile,
    graded_records,
    record_files,
    sampled_token_counts,
    verify_world,
)

log = logging.getLogger(__name__)
BUILD_VERSION = 2  # bump when the builder's output changes for the same settings
MAX_NEW_TOKENS = 96  # longest sampled response
MAX_LENGTH = 256  # positions of every world policy


def stream(seed: int, name: str) -> int:
    """The seed of the named random stream `name` of world `seed` (63 bits)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class World:
    """Settings of the controlled arithmetic world, and its builder.

    Args:
        root: directory under which built worlds are cached (one sub-directory per settings digest).
        seed: seed of every random stream of the build.
        min_steps: fewest operations in a problem.
        max_steps: most operations in a problem.
        max_value: true running values stay in [0, max_value].
        reference: the reference policy (the implicit PRM's starting point and its π_ref).
        train_instructions: instructions for which rollouts are sampled (the implicit PRM's training set).
        rollouts_per_instruction: responses sampled from the reference policy per instruction.
        rollout_temperature: temperature for those rollouts.
        dev_problems: problems in each generator's development set.
        dev_candidates: candidates per problem in each development set.
        eval_problems: problems in each generator's reported (test) set.
        candidates_per_problem: candidates per problem in each test set.
        generators: name → each best-of-N generator; None: the default three (weak, medium, strong).
    """

    root: str = ".cache/iprm/worlds"
    seed: int = 0
    min_steps: int = 3
    max_steps: int = 5
    max_value: int = 99
    reference: Policy = field(default_factory=Policy)
    train_instructions: int = 1000
    rollouts_per_instruction: int = 8
    rollout_temperature: float = 1.0
    dev_problems: int = 128
    dev_candidates: int = 16
    eval_problems: int = 256
    candidates_per_problem: int = 64
    # None rather than the default instances: a config saved from a run must load back, and jsonargparse
    # writes a dict of dataclass instances as "Unable to serialize instance …".
    generators: dict[str, Generator] | None = None

    def __post_init__(self) -> None:
        if self.generators is None:
            object.__setattr__(self, "generators", dict(DEFAULT_GENERATORS))

    @classmethod
    def from_settings(cls, settings: dict) -> "World":
        """A world from plain settings (as in a YAML config or `settings`): nested dicts become `Policy`
        and `Generator`; keys not given keep their defaults."""
        settings = {k: v for k, v in settings.items() if k != "build_version"}
        if isinstance(settings.get("reference"), dict):
            settings["reference"] = Policy(**settings["reference"])
        if settings.get("generators") is not None:
            settings["generators"] = {
                name: Generator(Policy(**g["policy"]) if g.get("policy") else None, g.get("temperature", 1.0))
                for name, g in settings["generators"].items()
            }
        return cls(**settings)

    @property
    def settings(self) -> dict:
        """Everything that determines the build (not where it is cached), as plain JSON."""
        settings = dataclasses.asdict(self)
        del settings["root"]
        return settings | {"build_version": BUILD_VERSION}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def directory(self) -> Path:
        return Path(self.root) / f"world-{self.digest}"

    @property
    def model_path(self) -> str:
        return str(self.directory / "reference")

    @property
    def train_path(self) -> str:
        return str(self.directory / "train.jsonl")

    @property
    def val_paths(self) -> dict[str, str]:
        return {name: str(self.directory / f"dev-{name}.jsonl") for name in self.generators}

    @property
    def test_paths(self) -> dict[str, str]:
        return {name: str(self.directory / f"test-{name}.jsonl") for name in self.generators}

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())

    def extra_train_path(self, family: str) -> str:
        if family not in EXTRA_FAMILIES:
            raise ValueError(f"unknown task family {family!r}; expected one of {sorted(EXTRA_FAMILIES)}")
        return str(self.directory / f"extra-{family}.jsonl")

    def build(self, device: str = "cpu") -> dict:
        """Build the world unless a finished build of the same settings exists (or ships with iprm);
        return its manifest. `device` trains and samples there (e.g. "cuda")."""
        if self.manifest_path.exists():
            log.info("reusing the world in %s", self.directory)
            return self.verified_manifest()
        try:
            return self._build(device)
        except OSError as error:  # a folder that cannot be written, a full disk: one line naming it
            if isinstance(error, IPRMError):
                raise
            where = error.filename or self.directory
            raise WriteError(
                error.errno, f"cannot build the world in {self.root}: {where}: {error.strerror}"
            ) from error

    def _build(self, device: str) -> dict:
        from iprm.tasks.shipped import unpack_shipped

        # One builder at a time: a second process waits, then finds the world the first one built.
        with exclusive(self.lock_path):
            if self.manifest_path.exists():
                log.info("reusing the world in %s (built by another process meanwhile)", self.directory)
                return self.verified_manifest()
            if unpack_shipped(self.digest, self.directory):  # checked against the shipped archive's digest
                record_files(self.directory)
                return self.manifest()
            for stale in self.directory.parent.glob(f"{self.directory.name}.building-*"):
                shutil.rmtree(stale, ignore_errors=True)  # a killed build's scratch: no one holds it now
            log.info("building the world in %s", self.directory)
            # Build into a scratch directory and rename at the end: a killed build never looks finished.
            with atomic_dir(self.directory) as scratch:
                manifest = _Build(self, scratch, device).run()
                (scratch / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
                manifest = record_files(scratch)  # every file's size and digest, checked on each reuse
        return manifest

    def verified_manifest(self) -> dict:
        """The manifest, once every file it lists is checked (`iprm.tasks.world_files.verify_world`)."""
        manifest = self.manifest()
        rebuild = f"rebuild the world: remove {self.directory} and run the same command again"
        if World.from_settings({"root": self.root, "seed": self.seed}) == self:  # a default world
            rebuild += f" (or python -m iprm.tasks.world --seed {self.seed} --root {self.root})"
        verify_world(self.directory, manifest, rebuild)
        return manifest

    @property
    def lock_path(self) -> Path:
        """The lock that builders of this world (and of its extra families) hold."""
        return Path(self.root) / f".world-{self.digest}.lock"

    def build_extra(self, family: str, device: str = "cpu") -> str:
        """Sample the reference's rollouts on `train_instructions` new problems of `family` (as many per
        instruction, at the same temperature, as the world's own rollouts), unless already there."""
        path = Path(self.extra_train_path(family))
        if path.exists():
            return str(path)
        self.build(device)
        with exclusive(self.lock_path):
            if not path.exists():
                self._sample_extra(family, path, device)
                record_files(self.directory, [path.name])  # the extra file joins the manifest's list
        return str(path)

    def _sample_extra(self, family: str, path: Path, device: str) -> None:
        build = _Build(self, self.directory, device)
        seen = build.held_out_and_rollout_problems()[1]
        seen |= {p.prompt for p in build.pretraining_problems("reference", seen)}
        rng = random.Random(stream(self.seed, f"problems/extra/{family}"))
        problems = _problems(self, rng, self.train_instructions, seen, **EXTRA_FAMILIES[family])
        model = AutoModelForCausalLM.from_pretrained(self.model_path).to(device).eval()
        records = build.rollouts(model, problems, f"extra/{family}", f"extra-{family}")
        write_records(records, path)  # atomic


def _problems(world: World, rng: random.Random, count: int, exclude: set[str], **kwargs) -> list[Problem]:
    """`count` problems not in `exclude` (which gains them)."""
    problems, attempts = [], 0
    while len(problems) < count:
        attempts += 1
        if attempts > 100 * count + 10_000:
            raise ValueError(
                f"could not draw {count} distinct problems: the settings allow too few "
                "(raise max_value or max_steps, or ask for fewer problems)"
            )
        problem = sample_problem(rng, world.min_steps, world.max_steps, world.max_value, **kwargs)
        if problem.prompt not in exclude:
            exclude.add(problem.prompt)
            problems.append(problem)
    return problems


class _Build:
    """The build's phases, in order; each phase draws only from its own named streams."""

    def __init__(self, world: World, directory: Path, device: str):
        self.world, self.directory, self.device = world, directory, device
        self.tokenizer = build_char_tokenizer()
        self.stats: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self.token_counts: dict[str, dict] = {}

    def run(self) -> dict:
        started = time.perf_counter()
        eval_sets, seen = self.held_out_and_rollout_problems()
        dev, test, rollout_problems = eval_sets
        reference = self.train_policy("reference", self.world.reference, seen)
        reference.save_pretrained(self.directory / "reference")
        self.tokenizer.save_pretrained(self.directory / "reference")
        train = self.rollouts(reference, rollout_problems, "rollouts", "arithmetic")
        write_records(train, self.directory / "train.jsonl")
        self.stats["train"] = error_profile(train) | self.token_counts["rollouts"]
        for name, generator in self.world.generators.items():
            policy = reference
            if generator.policy is not None:
                policy = self.train_policy(name, generator.policy, seen)
                policy.save_pretrained(self.directory / "generators" / name)
                self.tokenizer.save_pretrained(self.directory / "generators" / name)
            for split, problems, per in (("dev", dev, self.world.dev_candidates),
                                         ("test", test, self.world.candidates_per_problem)):  # fmt: skip
                records = self.sample(policy, problems, per, generator.temperature, f"{split}/{name}", name)
                write_records(records, self.directory / f"{split}-{name}.jsonl")
                self.stats[f"{split}-{name}"] = error_profile(records)
        self.seconds["total"] = time.perf_counter() - started
        return {
            "settings": self.world.settings,
            "digest": self.world.digest,
            "device": str(self.device),
            "torch": torch.__version__,
            "stats": self.stats,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
        }

    def held_out_and_rollout_problems(self) -> tuple[tuple[list[Problem], ...], set[str]]:
        """Development, test and rollout problems, mutually disjoint, drawn before any training set so
        that no policy ever trains on them."""
        seen: set[str] = set()
        world = self.world
        sets = tuple(
            _problems(world, random.Random(stream(world.seed, f"problems/{name}")), count, seen)
            for name, count in (
                ("dev", world.dev_problems),
                ("test", world.eval_problems),
                ("rollouts", world.train_instructions),
            )  # fmt: skip
        )
        return sets, seen

    def pretraining_problems(self, name: str, held_out: set[str], count: int | None = None) -> list[Problem]:
        count = self.world.reference.problems if count is None else count
        rng = random.Random(stream(self.world.seed, f"policy/{name}/problems"))
        return _problems(self.world, rng, count, set(held_out))

    def train_policy(self, name: str, policy: Policy, held_out: set[str]):
        started = time.perf_counter()
        problems = self.pretraining_problems(name, held_out, policy.problems)
        rng = random.Random(stream(self.world.seed, f"policy/{name}/solutions"))
        solutions = [(p.prompt, solve(p, rng, policy.misconception_rate)) for p in problems]
        torch.manual_seed(stream(self.world.seed, f"policy/{name}/init"))
        model = build_model(
            self.tokenizer, policy.hidden_size, policy.num_layers, policy.num_heads, MAX_LENGTH
        )
        pretrain(
            model,
            encode_examples(self.tokenizer, solutions),
            epochs=policy.epochs,
            batch_size=policy.batch_size,
            lr=policy.lr,
            seed=stream(self.world.seed, f"policy/{name}/order"),
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            desc=f"world: training the {name} policy",
        )
        self.seconds[f"train {name}"] = time.perf_counter() - started
        return model

    def rollouts(self, model, problems: list[Problem], stream_name: str, source: str) -> list[Record]:
        per = self.world.rollouts_per_instruction
        return self.sample(model, problems, per, self.world.rollout_temperature, stream_name, source)

    def sample(self, model, problems, per_problem, temperature, stream_name, source) -> list[Record]:
        started = time.perf_counter()
        responses = sample_responses(
            model,
            self.tokenizer,
            [p.prompt for p in problems for _ in range(per_problem)],
            temperature=temperature,
            max_new_tokens=MAX_NEW_TOKENS,
            seed=stream(self.world.seed, f"sample/{stream_name}"),
            desc=f"world: sampling {stream_name}",
        )
        self.seconds[f"sample {stream_name}"] = time.perf_counter() - started
        counts = sampled_token_counts(self.tokenizer, problems, per_problem, responses, MAX_NEW_TOKENS)
        self.token_counts[stream_name] = counts
        return graded_records(problems, responses, per_problem, source)


def main(argv: list[str] | None = None) -> None:
    """`python -m iprm.tasks.world --seed 1 [--device cuda]`: build (or find) the default world of a seed."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m iprm.tasks.world", description=main.__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=World.root)
    parser.add_argument("--device", default="cpu", help="where to train and sample, e.g. cuda")
    parser.add_argument(
        "--generators", help='JSON: name → {"policy": Policy keyword arguments or null, "temperature": t}'
    )
    args = parser.parse_args(argv)
    changes = {"root": args.root, "seed": args.seed}
    if args.generators:
        changes["generators"] = json.loads(args.generators)
    world = World.from_settings(changes)
    manifest = world.build(args.device)
    print(world.directory)
    print(json.dumps(manifest["stats"], indent=1))


if __name__ == "__main__":
    main()
