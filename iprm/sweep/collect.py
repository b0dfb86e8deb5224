"""Collection: every finished run's `metrics.json` → `<output>/results.csv` (a row per point × seed) and
`<output>/results.md` (per best-of-N set, a row per point: mean ± std over seeds). Works on whatever has
finished, at any time, from any machine that sees the output directory (`python -m iprm.sweep collect
<output>`), and says what has not finished and why.

The tables take their columns from the metrics present, not from any one reward model's scorer names:
per set, pass@1 and maj@N, then best-of-N for every scorer found (`<set>/bon@N/<scorer>`), weighted
majority for every scorer found, and every scorer's first-error F1 (`<set>/process/<scorer>/f1`).
"""

import csv
import json
import logging
import math
import re
import statistics
from pathlib import Path

from iprm.io import atomic_write
from iprm.sweep.plan import Run, dependencies, flag_value
from iprm.sweep.rundir import read_record, status

log = logging.getLogger("iprm.sweep")
COST = {"training FLOPs": "flops/train", "data FLOPs": "flops/data"}


def result_rows(runs: list[Run]) -> list[dict]:
    """A row per finished run: point, seed, its overrides, commit and seconds, then its metrics."""
    rows = []
    for run in [run for run in runs if run.done]:
        overrides = {key: flag_value(value) for key, value in run.overrides.items()}
        metrics = json.loads((run.directory / "metrics.json").read_text())
        rows.append({"point": run.point, "seed": run.seed, **overrides, **_meta(run), **metrics})
    return rows


def _meta(run: Run) -> dict:
    meta = read_record(run) or {}
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


def columns(rows: list[dict], name: str, n: int) -> dict[str, dict[str, str]]:
    """Table title → (column title → flat key) for best-of-N set `name`, from the keys the rows hold."""
    keys = list(dict.fromkeys(key for row in rows for key in row if key.startswith(f"{name}/")))

    def family(pattern: str, title: str) -> dict[str, str]:
        found = [(m.group(1), key) for key in keys if (m := re.fullmatch(pattern, key))]
        return {title.format(scorer=scorer): key for scorer, key in found}

    first = {t: k for t, k in (("pass@1", f"{name}/pass@1"), (f"maj@{n}", f"{name}/maj@{n}")) if k in keys}
    return {
        f"best-of-{n}": first | family(rf"{re.escape(name)}/bon@{n}/(.+)", f"bo@{n} {{scorer}}"),
        f"weighted majority@{n}": family(rf"{re.escape(name)}/wmaj@{n}/(.+)", f"wmaj@{n} {{scorer}}"),
        "first-error F1": family(rf"{re.escape(name)}/process/(.+)/f1", "F1 {scorer}"),
    }


def results_markdown(rows: list[dict], sweep: dict, command: str) -> str:
    """Per best-of-N set its tables (columns from the metrics present), then the cost table."""
    from iprm.eval.report import to_markdown  # here: it brings matplotlib and torch, which a run never needs

    n = sweep["n"]
    sets = list(dict.fromkeys(key.split("/")[0] for row in rows for key in row if key.endswith("/pass@1")))
    commits = sorted({str(row["commit"]) for row in rows})
    header = f"`{command}`; commit {', '.join(commits) or '–'}; mean ± std over seeds."
    parts = [f"# Sweep `{sweep['name']}`\n\n{header}\n"]
    for name in sets:
        parts.append(f"## {name}\n")
        for title, cols in columns(rows, name, n).items():
            if cols:
                parts.append(f"### {title}\n\n" + to_markdown(_table(rows, cols, ".3f")))
    parts.append("## cost\n\n" + to_markdown(_table(rows, COST, ".3g")))
    return "\n".join(parts)


def collect(runs: list[Run], output: Path, sweep: dict, command: str) -> list[dict]:
    """Write `results.csv` and `results.md` from every finished run; returns the csv rows."""
    rows = result_rows(runs)
    names = list(dict.fromkeys(key for row in rows for key in row))
    # Whole or not at all: a sweep stopped while writing keeps the last table.
    with atomic_write(output / "results.csv", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(output / "results.md") as file:
        file.write(results_markdown(rows, sweep, command))
    return rows


def unfinished(runs: list[Run]) -> list[str]:
    """A line per run that has not finished: failed (which stage), running or pre-empted, or not run —
    and when a run it needs failed, naming both."""
    lines = []
    for run in runs:
        state = status(run)
        if state == "done":
            continue
        if state == "failed":
            stage = (read_record(run) or {}).get("failed_stage", "?")
            lines.append(f"{run}: failed in {stage} (see {run.directory / (stage + '.log')})")
            continue
        failed = [d for d in dependencies(run, runs) if status(d) == "failed"]
        if failed:
            lines.append(f"{run}: skipped, it needs {', '.join(map(str, failed))}, which failed")
        else:
            lines.append(f"{run}: {'started, not finished' if state == 'running' else 'not run yet'}")
    return lines
