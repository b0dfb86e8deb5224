"""The command lines of a run: `python -m iprm fit|test` with the sweep's configs, the point's overrides
(placeholders filled by `iprm.sweep.template`), the seed and the run's own log directory."""

import itertools
import sys
from pathlib import Path

from iprm.errors import ConfigError
from iprm.sweep.plan import Run
from iprm.sweep.template import expand

# The program a stage runs; a launcher passes it to every run (tests put a fake here).
PROGRAM: tuple[str, ...] = (sys.executable, "-m", "iprm")


def cli_args(run: Run, base: list[str], extra: list[str], stage: str) -> list[str]:
    """The arguments of `python -m iprm <stage>` for a run: configs, overrides (placeholders filled),
    seed, its own log directory (where checkpoints and the exported policy go too), then `extra`."""
    configs = [*base, *run.overrides.get("config", [])]
    overrides = [[f"--{key}", expand(v, run, key)] for key, v in run.overrides.items() if key != "config"]
    return [
        *(arg for config in configs for arg in ("--config", str(config))),
        *itertools.chain.from_iterable(overrides),
        "--seed_everything", str(run.seed), "--data.seed", str(run.seed),
        "--trainer.default_root_dir", str(run.directory),
        "--trainer.logger.init_args.save_dir", str(run.directory / stage),
        *extra,
    ]  # fmt: skip


def command(stage: str, args: list[str], program: tuple[str, ...] | None = None) -> list[str]:
    return [*(program or PROGRAM), stage, *args]


def check_values(runs: list[Run]) -> None:
    """Fill every value of every run once, so a bad placeholder or an undeclared reference to another point
    is refused before anything runs."""
    names = {run.point.partition(",")[0] for run in runs}
    for run in runs:
        for key, value in run.overrides.items():
            if key != "config":
                expand(value, run, key, names)


def inside(output: Path, directory: Path) -> Path:
    """`directory` resolved, proven to lie strictly inside `output` (symbolic links followed)."""
    root, resolved = output.resolve(), directory.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ConfigError(
            f"run directory {directory} resolves to {resolved}, outside --output {root}; refused"
        )
    return resolved
