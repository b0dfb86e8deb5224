"""Choose each method's learning rate and epoch count on the dev sets, by one rule, from per-epoch validation.

The rule, stated once and applied to every method alike: for every (lr, epoch) that a method was run at,
its dev score is the best-of-`n` accuracy of the method's own score (`val/<set>/bon@16/method`), averaged
over the best-of-N sets (the generators) and then over the runs at that lr (seeds, worlds); the chosen point
is the one with the highest dev score; ties go to fewer epochs, then to the lower lr. No test number is read.

    python -m iprm.analysis.tune runs/sweeps/tune [more run or sweep directories …] [--n 16] [--output D]

finds every `val-epochs.jsonl` (one line per validation, written by the evaluation callback) under the given
directories — or, for runs made before that file existed, the per-epoch tables the callback wrote
(`evaluation/val-<set>-epoch<k>.csv`, the `bon/method` row) — with the resolved `config.yaml` beside it (the
run's lr: `model.init_args.lr`; its world: `data.init_args.world.seed`). A run's method is its sweep point's
name (`<sweep>/<point>/seed<K>/fit/…`) less its `lr=` and world (`seed=`) parts, e.g.
`math_shepherd,completions=4`; a run outside a sweep is named by its directory.
It writes `tune.md` (method, chosen lr, chosen epochs, dev score, runner-up, and the choice each world
would make alone, which says whether tuning on one world holds on another) and one figure per method,
`dev-<method>.png` (dev score against epoch, one line per lr, mean ± std over runs), and prints each
method's chosen overrides.

The epochs of one run share its learning-rate schedule (a cosine over all its `max_epochs`): epoch 2 of a
4-epoch run is not a 2-epoch run. The overrides printed rerun the chosen point with `max_epochs` = the
chosen epoch count, whose schedule decays sooner; a researcher who wants the exact point keeps the
checkpoint of that epoch instead.
"""

import argparse
import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iprm.errors import IPRMError
from iprm.eval.report import to_markdown
from iprm.io import atomic_write

EPOCHS_FILE = "val-epochs.jsonl"


@dataclass
class Run:
    """One fit's dev scores by epoch (1-based: epochs trained), with what identifies it."""

    method: str
    lr: float
    world: str
    path: Path
    scores: dict[int, float] = field(default_factory=dict)


def dev_score(record: dict, n: int) -> float:
    """Mean over the best-of-N sets of `val/<set>/bon@<n>/method` in one validation's record (NaN if none)."""
    pattern = re.compile(rf"val/[^/]+/bon@{n}/method")
    values = [v for k, v in record.items() if pattern.fullmatch(k) and v is not None]
    return statistics.fmean(values) if values else math.nan


def _method(path: Path, root: Path) -> str:
    """The sweep point of `<point>/seed<K>/fit/<name>/version_N/val-epochs.jsonl` less its `lr=` and world
    (`seed=`) parts; else the run's path under the directory it was found in."""
    parts = path.parent.parts
    for i in range(len(parts) - 1, 0, -1):
        if re.fullmatch(r"seed\d+", parts[i]):
            kept = [p for p in parts[i - 1].split(",") if not re.match(r"((model\.)?lr|seed)=", p)]
            return ",".join(kept) or "run"
    return str(path.parent.relative_to(root)) if path.parent != root else root.name


def _config_value(config: dict, section: str, *keys: str):
    node = config.get(section, {})
    node = node.get("init_args", node)
    for key in keys:
        node = node.get(key, {}) if isinstance(node, dict) else {}
        node = node.get("init_args", node) if isinstance(node, dict) else node
    return node


def read_run(path: Path, root: Path, n: int) -> Run:
    """A run from its `val-epochs.jsonl` (or its per-epoch tables, `path` then being the log directory)
    and the `config.yaml` beside it; a later record of the same epoch (a resumed run validating again)
    replaces the earlier one."""
    config_path = path / "config.yaml" if path.is_dir() else path.with_name("config.yaml")
    if not config_path.exists():
        raise IPRMError(f"{path}: no config.yaml beside it, so no learning rate for this run")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    lr = _config_value(config, "model", "lr")
    if not isinstance(lr, int | float):
        raise IPRMError(f"{config_path}, field 'model.init_args.lr': no learning rate")
    world = _config_value(config, "data", "world", "seed")
    method = _method(config_path, root)
    run = Run(method, float(lr), str(world) if world != {} else "–", path)
    for record in epoch_tables(path) if path.is_dir() else _json_lines(path):
        run.scores[int(record["epoch"]) + 1] = dev_score(record, n)
    return run


def _json_lines(path: Path) -> list[dict]:
    records = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise IPRMError(f"{path}, line {line_number}: not JSON ({error.msg})") from None
    return records


