"""The paper's Table 3: each trained implicit PRM used as a policy, against the reference it started from.

Training an implicit PRM fine-tunes a policy; does that policy solve problems better? Each checkpoint
answers the world's held-out test problems (the problems of its best-of-N test sets, never trained on)
greedily and by sampling at temperature 1; answers are graded by the world's verifier.

    python -m iprm.analysis.as_policy [--config configs/quickstart.yaml] [--world.seed 0] \
        --policy reference=<world>/reference \
        --policy ce=runs/sweeps/objectives/ce/seed0/fit/quickstart/version_0/policy [--samples 4]

The world is the one the config's `data.init_args.world` describes (its seed and root overridable).

writes a markdown table (accuracy per policy: greedy, sampled mean over `--samples`) to stdout and, with
`--output`, to a file.
"""

import argparse
import json
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from iprm.data.records import load_records
from iprm.eval.report import to_markdown
from iprm.io import atomic_write
from iprm.tasks.arithmetic import grade
from iprm.tasks.sampling import sample_responses
from iprm.tasks.world import World


def held_out_prompts(world: World, problems: int | None = None) -> list[str]:
    """The distinct prompts of the world's test sets, in file order (the first `problems` of them)."""
    prompts = dict.fromkeys(r.prompt for path in world.test_paths.values() for r in load_records(path))
    return list(prompts)[:problems]


def accuracy(model_path: str, prompts: list[str], samples: int, seed: int, device: str = "cpu") -> dict:
    """Greedy accuracy, and the mean accuracy of `samples` samples at temperature 1, on `prompts`."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    greedy = sample_responses(model, tokenizer, prompts, temperature=0.0, max_new_tokens=96, seed=seed,
                              desc="greedy")  # fmt: skip
    repeated = [p for p in prompts for _ in range(samples)]
    sampled = sample_responses(model, tokenizer, repeated, temperature=1.0, max_new_tokens=96, seed=seed,
                               desc="sampled")  # fmt: skip
    return {
        "problems": len(prompts),
        "greedy": sum(map(grade, prompts, greedy)) / len(prompts),
        "sampled": sum(map(grade, repeated, sampled)) / len(repeated),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.analysis.as_policy", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--config", default="configs/quickstart.yaml", help="the config naming the world")
    parser.add_argument("--world.root", dest="root", help="override the world's cache root")
    parser.add_argument("--world.seed", dest="seed", type=int, help="override the world's seed")
    parser.add_argument("--policy", action="append", required=True, metavar="NAME=DIR",
                        help="a checkpoint to evaluate; repeat for several")  # fmt: skip
    parser.add_argument("--samples", type=int, default=4, help="samples per problem at temperature 1")
    parser.add_argument("--problems", type=int, help="only the first N held-out problems")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", help="also write the table (markdown) and its rows (JSON) here")
    args = parser.parse_args(argv)
    settings = yaml.safe_load(Path(args.config).read_text())["data"]["init_args"]["world"]
    overrides = {key: value for key, value in (("root", args.root), ("seed", args.seed)) if value is not None}
    world = World.from_settings(settings | overrides)
    world.build()
    prompts = held_out_prompts(world, args.problems)
    rows = []
    for spec in args.policy:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_dir():
            parser.error(f"--policy {spec!r}: expected NAME=DIR with an existing checkpoint directory")
        rows.append({"policy": name, **accuracy(path, prompts, args.samples, world.seed, args.device)})
    table = to_markdown(rows)
    print(table)
    if args.output:
        with atomic_write(args.output) as file:
            file.write(table + "\n\n```json\n" + json.dumps(rows, indent=2) + "\n```\n")


if __name__ == "__main__":
    main()
