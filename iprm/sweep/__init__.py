"""Sweeps: one `fit` + `test` per point × seed through the CLI, resumable, launched locally or on SLURM,
collected into one table.

A sweep file (`configs/sweeps/*.yaml`) names its base configs (composed left to right), its seeds, its
points (explicit ones, a grid, or both crossed; a point that reads another's output declares `needs:`), and
optionally its `launcher:`:

    name: instruction_fraction
    base: [configs/quickstart.yaml]
    seeds: [0, 1, 2]
    grid: {data.instruction_fraction: [0.25, 0.5, 0.75, 1.0]}
    launcher: {name: slurm, gpus: 1, cpus: 8, mem: 64, time: 120, partition: gpu}

    python -m iprm.sweep configs/sweeps/instruction_fraction.yaml [--output DIR] [--jobs K]
    python -m iprm.sweep collect runs/sweeps/instruction_fraction

The rooms: `plan` (sweep file → runs, names, dependencies, waves), `template` (the placeholders a value may
use), `commands` (a run's command lines), `rundir` (what a run directory holds), `reuse` (is a run what
would run now?), `execute` (one run, resumed where it can be), `local` and `slurm` (the launchers),
`collect` (the results tables), `cli` (the command).
"""

from iprm.sweep.cli import main, make_launcher
from iprm.sweep.collect import collect, result_rows, results_markdown, unfinished
from iprm.sweep.commands import check_values, cli_args, inside
from iprm.sweep.execute import Job, execute
from iprm.sweep.local import LocalLauncher, owning
from iprm.sweep.plan import Run, load_sweep, plan, points, waves
from iprm.sweep.reuse import changed_since
from iprm.sweep.rundir import config_files, read_metrics
from iprm.sweep.template import fill

__all__ = [
    "Job", "LocalLauncher", "Run", "changed_since", "check_values", "cli_args", "collect", "config_files",
    "execute", "fill", "inside", "load_sweep", "main", "make_launcher", "owning", "plan", "points",
    "read_metrics", "result_rows", "results_markdown", "unfinished", "waves",
]  # fmt: skip
