"""Sweeps: one `fit` + `test` per point × seed through the CLI, resumable, collected into one table.

A sweep file (`configs/sweeps/*.yaml`) names its base configs (composed left to right), its seeds, and its
points: explicit ones (`config:` overlays and dotted overrides), a grid of dotted overrides (their
cartesian product), or both (crossed):

    name: instruction_fraction
    base: [configs/quickstart.yaml]
    seeds: [0, 1, 2]
    grid: {data.instruction_fraction: [0.25, 0.5, 0.75, 1.0]}

    python -m iprm.sweep configs/sweeps/instruction_fraction.yaml [--output DIR] [--seeds N] [--by-seed]
        [--dry-run] [--any.cli.flag VALUE …]   # appended to every fit and test

Each run lives in `<output>/<point>/seed<k>/`: `fit/` and `test/` log directories (each with its
`<stage>-metrics.json`; the fit's also holds `checkpoints/` and the exported `policy/`), `fit.log`,
`test.log`, `run.json` (commands, commit, seconds, the digests of its config files and of its resolved
config), and last `metrics.json` (the flat test metrics and the FLOPs of training and data collection,
read from the two stages' metrics files). A run with a `metrics.json` is finished; rerunning a sweep skips
the finished runs whose recorded `fit` and `test` arguments (and config files) are what it would run now,
and starts every unfinished run over. A finished run that the current flags or configs would run
differently is never reused silently: the sweep refuses to start, naming the difference, unless
`--retrain-changed` says to train it anew. A failed run is reported and the sweep goes on.

One sweep directory has one owner: a sweep holds an exclusive lock on `<output>/.lock` (holding its pid)
while it runs, and a second sweep on the same directory is refused. Each `iprm` child runs in its own
process group; a sweep stopped by SIGTERM or SIGINT stops its child first, and a child outlives a sweep
killed by SIGKILL only until the kernel tells it its parent died (Linux).

Every `metrics.json` is then collected into `<output>/results.csv` (a row per point × seed) and
`<output>/results.md` (per best-of-N set, a row per point: mean ± std over seeds of the headline metrics).
"""

import argparse
import contextlib
import csv
import ctypes
import difflib
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from iprm import results
from iprm.errors import IPRMError
from iprm.eval.report import to_markdown
from iprm.io import atomic_write

log = logging.getLogger(__name__)
DEFAULT_SEEDS = [0, 1, 2]
# Headline columns of results.md: title → flat key, with {set} the best-of-N set and {n} the sweep's N.
HEADLINE = {
    "pass@1": "{set}/pass@1",
    "maj@{n}": "{set}/maj@{n}",
    "reference bo@{n}": "{set}/bon@{n}/reference_accumulative_last",
    "PRM bo@{n} (acc. min)": "{set}/bon@{n}/prm_accumulative_min",
    "PRM bo@{n} (single min)": "{set}/bon@{n}/prm_single_min",
    "wmaj@{n} (acc. min)": "{set}/wmaj@{n}/prm_accumulative_min",
    "wmaj@{n} (single min)": "{set}/wmaj@{n}/prm_single_min",
    "method bo@{n}": "{set}/bon@{n}/method",  # each model's own method scorer: compares reward models
    "method step F1": "{set}/process/method/f1",
}
COST = {"training FLOPs": "flops/train", "data FLOPs": "flops/data"}


@dataclass(frozen=True)
class Run:
    """One point of a sweep at one seed."""

    point: str
    seed: int
    overrides: dict[str, Any]  # "config" → overlay paths; every other key a dotted CLI key
    directory: Path

    @property
    def done(self) -> bool:
        return (self.directory / "metrics.json").exists()


# --- the sweep file ---------------------------------------------------------------------------------------


def load_sweep(path: str | Path) -> dict:
    sweep = yaml.safe_load(Path(path).read_text())
    unknown = set(sweep) - {"name", "base", "seeds", "points", "grid", "n"}
    if unknown:
        raise ValueError(f"{path}: unknown sweep keys {sorted(unknown)}")
    sweep.setdefault("name", Path(path).stem)
    sweep["base"] = _as_list(sweep.get("base", []))
    sweep.setdefault("seeds", DEFAULT_SEEDS)
    sweep.setdefault("n", 16)
    return sweep


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _normalise(overrides: dict | None) -> dict[str, Any]:
    """`--config`/`config` → a list of overlays; `--a.b` → `a.b`."""
    out = {key.lstrip("-"): value for key, value in (overrides or {}).items()}
    if "config" in out:
        out["config"] = _as_list(out["config"])
    return out


