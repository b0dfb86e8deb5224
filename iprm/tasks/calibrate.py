"""Calibrate a generator: train candidate policies and measure each one's pass@1 and error profile.

How the default generators' settings were chosen (aiming at the paper's spread of generator strengths):

    python -m iprm.tasks.calibrate --candidates '[{"misconception_rate": 0.8, "problems": 10000}, …]' \\
        --target 0.2 --device cuda --output weak.json

Each candidate is a `Policy` (keyword arguments) trained in the default world of `--seed`, exactly as the
world trains a generator, then sampled at temperature 1 on `--problems` development problems × 8. The
candidate whose pass@1 is closest to `--target` is written to `--output`.
"""

import argparse
import json
from pathlib import Path

from iprm.tasks.world import Policy, World, _Build, error_profile


def measure(policy: Policy, seed: int, problems: int, device: str) -> dict:
    world = World(seed=seed)
    build = _Build(world, Path("/dev/null"), device)
    (dev, _, _), held_out = build.held_out_and_rollout_problems()
    model = build.train_policy("calibration", policy, held_out)
    records = build.sample(model, dev[:problems], 8, 1.0, "calibration", "calibration")
    return {
        "policy": vars(policy),
        **error_profile(records),
        "seconds": round(sum(build.seconds.values()), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.tasks.calibrate", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--candidates", required=True, help="JSON list of Policy keyword arguments")
    parser.add_argument("--target", type=float, required=True, help="the pass@1 to aim at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    results = []
    for candidate in json.loads(args.candidates):
        results.append(measure(Policy(**candidate), args.seed, args.problems, args.device))
        print(json.dumps(results[-1]), flush=True)
    best = min(results, key=lambda r: abs(r["pass@1"] - args.target))
    args.output.write_text(json.dumps({"best": best, "candidates": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