def epoch_tables(log_dir: Path) -> list[dict]:
    """`val-epochs.jsonl`-style records from the per-epoch tables of a run made before that file existed:
    `evaluation/val-<set>-epoch<k>.csv`, whose `bon/method` row gives `val/<set>/bon@<N>/method`."""
    records: dict[int, dict] = {}
    for table in sorted((log_dir / "evaluation").glob("val-*-epoch*.csv")):
        match = re.fullmatch(r"val-(.+)-epoch(\d+)\.csv", table.name)
        if match is None or match[1] in ("table1", "steps"):
            continue
        record = records.setdefault(int(match[2]), {"epoch": int(match[2])})
        for row in csv.DictReader(table.open(encoding="utf-8")):
            if row.get("scorer") == "bon/method":
                record |= {
                    f"val/{match[1]}/bon@{k}/method": float(v) for k, v in row.items() if k != "scorer"
                }
    return [records[epoch] for epoch in sorted(records)]


def find_runs(directories: list[Path], n: int) -> list[Run]:
    runs = []
    for directory in map(Path, directories):
        found = sorted(directory.rglob(EPOCHS_FILE))
        logged = {path.parent for path in found}
        older = sorted(
            {table.parent.parent for table in directory.rglob("evaluation/val-*-epoch*.csv")} - logged
        )
        runs += [read_run(path, directory, n) for path in [*found, *older]]
    if not runs:
        raise IPRMError(f"no {EPOCHS_FILE} (nor per-epoch tables) under {', '.join(map(str, directories))}")
    return runs


def grid(runs: list[Run]) -> dict[tuple[float, int], list[float]]:
    """{(lr, epoch): the finite dev scores of every run at that point}."""
    out: dict[tuple[float, int], list[float]] = {}
    for run in runs:
        for epoch, score in run.scores.items():
            if math.isfinite(score):
                out.setdefault((run.lr, epoch), []).append(score)
    return out


def ranked(runs: list[Run]) -> list[tuple[float, int, float]]:
    """(lr, epoch, mean dev score), best first by the rule: highest score, fewer epochs, lower lr."""
    points = [(lr, epoch, statistics.fmean(scores)) for (lr, epoch), scores in grid(runs).items()]
    return sorted(points, key=lambda p: (-p[2], p[1], p[0]))


def _point(p: tuple[float, int, float] | None) -> str:
    return "–" if p is None else f"lr {p[0]:g}, {p[1]} ep ({p[2]:.3f})"


def choose(runs: list[Run]) -> list[dict]:
    """A row per method: the chosen point, its dev score, the runner-up, and each world's own choice."""
    rows = []
    for method in dict.fromkeys(run.method for run in runs):
        mine = [run for run in runs if run.method == method]
        order = ranked(mine)
        if not order:
            continue
        (lr, epoch, score), runner_up = order[0], order[1] if len(order) > 1 else None
        worlds = sorted({run.world for run in mine})
        per_world = {w: ranked([r for r in mine if r.world == w]) for w in worlds}
        rows.append({
            "method": method,
            "chosen lr": lr,
            "chosen epochs": epoch,
            "dev score": score,
            "runner-up": _point(runner_up),
            "runs": len(mine),
            "each world alone": "; ".join(
                f"{w}: lr {p[0][0]:g}, {p[0][1]} ep" for w, p in per_world.items() if p
            ),
        })  # fmt: skip
    return rows


def curves_figure(runs: list[Run], method: str, n: int) -> Figure:
    """Dev score against epoch for one method, one line per lr (mean ± std over its runs)."""
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    by_point = grid([run for run in runs if run.method == method])
    for lr in sorted({lr for lr, _ in by_point}):
        epochs = sorted(e for (l_, e) in by_point if l_ == lr)
        values = [by_point[(lr, e)] for e in epochs]
        means = [statistics.fmean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.errorbar(epochs, means, yerr=stds, marker="o", capsize=3, label=f"lr {lr:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"dev best-of-{n} (mean over sets)")
    ax.set_title(method)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def overrides(row: dict) -> str:
    return f"--model.lr {row['chosen lr']:g} --trainer.max_epochs {row['chosen epochs']}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m iprm.analysis.tune", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("runs", type=Path, nargs="+", help="run or sweep directories (searched for runs)")
    parser.add_argument("--n", type=int, default=16, help="the best-of-N size of the dev score")
    parser.add_argument("--output", type=Path, help="where tune.md and the figures go (default: first/tune)")
    args = parser.parse_args(argv)
    runs = find_runs(args.runs, args.n)
    output = args.output or args.runs[0] / "tune"
    rows = choose(runs)
    rule = (
        f"Rule: the (lr, epochs) with the highest mean dev best-of-{args.n} (method's own score, mean over "
        "sets, then over runs); ties → fewer epochs, then lower lr. Test sets not read.\n\n"
    )
    with atomic_write(output / "tune.md", encoding="utf-8") as file:
        file.write(rule + to_markdown([{**r, "chosen lr": f"{r['chosen lr']:g}"} for r in rows]) + "\n")
    for row in rows:
        name = re.sub(r"[^\w.=,-]+", "_", row["method"])
        curves_figure(runs, row["method"], args.n).savefig(output / f"dev-{name}.png", dpi=110)
        print(f"{row['method']}: {overrides(row)}")
    return rows


if __name__ == "__main__":
    main()
