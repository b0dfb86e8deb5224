"""`python -m iprm.sweep`: plan a sweep, launch its unfinished runs (locally or on SLURM), collect.

    python -m iprm.sweep SWEEP.yaml [--output DIR] [--seeds N] [--by-seed] [--points P …] [--dry-run]
        [--retrain-changed] [--launcher local|slurm] [--jobs K] [--wait] [--launcher.KEY VALUE …]
        [--any.cli.flag VALUE …]
    python -m iprm.sweep collect DIR

Other `--flags` are appended to every fit and test. A finished run is reused when its recorded commands and
config files are what the sweep would run now; one that would run differently is never reused silently:
the sweep refuses to start, naming the difference, unless `--retrain-changed` says to train it anew.
"""

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from iprm.errors import ConfigError, IPRMError
from iprm.io import atomic_write
from iprm.sweep import commands
from iprm.sweep.collect import collect, unfinished
from iprm.sweep.commands import check_values, cli_args, command, inside
from iprm.sweep.execute import Job
from iprm.sweep.local import LocalLauncher, owning, signals_end_the_sweep
from iprm.sweep.plan import Run, load_sweep, plan, selected
from iprm.sweep.reuse import changed_since
from iprm.sweep.slurm import SlurmLauncher

log = logging.getLogger("iprm.sweep")
LOCAL_KEYS = {"jobs", "threads", "devices"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.sweep",
        allow_abbrev=False,  # every unknown --flag goes to the runs; none may be taken for ours
        description="Run a sweep: fit + test per point × seed, resumable. Other --flags go to every run. "
        "`python -m iprm.sweep collect DIR` collects whatever finished.",
    )
    parser.add_argument("sweep", help="the sweep file, e.g. configs/sweeps/objectives.yaml")
    parser.add_argument("--output", help="where runs and results go (default runs/sweeps/<name>)")
    parser.add_argument("--seeds", type=int, help="run seeds 0..N-1 instead of the file's")
    parser.add_argument(
        "--by-seed",
        action="store_true",
        help="within a wave, run every point at a seed before any point at the next (default: every seed "
        "of a point, then the next point)",
    )
    parser.add_argument(
        "--points",
        nargs="+",
        metavar="POINT",
        help="run only these explicit points (and the points they need) at every grid cell; the other runs "
        "are left as they are, and collection still covers every finished run",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--retrain-changed",
        action="store_true",
        help="train anew the finished runs that the current flags or configs would run differently "
        "(without it the sweep refuses to start)",
    )
    parser.add_argument("--launcher", choices=["local", "slurm"], help="overrides the file's launcher: name")
    parser.add_argument(
        "--jobs", type=int, help="local launcher: runs at once, each with its own threads or devices"
    )
    parser.add_argument("--wait", action="store_true", help="slurm launcher: wait for the jobs, then collect")
    return parser