def _grid_points(grid: dict[str, list]) -> dict[str, dict]:
    """Each combination of grid values, named by the last key parts: `deduplicate=true,balance=dataset`."""
    keys, out = list(grid), {}
    for values in itertools.product(*(_as_list(grid[key]) for key in keys)):
        cell = dict(zip(keys, values, strict=True))
        out[",".join(f"{key.split('.')[-1]}={_flag_value(v)}" for key, v in cell.items())] = cell
    return out


def points(sweep: dict) -> dict[str, dict[str, Any]]:
    """Point name → its overrides: the explicit points crossed with the grid (either may be absent)."""
    explicit = {name: _normalise(o) for name, o in (sweep.get("points") or {"": {}}).items()}
    grid = _grid_points(sweep["grid"]) if sweep.get("grid") else {"": {}}
    crossed = {}
    for (name, overrides), (cell, values) in itertools.product(explicit.items(), grid.items()):
        crossed[",".join(part for part in (name, cell) if part) or "base"] = {**overrides, **values}
    return crossed


# --- commands ---------------------------------------------------------------------------------------------


def _flag_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # true/false/null, numbers, lists and dicts as the CLI parses them


def _expand(value: Any, run: Run) -> str:
    """A string override with its placeholders filled: `{seed}`, `{run}` (the run's directory), `{sweep}`
    (the sweep's output directory) and `{grid}` (",<grid cell>" of the run's point name, or "" without a
    grid cell), so one point can name another's output: `"{sweep}/orm{grid}/seed{seed}/orm"`."""
    if not isinstance(value, str):
        return _flag_value(value)
    _, _, cell = run.point.partition(",")
    fields = {"seed": run.seed, "run": run.directory, "sweep": run.directory.parent.parent}
    return value.format(**fields, grid=f",{cell}" if cell else "")


def cli_args(run: Run, base: list[str], extra: list[str], stage: str) -> list[str]:
    """The arguments of `python -m iprm <stage>` for a run: configs, overrides (placeholders filled, see
    `_expand`), seed, its own log directory (where checkpoints and the exported policy go too)."""
    configs = [*base, *run.overrides.get("config", [])]
    overrides = [[f"--{key}", _expand(v, run)] for key, v in run.overrides.items() if key != "config"]
    return [
        *(arg for config in configs for arg in ("--config", config)),
        *itertools.chain.from_iterable(overrides),
        "--seed_everything", str(run.seed), "--data.seed", str(run.seed),
        "--trainer.default_root_dir", str(run.directory),
        "--trainer.logger.init_args.save_dir", str(run.directory / stage),
        *extra,
    ]  # fmt: skip


def _command(stage: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "iprm", stage, *args]


def _find(directory: Path, pattern: str) -> Path:
    """The file a run wrote that matches `pattern`: `last.ckpt` first, then the newest."""
    found = sorted(directory.glob(pattern), key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime))
    if not found:
        raise FileNotFoundError(f"{directory} holds no {pattern}")
    return found[-1]