def _launcher_overrides(extra: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`--launcher.KEY VALUE` pairs (values parsed as YAML) out of the flags that go to the runs."""
    overrides, rest, i = {}, [], 0
    while i < len(extra):
        if extra[i].startswith("--launcher."):
            if i + 1 >= len(extra):
                raise ConfigError(f"{extra[i]} needs a value")
            overrides[extra[i].removeprefix("--launcher.")] = yaml.safe_load(extra[i + 1])
            i += 2
        else:
            rest.append(extra[i])
            i += 1
    return overrides, rest


def make_launcher(
    config: dict[str, Any], output: Path, jobs: int | None = None, wait: bool = False, sweep: str = "sweep"
):
    """The launcher a sweep's `launcher:` block (with its command-line overrides) names."""
    config = dict(config)
    name = config.pop("name", "local")
    if name == "local":
        unknown = set(config) - LOCAL_KEYS
        if unknown:
            raise ConfigError(f"launcher: {sorted(unknown)} are not local launcher keys {sorted(LOCAL_KEYS)}")
        return LocalLauncher(**config | ({"jobs": jobs} if jobs else {}))
    if name == "slurm":
        fields = set(SlurmLauncher.__dataclass_fields__) - {"folder"}
        unknown = set(config) - fields
        if unknown:
            raise ConfigError(f"launcher: {sorted(unknown)} are not slurm launcher keys {sorted(fields)}")
        config = {"job_name": f"iprm-{sweep}", **config} | ({"wait": True} if wait else {})
        return SlurmLauncher(folder=output / ".slurm", **config)
    raise ConfigError(f"launcher name: {name!r} is not local or slurm")


def _dry_run(runs: list[Run], base: list[str], extra: list[str]) -> None:
    for run in runs:
        why = changed_since(run, base, extra) if run.done else None
        if run.done and why is None:
            print(f"# {run}: done, skipped")
            continue
        if why is not None:
            print(f"# {run}: finished, but {why} (--retrain-changed trains it anew)")
        after = ", ".join(run.dependency(name) for name in run.needs)
        print(f"# {run}" + (f" (after {after})" if after else ""))
        print(shlex.join(command("fit", cli_args(run, base, extra, "fit"))))
        print(shlex.join(command("test", cli_args(run, base, extra, "test"))) + " --ckpt_path <last.ckpt>")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["collect"]:
            return collect_command(argv[1:])
        return _main(argv)
    except IPRMError as error:
        log.error("%s", error)
        return 2


def _main(argv: list[str]) -> int:
    args, extra = _parser().parse_known_args(argv)
    launcher_config, extra = _launcher_overrides(extra)
    sweep = load_sweep(args.sweep)
    output = Path(args.output or Path("runs/sweeps") / sweep["name"])
    seeds = list(range(args.seeds)) if args.seeds else list(sweep["seeds"])
    runs = plan(sweep, output, seeds, by_seed=args.by_seed)
    check_values(runs)
    for run in runs:
        inside(output, run.directory)
    chosen = selected(sweep, args.points) if args.points else {run.point for run in runs}
    if args.dry_run:
        _dry_run([run for run in runs if run.point in chosen], sweep["base"], extra)
        return 0
    config = {**sweep["launcher"], **launcher_config} | ({"name": args.launcher} if args.launcher else {})
    launcher = make_launcher(config, output, args.jobs, args.wait, sweep["name"])
    text = "python -m iprm.sweep " + shlex.join(argv)
    if isinstance(launcher, LocalLauncher):
        with owning(output), signals_end_the_sweep():
            return _launch(launcher, runs, chosen, sweep, output, extra, args.retrain_changed, text, seeds)
    output.mkdir(parents=True, exist_ok=True)
    return _launch(launcher, runs, chosen, sweep, output, extra, args.retrain_changed, text, seeds)


def _launch(
    launcher, runs, chosen: set[str], sweep, output, extra, retrain_changed: bool, text: str, seeds: list[int]
) -> int:
    """Run the runs of points `chosen` that are not done (or changed), then collect every finished run."""
    base = sweep["base"]
    mine = [run for run in runs if run.point in chosen]
    changed = {run: why for run in mine if run.done and (why := changed_since(run, base, extra))}
    if changed and not retrain_changed:
        for run, why in changed.items():
            log.error("%s (%s): %s", run, run.directory, why)
        raise IPRMError(
            f"{len(changed)} finished run(s) in {output} were trained with other flags or configs; rerun "
            "with --retrain-changed to train them anew, or use another --output"
        )
    plan_text = json.dumps({**sweep, "seeds": seeds, "command": text}, indent=2, default=str) + "\n"
    path = output / "sweep.json"  # what `collect` plans from, on any machine; rewritten only when it changes
    if not path.exists() or path.read_text() != plan_text:
        with atomic_write(path) as file:
            file.write(plan_text)
    for run in mine:
        if run.done and run not in changed:
            log.info("%s: done, skipped", run)
    todo = [Job(run, output, base, extra, commands.PROGRAM) for run in mine if not run.done or run in changed]
    outcome = launcher.launch(todo, runs)
    rows = collect(runs, output, sweep, text)
    log.info("%d of %d runs finished; results in %s", len(rows), len(runs), output / "results.md")
    submitted = [run for run, state in outcome.items() if state == "submitted"]
    if submitted:
        log.info("%d runs submitted; `python -m iprm.sweep collect %s` gathers them", len(submitted), output)
        return 0
    for line in unfinished(mine):
        log.error("%s", line)
    return 1 if any(state != "done" for state in outcome.values()) else 0


def collect_command(argv: list[str]) -> int:
    """`collect DIR`: the results of whatever has finished in a sweep's output directory, now."""
    if len(argv) != 1:
        raise ConfigError("usage: python -m iprm.sweep collect <output directory>")
    output = Path(argv[0])
    try:
        sweep = json.loads((output / "sweep.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{output / 'sweep.json'}: cannot read the sweep's plan ({error})") from None
    runs = plan(sweep, output, list(sweep["seeds"]))
    rows = collect(runs, output, sweep, sweep.get("command", ""))
    print(f"{len(rows)} of {len(runs)} runs finished; results in {output / 'results.md'}")
    for line in unfinished(runs):
        print(line)
    return 0