# --- running ----------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before it runs: be sent SIGTERM when the sweep dies, even by SIGKILL (Linux only)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen) -> None:
    """End a child and its own children (its process group): SIGTERM, then SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def _stage(run: Run, stage: str, args: list[str]) -> bool:
    command = _command(stage, args)
    log_path = run.directory / f"{stage}.log"
    with log_path.open("w") as out:
        out.write(shlex.join(command) + "\n\n")
        out.flush()
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole
            preexec_fn=_die_with_parent,
        )
        try:
            code = process.wait()
        except BaseException:  # SIGINT, or SIGTERM (`_signals_end_the_sweep`): the child ends first
            _stop(process)
            raise
    if code != 0:
        log.error("FAILED %s seed %d (%s, exit %d): see %s", run.point, run.seed, stage, code, log_path)
    return code == 0


def execute(run: Run, base: list[str], extra: list[str]) -> bool:
    """Fit then test one run from scratch and write its metrics.json; False if either stage failed."""
    shutil.rmtree(run.directory, ignore_errors=True)  # an unfinished run starts over
    run.directory.mkdir(parents=True)
    started = time.perf_counter()
    fit = cli_args(run, base, extra, "fit")
    if not _stage(run, "fit", fit):
        return False
    try:
        test = [*cli_args(run, base, extra, "test"), "--ckpt_path", str(_find(run.directory, "**/*.ckpt"))]
        if not _stage(run, "test", test):
            return False
        metrics, commit = read_metrics(run.directory)
    except FileNotFoundError as error:
        log.error("FAILED %s seed %d: %s", run.point, run.seed, error)
        return False
    commands = {stage: shlex.join(_command(stage, args)) for stage, args in (("fit", fit), ("test", test))}
    meta = {
        "point": run.point,
        "seed": run.seed,
        "commit": commit,
        "commands": commands,
        "config_files": config_files(run, base),
        "config_digest": results.read_metrics(_find(run.directory, "fit/**/fit-metrics.json"))[
            "config_digest"
        ],
    }
    _write_json(run.directory / "run.json", meta | {"seconds": round(time.perf_counter() - started, 1)})
    _write_json(run.directory / "metrics.json", metrics)
    return True


# --- is a finished run what the sweep would run now? ----------------------------------------------------


def config_files(run: Run, base: list[str]) -> dict[str, str | None]:
    """Each config file of a run → sha256 of its parsed content (comments and layout do not count; None
    when it cannot be read)."""
    digests = {}
    for path in [*base, *run.overrides.get("config", [])]:
        try:
            content = json.dumps(yaml.safe_load(Path(path).read_text()), sort_keys=True, default=str)
            digests[path] = hashlib.sha256(content.encode()).hexdigest()
        except (OSError, yaml.YAMLError):
            digests[path] = None
    return digests


def _recorded_args(command: str, stage: str) -> list[str]:
    """The arguments after the stage of a recorded command, without the test's `--ckpt_path`."""
    tokens = shlex.split(command)
    args = tokens[tokens.index(stage) + 1 :] if stage in tokens else tokens  # after `… -m iprm <stage>`
    return args[:-2] if args[-2:-1] == ["--ckpt_path"] else args


def _items(args: list[str]) -> list[str]:
    """Arguments with the run's own directory written `<run>` (so a moved sweep still matches), each
    `--flag value` pair as one item (so a difference names its flag)."""
    root = (
        args[args.index("--trainer.default_root_dir") + 1] if "--trainer.default_root_dir" in args else None
    )
    args = [f"<run>{a[len(root) :]}" if root and (a == root or a.startswith(root + "/")) else a for a in args]
    items, i = [], 0
    while i < len(args):
        paired = args[i].startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--")
        items.append(shlex.join(args[i : i + 2]) if paired else args[i])
        i += 2 if paired else 1
    return items


def _difference(recorded: list[str], now: list[str]) -> str:
    parts = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=recorded, b=now, autojunk=False).get_opcodes():
        if tag != "equal":
            parts.append(f"was `{' '.join(recorded[i1:i2]) or '-'}`, now `{' '.join(now[j1:j2]) or '-'}`")
    return "; ".join(parts)


def changed_since(run: Run, base: list[str], extra: list[str]) -> str | None:
    """Why a finished run is not what the sweep would run now (None when it is): its recorded `fit` and
    `test` arguments differ, or a config file's content does (where `run.json` recorded them)."""
    try:
        meta = json.loads((run.directory / "run.json").read_text())
        commands = meta["commands"]
    except (OSError, ValueError, KeyError):
        return "run.json does not record its commands"
    for stage in ("fit", "test"):
        recorded = _items(_recorded_args(commands.get(stage, ""), stage))
        now = _items(cli_args(run, base, extra, stage))
        if recorded != now:
            return f"{stage} arguments differ: {_difference(recorded, now)}"
    recorded_files = meta.get("config_files") or {}  # older runs did not record them
    for path, digest in config_files(run, base).items():
        if path in recorded_files and recorded_files[path] != digest:
            return f"{path} has changed since the run"
    return None


# --- one owner, and no orphaned child -------------------------------------------------------------------


@contextlib.contextmanager
def owning(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<output>/.lock` (which names the owner's pid) while the sweep runs; a
    second sweep on the same directory is refused. The lock goes with the process, however it ends."""
    output.mkdir(parents=True, exist_ok=True)
    with (output / ".lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise IPRMError(
                f"{output} is in use by another sweep (pid {owner}); wait for it to end, or use another "
                "--output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _signals_end_the_sweep() -> Iterator[None]:
    """SIGTERM ends the sweep as SIGINT does: with an exception, so the running child is stopped first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def end(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, end)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_json(path: Path, value: dict) -> None:
    with atomic_write(path) as file:  # metrics.json marks a run done: it must never exist half-written
        file.write(json.dumps(value, indent=2) + "\n")


# --- metrics ----------------------------------------------------------------------------------------------


def read_metrics(directory: Path) -> tuple[dict[str, float], str]:
    """A finished run's flat metrics and the short commit that tested it, from its stages' metrics files:
    the test metrics without their `test/` prefix (per best-of-N set `<set>/bon@16/<scorer>`,
    `<set>/maj@16`, `<set>/process/<scorer>/f1`, …) and the fit's `flops/{train,data,total}`."""
    test = results.read_metrics(_find(directory, "test/**/test-metrics.json"))
    fit = results.read_metrics(_find(directory, "fit/**/fit-metrics.json"))
    metrics = {key.removeprefix("test/"): value for key, value in test.items() if key.startswith("test/")}
    metrics |= {key: float(fit[key]) for key in ("flops/train", "flops/data", "flops/total")}
    return metrics, (test["commit"] or "unknown")[:7]


# --- collecting -------------------------------------------------------------------------------------------


def result_rows(runs: list[Run]) -> list[dict]:
    """A row per finished run: point, seed, its overrides, commit and seconds, then its metrics."""
    rows = []
    for run in [run for run in runs if run.done]:
        overrides = {key: _flag_value(value) for key, value in run.overrides.items()}
        metrics = json.loads((run.directory / "metrics.json").read_text())
        rows.append({"point": run.point, "seed": run.seed, **overrides, **_meta(run), **metrics})
    return rows


def _meta(run: Run) -> dict:
    path = run.directory / "run.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    return {"commit": meta.get("commit", "unknown"), "seconds": meta.get("seconds", math.nan)}


def _summary(values: list[float], style: str) -> str:
    """mean ± sample std over the finite values ("–" if none; the mean alone for one)."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return "–"
    mean = statistics.fmean(finite)
    if len(finite) == 1:
        return format(mean, style)
    return f"{mean:{style}} ± {statistics.stdev(finite):{style}}"


def _table(rows: list[dict], columns: dict[str, str], style: str) -> list[dict]:
    """One row per point (in sweep order): the number of seeds, then each column's mean ± std."""
    by_point: dict[str, list[dict]] = {}
    for row in rows:
        by_point.setdefault(row["point"], []).append(row)
    return [
        {"point": point, "seeds": len(group)}
        | {title: _summary([r.get(key, math.nan) for r in group], style) for title, key in columns.items()}
        for point, group in by_point.items()
    ]


def results_markdown(rows: list[dict], sweep: dict, command: str) -> str:
    """Per best-of-N set a table of the headline metrics, then the cost table."""
    n = sweep["n"]
    sets = list(dict.fromkeys(key.split("/")[0] for row in rows for key in row if key.endswith("/pass@1")))
    commits = sorted({str(row["commit"]) for row in rows})
    header = f"`{command}`; commit {', '.join(commits) or '–'}; mean ± std over seeds."
    parts = [f"# Sweep `{sweep['name']}`\n\n{header}\n"]
    for name in sets:
        columns = {t.format(n=n): k.format(set=name, n=n) for t, k in HEADLINE.items()}
        parts.append(f"## {name}\n\n" + to_markdown(_table(rows, columns, ".3f")))
    parts.append("## cost\n\n" + to_markdown(_table(rows, COST, ".3g")))
    return "\n".join(parts)


def collect(runs: list[Run], output: Path, sweep: dict, command: str) -> list[dict]:
    """Write `results.csv` and `results.md` from every finished run; returns the csv rows."""
    rows = result_rows(runs)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    # Whole or not at all: a sweep stopped while writing keeps the last table.
    with atomic_write(output / "results.csv", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(output / "results.md") as file:
        file.write(results_markdown(rows, sweep, command))
    return rows


# --- entry point ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.sweep",
        allow_abbrev=False,  # every unknown --flag goes to the runs; none may be taken for ours
        description="Run a sweep: fit + test per point × seed, resumable. Other --flags go to every run.",
    )
    parser.add_argument("sweep", help="the sweep file, e.g. configs/sweeps/objectives.yaml")
    parser.add_argument("--output", help="where runs and results go (default runs/sweeps/<name>)")
    parser.add_argument("--seeds", type=int, help="run seeds 0..N-1 instead of the file's")
    parser.add_argument(
        "--by-seed",
        action="store_true",
        help="run every point at a seed before any point at the next (default: every seed of a point, "
        "then the next point); a sweep cut short then has every point at its first seeds",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--retrain-changed",
        action="store_true",
        help="train anew the finished runs that the current flags or configs would run differently "
        "(without it the sweep refuses to start)",
    )
    return parser


def plan(sweep: dict, output: Path, seeds: list[int], by_seed: bool = False) -> list[Run]:
    """The runs in the order they run: point by point (each at every seed), or seed by seed. Within a seed
    the points keep the file's order, so a point may read an earlier one's output (`{sweep}/orm…`)."""
    runs = [
        Run(name, seed, overrides, output / name / f"seed{seed}")
        for name, overrides in points(sweep).items()
        for seed in seeds
    ]
    return sorted(runs, key=lambda run: seeds.index(run.seed)) if by_seed else runs  # sorted() is stable


def _dry_run(runs: list[Run], base: list[str], extra: list[str]) -> None:
    for run in runs:
        why = changed_since(run, base, extra) if run.done else None
        if run.done and why is None:
            print(f"# {run.point} seed {run.seed}: done, skipped")
            continue
        if why is not None:
            print(f"# {run.point} seed {run.seed}: finished, but {why} (--retrain-changed trains it anew)")
        print(f"# {run.point} seed {run.seed}")
        print(shlex.join(_command("fit", cli_args(run, base, extra, "fit"))))
        print(shlex.join(_command("test", cli_args(run, base, extra, "test"))) + " --ckpt_path <last.ckpt>")


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    sweep = load_sweep(args.sweep)
    output = Path(args.output or Path("runs/sweeps") / sweep["name"])
    seeds = list(range(args.seeds)) if args.seeds else list(sweep["seeds"])
    runs = plan(sweep, output, seeds, by_seed=args.by_seed)
    if args.dry_run:
        _dry_run(runs, sweep["base"], extra)
        return 0
    try:
        with owning(output), _signals_end_the_sweep():
            return _run_all(runs, sweep, output, extra, args.retrain_changed, argv)
    except IPRMError as error:
        log.error("%s", error)
        return 2


def _run_all(
    runs: list[Run],
    sweep: dict,
    output: Path,
    extra: list[str],
    retrain_changed: bool,
    argv: list[str] | None,
) -> int:
    base = sweep["base"]
    changed = {run.directory: why for run in runs if run.done and (why := changed_since(run, base, extra))}
    if changed and not retrain_changed:
        for run in [run for run in runs if run.directory in changed]:
            log.error("%s seed %d (%s): %s", run.point, run.seed, run.directory, changed[run.directory])
        raise IPRMError(
            f"{len(changed)} finished run(s) in {output} were trained with other flags or configs; rerun "
            "with --retrain-changed to train them anew, or use another --output"
        )
    failed = []
    for i, run in enumerate(runs, 1):
        if run.done and run.directory not in changed:
            log.info("[%d/%d] %s seed %d: done, skipped", i, len(runs), run.point, run.seed)
            continue
        log.info("[%d/%d] %s seed %d: running in %s", i, len(runs), run.point, run.seed, run.directory)
        if not execute(run, base, extra):
            failed.append(run)
    command = "python -m iprm.sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
    rows = collect(runs, output, sweep, command)
    log.info("%d of %d runs finished; results in %s", len(rows), len(runs), output / "results.md")
    for run in failed:
        log.error("failed: %s seed %d (logs in %s)", run.point, run.seed, run.directory)
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sys.exit(main())
